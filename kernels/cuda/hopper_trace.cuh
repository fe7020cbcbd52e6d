// The device side of the opt-in kernel timeline (hopper_trace.h): TraceAt(slot) stores the time in
// the block's slot where MARLIN_HOPPER_TRACE is defined, and is empty otherwise. Included only by
// hopper_kernel.cuh, so the stamps exist once (in hopper_gemm.cu, which reads them back).
//
//   TraceAt(kTraceDependencyMet);
//   TraceSegment(segment, 1);  // segment's main loop ends
#ifndef MARLIN_KERNELS_CUDA_HOPPER_TRACE_CUH_
#define MARLIN_KERNELS_CUDA_HOPPER_TRACE_CUH_

#include <cstdint>

#include "kernels/cuda/hopper_config.cuh"
#include "kernels/cuda/hopper_trace.h"

namespace marlin::cuda::hopper {

#ifdef MARLIN_HOPPER_TRACE
// The stamps, kTraceBlocks x kTraceSlots, block-major.
__device__ uint64_t g_trace_ns[kTraceBlocks * kTraceSlots];

// mov.u64 %globaltimer: the GPU's ns clock (its ticks are coarser: 0.256 us on the H100).
__device__ __forceinline__ uint64_t GlobalTimerNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}

// Stamps `slot` of this block, by the first consumer thread only.
__device__ __forceinline__ void TraceAt(int slot) {
  if (threadIdx.x == kWarpgroupThreads && blockIdx.x < kTraceBlocks) {
    g_trace_ns[blockIdx.x * kTraceSlots + slot] = GlobalTimerNs();
  }
}
#else
__device__ __forceinline__ void TraceAt(int) {}
#endif

// Stamps point `step` (0 start, 1 main loop end, 2 end) of this block's segment `segment`.
__device__ __forceinline__ void TraceSegment(int segment, int step) {
  if (segment < kTraceSegments) TraceAt(kTraceSegmentStart + 3 * segment + step);
}

}  // namespace marlin::cuda::hopper

#endif  // MARLIN_KERNELS_CUDA_HOPPER_TRACE_CUH_
