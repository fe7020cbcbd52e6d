// How the Hopper kernel's consumers finish a segment: the accumulator layout in the output, the
// split-k warpgroups' exchange, whole-slice stores, the striped partition's global partials,
// signals and sums, and the cluster split's partials reduce-scattered over distributed shared
// memory.
// Included by hopper_kernel.cuh; every function runs on the consumer warpgroups.
//
//   ExchangeKHalves<C>(role, exchange_smem, acc);        // split-k configurations only
//   FinishSegment<C>(p, block, begin, last, role, acc);  // striped partition, then
//   PartialWritten(written);  or  WaitForSlice<C>(p, blocks, role); SumSlice<C>(...);  // then
//   SignalSlice(p, begin, end, written);                  // by a producer thread
//   ScatterPartials<C>(p, role, rank, ring, shares, acc);  // cluster split, every rank, then
//   ClusterBarrierWait(shares, 0); SumOwnedPartials<C>(p, slice, role, rank, ring);
#ifndef MARLIN_KERNELS_CUDA_HOPPER_EPILOGUE_CUH_
#define MARLIN_KERNELS_CUDA_HOPPER_EPILOGUE_CUH_

#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/hopper_config.cuh"
#include "kernels/cuda/hopper_ptx.cuh"
#include "kernels/cuda/ptx_helpers.cuh"
#include "kernels/cuda/striped_partition.cuh"

namespace marlin::cuda::hopper {

// Output row of accumulator i of a tile for this thread (wgmma_ops.cuh's layout); its column in
// the tile is 16 warp + lane / 4 + 8 ((i / 2) % 2).
__device__ __forceinline__ int AccRow(const ConsumerRole& role, int i) {
  return 8 * (i / 4) + 2 * (role.lane % 4) + i % 2;
}

// The FP16 pair (lo, hi) as one 32-bit register, lo in the low half.
__device__ __forceinline__ uint32_t HalfPairBits(float lo, float hi) {
  const half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// How a thread's kVecs float4s of a slice go in chunks, whose loads are in flight together and
// whose stores issue together: as few chunks of at most 8 as hold them, kWhole of kSize float4s and
// then, where kSize does not divide kVecs, one of kRest. At 136 rows (17 float4s) that is 6, 6 and
// 5; chunks of equal size had to be of one float4 there, each waiting out its own loads (the
// 136-row configuration's striped sums lost 4-5% that way, H200, session 36).
template <int kVecs>
struct Float4Chunks {
  static constexpr int kSize = (kVecs + (kVecs + 7) / 8 - 1) / ((kVecs + 7) / 8);
  static constexpr int kWhole = kVecs / kSize;
  static constexpr int kRest = kVecs % kSize;
};
static_assert(Float4Chunks<17>::kSize == 6 && Float4Chunks<17>::kWhole == 2 &&
              Float4Chunks<17>::kRest == 5);
static_assert(Float4Chunks<32>::kSize == 8 && Float4Chunks<32>::kWhole == 4 &&
              Float4Chunks<32>::kRest == 0);
static_assert(Float4Chunks<2>::kSize == 2 && Float4Chunks<2>::kWhole == 1 &&
              Float4Chunks<2>::kRest == 0);

// Column of a tile where this lane's four adjacent outputs go after the transposes of
// StoreFloat4s: its warp's 16 columns, 2 (lane % 4) or, on an odd lane, 8 + 2 (lane % 4 - 1).
__device__ __forceinline__ int StoreColumn(const ConsumerRole& role) {
  const int q = role.lane % 4;
  return 16 * role.warp + (q % 2 == 1 ? 6 + 2 * q : 2 * q);
}

// Where this thread's outputs of a slice go, read from the kernel's parameters once per slice (a
// launch of row parts keeps them in shared memory, RowPart, and every store to y made ptxas read
// them again) and reduced to one address and two bounds, so that a store's address is the lane's
// plus a tile and row offset (session 39: the owned sums of a cluster split spent ~490
// instructions a warp on 8 float4s, most of them each store's row, column and bounds). After the
// transposes of StoreFloat4s, float4 r4 of the thread's tile j holds four adjacent columns of
// slice row 8 r4 + lane / 4: At(role, j, r4).
template <typename C>
struct OutputSlice {
  __half* lane_y;        // float4 0 of the slice's first tile
  int64_t group_stride;  // elements from a float4 to the next: 8 rows of y
  int rows_left;         // rows of y from lane_y's on: float4 r4 has its row where 8 r4 < rows_left
  int tiles_left;        // 64-column tiles of y from the slice's first on
  __device__ __forceinline__ OutputSlice(const HopperParams& p, int slice,
                                         const ConsumerRole& role) {
    const SliceCoords at = SliceCoordsOf<C>(p, slice);
    const int row = at.part * C::kBatch + role.lane / 4;
    const int tile0 = at.column_slice * C::kBlockNTiles;
    lane_y = p.y + static_cast<int64_t>(row) * p.n + tile0 * 64 + StoreColumn(role);
    group_stride = int64_t{8} * p.n;
    rows_left = p.m_rows - row;
    tiles_left = p.n_tiles - tile0;
  }
  __device__ __forceinline__ __half* At(const ConsumerRole& role, int j, int r4) const {
    return lane_y + TileOf<C>(role, j) * 64 + r4 * group_stride;
  }
  // Whether float4 r4 of tile j lies in y (its tile and row exist).
  __device__ __forceinline__ bool Holds(const ConsumerRole& role, int j, int r4) const {
    return TileOf<C>(role, j) < tiles_left && 8 * r4 < rows_left;
  }
};

// Stores this thread's kCount float4s v[i] as FP16 at at[i] (OutputSlice::At) where stores[i].
// Float4 r4 of a tile holds rows R and R + 1 (R = 8 r4 + 2 (lane % 4)) of columns c and c + 8 (see
// AccRow); a warp's 8-row group is two 8 x 8 blocks of (column, row), which two transposes
// (movmatrix) turn into (row, column): lane l then holds row 8 r4 + l / 4 at columns 2 q, 2 q + 1
// and 8 + 2 q, 8 + 2 q + 1 of the warp's 16 (q = l % 4). One exchange with the neighbouring lane
// leaves each lane four adjacent columns (StoreColumn), so one 8-byte store per lane writes the
// warp's 8 rows x 32 bytes: whole sectors (one FP16 per lane and store wrote half of each: Nsight
// Compute, L8B.qkv at 256 rows, 50% of the store sectors wasted). Every float4's transposes and
// exchange come before any store, and the stores are predicated, not branched around: a group at a
// time, each store behind a branch, serialized the groups (H200, session 33: a 128-row block's
// whole-slice stores took ~2 us). Every lane of the warp calls it (movmatrix and the shuffle are
// warp-collective), without a branch before it: the one around a warp-collective instruction made
// ptxas give up the uniform datapath in the main loop (R2UR and WARPSYNC on every stage, +7% on
// L8B.gate/up at 64 rows on the H100).
template <int kCount>
__device__ __forceinline__ void StoreFloat4s(const ConsumerRole& role, const float4 (&v)[kCount],
                                             __half* const (&at)[kCount],
                                             const bool (&stores)[kCount]) {
  const bool odd = role.lane % 2 == 1;  // takes columns 8 + 2 (q - 1) .. + 3, else 2 q .. 2 q + 3
  uint32_t low[kCount], high[kCount], neighbour[kCount];
#pragma unroll
  for (int i = 0; i < kCount; ++i) {
    low[i] = ptx::TransposeMatrix8x8(HalfPairBits(v[i].x, v[i].y));   // columns 0-7
    high[i] = ptx::TransposeMatrix8x8(HalfPairBits(v[i].z, v[i].w));  // columns 8-15
  }
#pragma unroll
  for (int i = 0; i < kCount; ++i) {
    neighbour[i] = __shfl_xor_sync(0xffffffffu, odd ? low[i] : high[i], 1);
  }
#pragma unroll
  for (int i = 0; i < kCount; ++i) {
    ptx::StoreGlobal8If(stores[i], at[i], odd ? neighbour[i] : low[i],
                        odd ? high[i] : neighbour[i]);
  }
}

// Stores this thread's float4s first .. first + kCount - 1 of its tiles in tile-major order
// (float4 r4 of tile j is number j kTileVecs + r4; a number past the last stores nothing) where
// their rows exist.
template <typename C, int kCount>
__device__ __forceinline__ void StoreGroups(const OutputSlice<C>& out, const ConsumerRole& role,
                                            int first, const float4 (&v)[kCount]) {
  constexpr int kTileVecs = C::kAccFloats / 4;
  constexpr int kVecs = C::kWgTiles * kTileVecs;
  __half* at[kCount];
  bool stores[kCount];
#pragma unroll
  for (int i = 0; i < kCount; ++i) {
    const int j = (first + i) / kTileVecs, r4 = (first + i) % kTileVecs;
    at[i] = out.At(role, j, r4);
    stores[i] = first + i < kVecs && OwnsGroup<C>(role, r4) && out.Holds(role, j, r4);
  }
  StoreFloat4s<kCount>(role, v, at, stores);
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
         (j * (C::kAccFloats / 4) + r4) * C::kConsumerThreads + role.thread;
}

// Whether float4 `r4` of a tile (rows 8 r4 + 2 (lane % 4) and the next) holds a row of this pass;
// partials of missing rows are neither written nor read (at 1 row, 7 of every 8).
__device__ __forceinline__ bool GroupHasRows(const HopperParams& p, const ConsumerRole& role,
                                             int r4) {
  return AccRow(role, 4 * r4) < p.m_rows;
}

// GroupHasRows as a bound read once: float4 r4 holds a row of this pass where 8 r4 is below it
// (for the cluster split's loops, whose asm stores would make the parameters be read again).
__device__ __forceinline__ int GroupRowsBound(const HopperParams& p, const ConsumerRole& role) {
  return p.m_rows - 2 * (role.lane % 4);
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
  ptx::NamedBarrier(kConsumerBarrier, C::kConsumerThreads);  // the last exchange has been read
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j)
#pragma unroll
    for (int r4 = 0; r4 < kTileVecs; ++r4) {
      if (!OwnsGroup<C>(role, r4)) ptx::StoreShared16(at(j, r4), GroupOf<C>(acc, j, r4));
    }
  ptx::NamedBarrier(kConsumerBarrier, C::kConsumerThreads);
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

// Stores this thread's float4s c0 .. c0 + kCount - 1 of its tiles from its accumulators.
template <typename C, int kCount>
__device__ __forceinline__ void StoreHeldChunk(const OutputSlice<C>& out, const ConsumerRole& role,
                                               const HopperAccumulators<C>& acc, int c0) {
  constexpr int kTileVecs = C::kAccFloats / 4;
  float4 v[kCount];
#pragma unroll
  for (int i = 0; i < kCount; ++i)
    v[i] = GroupOf<C>(acc, (c0 + i) / kTileVecs, (c0 + i) % kTileVecs);
  StoreGroups<C, kCount>(out, role, c0, v);
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
  if (OwnsWholeSlice(p, begin, at)) {
    constexpr int kTileVecs = C::kAccFloats / 4;
    constexpr int kVecs = C::kWgTiles * kTileVecs;
    using Chunks = Float4Chunks<kVecs>;
    const OutputSlice<C> out(p, at.slice, role);
#pragma unroll
    for (int c0 = 0; c0 < Chunks::kWhole * Chunks::kSize; c0 += Chunks::kSize) {
      StoreHeldChunk<C, Chunks::kSize>(out, role, acc, c0);
    }
    if constexpr (Chunks::kRest > 0) {
      StoreHeldChunk<C, Chunks::kRest>(out, role, acc, Chunks::kWhole * Chunks::kSize);
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

// Whether the block of the striped partition whose iterations are [begin, end) signals a split
// slice: the one holding its last iteration, where that ends inside the slice (a later block holds
// the slice's final stages and sums it). Its consumers write their partial of it (FinishSegment)
// and arrive on the block's `written` barrier (PartialWritten); one producer thread then tells the
// summing block (SignalSlice).
__device__ __forceinline__ bool SignalsSlice(const HopperParams& p, int begin, int end) {
  return p.cluster_ranks == 0 && end > begin && end % p.stages_per_slice != 0;
}

// Consumers, once their partial of the slice the block signals is written: each thread's arrival
// releases its stores to the signalling thread (SignalSlice), and the consumers go on at once.
__device__ __forceinline__ void PartialWritten(uint32_t written) { ptx::BarrierArrive(written); }

// One producer thread of a block that signals a split slice (SignalsSlice): once every consumer
// thread has written its partial of it (PartialWritten), tells the block that sums it. The release
// waits for the partial's stores to reach L2 (a 128-row block's 64 KB: about 2.3 us on an H200,
// session 33); on the consumers, where it was before, that held up their main loop wherever the
// block multiplies the slice's segment first (kLastSegmentFirst). Nobody waits for the signal to
// land.
__device__ __forceinline__ void SignalSlice(const HopperParams& p, int begin, int end,
                                            uint32_t written) {
  if (!SignalsSlice(p, begin, end)) return;
  ptx::BarrierWait(written, 0);
  ptx::GridDependencyWait();  // the counters are this call's once the previous call is done
  ptx::ReleaseAdd(&p.counters[SliceBlocks(p, (end - 1) / p.stages_per_slice).last], 1);
}

// Consumers of the block that sums a split slice (the one holding its final stages, the slice's
// last block in index order), whose `blocks` every consumer thread computed before (so that their
// divisions overlap the wait, not the sum): waits until every other block of the slice has
// signalled (SignalSlice), after which their partials are visible, and leaves the counter at zero
// for the next call. The blocks it waits for have lower indices, so the hardware, which starts a
// grid's blocks in index order, has started them before it; they never wait themselves.
template <typename C>
__device__ __forceinline__ void WaitForSlice(const HopperParams& p, const SliceBlocks& blocks,
                                             const ConsumerRole& role) {
  if (role.thread == 0) {
    int* const counter = &p.counters[blocks.last];
    while (ptx::LoadAcquire(counter) != blocks.last - blocks.first) {
    }
    *counter = 0;
  }
  ptx::NamedBarrier(kConsumerBarrier, C::kConsumerThreads);
}

// a += b, lane by lane.
__device__ __forceinline__ void AddFloat4(float4& a, float4 b) {
  a.x += b.x;
  a.y += b.y;
  a.z += b.z;
  a.w += b.w;
}

// Sums float4s c0 .. c0 + kChunk - 1 of this thread's tiles over the partials of `blocks` in k
// order into `sum` (zeroed first), the loads of kBlocksInFlight blocks in flight at once.
template <typename C, int kChunk, int kBlocksInFlight>
__device__ __forceinline__ void SumPartialChunk(const HopperParams& p, const ConsumerRole& role,
                                                const SliceBlocks& blocks, int c0,
                                                float4 (&sum)[kChunk]) {
  constexpr int kTileVecs = C::kAccFloats / 4;  // float4s of one tile
#pragma unroll
  for (int i = 0; i < kChunk; ++i) sum[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  SumPartials<kChunk, kBlocksInFlight>(
      blocks,
      [&](int slot, int i) {
        const int v = c0 + i;
        return FinishesGroup<C>(p, role, v % kTileVecs)
                   ? __ldcg(PartialAt<C>(p, slot, role, v / kTileVecs, v % kTileVecs))
                   : make_float4(0.f, 0.f, 0.f, 0.f);
      },
      [&](int i, float4 v) { AddFloat4(sum[i], v); });
}

// SumPartialChunk over `blocks`, then stores the sums.
template <typename C, int kCount, int kBlocksInFlight>
__device__ __forceinline__ void SumChunk(const HopperParams& p, const ConsumerRole& role,
                                         const SliceBlocks& blocks, const OutputSlice<C>& out,
                                         int c0) {
  float4 sum[kCount];
  SumPartialChunk<C, kCount, kBlocksInFlight>(p, role, blocks, c0, sum);
  StoreGroups<C, kCount>(out, role, c0, sum);
}

// SumPartialChunk over `others`, then adds this block's own partial from its accumulators last and
// stores the sums.
template <typename C, int kCount, int kBlocksInFlight>
__device__ __forceinline__ void SumHeldChunk(const HopperParams& p, const ConsumerRole& role,
                                             const SliceBlocks& others, const OutputSlice<C>& out,
                                             const HopperAccumulators<C>& acc, int c0) {
  constexpr int kTileVecs = C::kAccFloats / 4;
  float4 sum[kCount];
  SumPartialChunk<C, kCount, kBlocksInFlight>(p, role, others, c0, sum);
#pragma unroll
  for (int i = 0; i < kCount; ++i) {
    AddFloat4(sum[i], GroupOf<C>(acc, (c0 + i) / kTileVecs, (c0 + i) % kTileVecs));
  }
  StoreGroups<C, kCount>(out, role, c0, sum);
}

// Consumers of the block that sums `slice` (its `blocks`), after WaitForSlice: sums every block's
// partial of it (its own included, which it wrote itself) in k order (deterministic) and stores the
// result. The thread's float4s of all its tiles go in chunks of at most 8 (Float4Chunks), with 32
// loads in flight up to 64 rows and 16 beyond (more would spill the taller configurations), 8 with
// three or four consumer warpgroups (128 or 96 registers a thread).
template <typename C>
__device__ __forceinline__ void SumSlice(const HopperParams& p, int slice,
                                         const SliceBlocks& blocks, const ConsumerRole& role) {
  constexpr int kVecs = C::kWgTiles * C::kAccFloats / 4;
  constexpr int kLoadsInFlight = C::kConsumers > 2 ? 8 : kVecs <= 16 ? 32 : 16;
  using Chunks = Float4Chunks<kVecs>;
  const OutputSlice<C> out(p, slice, role);
#pragma unroll 1  // one copy of the chunk's code (see ConsumeStages): registers are not indexed
  for (int c0 = 0; c0 < Chunks::kWhole * Chunks::kSize; c0 += Chunks::kSize) {
    SumChunk<C, Chunks::kSize, kLoadsInFlight / Chunks::kSize>(p, role, blocks, out, c0);
  }
  if constexpr (Chunks::kRest > 0) {
    SumChunk<C, Chunks::kRest, kLoadsInFlight / Chunks::kRest>(p, role, blocks, out,
                                                               Chunks::kWhole * Chunks::kSize);
  }
}

// Whether a block of configuration C that sums a split slice whose final stages were the last it
// multiplied keeps its own partial in its accumulators (SumHeldSlice) instead of writing it and
// reading it back: where the accumulators, a chunk of sums and one block's loads fit a consumer's
// registers beside each other: two consumer warpgroups up to 128 rows of one tile, three up to
// 32 rows (more spilled).
template <typename C>
inline constexpr bool kSumsHeldPartial = (C::kConsumers == 2 || C::kBatch <= 32) &&
                                         sizeof(HopperAccumulators<C>) <= 64 * sizeof(float);

// Consumers of the block that sums `slice` (its `blocks`), after WaitForSlice, where `acc` holds
// the block's partial of it (kSumsHeldPartial): sums the other blocks' partials in k order, then
// its own, the additions of SumSlice in the same order (the same bits), and stores the result.
template <typename C>
__device__ __forceinline__ void SumHeldSlice(const HopperParams& p, int slice,
                                             const SliceBlocks& blocks, const ConsumerRole& role,
                                             const HopperAccumulators<C>& acc) {
  SliceBlocks others = blocks;
  --others.last;  // this block holds the slice's final stages: the others come before it
  constexpr int kTileVecs = C::kAccFloats / 4;
  constexpr int kVecs = C::kWgTiles * kTileVecs;
  constexpr int kBlocksInFlight = kVecs <= 4 ? 4 : kVecs <= 8 ? 2 : 1;
  using Chunks = Float4Chunks<kVecs>;
  const OutputSlice<C> out(p, slice, role);
#pragma unroll  // the accumulators are registers: every chunk's code is its own
  for (int c0 = 0; c0 < Chunks::kWhole * Chunks::kSize; c0 += Chunks::kSize) {
    SumHeldChunk<C, Chunks::kSize, kBlocksInFlight>(p, role, others, out, acc, c0);
  }
  if constexpr (Chunks::kRest > 0) {
    SumHeldChunk<C, Chunks::kRest, kBlocksInFlight>(p, role, others, out, acc,
                                                    Chunks::kWhole * Chunks::kSize);
  }
}

// The cluster split's sums are reduce-scattered: float4 r4 of every tile (rows 8 r4 .. 8 r4 + 7
// of the slice) belongs to rank r4 % ranks, which sums every rank's partial of it and stores it.
// Each rank writes its float4s into their owners' idle rings over distributed shared memory (its
// own into its own ring), so every rank stores a 1 / ranks share of the slice, in parallel, and a
// ring receives a share of each rank's partial, never a whole one (a leader that summed whole
// partials had no ring for a 256-row one). The shares' layout is in hopper_config.cuh
// (ClusterShare). The stores are asynchronous and complete on the owner's `shares` mbarrier,
// which every consumer thread of every rank arrives on once: the owner waits for that barrier
// alone, not for a cluster barrier whose release arrival would order the stores (about 0.8 us a
// call longer on the H100, docs/perf/kernel-h100.md, "Session 23").

// One arrival on barrier `shares` of every rank of the cluster (ScatterPartials): a release on its
// own, which publishes its plain stores to its threads; relaxed on the others', whose data
// completes on the barriers themselves.
__device__ __forceinline__ void ArriveOnShares(int rank, int ranks, uint32_t shares) {
#pragma unroll 1
  for (int owner = 0; owner < ranks; ++owner) {
    if (owner == rank) {
      ptx::BarrierArrive(shares);
    } else {
      ptx::ClusterBarrierArrive(ptx::MapToClusterRank(shares, owner));
    }
  }
}

// Consumers, cluster split, once every rank's consumers are past their ring: writes this thread's
// float4s that hold rows of the pass (FinishesGroup) into their owners' rings, at this rank's
// share, each announced to and completed on the owner's `shares` barrier for it
// (ClusterShare::BarrierOf), and arrives on every rank's first barrier once it has written the
// float4s that complete on it, on every second one at the end (SharesArrivals each). Its own rank's
// share goes by plain shared-memory stores, which its arrivals (release) publish: through the
// cluster path (st.async to its own block) the scatter took 2.6-2.8 us at 128-256 rows, with plain
// stores 1.3-1.8 (H200, session 34, marlin-bench --trace, L8B.qkv at 128 rows and L8B.o at 256).
template <typename C>
__device__ __forceinline__ void ScatterPartials(const HopperParams& p, const ConsumerRole& role,
                                                int rank, uint32_t ring, uint32_t shares,
                                                const HopperAccumulators<C>& acc) {
  // In registers: the asm statements below clobber memory, so a launch of row parts, whose
  // parameters are in shared memory (RowPart), read these again for every float4.
  const int ranks = p.cluster_ranks;
  const int partial_rows = GroupRowsBound(p, role);
  const ClusterShare<C> share(ranks);
  const uint32_t from = ring + share.Offset(rank, 0, 0, role.thread);
  if constexpr (ClusterShare<C>::kEarlyGroups == 0) ArriveOnShares(rank, ranks, shares);
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j) {
    int owner = 0, index = 0;  // r4 % ranks and r4 / ranks, without divisions
#pragma unroll
    for (int r4 = 0; r4 < C::kAccFloats / 4; ++r4) {
      if (OwnsGroup<C>(role, r4) && 8 * r4 < partial_rows) {
        const uint32_t to = from + share.Offset(0, j, index, 0);
        if (owner == rank) {  // its own share: a plain store, published by an arrival below
          ptx::StoreShared16(to, GroupOf<C>(acc, j, r4));
        } else {
          // The bytes are announced before they can land, so the phase cannot complete without
          // them.
          const uint32_t owner_shares =
              ptx::MapToClusterRank(shares + 8 * ClusterShare<C>::BarrierOf(j, r4), owner);
          ptx::ClusterBarrierExpectBytes(owner_shares, 16);
          ptx::StoreClusterSharedAsync16(ptx::MapToClusterRank(to, owner), GroupOf<C>(acc, j, r4),
                                         owner_shares);
        }
      }
      if (++owner == ranks) {
        owner = 0;
        ++index;
      }
      if (j == 0 && r4 + 1 == ClusterShare<C>::kEarlyGroups) ArriveOnShares(rank, ranks, shares);
    }
  }
  ArriveOnShares(rank, ranks, shares + 8);
}

// The arrivals that complete each of a rank's two `shares` barriers (ScatterPartials): one per
// consumer thread of every rank.
template <typename C>
__host__ __device__ constexpr uint32_t SharesArrivals(int ranks) {
  return static_cast<uint32_t>(ranks * C::kConsumerThreads);
}

// Consumers, cluster split, once the first of this rank's two `shares` barriers has completed
// (ClusterShare): sums every rank's shares of this rank's float4s in rank order (deterministic)
// and stores them (StoreFloat4s) ClusterShare::kChunk float4s at a time, so their transposes and
// exchanges overlap; the chunks whose shares complete on the first barrier go while the rest still
// land, and the first chunk with a float4 of the rest waits for the second barrier
// (`late_shares`). A chunk's loads of one rank's share go out together, so a chunk waits
// out `ranks` load latencies, not kChunk times as many. The owned float4s lie `ranks` apart, so
// their addresses in the share and in y are one chunk address plus constants. Loops over ranks and
// chunks, not unrolled code: the registers they use are not indexed, and the code runs once a call
// from a cold instruction cache.
template <typename C>
__device__ __forceinline__ void SumOwnedPartials(const HopperParams& p, int slice,
                                                 const ConsumerRole& role, int rank, uint32_t ring,
                                                 uint32_t late_shares) {
  constexpr int kTileVecs = C::kAccFloats / 4;
  constexpr int kChunk = ClusterShare<C>::kChunk;
  constexpr uint32_t kVecBytes = C::kConsumerThreads * 16;  // from a float4 of a share to the next
  const int ranks = p.cluster_ranks;
  const ClusterShare<C> share(ranks);
  const OutputSlice<C> out(p, slice, role);
  const int64_t owned_stride = ranks * out.group_stride;  // from an owned float4's y to the next
  const int partial_rows = GroupRowsBound(p, role);
  bool all_landed = false;  // late_shares has completed
#pragma unroll 1
  for (int j = 0; j < C::kWgTiles; ++j) {
#pragma unroll 1
    for (int index0 = 0; index0 < share.vecs; index0 += kChunk) {
      const int first_r4 = rank + index0 * ranks;
      if (!all_landed && ClusterShare<C>::BarrierOf(j, first_r4 + (kChunk - 1) * ranks) == 1) {
        ptx::ClusterBarrierWait(late_shares, 0);
        all_landed = true;
      }
      __half* const chunk_y = out.At(role, j, first_r4);
      const uint32_t chunk_share = ring + share.Offset(0, j, index0, role.thread);
      float4 sum[kChunk];
      bool summed[kChunk];  // written by every rank (else nobody wrote it)
      bool stores[kChunk];
      __half* at[kChunk];
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        const int r4 = first_r4 + i * ranks;
        const bool owned = index0 + i < share.vecs && r4 < kTileVecs && OwnsGroup<C>(role, r4);
        summed[i] = owned && 8 * r4 < partial_rows;
        stores[i] = owned && out.Holds(role, j, r4);
        at[i] = chunk_y + i * owned_stride;
        sum[i] = make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll 1
      for (int q = 0; q < ranks; ++q) {
        const uint32_t from = chunk_share + q * share.bytes;
        uint4 part[kChunk];
#pragma unroll
        for (int i = 0; i < kChunk; ++i) {
          if (summed[i]) part[i] = ptx::LoadShared16(from + i * kVecBytes);
        }
#pragma unroll
        for (int i = 0; i < kChunk; ++i) {
          if (summed[i]) {
            AddFloat4(sum[i], make_float4(__uint_as_float(part[i].x), __uint_as_float(part[i].y),
                                          __uint_as_float(part[i].z), __uint_as_float(part[i].w)));
          }
        }
      }
      StoreFloat4s<kChunk>(role, sum, at, stores);  // by the whole warp
    }
  }
  // Every rank arrives on both barriers: none may reach this block once it has exited.
  if (!all_landed) ptx::ClusterBarrierWait(late_shares, 0);
}

}  // namespace marlin::cuda::hopper

#endif  // MARLIN_KERNELS_CUDA_HOPPER_EPILOGUE_CUH_
