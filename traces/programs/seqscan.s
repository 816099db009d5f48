# seqscan.s -- sequential scan: fill an array, then read it front to back several times.
#
# Usage: seqscan [pages=1024] [passes=4] [stride=8]
#   pages   array size in 4 KiB pages (0 is treated as 1)
#   passes  read passes over the whole array
#   stride  bytes between the words read in a pass (rounded down to a multiple of 8; below 8
#           means 8); a stride of 4096 reads one word per page, the TLB's best case
#
# The array (one mmap) is filled with word i = i (every word, one demand-paging fault per
# page); each pass then reads the words at byte offsets 0, stride, 2*stride, ... and adds them.
#
# Output: "seqscan: pages=P passes=R stride=S sum=X"
#   with X = R * sum of (j*S/8) over j = 0 .. ceil(P*4096/S) - 1.

        .text
_start:
        li      a0, 0
        li      a1, 1024
        syscall getarg
        mv      s0, a0                  # s0 = pages
        bnez    s0, pages_ok
        li      s0, 1
pages_ok:
        li      a0, 1
        li      a1, 4
        syscall getarg
        mv      s1, a0                  # s1 = passes
        li      a0, 2
        li      a1, 8
        syscall getarg
        andi    s2, a0, -8              # s2 = stride, a multiple of 8
        li      t0, 8
        bgeu    s2, t0, stride_ok
        li      s2, 8
stride_ok:
        shli    s3, s0, 12              # s3 = bytes
        mv      a0, s3
        li      a1, PROT_READ | PROT_WRITE
        syscall mmap
        bltz    a0, failed
        mv      s4, a0                  # s4 = array
        add     s5, s4, s3              # s5 = end of the array

        li      t0, 0                   # word i = i
        mv      t1, s4
fill:
        st8     t0, 0(t1)
        addi    t0, t0, 1
        addi    t1, t1, 8
        bltu    t1, s5, fill

        li      s6, 0                   # s6 = sum
        li      s7, 0                   # s7 = pass
pass:
        bgeu    s7, s1, report
        mv      t1, s4
scan:
        ld8     t2, 0(t1)
        add     s6, s6, t2
        add     t1, t1, s2
        bltu    t1, s5, scan
        addi    s7, s7, 1
        j       pass

report:
        la      a0, msg_pages
        mv      a1, s0
        call    print_sdec
        la      a0, msg_passes
        mv      a1, s1
        call    print_sdec
        la      a0, msg_stride
        mv      a1, s2
        call    print_sdec
        la      a0, msg_sum
        mv      a1, s6
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
msg_pages:      .asciz "seqscan: pages="
msg_passes:     .asciz " passes="
msg_stride:     .asciz " stride="
msg_sum:        .asciz " sum="
msg_failed:     .asciz "seqscan: mmap failed\n"

        .include "lib/print.s"
