# gups.s -- GUPS (HPCC RandomAccess): random 8-byte read-modify-write updates over a large table.
#
# Usage: gups [logn=20] [updates=4*2**logn] [huge=0]
#   logn     the table holds 2**logn 8-byte words (2**(logn+3) bytes, one mmap)
#   updates  number of updates; 0 or absent means 4 * 2**logn
#   huge     1: map the table with PROT_THP (asks for transparent 2 MiB pages, as
#            madvise(MADV_HUGEPAGE); the guest OS honours it unless run with --thp never)
#
# First table[i] = i for every i (a sequential pass: one demand-paging fault per page), then
# `updates` times: r = rand(); table[r & (2**logn - 1)] ^= r. The checksum is the xor of every
# word afterwards, so it depends on each update (rand() is the process's xorshift64 stream).
#
# Output: "gups: logn=L updates=U checksum=0xC"

        .text
_start:
        li      a0, 0
        li      a1, 20
        syscall getarg
        mv      s0, a0                  # s0 = logn
        li      a0, 1
        li      a1, 0
        syscall getarg
        mv      s1, a0                  # s1 = updates
        li      t0, 1
        shl     s2, t0, s0              # s2 = n, words in the table
        bnez    s1, updates_set
        shli    s1, s2, 2
updates_set:
        li      a0, 2
        li      a1, 0
        syscall getarg
        li      a1, PROT_READ | PROT_WRITE
        beqz    a0, prot_set
        li      a1, PROT_READ | PROT_WRITE | PROT_THP
prot_set:
        shli    a0, s2, 3
        syscall mmap
        bltz    a0, mmap_failed
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

mmap_failed:
        la      a0, msg_failed
        call    print_str
        li      a0, 1
        syscall exit

        .data
msg_logn:       .asciz "gups: logn="
msg_updates:    .asciz " updates="
msg_checksum:   .asciz " checksum="
msg_failed:     .asciz "gups: mmap failed\n"

        .include "lib/print.s"
