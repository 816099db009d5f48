"""mmu.modes"""
