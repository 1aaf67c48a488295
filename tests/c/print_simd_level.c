/* Prints the kernels libedgetune picks in this process (et_simd_level) and every ISA it could use.
 * tests/test_runtime_ports.py builds it against the aarch64 libedgetune.so that examples/c's tune_bundle
 * links and runs it under qemu: "neon" there is what the tune's ZO arithmetic ran on. */
#include <stdio.h>

#include "edgetune.h"

int main(void) {
    const char *names[8];
    uint32_t n = et_available_isas(names, 8);
    printf("simd %s available", et_simd_level());
    for (uint32_t i = 0; i < n && i < 8; ++i) printf(" %s", names[i]);
    printf("\n");
    return 0;
}
