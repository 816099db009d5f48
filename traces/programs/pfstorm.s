# pfstorm.s -- page-fault storm: map a region, touch every page, unmap it, repeat.
#
# Usage: pfstorm [pages=256] [rounds=8]
#   pages   pages per mapping (0 is treated as 1)
#   rounds  map / touch / unmap cycles
#
# Round r maps pages*4096 bytes (first fit puts every round at the same address), stores
# v = r*pages + i + 1 into page i (word i mod 512, so the stores spread over the page), which
# takes one demand-paging fault per page, reads every value back into the sum, and unmaps
# the region (its page-table entries are cleared and the TLB entries flushed).
#
# Output: "pfstorm: pages=P rounds=R sum=S"   with S = K*(K+1)/2, K = P*R

        .text
_start:
        li      a0, 0
        li      a1, 256
        syscall getarg
        mv      s0, a0                  # s0 = pages
        bnez    s0, pages_ok
        li      s0, 1
pages_ok:
        li      a0, 1
        li      a1, 8
        syscall getarg
        mv      s1, a0                  # s1 = rounds
        shli    s2, s0, 12              # s2 = bytes per mapping
        li      s3, 0                   # s3 = r
        li      s4, 0                   # s4 = sum
        li      s6, 0                   # s6 = value base r*pages
round:
        bgeu    s3, s1, report
        mv      a0, s2
        li      a1, PROT_READ | PROT_WRITE
        syscall mmap
        bltz    a0, failed
        mv      s5, a0                  # s5 = region

        li      t0, 0                   # i
touch:
        andi    t1, t0, 511             # address = region + i*4096 + 8*(i mod 512)
        shli    t1, t1, 3
        shli    t2, t0, 12
        add     t1, t1, t2
        add     t1, s5, t1
        add     t2, s6, t0
        addi    t2, t2, 1
        st8     t2, 0(t1)
        addi    t0, t0, 1
        bltu    t0, s0, touch

        li      t0, 0
readback:
        andi    t1, t0, 511
        shli    t1, t1, 3
        shli    t2, t0, 12
        add     t1, t1, t2
        add     t1, s5, t1
        ld8     t2, 0(t1)
        add     s4, s4, t2
        addi    t0, t0, 1
        bltu    t0, s0, readback

        mv      a0, s5
        mv      a1, s2
        syscall munmap
        bnez    a0, failed
        add     s6, s6, s0
        addi    s3, s3, 1
        j       round

report:
        la      a0, msg_pages
        mv      a1, s0
        call    print_sdec
        la      a0, msg_rounds
        mv      a1, s1
        call    print_sdec
        la      a0, msg_sum
        mv      a1, s4
        call    print_sdec
        call    print_nl
        li      a0, 0
        syscall exit

failed:
        la      a0, msg_failed
        call    print_str
        li      a0, 1
        syscall exit

        .data
msg_pages:      .asciz "pfstorm: pages="
msg_rounds:     .asciz " rounds="
msg_sum:        .asciz " sum="
msg_failed:     .asciz "pfstorm: mmap or munmap failed\n"

        .include "lib/print.s"
