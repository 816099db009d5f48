# twophase.s -- two phases: fork + wait (page-table updates), then GUPS (TLB misses).
#
# Usage: twophase [n=100] [pages=4] [logn=22] [updates=4*2**logn]
#   n, pages         phase 1, as forkwait.s: n children, one at a time, each rewriting the
#                    first word of each of `pages` copy-on-write pages of the parent's buffer
#   logn, updates    phase 2, as gups.s: random 8-byte xor updates over a 2**logn-word table
#
# A workload on which each static technique loses one phase: shadow paging pays a trap for
# the page-table updates of phase 1, nested paging pays 2D walks for the TLB misses of
# phase 2 (docs/results.md). Phase 2 runs in process 1 after phase 1's children are reaped,
# with process 1's own rand() stream (its first draws, as in gups.s).
#
# Output: the two result lines of forkwait.s and gups.s, in that order:
#   "forkwait: n=N pages=P status_sum=S parent_sum=Q errors=E"
#   "gups: logn=L updates=U checksum=0xC"

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

# --- phase 2: GUPS ----------------------------------------------------------------------------
        li      a0, 2
        li      a1, 22
        syscall getarg
        mv      s0, a0                  # s0 = logn
        li      a0, 3
        li      a1, 0
        syscall getarg
        mv      s1, a0                  # s1 = updates
        li      t0, 1
        shl     s2, t0, s0              # s2 = n, words in the table
        bnez    s1, updates_set
        shli    s1, s2, 2
updates_set:
        shli    a0, s2, 3
        li      a1, PROT_READ | PROT_WRITE
        syscall mmap
        bltz    a0, failed
        mv      s3, a0                  # s3 = table
        li      t0, 0                   # table[i] = i
        mv      t1, s3
init:
        st8     t0, 0(t1)
        addi    t0, t0, 1
        addi    t1, t1, 8
        bltu    t0, s2, init
        addi    s4, s2, -1              # s4 = index mask
        li      s5, 0                   # s5 = updates done
update:
        syscall rand
        and     t0, a0, s4
        shli    t0, t0, 3
        add     t0, s3, t0
        ld8     t1, 0(t0)
        xor     t1, t1, a0
        st8     t1, 0(t0)
        addi    s5, s5, 1
        bltu    s5, s1, update
        li      s6, 0                   # s6 = checksum
        li      t0, 0
        mv      t1, s3
checksum:
        ld8     t2, 0(t1)
        xor     s6, s6, t2
        addi    t0, t0, 1
        addi    t1, t1, 8
        bltu    t0, s2, checksum
        la      a0, msg_logn
        mv      a1, s0
        call    print_sdec
        la      a0, msg_updates
        mv      a1, s1
        call    print_sdec
        la      a0, msg_checksum
        mv      a1, s6
        call    print_shex
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
msg_logn:       .asciz "gups: logn="
msg_updates:    .asciz " updates="
msg_checksum:   .asciz " checksum="
msg_failed:     .asciz "twophase: mmap or fork failed\n"

        .include "lib/print.s"
