"""python -m mmu"""

from mmu.cli import main

main()
