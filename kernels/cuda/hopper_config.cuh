// The Hopper kernel's shapes and shared types: the per-row-count configurations (tiles, stage
// depth, ring, registers), the launch parameters and partition, the ring's slot layout, a consumer
// thread's role and its accumulators. Included by hopper_kernel.cuh and hopper_epilogue.cuh.
//
//   using C = HopperConfig</*kBatch=*/16, /*kWgTiles=*/1, /*kSplitK=*/true>;
//   static_assert(C::kSmemBytes <= 227 * 1024);
#ifndef MARLIN_KERNELS_CUDA_HOPPER_CONFIG_CUH_
#define MARLIN_KERNELS_CUDA_HOPPER_CONFIG_CUH_

#include <cuda.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/hopper_ptx.cuh"
#include "kernels/cuda/striped_partition.cuh"

namespace marlin::cuda::hopper {

inline constexpr int kWarpgroupThreads = 128;
inline constexpr int kBoxKTiles = 4;    // k-tiles of one activation box: 64 k, 128-byte rows
inline constexpr int kGroupKTiles = 8;  // 128-row scale groups
inline constexpr int kRegisterFile = 64 * 1024;  // 32-bit registers of one SM
// Dynamic shared memory a block may use on sm_90, less the 1 KB the ring's alignment may cost.
inline constexpr int kRingBudgetBytes = 227 * 1024 - 1024;
inline constexpr int kMaxStages = 12;
inline constexpr int kConsumerBarrier = 1;  // named barrier id among the consumer warpgroups
inline constexpr int kMaxClusterRanks = 8;  // blocks per cluster, the portable limit
inline constexpr int kMaxRowParts = 2;      // row parts of one pass with a map each (HopperParams)

constexpr int RoundUp(int v, int to) { return (v + to - 1) / to * to; }

template <int kBatch_, int kWgTiles_, bool kSplitK_ = false, bool kGroupStages_ = false,
          bool kPartSlices_ = false, int kConsumers_ = 2>
struct HopperConfig {
  static constexpr int kBatch = kBatch_;          // activation rows per pass (wgmma N), zero-padded
  static constexpr int kWgTiles = kWgTiles_;      // 64-column tiles per consumer warpgroup
  static constexpr int kConsumers = kConsumers_;  // consumer warpgroups per block
  static constexpr int kThreads = kWarpgroupThreads * (1 + kConsumers);
  static constexpr int kConsumerThreads = kWarpgroupThreads * kConsumers;
  // Register budgets after setmaxnreg. A block launches with the most registers a thread that
  // lets kThreads threads fit the register file (in steps of 8); the producer warpgroup gives
  // most of its share back and the consumers take it, so the block never holds more than it
  // launched with (setmaxnreg.inc draws only on what this block's setmaxnreg.dec released): 168
  // -> 40 / 232 with two consumer warpgroups, 128 -> 24 / 160 with three, 96 -> 24 / 112 with
  // four.
  static constexpr int kLaunchRegisters = kRegisterFile / kThreads / 8 * 8;
  static constexpr int kProducerRegisters = kConsumers == 2 ? 40 : 24;
  static constexpr int kConsumerRegisters =
      (kLaunchRegisters +
       (kLaunchRegisters - kProducerRegisters) * kWarpgroupThreads / kConsumerThreads) /
      8 * 8;
  static_assert(kConsumers == 2 || (kConsumers >= 3 && kConsumers <= 4 && !kSplitK_),
                "2-4 consumer warpgroups, split-k with 2");
  // Whether the consumer warpgroups split each stage's k-tiles between them (both multiply the
  // same tiles, and add their halves at a segment's end) instead of taking different tiles: half
  // as many columns per slice, four times the k per stage.
  static constexpr bool kSplitK = kSplitK_;
  static constexpr int kKGroups = kSplitK ? kConsumers : 1;  // warpgroups sharing a tile
  static constexpr int kBlockNTiles = kWgTiles * kConsumers / kKGroups;  // 64-column tiles/slice
  // Whether every warpgroup takes a whole scale group (128 k) a stage instead of half of one: half
  // as many stages, each with twice the wgmmas to share a consumer's fixed cost per stage.
  static constexpr bool kGroupStages = kGroupStages_;
  // Whether the launch's slices run over several whole row parts (a striped tall launch,
  // hopper_gemm.cu): slice s is column slice s % part_slices of row part s / part_slices
  // (SliceCoordsOf), so the striped partition spreads every part's work over one grid.
  static constexpr bool kPartSlices = kPartSlices_;
  // k-tiles a warpgroup multiplies per stage: a split-k warpgroup takes a whole scale group, so
  // its stage moves as many weight bytes as a wide one's (a consumer's cost per stage is mostly
  // fixed).
  static constexpr int kWgKTiles = kSplitK || kGroupStages ? kGroupKTiles : kBoxKTiles;
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
  // Stages per scale group: a split-k or group-stage warpgroup's stage is a whole group, any other
  // one's half of one.
  static constexpr int kStagesPerGroup = kGroupKTiles / kWgKTiles;
  // Whether the scales are applied to FP32 products instead of to the dequantized weights: each
  // scale group multiplies q itself into a product, which is added to the running sum times its
  // scales once the group is done. That saves four of a packed word's thirteen dequantization
  // instructions and the FP16 rounding of q x s (a stage is one group or half of one). Measured on
  // the H100 (each alternated twice with its base in one call): split-k, L8B.qkv 10.0 -> 9.4 us and
  // L8B.down 17.9 -> 16.8 at 16 rows, L70B.o 18.0 -> 16.9-17.1; wide, L8B.gate/up 24.6-25.8
  // -> 23.0-23.8 us at 1-8 rows, 16384^2 55.0 -> 52.9-53.2 at 32, the 70B layers 0-2% faster. At 64
  // rows, whose 32 products a thread adds a stage, split-k L8B.o and L8B.qkv were 1-2% slower, so
  // not there (and the wide 64-row configuration lacks the registers).
  //
  // Without kScalesInFp32 (from 64 rows on) the scale is fused into the dequantizing FMA
  // (hopper_dequant.cuh, DequantizeStageScaled): a packed word takes four LOP3, one SHF and four
  // HFMA2 instead of thirteen instructions, the weights divided by a power of two per column and
  // segment that the sums are multiplied back by. Measured on an H200 (session 27, each build
  // twice in one call, per-model speedups over cuBLAS FP16): at 64 rows L70B 2.10 -> 2.18,
  // 16384^2 1.60 -> 1.68, L8B 1.62 -> 1.66 (L70B.down 70.9 -> 65.6-66.9 us); at 40 rows
  // 1.76-1.81 -> 1.84-1.87 (L70B); in the 80-112-row configurations 2-7% more (L70B.gate/up 96
  // rows 193-202 -> 180-184 us). At 16 and 32 rows in place of kScalesInFp32 it lost 5-13% (L70B.o
  // 13.0 -> 14.8 us at 16 rows). In the 128-256-row configurations (session 29, H200, likewise; no
  // register or spill change): the geometric mean of the benchmark's 9 layers 1.6% faster at 160
  // rows, 2.0% at 256, 1.4% at 512, level at 120 and 1024 (L8B.qkv 256 rows 28.1-28.5 -> 25.6-27.4
  // us, L70B.gate/up 160 rows 274-280 -> 262-269).
  static constexpr bool kScalesInFp32 = kBatch <= 32;
  // Whether a striped block processes a last segment that another block sums before its other
  // segments (hopper_kernel.cuh, BlockOrder). Measured on the H100 (a build with it everywhere
  // against one without, alternated three times in one call): L70B.qkv, narrow and striped, 19.9 ->
  // 18.8-19.0 us at 4 rows, 20.2-20.4 -> 19.2-19.4 at 16, 21.2-21.5 -> 20.5-20.8 at 32;
  // L70B.gate/up, wide and striped at 64 rows, 118.8-119.4 -> 117.1-118.0 (the three-consumer
  // configuration that replaced it in session 19 runs without it, not measured with it).
  // Elsewhere its code cost: ptxas spilled more in the 64-row narrow and split-k configurations,
  // and L8B.qkv at 64 rows (split-k, no striped block) went from 10.3-10.7 to 11.1-11.2 us. The
  // 256-row ones took it in session 17 (its first call, both builds alternated twice, striped,
  // H100): L70B.down 1454-1459
  // -> 1061-1082 us at 1536 rows (a striped tall launch), 575-585 -> 547 at 768; L8B.down 357 ->
  // 295-308 at 1536; L70B.qkv 83.0-85.0 -> 81.4-82.3 at 256 rows (a pass); no spills. Then the
  // 128-row one (its third call, likewise): as dispatched, the benchmark's 9 layers 1.5% faster at
  // 128 rows and 2.8% at 192 (geometric means of each build's better run), level at 96; no
  // spills.
  static constexpr bool kLastSegmentFirst =
      (kBatch <= 32 && kWgTiles == 1 && !kSplitK) || kBatch >= 128;
  // Products a consumer keeps under kScalesInFp32: two where a scale group is one stage (the
  // narrow and split-k configurations and the 8-row wide one), multiplied into in turn so that a
  // group is issued before the previous one has joined the sum (ConsumeStages); else one, which
  // every group's first stage waits on in full (wgmma.wait_group 0) before the group can be
  // issued, emptying the wgmma queue once a group. In the SASS of the one-product loop every
  // stage dequantizes only after the previous group has retired: ptxas gives its A fragments that
  // group's registers. Split-k kept one up to 16 rows while each of its wgmmas rebuilt its
  // descriptor (two made its 1-8-row calls 1-6% slower on an H200, sessions 30 and 35, and 4%
  // faster at 32 rows, which took two). With the descriptors on the uniform datapath (session 38,
  // H200, each build three times in turn in one call, us): L8B.down 10.9 (x3) -> 10.7 (x3) at 1-4
  // rows, L8B.qkv 6.8 -> 6.7, L70B.o 11.5-11.6 -> 11.4-11.5 at 1-8, level at 12-16 rows.
  static constexpr int kProducts = !kScalesInFp32 ? 0 : (kStagesPerGroup == 1 ? 2 : 1);
  static constexpr int kAccSets = 1 + kProducts;  // the sum and the products
  // Where a split-k warpgroup leaves the float4s the other one owns (ExchangeKHalves).
  static constexpr int kExchangeBytes = kSplitK ? kWgTiles * kAccFloats * 4 * kWarpgroupThreads : 0;
  // The ring's share: the exchange and (a split-k block's smem can reach the limit) the static
  // barriers come off the budget.
  static constexpr int kRingBytes = kRingBudgetBytes - (kSplitK ? kExchangeBytes + 1024 : 0);
  static constexpr int kStages =
      kRingBytes / kStageBytes < kMaxStages ? kRingBytes / kStageBytes : kMaxStages;
  static constexpr int kSmemBytes = kStages * kStageBytes + kExchangeBytes + 1024;
  // Stages whose weights a block requests before the grid waits for the previous kernel
  // (ProduceStages); their activation boxes all go out as soon as it has. Measured on the H100
  // (session 13, each alternated four times with 12 in one call): a split-k block, whose stage
  // carries 2-4x the activation bytes of a wide or narrow one and whose call mostly ends with
  // every block at once, started its loop sooner with fewer (at 4, L8B.o 7.9 -> 7.3 us at 16 rows,
  // L70B.o 16.9 -> 16.0 at 32; 3 was no better); the other configurations, whose one producer
  // thread then issued both kinds of copy, lost with 8 (L70B.qkv 19.0 -> 19.5-20.5 us at 1 row).
  // Since session 25 two threads issue them. On an H200 (session 36, three rounds of each build
  // in turn in each of two calls; us, best round) 2 and 8 won: split-k L8B.o 5.5 -> 5.3 at 1 row,
  // 6.5 -> 6.3 at 32, 8.1 -> 7.7 at 64, L8B.qkv 10.3 -> 10.0 at 64 (7.0 -> 7.1 at 1-8), L70B.o
  // 12.3 -> 12.2 at 1 row; the others L70B.qkv 16.2 -> 15.9 at 16 rows, L70B.gate/up 66.6 ->
  // 65.4, 16384^2 37.7 -> 37.4; the 70B block 1.2-1.5% faster at 8-16 rows. A ring's worth (12)
  // everywhere was 4-14% slower on the split-k layers (L8B.o 5.5 -> 6.2 at 8 rows). From 64 rows
  // the other configurations keep theirs (their rings hold 5-9 stages; 16384^2 read 67.4 -> 68.6
  // at 64 rows with 8).
  static constexpr int kEarlyStages = kSplitK        ? (kStages > 2 ? 2 : kStages)
                                      : kBatch <= 32 ? (kStages > 8 ? 8 : kStages)
                                                     : kStages;
  // Two stages' wgmma groups are in flight: the accumulators and two stages' A fragments must fit
  // the registers ptxas allocates, the launch's (two tiles at 128 rows did not; ptxas serialized
  // the groups, C7512).
  static_assert(kAccSets * kWgTiles * kAccFloats + 2 * kWgKTiles * kWgTiles * 4 <=
                    kLaunchRegisters - 8,
                "no registers for two wgmma groups in flight");
  // One block's partial of a slice: every consumer thread's accumulators (under the split-k
  // configuration half of them stay unused).
  static constexpr int kSlotFloats = kWgTiles * kAccFloats * kConsumerThreads;
  static_assert(kXBoxBytes % 1024 == 0, "swizzle atoms must stay 1024-byte aligned");
  static_assert(!kSplitK || kWgKTiles == kGroupKTiles, "a split-k warpgroup's k is one group");
  static_assert(kStages >= 3, "the ring needs depth");
  static_assert(kAccFloats % 4 == 0, "partials move as float4");
};

// Where the cluster split's partials lie in an owner's idle ring (hopper_epilogue.cuh,
// ScatterPartials): one share per rank, in rank order, each the float4s of every tile that the
// owner owns (float4 r4 of a tile belongs to rank r4 % ranks), thread-minor, so a warp's stores
// and loads cover 512 contiguous bytes.
//
// The shares complete on two barriers of the owner's (`shares`, hopper_kernel.cuh): float4s r4 <
// kEarlyGroups of tile 0 on the first, the rest on the second, so that the owner sums the first
// while the rest are still on their way (SumOwnedPartials).
template <typename C>
struct ClusterShare {
  // Float4s an owner sums and stores together: at most 4 (a chunk's stores then overlap the next
  // chunk's loads; 8 took 0.25-0.5 us longer at 128 rows, H200, session 39), and no more than two
  // ranks leave each (more than a rank owns would transpose and exchange float4s nobody stores).
  static constexpr int kChunk = (C::kAccFloats / 4 + 1) / 2 < 4 ? (C::kAccFloats / 4 + 1) / 2 : 4;
  static constexpr int kEarlyGroups = C::kAccFloats / 8;  // the first half of tile 0's float4s
  int vecs;        // float4s of a tile that one rank owns, at most
  uint32_t bytes;  // one rank's share
  __host__ __device__ constexpr explicit ClusterShare(int ranks)
      : vecs((C::kAccFloats / 4 + ranks - 1) / ranks),
        bytes(static_cast<uint32_t>(C::kWgTiles * vecs * C::kConsumerThreads * 16)) {}
  // Which of the owner's two barriers float4 r4 of tile j completes on.
  static __device__ __forceinline__ int BarrierOf(int j, int r4) {
    return j == 0 && r4 < kEarlyGroups ? 0 : 1;
  }
  // Byte offset of rank `from`'s share of float4 `index` (of those the owner owns) of tile j,
  // consumer thread `thread`.
  __device__ __forceinline__ uint32_t Offset(int from, int j, int index, int thread) const {
    return from * bytes +
           static_cast<uint32_t>(((j * vecs + index) * C::kConsumerThreads + thread) * 16);
  }
};

// The most blocks per cluster configuration C's cluster split may take: every rank's share must
// fit an owner's idle ring (with one share per rank, about one whole partial for any count).
template <typename C>
constexpr int ClusterRanksOf() {
  int most = 1;
  for (int ranks = 2; ranks <= kMaxClusterRanks; ++ranks) {
    if (ranks * ClusterShare<C>(ranks).bytes <= C::kStages * C::kStageBytes) most = ranks;
  }
  return most;
}

// How a launch's grid covers the rows: one row part (or, with HopperConfig::kPartSlices, every
// part's slices under one striped partition); up to kMaxRowParts parts, each with its own
// activation map and share of the workspace; or (a tall launch in waves) any number of whole
// kBatch-row parts of one activation map, each block on one (part, slice) under the cluster split,
// so no part touches the workspace.
enum class RowSplit { kOnePart, kPartMaps, kTall };

// A launch of one or more row parts: row part q (rows [q kBatch, (q + 1) kBatch)) runs on blocks
// [q grid, (q + 1) grid) with its rows of x and y and (kPartMaps) its share of the workspace; the
// kernel narrows these parameters to its part (RowPart). Every part streams the whole weight (the
// parts' blocks run side by side, so the later reads mostly hit L2), and each sums partials of
// kBatch rows only.
struct HopperParams {
  __half* y;   // m_rows x n output (of the block's row part, after RowPart)
  int m_rows;  // rows (of the block's row part, after RowPart: <= kBatch; of the launch with
               // kPartSlices)
  // Rows of the activations each box holds: the part's rows for a pass's own maps, kBatch for a
  // tall launch's one map. A copy brings XBoxRows of them (TMA fills the rows past the map with
  // zeros and counts them).
  int box_rows;
  int n;
  int k_tiles;  // k / 16
  int n_tiles;  // n / 64
  bool per_channel;
  bool word_major_tiles;  // the weight's DeviceLayout is kWordMajorTiles (else kPacked)
  int stages_per_slice;   // ceil(k_tiles / C::kStageKTiles)
  int total_iters;        // slices * stages_per_slice
  int grid;               // blocks per row part (the partition's grid)
  int* counters;          // one arrival counter per block index, zero between calls
  float* partials;        // 2 slots of kSlotFloats per block
  // 0: the striped partition. r >= 1: the cluster split, r blocks (one cluster) per slice; block b
  // takes stages [(b % r) S / r, (b % r + 1) S / r) of slice b / r, S = stages_per_slice.
  int cluster_ranks;
  int x_row0;       // the row part's first row in its activation map: 0 but in RowSplit::kTall
  int part_slices;  // column slices of one row part (configurations with kPartSlices)
};

// Whether a stage's activation boxes (one per 64 k) arrive in one copy: in configurations of more
// than two boxes a stage (split-k), where k is a whole number of boxes. The activation map is then
// 3D ({64 k, rows, k / 64}) and one box of it spans the stage's boxes; else each box is a copy of
// a 2D map ({k, rows}), so nothing past a row's k is read as the next row's. Each copy costs a
// block's producer a fixed time (H100, session 24: a timing probe that brought one of a split-k
// stage's four boxes took L70B.o from 14.9, 14.9 to 13.6, 13.5 us at one row, L8B.qkv from 9.0,
// 9.0 to 8.3, 7.5). Both builds alternated twice in one call, us at 1 / 16 / 32 rows, with the
// scale rows in one copy too (LoadWeightStage): L70B.o 14.6, 15.1 / 14.7, 14.9 / 16.1, 16.1
// -> 14.2, 14.1 / 14.1, 14.0 / 15.0, 14.8; L8B.qkv 8.0, 8.3 / 8.1, 8.0 / 8.6, 9.3 -> 9.8, 7.8
// / 7.5, 7.6 / 8.2, 8.0; L8B.down 13.7, 13.8 / 14.0, 13.8 / 15.0, 15.1 -> 13.2, 12.9 / 13.0, 13.1
// / 14.0, 14.1; L8B.o, eight stages a block, lost: 5.7, 5.7 / 5.8, 5.9 / 6.4, 6.4 -> 5.9, 5.8
// / 6.0, 6.0 / 6.6, 6.6. With one or two boxes a stage a 3D copy lost (a build with it everywhere):
// L8B.gate/up (wide, one box) 23.1, 23.2 -> 23.9, 23.6 us at 16 rows, L70B.down (narrow,
// two) 41.7, 41.6 -> 42.4, 42.2 at one row.
template <typename C>
__host__ __device__ constexpr bool XBoxesInOneCopy(int k_tiles) {
  return C::kXBoxes > 2 && k_tiles % kBoxKTiles == 0;
}

// Rows of each activation box in the ring: a copy of each box brings `box_rows` rows; one copy of
// a stage's boxes brings them rounded up to the 8 rows of a 1024-byte swizzle atom (TMA fills the
// rows past the map with zeros and counts them), so that every box in it starts on one. A box's
// rows past `box_rows` reach only output rows past the part's, which are never stored or summed.
template <typename C>
__host__ __device__ constexpr int XBoxRows(int box_rows, int k_tiles) {
  return XBoxesInOneCopy<C>(k_tiles) ? (box_rows + 7) / 8 * 8 : box_rows;
}

// Bytes from one activation box of a stage to the next in the ring: XBoxRows rows where one copy
// brings them back to back, else C::kXBoxBytes (a box's place).
template <typename C>
__host__ __device__ constexpr int XBoxStride(int box_rows, int k_tiles) {
  return XBoxesInOneCopy<C>(k_tiles) ? XBoxRows<C>(box_rows, k_tiles) * 128 : C::kXBoxBytes;
}

// The row part and column slice of slice `slice` of a launch (HopperConfig::kPartSlices).
struct SliceCoords {
  int part;
  int column_slice;
};
template <typename C>
__device__ __forceinline__ SliceCoords SliceCoordsOf(const HopperParams& p, int slice) {
  if constexpr (C::kPartSlices) {
    const int part = slice / p.part_slices;
    return {part, slice - part * p.part_slices};
  } else {
    return {0, slice};
  }
}

// The row part block `block_index` of the launch works on, and its index within that part.
struct RowPartOf {
  int part;
  int block;
  __device__ __forceinline__ RowPartOf(const HopperParams& pass, int block_index)
      : part(block_index / pass.grid), block(block_index - part * pass.grid) {}
};

// The launch's parameters narrowed to row part `part`: its rows of y and x, its counters and
// partials (none in a tall launch).
template <typename C, RowSplit kSplit>
__device__ __forceinline__ HopperParams RowPart(const HopperParams& pass, int part) {
  HopperParams p = pass;
  const int row0 = part * C::kBatch;
  p.y += static_cast<int64_t>(row0) * pass.n;
  p.m_rows = min(C::kBatch, pass.m_rows - row0);
  if constexpr (kSplit == RowSplit::kPartMaps) p.box_rows = p.m_rows;
  if constexpr (kSplit == RowSplit::kTall) {
    p.x_row0 = row0;
    p.counters = nullptr;
    p.partials = nullptr;
  } else {
    p.counters += part * pass.grid;
    p.partials += static_cast<int64_t>(part) * pass.grid * 2 * C::kSlotFloats;
  }
  return p;
}

// First iteration of block b under the pass's partition (block `grid` gives the end).
__device__ __forceinline__ int FirstIteration(const HopperParams& p, int b) {
  if (p.cluster_ranks == 0) return BlockBegin(p, b);
  const int r = p.cluster_ranks;
  return b / r * p.stages_per_slice + b % r * p.stages_per_slice / r;
}

// The tensor maps of one launch: activations of each row part (FP16, {k, rows of the part}, box
// {64, rows of the part}, 128-byte swizzle; unused parts repeat part 0; a tall launch's one map
// holds every part's rows, box {64, kBatch}), packed weights (8-byte
// words, {64, n_tiles, k_tiles}, box {64, kBlockNTiles, C::kStageKTiles}) and scales (FP16, {n,
// groups}, box {kBlockNTiles * 64, 1}).
struct HopperMaps {
  CUtensorMap x[kMaxRowParts];
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

// A consumer thread's place: warpgroup, warp within it, lane.
struct ConsumerRole {
  int thread;  // 0 .. the configuration's kConsumerThreads - 1
  int group;   // consumer warpgroup
  int warp;    // warp within the warpgroup: its 16 A rows are columns 16 warp .. 16 warp + 15
  int lane;
  __device__ __forceinline__ explicit ConsumerRole(int consumer_thread)
      : thread(consumer_thread),
        group(thread / kWarpgroupThreads),
        warp((thread / 32) % 4),
        lane(thread % 32) {}
};

// Where in a 512-byte weight tile the thread's packed word lies (device_layout.h): word `warp` of
// lane `lane`. Grouped by word (kWordMajorTiles), a warp's loads hit 32 banks; packed, 8.
__device__ __forceinline__ uint32_t TileWordOffset(const ConsumerRole& role, bool word_major) {
  return word_major ? role.warp * 128 + role.lane * 4 : role.lane * 16 + role.warp * 4;
}

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

}  // namespace marlin::cuda::hopper

#endif  // MARLIN_KERNELS_CUDA_HOPPER_CONFIG_CUH_
