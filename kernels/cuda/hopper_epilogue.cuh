// How the Hopper kernel's consumers finish a segment: the accumulator layout in the output, the
// split-k warpgroups' exchange, whole-slice stores, the striped partition's global partials,
// signals and sums, and the cluster split's partials pushed to the leader over distributed shared
// memory.
// Included by hopper_kernel.cuh; every function runs on the consumer warpgroups.
//
//   ExchangeKHalves<C>(role, exchange_smem, acc);        // split-k configurations only
//   FinishSegment<C>(p, block, begin, last, role, acc);  // striped partition, then
//   SignalSlice(p, slice, role);  or  WaitForSlice(p, slice, role); SumSlice<C>(p, slice, role);
//   PushPartial<C>(p, role, rank, ring, ready, acc);         // cluster ranks >= 1
//   SumPushedPartials<C>(p, slice, role, ring, ready, acc);  // the cluster's leader
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
// one is written to this block's partial slot, and the block holding the slice's final stages
// sums it after its main loop (WaitForSlice, SumSlice).
// The accumulators are touched only under conditions on kernel parameters, which the compiler
// can tell are uniform: touching them, or summing partials, under a data-dependent condition (an
// earlier protocol's "who arrived last") inside the loop made it serialize every wgmma of the
// kernel.
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

// Consumers of a block that does not sum split `slice` (it lacks the slice's final stages), once
// their partial of it is written (FinishSegment): tells the block that sums it. The barrier orders
// every consumer thread's writes before thread 0's release; nobody waits for the signal to land.
__device__ __forceinline__ void SignalSlice(const HopperParams& p, int slice,
                                            const ConsumerRole& role) {
  ptx::NamedBarrier(kConsumerBarrier, kConsumerThreads);
  if (role.thread == 0) ptx::ReleaseAdd(&p.counters[SliceBlocks(p, slice).last], 1);
}

// Consumers of the block that sums split `slice` (the one holding its final stages, the slice's
// last block in index order): waits until every other block of the slice has signalled
// (SignalSlice), after which their partials are visible, and leaves the counter at zero for the
// next call. The blocks it waits for have lower indices, so the hardware, which starts a grid's
// blocks in index order, has started them before it; they never wait themselves.
__device__ __forceinline__ void WaitForSlice(const HopperParams& p, int slice,
                                             const ConsumerRole& role) {
  if (role.thread == 0) {
    const SliceBlocks blocks(p, slice);
    int* const counter = &p.counters[blocks.last];
    while (ptx::LoadAcquire(counter) != blocks.last - blocks.first) {
    }
    *counter = 0;
  }
  ptx::NamedBarrier(kConsumerBarrier, kConsumerThreads);
}

// Consumers of the block that sums `slice`, after WaitForSlice: sums every block's partial of it
// (its own included, which it wrote itself) in k order (deterministic) and stores the result. The
// thread's float4s of all its tiles go in chunks of at most 8, with 32 loads in flight up to 64
// rows and 16 beyond (more would spill the taller configurations).
template <typename C>
__device__ __forceinline__ void SumSlice(const HopperParams& p, int slice,
                                         const ConsumerRole& role) {
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

// Byte offset of a consumer thread's float4 `vec` (tile vec / kTileVecs) in a pushed partial:
// thread-minor, so a warp's 16-byte stores and loads cover 512 contiguous bytes.
__device__ __forceinline__ uint32_t PartialOffset(int thread, int vec) {
  return static_cast<uint32_t>(vec * kConsumerThreads + thread) * 16;
}

// Where cluster rank `rank` leaves its partial in the leader's (rank 0's) idle ring.
template <typename C>
__device__ __forceinline__ uint32_t PushSlot(uint32_t ring, int rank) {
  return ring + static_cast<uint32_t>(rank) * C::kSlotFloats * 4;
}

// Writes this thread's float4s of a partial that hold rows of the pass (FinishesGroup) at `slot`
// (PartialOffset) with `store(address, value)`: a local or a distributed shared-memory store.
template <typename C, typename Store>
__device__ __forceinline__ void WritePartial(const HopperParams& p, const ConsumerRole& role,
                                             uint32_t slot, const HopperAccumulators<C>& acc,
                                             Store store) {
  constexpr int kTileVecs = C::kAccFloats / 4;
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j)
#pragma unroll
    for (int r4 = 0; r4 < kTileVecs; ++r4) {
      if (FinishesGroup<C>(p, role, r4)) {
        store(slot + PartialOffset(role.thread, j * kTileVecs + r4), GroupOf<C>(acc, j, r4));
      }
    }
}

// Consumers, cluster split, a block of rank >= 1: once the leader says its ring is idle (`ready`,
// this block's barrier), writes this block's partial into its slot of the leader's ring over
// distributed shared memory (rows of the pass only) and arrives at the cluster barrier the leader
// waits at. Nothing in the cluster touches this block's shared memory after that: it may exit
// (exited threads do not hold a cluster barrier up).
template <typename C>
__device__ __forceinline__ void PushPartial(const HopperParams& p, const ConsumerRole& role,
                                            int rank, uint32_t ring, uint32_t ready,
                                            const HopperAccumulators<C>& acc) {
  ptx::BarrierWaitCluster(ready, 0);
  WritePartial<C>(p, role, ptx::MapToClusterRank(PushSlot<C>(ring, rank), 0), acc,
                  [](uint32_t at, float4 v) { ptx::StoreClusterShared16(at, v); });
  ptx::ClusterArrive();
}

// Consumers, cluster split, the leader (rank 0) of `slice`'s cluster, once both warpgroups are
// past the ring: tells the other ranks the ring is idle (their `ready` barriers), waits at the
// cluster barrier until every consumer thread of theirs has pushed, sums all ranks' partials
// in rank order (deterministic) and stores the slice. Its own partial goes to slot 0 first, so the
// sums hold no accumulators (they would not fit the tallest configuration's registers).
template <typename C>
__device__ __forceinline__ void SumPushedPartials(const HopperParams& p, int slice,
                                                  const ConsumerRole& role, uint32_t ring,
                                                  uint32_t ready,
                                                  const HopperAccumulators<C>& acc) {
  if (role.thread + 1 < p.cluster_ranks) {
    ptx::RemoteBarrierArrive(ptx::MapToClusterRank(ready, role.thread + 1));
  }
  WritePartial<C>(p, role, PushSlot<C>(ring, 0), acc,
                  [](uint32_t at, float4 v) { ptx::StoreShared16(at, v); });
  ptx::ClusterArrive();
  ptx::ClusterWait();
  constexpr int kTileVecs = C::kAccFloats / 4;
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j)
#pragma unroll
    for (int r4 = 0; r4 < kTileVecs; ++r4) {
      if (!FinishesGroup<C>(p, role, r4)) continue;
      const uint4 own = ptx::LoadShared16(ring + PartialOffset(role.thread, j * kTileVecs + r4));
      float4 sum = make_float4(__uint_as_float(own.x), __uint_as_float(own.y),
                               __uint_as_float(own.z), __uint_as_float(own.w));
      for (int q = 1; q < p.cluster_ranks; ++q) {
        const uint4 part = ptx::LoadShared16(PushSlot<C>(ring, q) +
                                             PartialOffset(role.thread, j * kTileVecs + r4));
        sum.x += __uint_as_float(part.x);
        sum.y += __uint_as_float(part.y);
        sum.z += __uint_as_float(part.z);
        sum.w += __uint_as_float(part.w);
      }
      StoreGroup<C>(p, role, slice * C::kBlockNTiles, j, r4, sum);
    }
}

}  // namespace marlin::cuda::hopper

#endif  // MARLIN_KERNELS_CUDA_HOPPER_EPILOGUE_CUH_
