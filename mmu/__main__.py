"""python -m mmu"""

from mmu.cli import main

if __name__ == "__main__":  # not in the spawned workers of ``mmu compare``
    main()
