# mmapchurn.s -- mmap/munmap churn: mappings of random sizes come and go.
#
# Usage: mmapchurn [iters=1000] [slots=16] [maxpages=16]
#   iters     iterations
#   slots     live mappings kept at most (clamped to 1..256)
#   maxpages  largest mapping in pages (0 is treated as 1)
#
# Each iteration picks a slot s = rand() mod slots. If the slot holds a mapping, its two
# markers are checked (a mismatch counts as bad) and it is unmapped. Then a new mapping of
# 1 + rand() mod maxpages pages is made, marker it+1 is stored in its first word and in the
# second word of its last page (two page faults, or one for a single page), and the slot
# remembers it. At the end every remaining mapping is checked and unmapped. Addresses come
# from mmap's first-fit policy, so holes left by munmap are reused; their sum is part of the
# output and checks that policy too.
#
# Output: "mmapchurn: iters=N slots=S maxpages=M pages=P addrsum=A bad=B"
#   P = pages mapped in total, A = sum over all mappings of (address - MMAP_BASE) / 4096,
#   B = marker mismatches and failed calls (0).

        .equ    SLOT, 32                # slot: address, pages, marker, unused
        .equ    MAX_SLOTS, 256

        .text
_start:
        li      a0, 0
        li      a1, 1000
        syscall getarg
        mv      s0, a0                  # s0 = iters
        li      a0, 1
        li      a1, 16
        syscall getarg
        mv      s1, a0                  # s1 = slots
        bnez    s1, slots_low_ok
        li      s1, 1
slots_low_ok:
        li      t0, MAX_SLOTS
        bleu    s1, t0, slots_ok
        mv      s1, t0
slots_ok:
        li      a0, 2
        li      a1, 16
        syscall getarg
        mv      s2, a0                  # s2 = maxpages
        bnez    s2, maxpages_ok
        li      s2, 1
maxpages_ok:
        li      s3, 0                   # s3 = iteration
        li      s4, 0                   # s4 = pages mapped
        li      s5, 0                   # s5 = address sum
        li      s6, 0                   # s6 = bad
        li64    s7, MMAP_BASE
        la      s8, slots
iteration:
        bgeu    s3, s0, drain
        syscall rand
        remu    t0, a0, s1
        li      t1, SLOT
        mul     t0, t0, t1
        add     s9, s8, t0              # s9 = &slot
        mv      a0, s9
        call    release
        add     s6, s6, a0
        syscall rand
        remu    s10, a0, s2
        addi    s10, s10, 1             # s10 = pages of the new mapping
        shli    a0, s10, 12
        li      a1, PROT_READ | PROT_WRITE
        syscall mmap
        bgez    a0, mapped
        addi    s6, s6, 1
        j       next
mapped:
        addi    t0, s3, 1               # marker
        st8     t0, 0(a0)
        addi    t1, s10, -1
        shli    t1, t1, 12
        add     t1, a0, t1
        st8     t0, 8(t1)
        st8     a0, 0(s9)
        st8     s10, 8(s9)
        st8     t0, 16(s9)
        add     s4, s4, s10
        sub     t1, a0, s7
        shri    t1, t1, 12
        add     s5, s5, t1
next:
        addi    s3, s3, 1
        j       iteration

drain:
        li      s3, 0
drain.slot:
        bgeu    s3, s1, report
        li      t1, SLOT
        mul     t0, s3, t1
        add     a0, s8, t0
        call    release
        add     s6, s6, a0
        addi    s3, s3, 1
        j       drain.slot

report:
        la      a0, msg_iters
        mv      a1, s0
        call    print_sdec
        la      a0, msg_slots
        mv      a1, s1
        call    print_sdec
        la      a0, msg_maxpages
        mv      a1, s2
        call    print_sdec
        la      a0, msg_pages
        mv      a1, s4
        call    print_sdec
        la      a0, msg_addrsum
        mv      a1, s5
        call    print_sdec
        la      a0, msg_bad
        mv      a1, s6
        call    print_sdec
        call    print_nl
        li      a0, 0
        syscall exit

# release(a0 = &slot) -> a0 = problems found (0..3). If the slot holds a mapping: check
# both markers, munmap it, empty the slot. A leaf routine (ra untouched).
release:
        mv      t0, a0
        li      a0, 0
        ld8     t1, 0(t0)               # address
        beqz    t1, release.done
        ld8     t2, 8(t0)               # pages
        ld8     t3, 16(t0)              # marker
        ld8     t4, 0(t1)
        beq     t4, t3, release.first_ok
        addi    a0, a0, 1
release.first_ok:
        addi    t5, t2, -1
        shli    t5, t5, 12
        add     t5, t1, t5
        ld8     t4, 8(t5)
        beq     t4, t3, release.last_ok
        addi    a0, a0, 1
release.last_ok:
        mv      t6, a0                  # keep the count across the syscall's result
        mv      a0, t1
        shli    a1, t2, 12
        syscall munmap
        beqz    a0, release.unmapped
        addi    t6, t6, 1
release.unmapped:
        st8     zero, 0(t0)
        mv      a0, t6
release.done:
        ret

        .data
msg_iters:      .asciz "mmapchurn: iters="
msg_slots:      .asciz " slots="
msg_maxpages:   .asciz " maxpages="
msg_pages:      .asciz " pages="
msg_addrsum:    .asciz " addrsum="
msg_bad:        .asciz " bad="
        .align  8
slots:          .zero   SLOT * MAX_SLOTS

        .include "lib/print.s"
