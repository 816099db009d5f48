# pingpong.s -- context-switch ping-pong: two processes alternate through yield().
#
# Usage: pingpong [rounds=1000] [pages=1]
#   rounds  iterations per process; each ends with yield(), which switches to the other one
#           (round robin with two runnable processes): about 2*rounds context switches
#   pages   pages of a private buffer each process updates every iteration (0 = none), so
#           each switch meets a TLB that may or may not still hold this process's entries
#
# The parent maps the buffer and forks (the child's first writes are copy-on-write faults).
# In iteration k each process adds k + tag to the first word of each page (tag = 0 in the
# parent, 1 in the child) and yields. The child exits with the sum of its words; the parent
# waits for it and sums its own.
#
# Output: "pingpong: rounds=N pages=P parent=X child=Y"
#   with X = P*N*(N-1)/2 and Y = X + P*N.

        .text
_start:
        li      a0, 0
        li      a1, 1000
        syscall getarg
        mv      s0, a0                  # s0 = rounds
        li      a0, 1
        li      a1, 1
        syscall getarg
        mv      s1, a0                  # s1 = pages
        li      s2, 0                   # s2 = buffer
        beqz    s1, start
        shli    a0, s1, 12
        li      a1, PROT_READ | PROT_WRITE
        syscall mmap
        bltz    a0, failed
        mv      s2, a0
start:
        syscall fork
        bltz    a0, failed
        mv      s3, a0                  # s3 = child pid (parent) or 0 (child)
        seqz    s4, a0                  # s4 = tag
        li      s5, 0                   # s5 = k
iteration:
        bgeu    s5, s0, finished
        add     t0, s5, s4              # t0 = k + tag
        li      t1, 0
        mv      t2, s2
iteration.page:
        bgeu    t1, s1, iteration.yield
        ld8     t3, 0(t2)
        add     t3, t3, t0
        st8     t3, 0(t2)
        addi    t1, t1, 1
        addi    t2, t2, PAGE_SIZE
        j       iteration.page
iteration.yield:
        syscall yield
        addi    s5, s5, 1
        j       iteration

finished:
        li      s6, 0                   # s6 = sum of this process's words
        li      t1, 0
        mv      t2, s2
sum:
        bgeu    t1, s1, summed
        ld8     t3, 0(t2)
        add     s6, s6, t3
        addi    t1, t1, 1
        addi    t2, t2, PAGE_SIZE
        j       sum
summed:
        bnez    s3, parent
        mv      a0, s6                  # child
        syscall exit
parent:
        syscall wait
        mv      s7, a1                  # s7 = child's sum
        la      a0, msg_rounds
        mv      a1, s0
        call    print_sdec
        la      a0, msg_pages
        mv      a1, s1
        call    print_sdec
        la      a0, msg_parent
        mv      a1, s6
        call    print_sdec
        la      a0, msg_child
        mv      a1, s7
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
msg_rounds:     .asciz "pingpong: rounds="
msg_pages:      .asciz " pages="
msg_parent:     .asciz " parent="
msg_child:      .asciz " child="
msg_failed:     .asciz "pingpong: mmap or fork failed\n"

        .include "lib/print.s"
