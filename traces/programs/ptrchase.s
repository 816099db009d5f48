# ptrchase.s -- pointer chase over one random cycle through every node (dependent loads).
#
# Usage: ptrchase [logn=16] [steps=4*2**logn] [nodesize=64]
#   logn      2**logn nodes
#   steps     loads along the chain; 0 or absent means 4 * 2**logn
#   nodesize  bytes per node (rounded down to a multiple of 8; below 8 means 8); the next
#             pointer is the node's first word. 4096 puts every node on its own page.
#
# The nodes (one mmap) first hold their own index; Sattolo's shuffle (for i = n-1 down to 1:
# j = rand() mod i; swap next[i], next[j]) turns that into one cycle through all n nodes;
# then every index becomes the address of that node. The chase starts at node 0 and follows
# `steps` pointers, adding up the byte offset (from the first node) of each node reached.
#
# Output: "ptrchase: logn=L steps=S nodesize=Z last=I sum=X"
#   I = index of the node reached last, X = sum of the offsets of the nodes reached.

        .text
_start:
        li      a0, 0
        li      a1, 16
        syscall getarg
        mv      s0, a0                  # s0 = logn
        li      a0, 1
        li      a1, 0
        syscall getarg
        mv      s1, a0                  # s1 = steps
        li      a0, 2
        li      a1, 64
        syscall getarg
        andi    s2, a0, -8              # s2 = nodesize
        li      t0, 8
        bgeu    s2, t0, size_ok
        li      s2, 8
size_ok:
        li      t0, 1
        shl     s3, t0, s0              # s3 = n
        bnez    s1, steps_ok
        shli    s1, s3, 2
steps_ok:
        mul     a0, s3, s2
        li      a1, PROT_READ | PROT_WRITE
        syscall mmap
        bltz    a0, failed
        mv      s4, a0                  # s4 = base

        li      t0, 0                   # next[i] = i
        mv      t1, s4
init:
        st8     t0, 0(t1)
        addi    t0, t0, 1
        add     t1, t1, s2
        bltu    t0, s3, init

        addi    t0, s3, -1              # Sattolo: i = n-1 .. 1
shuffle:
        beqz    t0, shuffled
        syscall rand
        remu    t1, a0, t0              # j = rand() mod i
        mul     t2, t0, s2
        add     t2, s4, t2              # &node[i]
        mul     t3, t1, s2
        add     t3, s4, t3              # &node[j]
        ld8     t4, 0(t2)
        ld8     t5, 0(t3)
        st8     t5, 0(t2)
        st8     t4, 0(t3)
        addi    t0, t0, -1
        j       shuffle
shuffled:
        li      t0, 0                   # next[i] = base + next[i]*nodesize
        mv      t1, s4
link:
        ld8     t2, 0(t1)
        mul     t2, t2, s2
        add     t2, s4, t2
        st8     t2, 0(t1)
        addi    t0, t0, 1
        add     t1, t1, s2
        bltu    t0, s3, link

        mv      t0, s4                  # p = &node[0]
        li      s5, 0                   # s5 = sum of offsets
        li      t1, 0
        beqz    s1, chased
chase:
        ld8     t0, 0(t0)
        sub     t2, t0, s4
        add     s5, s5, t2
        addi    t1, t1, 1
        bltu    t1, s1, chase
chased:
        sub     t2, t0, s4
        divu    s6, t2, s2              # s6 = index of the last node

        la      a0, msg_logn
        mv      a1, s0
        call    print_sdec
        la      a0, msg_steps
        mv      a1, s1
        call    print_sdec
        la      a0, msg_size
        mv      a1, s2
        call    print_sdec
        la      a0, msg_last
        mv      a1, s6
        call    print_sdec
        la      a0, msg_sum
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
msg_logn:       .asciz "ptrchase: logn="
msg_steps:      .asciz " steps="
msg_size:       .asciz " nodesize="
msg_last:       .asciz " last="
msg_sum:        .asciz " sum="
msg_failed:     .asciz "ptrchase: mmap failed\n"

        .include "lib/print.s"
