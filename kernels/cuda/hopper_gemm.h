// The Hopper (sm_90a) path of marlin::cuda::Gemm: internal to kernels/cuda, reached through the
// dispatch in marlin_gemm.cu (or forced by gemm_dispatch.h's test hook).
//
//   RETURN_IF_ERROR(hopper::LaunchPass(x, rows, w, y, counters, partials, sm_count, stream));
#ifndef MARLIN_KERNELS_CUDA_HOPPER_GEMM_H_
#define MARLIN_KERNELS_CUDA_HOPPER_GEMM_H_

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/marlin_gemm.h"

namespace marlin::cuda::hopper {

// Rows one pass multiplies; Gemm splits taller products into passes.
inline constexpr int64_t kMaxPassRows = 256;

// Partial-sum floats per SM that the largest configuration needs (two slots per block); the
// GemmWorkspace holds at least this many.
inline constexpr size_t kSlotFloatsPerSm = 2 * 128 * 256;

// Enqueues y = x . dequant(w) for 1 <= rows <= kMaxPassRows on `stream`; the caller validated
// shapes, alignment and the workspace. `counters` and `partials` come from a GemmWorkspace.
absl::Status LaunchPass(const __half* x, int rows, const DeviceWeight& w, __half* y, int* counters,
                        float* partials, int sm_count, cudaStream_t stream);

}  // namespace marlin::cuda::hopper

#endif  // MARLIN_KERNELS_CUDA_HOPPER_GEMM_H_
