// How the Hopper kernel's consumers finish a segment: the accumulator layout in the output, the
// split-k warpgroups' exchange, whole-slice stores, the striped partition's global partials,
// arrival and last-arriver sums, and the cluster split's stash and distributed-shared-memory sum.
// Included by hopper_kernel.cuh; every function runs on the consumer warpgroups.
//
//   ExchangeKHalves<C>(role, exchange_smem, acc);        // split-k configurations only
//   FinishSegment<C>(p, block, begin, last, role, acc);  // striped partition
//   StashPartial<C>(p, role, ring, acc); /* cluster sync */ ReduceClusterSlice<C>(p, slice, role,
//   ring);
#ifndef MARLIN_KERNELS_CUDA_HOPPER_EPILOGUE_CUH_
#define MARLIN_KERNELS_CUDA_HOPPER_EPILOGUE_CUH_

#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/hopper_config.cuh"
#include "kernels/cuda/hopper_ptx.cuh"
#include "kernels/cuda/ptx_helpers.cuh"
#include "kernels/cuda/striped_partition.cuh"

namespace marlin::cuda::hopper {

// Output row and column of accumulator i of tile j for this thread (wgmma_ops.cuh's layout).
__device__ __forceinline__ int AccRow(const ConsumerRole& role, int i) {
  return 8 * (i / 4) + 2 * (role.lane % 4) + i % 2;
}
template <typename C>
__device__ __forceinline__ int AccCol(const ConsumerRole& role, int n_tile0, int j, int i) {
  return (n_tile0 + TileOf<C>(role, j)) * 64 + 16 * role.warp + role.lane / 4 + 8 * ((i / 2) % 2);
}

// Stores accumulators 4 r4 .. 4 r4 + 3 of tile j (values v) where the row exists.
template <typename C>
__device__ __forceinline__ void StoreGroup(const HopperParams& p, const ConsumerRole& role,
                                           int n_tile0, int j, int r4, float4 v) {
  if (!OwnsGroup<C>(role, r4) || n_tile0 + TileOf<C>(role, j) >= p.n_tiles) return;
  const float vals[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int i = 4 * r4 + e;
    const int row = AccRow(role, i);
    if (row < p.m_rows) {
      p.y[static_cast<int64_t>(row) * p.n + AccCol<C>(role, n_tile0, j, i)] =
          __float2half_rn(vals[e]);
    }
  }
}

template <typename C>
__device__ __forceinline__ float4 GroupOf(const HopperAccumulators<C>& acc, int j, int r4) {
  return make_float4(acc[j][4 * r4], acc[j][4 * r4 + 1], acc[j][4 * r4 + 2], acc[j][4 * r4 + 3]);
}

// This thread's float4 `r4` of tile j in a partial slot (coalesced over the consumer threads).
template <typename C>
__device__ __forceinline__ float4* PartialAt(const HopperParams& p, int slot,
                                             const ConsumerRole& role, int j, int r4) {
  return reinterpret_cast<float4*>(p.partials + static_cast<int64_t>(slot) * C::kSlotFloats) +
         (j * (C::kAccFloats / 4) + r4) * kConsumerThreads + role.thread;
}

// Whether float4 `r4` of a tile (rows 8 r4 + 2 (lane % 4) and the next) holds a row of this pass;
// partials of missing rows are neither written nor read (at 1 row, 7 of every 8).
__device__ __forceinline__ bool GroupHasRows(const HopperParams& p, const ConsumerRole& role,
                                             int r4) {
  return AccRow(role, 4 * r4) < p.m_rows;
}

// Whether this thread writes (and the reducers read) float4 `r4` of its tiles' partials.
template <typename C>
__device__ __forceinline__ bool FinishesGroup(const HopperParams& p, const ConsumerRole& role,
                                              int r4) {
  return OwnsGroup<C>(role, r4) && GroupHasRows(p, role, r4);
}

// Consumers, split-k configuration, at a segment's end: each warpgroup hands the float4s the other
// owns (OwnsGroup) to its partner thread (same lane and warp, same outputs) through `exchange`
// and adds the partner's k half to the ones it owns.
template <typename C>
__device__ __forceinline__ void ExchangeKHalves(const ConsumerRole& role, uint32_t exchange,
                                                HopperAccumulators<C>& acc) {
  constexpr int kTileVecs = C::kAccFloats / 4;
  const int partner_slot = role.thread % kWarpgroupThreads;  // the same for both partners
  auto at = [&](int j, int r4) {
    return exchange +
           static_cast<uint32_t>((j * kTileVecs + r4) * kWarpgroupThreads + partner_slot) * 16;
  };
  ptx::NamedBarrier(kConsumerBarrier, kConsumerThreads);  // the last exchange has been read
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j)
#pragma unroll
    for (int r4 = 0; r4 < kTileVecs; ++r4) {
      if (!OwnsGroup<C>(role, r4)) ptx::StoreShared16(at(j, r4), GroupOf<C>(acc, j, r4));
    }
  ptx::NamedBarrier(kConsumerBarrier, kConsumerThreads);
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j)
#pragma unroll
    for (int r4 = 0; r4 < kTileVecs; ++r4) {
      if (OwnsGroup<C>(role, r4)) {
        const uint4 other = ptx::LoadShared16(at(j, r4));
        acc[j][4 * r4] += __uint_as_float(other.x);
        acc[j][4 * r4 + 1] += __uint_as_float(other.y);
        acc[j][4 * r4 + 2] += __uint_as_float(other.z);
        acc[j][4 * r4 + 3] += __uint_as_float(other.w);
      }
    }
}

// Whether the segment of `at.slice` ending at `at` covers the whole slice (else it is split
// between blocks and summed by the reducers).
template <typename P>
__device__ __forceinline__ bool OwnsWholeSlice(const P& p, int begin, StageCursor at) {
  return begin <= at.slice * p.stages_per_slice && at.stage + 1 == p.stages_per_slice;
}

// Consumers: finishes the segment of `at.slice` that ends here. A whole slice is stored; a split
// one is written to this block's partial slot, and the last block to arrive sums it after its
// main loop (SumSlice).
// The accumulators are touched only under conditions on kernel parameters, which the compiler
// can tell are uniform: touching them, or summing partials, under a data-dependent condition (who
// arrived last) inside the loop made it serialize every wgmma of the kernel.
template <typename C>
__device__ __forceinline__ void FinishSegment(const HopperParams& p, int block, int begin,
                                              StageCursor at, const ConsumerRole& role,
                                              HopperAccumulators<C>& acc) {
  const int n_tile0 = at.slice * C::kBlockNTiles;
  if (OwnsWholeSlice(p, begin, at)) {
#pragma unroll
    for (int j = 0; j < C::kWgTiles; ++j)
#pragma unroll
      for (int r4 = 0; r4 < C::kAccFloats / 4; ++r4) {
        StoreGroup<C>(p, role, n_tile0, j, r4, GroupOf<C>(acc, j, r4));
      }
  } else {
    const int slot = SlotOf(p, block, at.slice);
#pragma unroll
    for (int j = 0; j < C::kWgTiles; ++j)
#pragma unroll
      for (int r4 = 0; r4 < C::kAccFloats / 4; ++r4) {
        if (FinishesGroup<C>(p, role, r4)) {
          __stcg(PartialAt<C>(p, slot, role, j, r4), GroupOf<C>(acc, j, r4));
        }
      }
  }
}

// Consumers: arrives at split `slice` once this block's partial of it is written. The result (is
// this block the slice's last?) is meaningful in consumer thread 0 only; for the split finished
// inside the main loop, branching on it is left for after the loop (see FinishSegment).
__device__ __forceinline__ bool ArriveAtSlice(const HopperParams& p, int slice,
                                              const ConsumerRole& role) {
  __threadfence();
  ptx::NamedBarrier(kConsumerBarrier, kConsumerThreads);
  return role.thread == 0 && ArriveLast(p, slice);
}

// Consumers: consumer thread 0's `flag`, for all of them.
__device__ __forceinline__ bool ShareFlag(bool flag, const ConsumerRole& role, int* flag_smem) {
  if (role.thread == 0) *flag_smem = flag;
  ptx::NamedBarrier(kConsumerBarrier, kConsumerThreads);
  const bool shared = *flag_smem;
  ptx::NamedBarrier(kConsumerBarrier, kConsumerThreads);  // read by all before its next write
  return shared;
}

// Consumers, in the block that arrived last at `slice`: sums every block's partial of it in k
// order (deterministic) and stores the result. The thread's float4s of all its tiles go in chunks
// of at most 8, with 32 loads in flight up to 64 rows and 16 beyond (more would spill the taller
// configurations).
template <typename C>
__device__ __forceinline__ void SumSlice(const HopperParams& p, int slice,
                                         const ConsumerRole& role) {
  __threadfence();
  const SliceBlocks blocks(p, slice);
  constexpr int kTileVecs = C::kAccFloats / 4;  // float4s of one tile
  constexpr int kVecs = C::kWgTiles * kTileVecs;
  constexpr int kChunk = kVecs < 8 ? kVecs : 8;
  static_assert(kVecs % kChunk == 0, "chunks split the float4s evenly");
#pragma unroll
  for (int c0 = 0; c0 < kVecs; c0 += kChunk) {
    float4 sum[kChunk];
#pragma unroll
    for (int i = 0; i < kChunk; ++i) sum[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    SumPartials<kChunk, (kVecs <= 16 ? 32 : 16) / kChunk>(
        blocks,
        [&](int slot, int i) {
          const int v = c0 + i;
          return FinishesGroup<C>(p, role, v % kTileVecs)
                     ? __ldcg(PartialAt<C>(p, slot, role, v / kTileVecs, v % kTileVecs))
                     : make_float4(0.f, 0.f, 0.f, 0.f);
        },
        [&](int i, float4 v) {
          sum[i].x += v.x;
          sum[i].y += v.y;
          sum[i].z += v.z;
          sum[i].w += v.w;
        });
#pragma unroll
    for (int i = 0; i < kChunk; ++i) {
      const int v = c0 + i;
      StoreGroup<C>(p, role, slice * C::kBlockNTiles, v / kTileVecs, v % kTileVecs, sum[i]);
    }
  }
}

// Byte offset of a consumer thread's float4 `vec` (tile vec / kTileVecs) in a stashed partial:
// thread-minor, so a warp's 16-byte stores and loads cover 512 contiguous bytes.
__device__ __forceinline__ uint32_t StashOffset(int thread, int vec) {
  return static_cast<uint32_t>(vec * kConsumerThreads + thread) * 16;
}

// Consumers, cluster split: leaves this block's partial of its slice in its own shared memory at
// `stash` (the ring, idle once both warpgroups are past their last stage), rows of the pass only.
template <typename C>
__device__ __forceinline__ void StashPartial(const HopperParams& p, const ConsumerRole& role,
                                             uint32_t stash, HopperAccumulators<C>& acc) {
  ptx::NamedBarrier(kConsumerBarrier, kConsumerThreads);  // the ring's last stage is read
  constexpr int kTileVecs = C::kAccFloats / 4;
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j)
#pragma unroll
    for (int r4 = 0; r4 < kTileVecs; ++r4) {
      if (FinishesGroup<C>(p, role, r4)) {
        ptx::StoreShared16(stash + StashOffset(role.thread, j * kTileVecs + r4),
                           GroupOf<C>(acc, j, r4));
      }
    }
}

// Consumers, cluster split, after a cluster-wide sync that follows every block's StashPartial:
// this block sums its share of the slice's float4s (thread t's float4 v belongs to rank
// (v + t) % r) over the r blocks' stashes in rank order (deterministic) and stores them.
template <typename C>
__device__ __forceinline__ void ReduceClusterSlice(const HopperParams& p, int slice,
                                                   const ConsumerRole& role, uint32_t stash) {
  const int ranks = p.cluster_ranks;
  const int rank = static_cast<int>(ptx::ClusterRank());
  constexpr int kTileVecs = C::kAccFloats / 4;
  constexpr int kVecs = C::kWgTiles * kTileVecs;
#pragma unroll
  for (int v = 0; v < kVecs; ++v) {
    if ((v + role.thread) % ranks != rank || !FinishesGroup<C>(p, role, v % kTileVecs)) continue;
    const uint32_t at = stash + StashOffset(role.thread, v);
    float4 sum = ptx::LoadClusterShared16(ptx::MapToClusterRank(at, 0));
    for (int q = 1; q < ranks; ++q) {
      const float4 part = ptx::LoadClusterShared16(ptx::MapToClusterRank(at, q));
      sum.x += part.x;
      sum.y += part.y;
      sum.z += part.z;
      sum.w += part.w;
    }
    StoreGroup<C>(p, role, slice * C::kBlockNTiles, v / kTileVecs, v % kTileVecs, sum);
  }
}

}  // namespace marlin::cuda::hopper

#endif  // MARLIN_KERNELS_CUDA_HOPPER_EPILOGUE_CUH_
