# lib/print.s -- console output for the shipped programs (.include "lib/print.s").
#
# Calling convention (docs/isa.md): arguments in a0..a5, result in a0, return address in ra;
# these routines clobber a0..a5 and t0..t8 and preserve s0..s12, fp and sp.
#
#   print_str(a0 = address of a NUL-terminated string)
#   print_dec(a0 = unsigned 64-bit value)          decimal, no leading zeros
#   print_hex(a0 = unsigned 64-bit value)          0x followed by lower-case hex digits
#   print_sdec(a0 = string, a1 = value)            the string, then the value in decimal
#   print_shex(a0 = string, a1 = value)            the string, then the value in hex
#   print_nl()                                     a newline

        .text
print_str:
        mv      t0, a0
print_str.len:
        ld1     t1, 0(t0)
        beqz    t1, print_str.out
        addi    t0, t0, 1
        j       print_str.len
print_str.out:
        sub     a1, t0, a0
        syscall write
        ret

print_dec:
        addi    sp, sp, -32             # digits are built backwards at the top of 32 stack bytes
        addi    t0, sp, 32
        li      t2, 10
print_dec.digit:
        remu    t1, a0, t2
        addi    t1, t1, '0'
        addi    t0, t0, -1
        st1     t1, 0(t0)
        divu    a0, a0, t2
        bnez    a0, print_dec.digit
        j       print_buf

print_hex:
        addi    sp, sp, -32
        addi    t0, sp, 32
        la      t2, print.hexdigits
print_hex.digit:
        andi    t1, a0, 15
        add     t1, t2, t1
        ld1     t1, 0(t1)
        addi    t0, t0, -1
        st1     t1, 0(t0)
        shri    a0, a0, 4
        bnez    a0, print_hex.digit
        li      t1, 'x'
        st1     t1, -1(t0)
        li      t1, '0'
        st1     t1, -2(t0)
        addi    t0, t0, -2
        # fall through
print_buf:                              # write [t0, sp+32) and pop the 32-byte buffer
        mv      a0, t0
        addi    a1, sp, 32
        sub     a1, a1, t0
        syscall write
        addi    sp, sp, 32
        ret

print_sdec:
        addi    sp, sp, -16
        st8     ra, 0(sp)
        st8     a1, 8(sp)
        call    print_str
        ld8     a0, 8(sp)
        call    print_dec
        ld8     ra, 0(sp)
        addi    sp, sp, 16
        ret

print_shex:
        addi    sp, sp, -16
        st8     ra, 0(sp)
        st8     a1, 8(sp)
        call    print_str
        ld8     a0, 8(sp)
        call    print_hex
        ld8     ra, 0(sp)
        addi    sp, sp, 16
        ret

print_nl:
        la      a0, print.newline
        li      a1, 1
        syscall write
        ret

        .data
print.hexdigits:
        .ascii  "0123456789abcdef"
print.newline:
        .ascii  "\n"
