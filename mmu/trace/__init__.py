"""mmu.trace"""
