// The FP16 x INT4 kernel for Hopper (sm_90a): TMA into an mbarrier ring, warp specialization,
// dequantization in registers feeding wgmma. Included only by hopper_gemm.cu.
//
// The product is computed transposed, y^T = W^T x^T, so the weights are wgmma's A operand (64
// output columns x 16 k, in registers: one packed word per lane and k-tile dequantizes straight
// into a warp's A fragment) and the activations its B operand (16 k x kBatch rows, read by the
// tensor cores from shared memory in the 128-byte-swizzled layout TMA writes). Column slices of
// kBlockNTiles 64-column tiles and k stages of 64 rows are split over a persistent grid exactly
// like the Ampere kernel (striped_partition.cuh), with the same last-arriver reduction.
//
// A block is three warpgroups. Warpgroup 0 is the producer: one thread waits for a free ring
// slot, then issues three TMA copies (activations, packed weights, scales) completing on the
// slot's `full` barrier. Warpgroups 1 and 2 consume: each multiplies kWgTiles of the slice's
// tiles for all rows, then releases the slot on its `empty` barrier. setmaxnreg moves registers
// from the producer to the consumers, whose accumulators are kWgTiles x kBatch / 2 per thread.
// In the split-k configurations both consumer warpgroups multiply the same 64-column tile, each
// half of a stage's 256 k, and add their halves through shared memory at a segment's end.
//
// Where every slice can have a co-resident cluster of blocks (small and mid-size layers), the host
// picks the cluster split instead of the striped partition: block b takes k part b % r of slice
// b / r, leaves its partial in its own shared memory, and the cluster sums the r partials over
// distributed shared memory: no global partials, fences or arrival counters.
#ifndef MARLIN_KERNELS_CUDA_HOPPER_KERNEL_CUH_
#define MARLIN_KERNELS_CUDA_HOPPER_KERNEL_CUH_

#include <cuda.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/hopper_ptx.cuh"
#include "kernels/cuda/ptx_helpers.cuh"
#include "kernels/cuda/striped_partition.cuh"
#include "kernels/cuda/wgmma_ops.cuh"

namespace marlin::cuda::hopper {

inline constexpr int kWarpgroupThreads = 128;
inline constexpr int kConsumers = 2;  // consumer warpgroups per block
inline constexpr int kThreads = kWarpgroupThreads * (1 + kConsumers);
inline constexpr int kConsumerThreads = kWarpgroupThreads * kConsumers;
inline constexpr int kBoxKTiles = 4;    // k-tiles of one activation box: 64 k, 128-byte rows
inline constexpr int kGroupKTiles = 8;  // 128-row scale groups
// Register budgets after setmaxnreg: 128 x 40 + 256 x 232 fits the 64 K register file.
inline constexpr int kProducerRegisters = 40;
inline constexpr int kConsumerRegisters = 232;
// Dynamic shared memory a block may use on sm_90, less the 1 KB the ring's alignment may cost.
inline constexpr int kRingBudgetBytes = 227 * 1024 - 1024;
inline constexpr int kMaxStages = 12;
inline constexpr int kConsumerBarrier = 1;  // named barrier id among the consumer warpgroups
inline constexpr int kMaxClusterRanks = 8;  // blocks per cluster, the portable limit

constexpr int RoundUp(int v, int to) { return (v + to - 1) / to * to; }

template <int kBatch_, int kWgTiles_, bool kSplitK_ = false>
struct HopperConfig {
  static constexpr int kBatch = kBatch_;      // activation rows per pass (wgmma N), zero-padded
  static constexpr int kWgTiles = kWgTiles_;  // 64-column tiles per consumer warpgroup
  // Whether the consumer warpgroups split each stage's k-tiles between them (both multiply the
  // same tiles, and add their halves at a segment's end) instead of taking different tiles: half
  // as many columns per slice, four times the k per stage.
  static constexpr bool kSplitK = kSplitK_;
  static constexpr int kKGroups = kSplitK ? kConsumers : 1;  // warpgroups sharing a tile
  static constexpr int kBlockNTiles = kWgTiles * kConsumers / kKGroups;  // 64-column tiles/slice
  // k-tiles a warpgroup multiplies per stage: a split-k warpgroup takes a whole scale group, so
  // its stage moves as many weight bytes as a wide one's (a consumer's cost per stage is mostly
  // fixed).
  static constexpr int kWgKTiles = kSplitK ? kGroupKTiles : kBoxKTiles;
  static constexpr int kStageKTiles = kWgKTiles * kKGroups;
  static constexpr int kXBoxBytes = kBatch * 128;  // kBatch rows x 64 k values
  static constexpr int kXBoxes = kStageKTiles / kBoxKTiles;
  static constexpr int kXBytes = kXBoxBytes * kXBoxes;
  static constexpr int kWBytes = kStageKTiles * kBlockNTiles * 512;
  static constexpr int kScaleRows = kStageKTiles > kGroupKTiles ? kStageKTiles / kGroupKTiles : 1;
  static constexpr int kScaleRowBytes = kBlockNTiles * 64 * 2;
  static constexpr int kSBytes = kScaleRows * kScaleRowBytes;
  static constexpr int kStageBytes = RoundUp(kXBytes + kWBytes + kSBytes, 1024);
  static constexpr int kAccFloats = kBatch / 2;  // per tile, per thread
  // Where a split-k warpgroup leaves the float4s the other one owns (ExchangeKHalves).
  static constexpr int kExchangeBytes = kSplitK ? kWgTiles * kAccFloats * 4 * kWarpgroupThreads : 0;
  // The ring's share: the exchange and (a split-k block's smem can reach the limit) the static
  // barriers come off the budget.
  static constexpr int kRingBytes = kRingBudgetBytes - (kSplitK ? kExchangeBytes + 1024 : 0);
  static constexpr int kStages =
      kRingBytes / kStageBytes < kMaxStages ? kRingBytes / kStageBytes : kMaxStages;
  static constexpr int kSmemBytes = kStages * kStageBytes + kExchangeBytes + 1024;
  static constexpr int kTxBytes = kXBytes + kWBytes + kSBytes;  // what one stage's copies bring
  // Two stages' wgmma groups are in flight: the accumulators and two stages' A fragments must fit
  // the consumers' registers (two tiles at 128 rows did not; ptxas serialized the groups, C7512).
  static_assert(kWgTiles * kAccFloats + 2 * kWgKTiles * kWgTiles * 4 <= 160,
                "no registers for two wgmma groups in flight");
  // One block's partial of a slice: every consumer thread's accumulators (under the split-k
  // configuration half of them stay unused).
  static constexpr int kSlotFloats = kWgTiles * kAccFloats * kConsumerThreads;
  static_assert(kXBoxBytes % 1024 == 0, "swizzle atoms must stay 1024-byte aligned");
  static_assert(!kSplitK || kWgKTiles == kGroupKTiles, "a split-k warpgroup's k is one group");
  static_assert(kStages >= 3, "the ring needs depth");
  static_assert(kAccFloats % 4 == 0, "partials move as float4");
  static_assert(kSlotFloats * 4 <= kStages * kStageBytes, "a partial must fit the idle ring");
};

struct HopperParams {
  __half* y;   // m_rows x n output of this pass
  int m_rows;  // rows of this pass, <= kBatch
  int n;
  int k_tiles;  // k / 16
  int n_tiles;  // n / 64
  bool per_channel;
  int stages_per_slice;  // ceil(k_tiles / C::kStageKTiles)
  int total_iters;       // slices * stages_per_slice
  int grid;              // blocks launched
  int* counters;         // one arrival counter per block index, zero between calls
  float* partials;       // 2 slots of kSlotFloats per block
  // 0: the striped partition. r >= 1: the cluster split, r blocks (one cluster) per slice; block b
  // takes stages [(b % r) S / r, (b % r + 1) S / r) of slice b / r, S = stages_per_slice.
  int cluster_ranks;
};

// First iteration of block b under the pass's partition (block `grid` gives the end).
__device__ __forceinline__ int FirstIteration(const HopperParams& p, int b) {
  if (p.cluster_ranks == 0) return BlockBegin(p, b);
  const int r = p.cluster_ranks;
  return b / r * p.stages_per_slice + b % r * p.stages_per_slice / r;
}

// The tensor maps of one pass: activations (FP16, {k, rows}, box {64, kBatch}, 128-byte swizzle),
// packed weights (8-byte words, {64, n_tiles, k_tiles}, box {64, kBlockNTiles, C::kStageKTiles})
// and scales (FP16, {n, groups}, box {kBlockNTiles * 64, 1}).
struct HopperMaps {
  CUtensorMap x;
  CUtensorMap w;
  CUtensorMap s;
};

// Ring slot addresses.
template <typename C>
struct StageSmem {
  uint32_t x, w, s;
  __device__ __forceinline__ StageSmem(uint32_t ring, int slot)
      : x(ring + slot * C::kStageBytes), w(x + C::kXBytes), s(w + C::kWBytes) {}
};

// Issues one stage's weight and scale copies on `bar`, announcing the whole stage's bytes
// (activations included: LoadActivationStage adds them to the same phase).
template <typename C>
__device__ __forceinline__ void LoadWeightStage(const HopperMaps& maps, const HopperParams& p,
                                                StageCursor at, const StageSmem<C>& smem,
                                                uint32_t bar) {
  const int k_tile0 = at.stage * C::kStageKTiles;
  const int n_tile0 = at.slice * C::kBlockNTiles;
  ptx::BarrierArriveExpectBytes(bar, C::kTxBytes);
  ptx::TensorLoad3d(smem.w, &maps.w, 0, n_tile0, k_tile0, bar);
#pragma unroll
  for (int row = 0; row < C::kScaleRows; ++row) {
    ptx::TensorLoad2d(smem.s + row * C::kScaleRowBytes, &maps.s, n_tile0 * 64,
                      p.per_channel ? 0 : k_tile0 / kGroupKTiles + row, bar);
  }
}

// Issues one stage's activation copies (all kBatch rows, one box per 64 of its k values) on `bar`.
template <typename C>
__device__ __forceinline__ void LoadActivationStage(const HopperMaps& maps, StageCursor at,
                                                    const StageSmem<C>& smem, uint32_t bar) {
#pragma unroll
  for (int box = 0; box < C::kXBoxes; ++box) {
    ptx::TensorLoad2d(smem.x + box * C::kXBoxBytes, &maps.x,
                      (at.stage * C::kStageKTiles + box * kBoxKTiles) * 16, 0, bar);
  }
}

// Warpgroup 0, one thread: fills the ring for iterations [begin, end). Weights and scales never
// change under a call, so the first ring's worth of them is requested before the grid waits for
// the previous kernel on the stream (programmatic dependent launch): their streaming overlaps that
// kernel's last blocks. Activations, which the previous kernel may have written, come after.
template <typename C>
__device__ __forceinline__ void ProduceStages(const HopperMaps& maps, const HopperParams& p,
                                              int begin, int end, uint32_t ring, uint32_t full,
                                              uint32_t empty) {
  const int early = end - begin < C::kStages ? end - begin : C::kStages;
  StageCursor at(p, begin);
  for (int slot = 0; slot < early; ++slot) {
    LoadWeightStage<C>(maps, p, at, StageSmem<C>(ring, slot), full + 8 * slot);
    at.Advance(p);
  }
  ptx::GridDependencyWait();
  at = StageCursor(p, begin);
  for (int slot = 0; slot < early; ++slot) {
    LoadActivationStage<C>(maps, at, StageSmem<C>(ring, slot), full + 8 * slot);
    at.Advance(p);
  }
  int slot = early % C::kStages;
  uint32_t phase = early == C::kStages ? 1 : 0;
  for (int iter = begin + early; iter < end; ++iter) {
    ptx::BarrierWait(empty + 8 * slot, phase ^ 1);
    const StageSmem<C> smem(ring, slot);
    const uint32_t bar = full + 8 * slot;
    LoadWeightStage<C>(maps, p, at, smem, bar);
    LoadActivationStage<C>(maps, at, smem, bar);
    at.Advance(p);
    if (++slot == C::kStages) {
      slot = 0;
      phase ^= 1;
    }
  }
}

// A consumer thread's place: warpgroup, warp within it, lane.
struct ConsumerRole {
  int thread;  // 0 .. kConsumerThreads-1
  int group;   // consumer warpgroup
  int warp;    // warp within the warpgroup: its 16 A rows are columns 16 warp .. 16 warp + 15
  int lane;
  __device__ __forceinline__ explicit ConsumerRole(int consumer_thread)
      : thread(consumer_thread),
        group(thread / kWarpgroupThreads),
        warp((thread / 32) % 4),
        lane(thread % 32) {}
};

// The slice tile a consumer thread's tile j is, and the first of the stage's k-tiles it multiplies.
template <typename C>
__device__ __forceinline__ int TileOf(const ConsumerRole& role, int j) {
  return C::kSplitK ? j : role.group * C::kWgTiles + j;
}
template <typename C>
__device__ __forceinline__ int FirstKTileOf(const ConsumerRole& role) {
  return C::kSplitK ? role.group * C::kWgKTiles : 0;
}

// Whether float4 `r4` of a tile is this thread's to finish: under the split-k configuration
// warpgroup 0 finishes the first half of a tile's float4s and warpgroup 1 the second (each adds
// the other's k half to its own, ExchangeKHalves); otherwise every thread finishes its own.
template <typename C>
__device__ __forceinline__ bool OwnsGroup(const ConsumerRole& role, int r4) {
  return !C::kSplitK || (r4 < C::kAccFloats / 8) == (role.group == 0);
}

template <typename C>
using HopperAccumulators = float[C::kWgTiles][C::kAccFloats];

template <typename C>
__device__ __forceinline__ void ZeroAccumulators(HopperAccumulators<C>& acc) {
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j)
#pragma unroll
    for (int i = 0; i < C::kAccFloats; ++i) acc[j][i] = 0.f;
}

// Keeps the compiler from moving accumulator reads or writes across a wgmma fence or wait.
template <typename C>
__device__ __forceinline__ void PinAccumulators(HopperAccumulators<C>& acc) {
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j)
#pragma unroll
    for (int i = 0; i < C::kAccFloats; ++i) ptx::PinRegister(acc[j][i]);
}

// The A fragment of one k-tile for this warp's 16 columns of a tile: the lane's packed word
// `warp` dequantized, scaled per column (sub-tiles 2 warp and 2 warp + 1), in mma A order.
__device__ __forceinline__ void DequantizeAFragment(uint32_t word, uint32_t scale_pair,
                                                    uint32_t (&a)[4]) {
  FragmentPair f = DequantizeWord(word);
  const half2 scales = BitsToHalf2(scale_pair);
  ScaleFragment(f.a, __low2half(scales));
  ScaleFragment(f.b, __high2half(scales));
  a[0] = *reinterpret_cast<const uint32_t*>(&f.a[0]);  // rows g, k 2t..2t+1
  a[1] = *reinterpret_cast<const uint32_t*>(&f.b[0]);  // rows g + 8
  a[2] = *reinterpret_cast<const uint32_t*>(&f.a[1]);  // rows g, k + 8
  a[3] = *reinterpret_cast<const uint32_t*>(&f.b[1]);  // rows g + 8, k + 8
}

// One ring slot's packed words and scales for this thread's A fragments.
template <typename C>
struct StageWords {
  uint32_t scale_pair[C::kWgTiles];
  uint32_t word[C::kWgKTiles][C::kWgTiles];
};

// Reads all of a slot's words and scales at once, so their shared-memory latency is paid once.
template <typename C>
__device__ __forceinline__ StageWords<C> LoadStageWords(const ConsumerRole& role,
                                                        const StageSmem<C>& smem) {
  StageWords<C> w;
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j) {
    const int tile = TileOf<C>(role, j);
    // Scales of a tile are stored column-in-sub-tile major: column 8 s + c at 8 c + s.
    const uint32_t scale_row = smem.s + FirstKTileOf<C>(role) / kGroupKTiles * C::kScaleRowBytes;
    w.scale_pair[j] =
        ptx::LoadShared4(scale_row + tile * 128 + (role.lane / 4) * 16 + role.warp * 4);
#pragma unroll
    for (int kt = 0; kt < C::kWgKTiles; ++kt) {
      w.word[kt][j] =
          ptx::LoadShared4(smem.w + ((FirstKTileOf<C>(role) + kt) * C::kBlockNTiles + tile) * 512 +
                           role.lane * 16 + role.warp * 4);
    }
  }
  return w;
}

// Dequantizes a slot's words and issues its wgmma group: kWgKTiles x this warpgroup's tiles. The
// first k-tile overwrites the accumulators instead of adding to them when `accumulate` is false
// (a segment's first stage), so they need no zeroing between segments.
template <typename C>
__device__ __forceinline__ void IssueStage(const StageWords<C>& w, uint32_t x_smem, bool accumulate,
                                           HopperAccumulators<C>& acc) {
  uint32_t a[C::kWgKTiles][C::kWgTiles][4];
#pragma unroll
  for (int kt = 0; kt < C::kWgKTiles; ++kt)
#pragma unroll
    for (int j = 0; j < C::kWgTiles; ++j) {
      DequantizeAFragment(w.word[kt][j], w.scale_pair[j], a[kt][j]);
#pragma unroll
      for (int r = 0; r < 4; ++r) ptx::PinRegister(a[kt][j][r]);
    }
  ptx::WgmmaFence();
#pragma unroll
  for (int kt = 0; kt < C::kWgKTiles; ++kt) {
    const uint64_t b_desc = ptx::Swizzle128KMajorDescriptor(
        x_smem + kt / kBoxKTiles * C::kXBoxBytes + kt % kBoxKTiles * 32);
    // Tiles past N multiply zeros (TMA fills them) and are never stored; a branch here would
    // make the compiler serialize the wgmma pipeline.
#pragma unroll
    for (int j = 0; j < C::kWgTiles; ++j)
      ptx::WgmmaF16F32<C::kBatch>(acc[j], a[kt][j], b_desc, kt > 0 || accumulate);
  }
  ptx::WgmmaCommit();
}

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
__device__ __forceinline__ void FinishSegment(const HopperParams& p, int begin, StageCursor at,
                                              const ConsumerRole& role,
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
    const int slot = SlotOf(p, blockIdx.x, at.slice);
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

// A block's ring in shared memory and the flag ShareFlag passes the verdict of an arrival in.
struct BlockSync {
  uint32_t ring;         // the first slot
  uint32_t full, empty;  // kStages mbarriers each, 8 bytes apart
  int* last_flag;
};

// Warpgroups 1..kConsumers: multiply every ring slot, release it, finish slices. Two stages'
// wgmma groups are in flight within a segment: a stage's group runs while the next slot is waited
// for, read, dequantized and issued; a slot goes back to the producer once the group that reads
// it has completed.
template <typename C>
__device__ __forceinline__ void ConsumeStages(const HopperParams& p, int begin, int end,
                                              const BlockSync& sync) {
  const ConsumerRole role(threadIdx.x - kWarpgroupThreads);
  const uint32_t full = sync.full, empty = sync.empty;
  // A block splits at most its first and its last slice with other blocks. The first one's
  // arrival happens in the loop; whether it came last is acted on after it.
  int first_split = -1, last_split = -1;
  bool first_split_last = false;
  HopperAccumulators<C> acc;
  ZeroAccumulators<C>(acc);
  int slot = 0;
  uint32_t phase = 0;
  auto release = [&](int s) {
    __syncwarp();
    if (role.lane == 0) ptx::BarrierArrive(empty + 8 * s);
  };
  // One segment (this block's stages of one slice) per outer iteration. The inner loop has no
  // branch that touches the accumulators: reading them there for a segment's end made ptxas wait
  // for every wgmma group at the loop's back edge (C7517; the SASS had a full
  // WARPGROUP.DEPBAR on every iteration, so no two groups were ever in flight).
  for (int segment_begin = begin; segment_begin < end;) {
    const int slice = segment_begin / p.stages_per_slice;
    const int segment_end = min(end, (slice + 1) * p.stages_per_slice);
    int in_flight = -1;  // the slot whose wgmma group may still be reading it
    auto consume = [&](bool first) {
      ptx::BarrierWait(full + 8 * slot, phase);
      const StageSmem<C> smem(sync.ring, slot);
      const StageWords<C> words = LoadStageWords<C>(role, smem);
      IssueStage<C>(words, smem.x + FirstKTileOf<C>(role) / kBoxKTiles * C::kXBoxBytes,
                    /*accumulate=*/!first, acc);
      ptx::WgmmaWait<1>();  // the previous stage's group is done: its slot can go back
      if (in_flight >= 0) release(in_flight);
      in_flight = slot;
      if (++slot == C::kStages) {
        slot = 0;
        phase ^= 1;
      }
    };
    // Two stages per trip, each its own copy of the code, and a third for an odd last stage:
    // wgmma reads its A fragments from registers until its group retires, so the next stage must
    // dequantize into other registers (one copy in a loop rewrote them under the group in flight:
    // wrong sums from 64 rows on).
    int iter = segment_begin;
    for (; iter + 1 < segment_end; iter += 2) {
      consume(iter == segment_begin);
      consume(false);
    }
    if (iter < segment_end) consume(iter == segment_begin);
    ptx::WgmmaWait<0>();
    PinAccumulators<C>(acc);
    release(in_flight);
    if constexpr (C::kSplitK) {
      ExchangeKHalves<C>(role, sync.ring + C::kStages * C::kStageBytes, acc);
    }
    const StageCursor last(p, segment_end - 1);
    if (p.cluster_ranks > 1) {  // one segment: its partial stays here for ReduceClusterSlice
      StashPartial<C>(p, role, sync.ring, acc);
      break;
    }
    FinishSegment<C>(p, begin, last, role, acc);
    if (!OwnsWholeSlice(p, begin, last)) {
      if (segment_end == end) {
        last_split = slice;
      } else {
        first_split = slice;
        first_split_last = ArriveAtSlice(p, slice, role);
      }
    }
    segment_begin = segment_end;
  }
  if (first_split >= 0 && ShareFlag(first_split_last, role, sync.last_flag)) {
    SumSlice<C>(p, first_split, role);
  }
  if (last_split >= 0 && ShareFlag(ArriveAtSlice(p, last_split, role), role, sync.last_flag)) {
    SumSlice<C>(p, last_split, role);
  }
}

template <typename C>
__global__ void __launch_bounds__(kThreads, 1)
    HopperGemmKernel(const __grid_constant__ HopperMaps maps, const HopperParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) uint8_t smem[];
  __shared__ __align__(8) uint64_t full_bars[C::kStages];
  __shared__ __align__(8) uint64_t empty_bars[C::kStages];
  __shared__ int last_flag;
  // TMA's 128-byte swizzle repeats every 1024 bytes: the ring starts on such a boundary.
  const BlockSync sync{.ring = (ptx::SharedAddress(smem) + 1023) & ~1023u,
                       .full = ptx::SharedAddress(full_bars),
                       .empty = ptx::SharedAddress(empty_bars),
                       .last_flag = &last_flag};
  const int begin = FirstIteration(p, blockIdx.x);
  const int end = FirstIteration(p, blockIdx.x + 1);

  if (threadIdx.x == 0) {
    for (int s = 0; s < C::kStages; ++s) {
      ptx::BarrierInit(sync.full + 8 * s, 1);                // the producer's expect_tx arrival
      ptx::BarrierInit(sync.empty + 8 * s, kConsumers * 4);  // one arrival per consumer warp
    }
    ptx::FenceBarrierInit();
    ptx::PrefetchTensorMap(&maps.x);
    ptx::PrefetchTensorMap(&maps.w);
    ptx::PrefetchTensorMap(&maps.s);
  }
  __syncthreads();

  // The next kernel on the stream may be scheduled now; it waits (GridDependencyWait) before it
  // touches anything this one writes.
  ptx::LaunchDependents();
  if (threadIdx.x < kWarpgroupThreads) {
    ptx::LowerRegisterBudget<kProducerRegisters>();
    if (threadIdx.x == 0) ProduceStages<C>(maps, p, begin, end, sync.ring, sync.full, sync.empty);
    if (p.cluster_ranks > 1) {  // the consumers' two cluster syncs need every thread
      ptx::ClusterSync();
      ptx::ClusterSync();
    }
  } else {
    ptx::RaiseRegisterBudget<kConsumerRegisters>();
    ptx::GridDependencyWait();  // before the workspace and y, which the previous call used
    ConsumeStages<C>(p, begin, end, sync);
    if (p.cluster_ranks > 1) {
      const ConsumerRole role(threadIdx.x - kWarpgroupThreads);
      ptx::ClusterSync();  // every block's partial is stashed
      ReduceClusterSlice<C>(p, begin / p.stages_per_slice, role, sync.ring);
      ptx::ClusterSync();  // no block exits while another still reads its shared memory
    }
  }
#endif
}

}  // namespace marlin::cuda::hopper

#endif  // MARLIN_KERNELS_CUDA_HOPPER_KERNEL_CUH_
