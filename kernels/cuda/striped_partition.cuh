// The striped split of a product's (column slice, k stage) iterations over a persistent grid, and
// the arrival protocol that finishes a slice split between blocks. Shared by both kernel paths.
//
// Iterations run slice-major: iteration i is stage i % stages_per_slice of slice
// i / stages_per_slice. Block b takes iterations [BlockBegin(b), BlockBegin(b + 1)), so every
// block streams the same number of weight bytes whatever the layer shape. A slice whose stages
// fall to several blocks is summed by whichever of them arrives last (ArriveLast tells: the Ampere
// kernel) or by the block holding its final stages once the others have signalled (the Hopper
// kernel, hopper_epilogue.cuh).
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

// The blocks holding a split slice, in k order, and where each keeps its partial of it: the first
// may start before the slice (then the slice is its last segment, slot 1), every later one starts
// inside it (its first segment, slot 0).
struct SliceBlocks {
  int first;
  int last;
  int first_slot;
  template <typename P>
  __device__ __forceinline__ SliceBlocks(const P& p, int slice)
      : first(BlockOf(p, slice * p.stages_per_slice)),
        last(BlockOf(p, (slice + 1) * p.stages_per_slice - 1)),
        first_slot(SlotOf(p, first, slice)) {}
  __device__ __forceinline__ int SlotOfBlock(int b) const {
    return b == first ? first_slot : 2 * b;
  }
};

// One thread per block calls this after the block's partial of `slice` is globally visible
// (written, then __threadfence). True for the last of the slice's blocks to arrive, which then
// owns the sum; it also resets the counter for the next call.
template <typename P>
__device__ __forceinline__ bool ArriveLast(const P& p, int slice) {
  const SliceBlocks blocks(p, slice);
  const int arrived = atomicAdd(&p.counters[blocks.last], 1);
  const bool last = arrived == blocks.last - blocks.first;
  if (last) p.counters[blocks.last] = 0;  // everyone is in: ready for the next call
  return last;
}

// Calls add(i, v) with float4 i (0 <= i < kVecs) of every block's partial of a split slice, block
// by block in k order, so the sum has the same bits whichever block computes it. `load(slot, i)`
// reads float4 i of a slot. The loads of kBlocksInFlight blocks are issued before any is added:
// one L2 round trip per that many blocks (a loop that waited for each block's loads took ~3 us
// per 8 blocks on the H100).
template <int kVecs, int kBlocksInFlight, typename Load, typename Add>
__device__ __forceinline__ void SumPartials(const SliceBlocks& blocks, const Load& load,
                                            const Add& add) {
  for (int b0 = blocks.first; b0 <= blocks.last; b0 += kBlocksInFlight) {
    float4 v[kBlocksInFlight][kVecs];
#pragma unroll
    for (int u = 0; u < kBlocksInFlight; ++u) {
      if (b0 + u > blocks.last) break;
      const int slot = blocks.SlotOfBlock(b0 + u);
#pragma unroll
      for (int i = 0; i < kVecs; ++i) v[u][i] = load(slot, i);
    }
#pragma unroll
    for (int u = 0; u < kBlocksInFlight; ++u) {
      if (b0 + u > blocks.last) break;
#pragma unroll
      for (int i = 0; i < kVecs; ++i) add(i, v[u][i]);
    }
  }
}

}  // namespace marlin::cuda

#endif  // MARLIN_KERNELS_CUDA_STRIPED_PARTITION_CUH_
