/* gups.c -- random read-modify-write updates over a large table (HPCC RandomAccess-like).
 *
 * A deliberately TLB-unfriendly access pattern: each update touches a random 8-byte word
 * of a table of SIZE_MIB MiB (default 64 MiB = 16384 4 KiB pages), so nearly every update
 * lands on a different page than the last one.
 *
 * Build (static, so the trace is not dominated by the dynamic loader):
 *     gcc -O2 -static -o gups traces/src/gups.c
 * Run:
 *     ./gups [SIZE_MIB [UPDATES]]      defaults: 64 MiB, 1000000 updates
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    uint64_t size_mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 64;
    uint64_t updates = argc > 2 ? strtoull(argv[2], NULL, 10) : 1000000;
    uint64_t words = size_mib << 17; /* 8-byte words in SIZE_MIB MiB */
    if (words == 0 || (words & (words - 1)) != 0) {
        fprintf(stderr, "gups: SIZE_MIB must be a power of two\n");
        return 2;
    }
    uint64_t *table = calloc(words, sizeof *table);
    if (table == NULL) {
        fprintf(stderr, "gups: out of memory\n");
        return 1;
    }
    /* 64-bit LCG (Knuth's MMIX constants), fixed seed so the trace is reproducible; the
     * index is the top log2(words) bits. Few instructions per update, so the data accesses
     * are not drowned in instruction fetches. */
    unsigned shift = 64 - (unsigned)__builtin_ctzll(words);
    uint64_t x = 1;
    for (uint64_t i = 0; i < updates; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        table[x >> shift] += x;
    }
    uint64_t sum = 0;
    for (uint64_t i = 0; i < words; i += 4096)
        sum += table[i];
    printf("%llu\n", (unsigned long long)sum);
    free(table);
    return 0;
}
