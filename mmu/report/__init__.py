"""mmu.report"""
