"""mmu.guest"""
