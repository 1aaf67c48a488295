// kernels.cu — CUDA perturb/combine/noise. One thread per Gaussian pair (two outputs) or per
// element (Rademacher); values come from the shared spec functions in noise.h.
#include <cuda_runtime.h>

#include <vector>

#include "../noise.h"
#include "cuda_kernels.h"

namespace {

constexpr int kThreads = 256;
constexpr int kMaxSeeds = 32;  // combine: seeds/coefs in constant-size kernel args, chunked beyond

struct SeedPack {
    uint64_t seed[kMaxSeeds];
    float coef[kMaxSeeds];
    int k;
};

__device__ __forceinline__ float z_at(uint64_t seed, uint64_t i, int dist) { return et_noise_one(seed, i, dist); }

// Gaussian values come in pairs: thread p handles elements 2p-(offset&1) .. +1 of the buffer so each
// hash is evaluated once for both outputs.
__global__ void k_noise(float *out, size_t n, uint64_t seed, uint64_t offset, int dist) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (dist == 1) {
        if (t < n) out[t] = z_at(seed, offset + t, 1);
        return;
    }
    const uint64_t first_pair = offset >> 1;
    const uint64_t j = first_pair + t;
    if (2 * j >= offset + n) return;
    et_keys k = et_make_keys(seed, j >> 32, ET_DOMAIN_GAUSS);
    float z0, z1;
    et_gauss_pair(k, (uint32_t)j, &z0, &z1);
    const uint64_t i0 = 2 * j;
    if (i0 >= offset) out[i0 - offset] = z0;
    if (i0 + 1 >= offset && i0 + 1 < offset + n) out[i0 + 1 - offset] = z1;
}

__global__ void k_perturb(float *buf, size_t n, uint64_t seed, float scale, uint64_t offset, int dist) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= n) return;
    float z = z_at(seed, offset + t, dist);
    buf[t] = __fadd_rn(buf[t], __fmul_rn(scale, z));
}

__global__ void k_combine(float *buf, size_t n, float decay, SeedPack sp, uint64_t offset, int dist) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= n) return;
    float acc = __fmul_rn(decay, buf[t]);
    for (int s = 0; s < sp.k; ++s) acc = __fadd_rn(acc, __fmul_rn(sp.coef[s], z_at(sp.seed[s], offset + t, dist)));
    buf[t] = acc;
}

std::string check(cudaError_t e) { return e == cudaSuccess ? std::string() : std::string(cudaGetErrorString(e)); }
unsigned blocks(size_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

}  // namespace

namespace et {
namespace cuda {

bool available() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::string noise(uint64_t seed, uint64_t offset, size_t count, int dist, float *dev_out) {
    if (!count) return "";
    size_t threads = dist == 1 ? count : ((offset + count + 1) >> 1) - (offset >> 1);
    k_noise<<<blocks(threads), kThreads>>>(dev_out, count, seed, offset, dist);
    return check(cudaDeviceSynchronize());
}

std::string perturb(float *dev_buf, size_t n, uint64_t seed, float scale, int dist, uint64_t offset) {
    if (!n) return "";
    k_perturb<<<blocks(n), kThreads>>>(dev_buf, n, seed, scale, offset, dist);
    return check(cudaDeviceSynchronize());
}

std::string combine(float *dev_buf, size_t n, float decay, const uint64_t *seeds, const float *coefs, size_t k,
                    int dist, uint64_t offset) {
    if (!n) return "";
    // more than kMaxSeeds seeds: later chunks run with decay 1, which keeps the exact order
    // acc = decay*buf + c0 z0 + ... because each pass re-reads the rounded float accumulator.
    size_t done = 0;
    do {
        SeedPack sp;
        sp.k = (int)((k - done) < (size_t)kMaxSeeds ? (k - done) : (size_t)kMaxSeeds);
        for (int s = 0; s < sp.k; ++s) { sp.seed[s] = seeds[done + s]; sp.coef[s] = coefs[done + s]; }
        k_combine<<<blocks(n), kThreads>>>(dev_buf, n, done ? 1.0f : decay, sp, offset, dist);
        done += sp.k;
    } while (done < k);
    return check(cudaDeviceSynchronize());
}

std::string noise_to_host(uint64_t seed, uint64_t offset, size_t count, int dist, float *host_out) {
    if (!count) return "";
    float *d = nullptr;
    std::string err = check(cudaMalloc(&d, count * sizeof(float)));
    if (!err.empty()) return err;
    err = noise(seed, offset, count, dist, d);
    if (err.empty()) err = check(cudaMemcpy(host_out, d, count * sizeof(float), cudaMemcpyDeviceToHost));
    cudaFree(d);
    return err;
}

}  // namespace cuda
}  // namespace et
