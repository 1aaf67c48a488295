/* cuda_kernels.h — host entry points of the CUDA kernels (compiled when EDGETUNE_CUDA is on).
 * Device code evaluates the same noise.h functions as the CPU scalar reference, compiled with
 * --fmad=false and IEEE div/sqrt, so GPU noise is bit-identical to CPU noise.
 * All functions return "" on success or an error message (no exceptions cross this line). */
#ifndef EDGETUNE_CUDA_KERNELS_H
#define EDGETUNE_CUDA_KERNELS_H
#include <cstddef>
#include <cstdint>
#include <string>

namespace et {
namespace cuda {
bool available();  // a CUDA device is present and usable
/* device pointers; synchronous (default stream) */
std::string noise(uint64_t seed, uint64_t offset, size_t count, int dist, float *dev_out);
std::string perturb(float *dev_buf, size_t n, uint64_t seed, float scale, int dist, uint64_t offset);
std::string combine(float *dev_buf, size_t n, float decay, const uint64_t *seeds, const float *coefs, size_t k,
                    int dist, uint64_t offset);
/* convenience for tests: generate on the device, copy to host memory */
std::string noise_to_host(uint64_t seed, uint64_t offset, size_t count, int dist, float *host_out);
}  // namespace cuda
}  // namespace et
#endif
