// test_cuda.cpp — CUDA kernels vs. the CPU core, bitwise. Exit 77 (ctest: skipped) without a GPU.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda/cuda_kernels.h"
#include "edgetune.h"

int main() {
    if (!et::cuda::available()) {
        std::printf("no CUDA device: skipped\n");
        return 77;
    }
    int fails = 0;
    const size_t n = 1000003;
    std::vector<float> cpu(n), gpu(n);
    const uint64_t offsets[] = {0, 1, (1ULL << 33) - 11};
    for (int dist = 0; dist < 2; ++dist)
        for (uint64_t off : offsets) {
            et_noise_fill(77, off, n, (et_noise)dist, cpu.data());
            std::string err = et::cuda::noise_to_host(77, off, n, dist, gpu.data());
            if (!err.empty()) { std::printf("CUDA error: %s\n", err.c_str()); return 1; }
            if (std::memcmp(cpu.data(), gpu.data(), n * 4)) { std::printf("FAIL noise dist %d off %llu\n", dist, (unsigned long long)off); ++fails; }
            // perturb + combine with 40 seeds (exercises the >32-seed chunking)
            std::vector<uint64_t> seeds(40);
            std::vector<float> coefs(40);
            for (int s = 0; s < 40; ++s) { seeds[s] = 1000 + s; coefs[s] = 1e-3f * (float)(s - 20); }
            std::vector<float> h(n);
            for (size_t i = 0; i < n; ++i) h[i] = (float)(i % 13) * 0.25f - 1.0f;
            float *d = nullptr;
            cudaMalloc(&d, n * 4);
            cudaMemcpy(d, h.data(), n * 4, cudaMemcpyHostToDevice);
            et_perturb(h.data(), n, 5, 1e-3f, (et_noise)dist, off);
            et_combine(h.data(), n, 0.999f, seeds.data(), coefs.data(), 40, (et_noise)dist, off);
            et::cuda::perturb(d, n, 5, 1e-3f, dist, off);
            et::cuda::combine(d, n, 0.999f, seeds.data(), coefs.data(), 40, dist, off);
            cudaMemcpy(gpu.data(), d, n * 4, cudaMemcpyDeviceToHost);
            cudaFree(d);
            if (std::memcmp(h.data(), gpu.data(), n * 4)) { std::printf("FAIL perturb/combine dist %d off %llu\n", dist, (unsigned long long)off); ++fails; }
        }
    std::printf(fails ? "CUDA checks FAILED\n" : "CUDA bit-identity checks passed\n");
    return fails ? 1 : 0;
}
