"""mmu.hw"""
