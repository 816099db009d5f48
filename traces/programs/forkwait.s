# forkwait.s -- fork + wait in a loop: process creation, copy-on-write, exit and reaping.
#
# Usage: forkwait [n=100] [pages=4]
#   n      children to create, one at a time (each is waited for before the next fork)
#   pages  pages of a buffer the parent maps and fills before forking; each child reads and
#          rewrites the first word of every page (a copy-on-write fault per page); 0 = no buffer
#
# Child i (i = 0..n-1) computes acc = i + sum of the words it read, writes word + i back to
# each page, and exits with status acc. The parent adds up the statuses wait() returns, counts
# a wait() that returns another pid as an error, and at the end sums its own buffer, which the
# children's writes must not have changed.
#
# Output: "forkwait: n=N pages=P status_sum=S parent_sum=Q errors=E"
#   with S = n*(n-1)/2 + n*P*(P+1)/2, Q = P*(P+1)/2 and E = 0.

        .text
_start:
        li      a0, 0
        li      a1, 100
        syscall getarg
        mv      s0, a0                  # s0 = n
        li      a0, 1
        li      a1, 4
        syscall getarg
        mv      s1, a0                  # s1 = pages
        li      s2, 0                   # s2 = buffer
        beqz    s1, forks
        shli    a0, s1, 12
        li      a1, PROT_READ | PROT_WRITE
        syscall mmap
        bltz    a0, failed
        mv      s2, a0
        li      t0, 0                   # first word of page k = k + 1
        mv      t1, s2
fill:
        addi    t2, t0, 1
        st8     t2, 0(t1)
        addi    t0, t0, 1
        addi    t1, t1, PAGE_SIZE
        bltu    t0, s1, fill

forks:
        li      s3, 0                   # s3 = i
        li      s4, 0                   # s4 = sum of statuses
        li      s5, 0                   # s5 = errors
loop:
        bgeu    s3, s0, done
        syscall fork
        bltz    a0, failed
        beqz    a0, child
        mv      s6, a0                  # s6 = child pid
        syscall wait
        beq     a0, s6, reaped
        addi    s5, s5, 1
reaped:
        add     s4, s4, a1
        addi    s3, s3, 1
        j       loop

child:
        mv      t0, s3                  # acc = i
        li      t1, 0
        mv      t2, s2
child.page:
        bgeu    t1, s1, child.exit
        ld8     t3, 0(t2)
        add     t0, t0, t3
        add     t3, t3, s3
        st8     t3, 0(t2)
        addi    t1, t1, 1
        addi    t2, t2, PAGE_SIZE
        j       child.page
child.exit:
        mv      a0, t0
        syscall exit

done:
        li      s6, 0                   # s6 = sum of the parent's own words
        li      t0, 0
        mv      t1, s2
psum:
        bgeu    t0, s1, report
        ld8     t2, 0(t1)
        add     s6, s6, t2
        addi    t0, t0, 1
        addi    t1, t1, PAGE_SIZE
        j       psum
report:
        la      a0, msg_n
        mv      a1, s0
        call    print_sdec
        la      a0, msg_pages
        mv      a1, s1
        call    print_sdec
        la      a0, msg_status
        mv      a1, s4
        call    print_sdec
        la      a0, msg_parent
        mv      a1, s6
        call    print_sdec
        la      a0, msg_errors
        mv      a1, s5
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
msg_n:          .asciz "forkwait: n="
msg_pages:      .asciz " pages="
msg_status:     .asciz " status_sum="
msg_parent:     .asciz " parent_sum="
msg_errors:     .asciz " errors="
msg_failed:     .asciz "forkwait: mmap or fork failed\n"

        .include "lib/print.s"
