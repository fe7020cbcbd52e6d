// The Hopper (sm_90a) path of marlin::cuda::Gemm: internal to kernels/cuda, reached through the
// dispatch in marlin_gemm.cu (or forced by gemm_dispatch.h's test hook).
//
//   RETURN_IF_ERROR(hopper::LaunchGemm(x, m, w, y, counters, partials, sm_count, stream));
#ifndef MARLIN_KERNELS_CUDA_HOPPER_GEMM_H_
#define MARLIN_KERNELS_CUDA_HOPPER_GEMM_H_

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/marlin_gemm.h"

namespace marlin::cuda::hopper {

// Rows one pass multiplies: a pass runs its rows in one or two row parts side by side.
inline constexpr int64_t kMaxPassRows = 256;

// Rows of a tall launch's parts: at least two parts of 128-256 rows, run as one tall launch of all
// the product's rows (the measured rule, MeasuredTallLaunch): a block or cluster per (row part,
// column slice), in waves where they outnumber the SMs, or the striped partition over every part's
// slices. A height class of 128 or 256 rows (the measured rule, MeasuredTallPartRows in
// gemm_dispatch.h) sets the number of parts; their rows are spread evenly and fitted to a
// configuration (136-240 rows in steps of 8 or 16, besides 128 and 256), the last part short. Where
// that leaves the SMs under-filled, one wave of fitted parts runs instead unless it pads more rows;
// where it runs several full waves, runs of whole units (OneWavePays, OneWavePadsLittle, RunsPay in
// gemm_dispatch.h). Shorter products take a pass.
inline constexpr int64_t kMinTallPartRows = 128;
inline constexpr int64_t kMinTallRows = 2 * kMinTallPartRows;

// Partial-sum floats per SM that the largest configuration needs (two slots per block); the
// GemmWorkspace holds at least this many.
inline constexpr size_t kSlotFloatsPerSm = 2 * 128 * 256;

// Enqueues y = x . dequant(w) for m >= 1 rows on `stream`: tall launches and passes (a forced
// HopperPartition picks the kind of tall launch, or kPasses none); the caller validated shapes,
// alignment and the workspace. `counters` and `partials` come from a GemmWorkspace.
absl::Status LaunchGemm(const __half* x, int64_t m, const DeviceWeight& w, __half* y, int* counters,
                        float* partials, int sm_count, cudaStream_t stream);

}  // namespace marlin::cuda::hopper

#endif  // MARLIN_KERNELS_CUDA_HOPPER_GEMM_H_
