// Which kernel path multiplies a product: the Ampere path (cp.async + mma.sync, sm_80 and later)
// or the Hopper path (TMA + wgmma, sm_90a). Gemm consults ChooseGemmPath on every call; the
// table behind it holds what marlin-bench measured on an H100 (docs/perf/kernel-h100.md).
//
//   GemmPath path = ChooseGemmPath(/*sm=*/90, m, k, n);
//   ForceGemmPathForTesting(GemmPath::kHopper);  // tests and the benchmark only
#ifndef MARLIN_KERNELS_CUDA_GEMM_DISPATCH_H_
#define MARLIN_KERNELS_CUDA_GEMM_DISPATCH_H_

#include <cstdint>

namespace marlin::cuda {

enum class GemmPath {
  kAuto,    // the dispatch table decides
  kAmpere,  // kernels/cuda/marlin_kernel.cuh
  kHopper,  // kernels/cuda/hopper_kernel.cuh
};

const char* GemmPathName(GemmPath path);

// Whether this build carries `path`'s machine code and it runs on compute capability `sm`
// (major * 10 + minor).
bool GemmPathAvailable(GemmPath path, int sm);

// The path for an m x k by k x n product on compute capability `sm`; never kAuto.
GemmPath ChooseGemmPath(int sm, int64_t m, int64_t k, int64_t n);

// Test and benchmark hook: every later Gemm call in this process takes `path` (kAuto restores
// the table). Gemm fails with FailedPrecondition when the forced path cannot run on the device.
void ForceGemmPathForTesting(GemmPath path);
GemmPath ForcedGemmPath();

}  // namespace marlin::cuda

#endif  // MARLIN_KERNELS_CUDA_GEMM_DISPATCH_H_
