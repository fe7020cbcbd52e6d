// Which path multiplies a product: the Ampere path (cp.async + mma.sync, sm_80 and later), the
// Hopper path (TMA + wgmma, sm_90a), or for tall products the dequant-cublas path (W dequantized to
// FP16 chunk by chunk, cuBLAS). Gemm consults ChooseGemmPath on every call; the table behind it
// holds what marlin-bench measured on an H100 (docs/perf/kernel-h100.md).
//
//   GemmPath path = ChooseGemmPath(/*sm=*/90, m, k, n);
//   ForceGemmPathForTesting(GemmPath::kHopper);  // tests and the benchmark only
//   ForceHopperPartitionForTesting(HopperPartition::kClusterSplit);
#ifndef MARLIN_KERNELS_CUDA_GEMM_DISPATCH_H_
#define MARLIN_KERNELS_CUDA_GEMM_DISPATCH_H_

#include <cstdint>

namespace marlin::cuda {

enum class GemmPath {
  kAuto,           // the dispatch table decides
  kAmpere,         // kernels/cuda/marlin_kernel.cuh
  kHopper,         // kernels/cuda/hopper_kernel.cuh
  kDequantCublas,  // kernels/cuda/dequant_cublas.h: W to FP16 in chunks, cuBLAS (sm_80 and later)
};

const char* GemmPathName(GemmPath path);

// Whether this build carries `path`'s machine code and it runs on compute capability `sm`
// (major * 10 + minor).
bool GemmPathAvailable(GemmPath path, int sm);

// The path for an m x k by k x n product on compute capability `sm`; never kAuto.
GemmPath ChooseGemmPath(int sm, int64_t m, int64_t k, int64_t n);

// The fastest of our own kernels on `sm`: kHopper where it runs, else kAmpere.
GemmPath ChooseKernelPath(int sm);

// Test and benchmark hook: every later Gemm call in this process takes `path` (kAuto restores
// the table). Gemm fails with FailedPrecondition when the forced path cannot run on the device.
void ForceGemmPathForTesting(GemmPath path);
GemmPath ForcedGemmPath();

// How a Hopper pass spreads its (column slice, k stage) iterations over the grid.
enum class HopperPartition {
  kAuto,          // the measured rule in hopper_gemm.cu decides per pass
  kStriped,       // even runs of iterations per block; split slices summed through global memory;
                  // products of 512 rows or more run their whole 256-row parts as one striped
                  // launch over every part's slices
  kClusterSplit,  // a cluster of blocks per slice, its k stages split between them, partials
                  // summed through distributed shared memory; only where every slice gets a
                  // co-resident cluster (else striped); products of 512 rows or more run their
                  // whole 256-row parts as one launch, a block or cluster per (part, slice)
  kPasses,        // products taller than one pass run as passes of 256 rows, each partitioned by
                  // the measured rule, never as one tall launch (hopper_gemm.h)
};

const char* HopperPartitionName(HopperPartition partition);

// Test and benchmark hook, like ForceGemmPathForTesting, for the Hopper path's partition.
void ForceHopperPartitionForTesting(HopperPartition partition);
HopperPartition ForcedHopperPartition();

}  // namespace marlin::cuda

#endif  // MARLIN_KERNELS_CUDA_GEMM_DISPATCH_H_
