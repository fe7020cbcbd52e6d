// The striped split of a product's (column slice, k stage) iterations over a persistent grid, and
// the arrival protocol that finishes a slice split between blocks. Shared by both kernel paths.
//
// Iterations run slice-major: iteration i is stage i % stages_per_slice of slice
// i / stages_per_slice. Block b takes iterations [BlockBegin(b), BlockBegin(b + 1)), so every
// block streams the same number of weight bytes whatever the layer shape. A slice whose stages
// fall to several blocks is summed by whichever of them arrives last (ArriveLast tells).
// `P` is a kernel's parameter struct with int fields stages_per_slice, total_iters, grid, and an
// int* counters (one per block index, zero between calls).
#ifndef MARLIN_KERNELS_CUDA_STRIPED_PARTITION_CUH_
#define MARLIN_KERNELS_CUDA_STRIPED_PARTITION_CUH_

#include <cstdint>

namespace marlin::cuda {

// A (slice, stage) position, advanced without divisions in the main loop.
struct StageCursor {
  int slice;
  int stage;
  template <typename P>
  __device__ __forceinline__ StageCursor(const P& p, int iter)
      : slice(iter / p.stages_per_slice), stage(iter % p.stages_per_slice) {}
  template <typename P>
  __device__ __forceinline__ void Advance(const P& p) {
    if (++stage == p.stages_per_slice) {
      stage = 0;
      ++slice;
    }
  }
};

// First iteration of block b under the even split of total_iters over grid blocks.
template <typename P>
__device__ __forceinline__ int BlockBegin(const P& p, int b) {
  return static_cast<int>(static_cast<int64_t>(b) * p.total_iters / p.grid);
}
// The block whose range holds iteration i.
template <typename P>
__device__ __forceinline__ int BlockOf(const P& p, int i) {
  return static_cast<int>((static_cast<int64_t>(i + 1) * p.grid - 1) / p.total_iters);
}
// Block b's partial slot for `slice`: 0 when the slice holds the block's first iteration.
template <typename P>
__device__ __forceinline__ int SlotOf(const P& p, int b, int slice) {
  return 2 * b + (BlockBegin(p, b) >= slice * p.stages_per_slice ? 0 : 1);
}

// One thread per block calls this after the block's partial of `slice` is globally visible
// (written, then __threadfence). True for the last of the slice's blocks to arrive, which then
// owns the sum; it also resets the counter for the next call.
template <typename P>
__device__ __forceinline__ bool ArriveLast(const P& p, int slice) {
  const int first_block = BlockOf(p, slice * p.stages_per_slice);
  const int last_block = BlockOf(p, (slice + 1) * p.stages_per_slice - 1);
  const int arrived = atomicAdd(&p.counters[last_block], 1);
  const bool last = arrived == last_block - first_block;
  if (last) p.counters[last_block] = 0;  // everyone is in: ready for the next call
  return last;
}

}  // namespace marlin::cuda

#endif  // MARLIN_KERNELS_CUDA_STRIPED_PARTITION_CUH_
