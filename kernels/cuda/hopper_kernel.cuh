// The FP16 x INT4 kernel for Hopper (sm_90a): TMA into an mbarrier ring, warp specialization,
// dequantization in registers feeding wgmma. Included only by hopper_gemm.cu.
//
// The product is computed transposed, y^T = W^T x^T, so the weights are wgmma's A operand (64
// output columns x 16 k, in registers: one packed word per lane and k-tile dequantizes straight
// into a warp's A fragment) and the activations its B operand (16 k x kBatch rows, read by the
// tensor cores from shared memory in the 128-byte-swizzled layout TMA writes). Column slices of
// kBlockNTiles 64-column tiles and k stages (64 k; 128 under group stages, 256 for split-k) are
// spread over a persistent grid by the Ampere kernel's striped partition (striped_partition.cuh), a
// split slice summed by the block holding its final stages once the others have signalled, or by
// the cluster split (below). Shapes and shared types are in hopper_config.cuh, how a segment is
// finished and summed in hopper_epilogue.cuh.
//
// A block is 1 + C::kConsumers warpgroups (two consumers; three or four in a few configurations).
// Warpgroup 0 is the producer: for each ring slot, once it is free, one thread issues the TMA
// copies of its packed weights and scales and a thread of another warp those of its activations
// (in split-k one thread issues both), all completing on the slot's `full` barrier. The others
// consume: each multiplies kWgTiles of the slice's tiles for all rows, then releases the
// slot on its `empty` barrier. setmaxnreg moves registers from the producer to the consumers,
// whose accumulators are kWgTiles x kBatch / 2 per thread.
// In the split-k configurations both consumer warpgroups multiply the same 64-column tile, each
// half of a stage's 256 k, and add their halves through shared memory at a segment's end.
//
// Where every slice can have a co-resident cluster of blocks (small and mid-size layers), the host
// picks the cluster split instead of the striped partition: block b takes k part b % r of slice
// b / r; the ranks reduce-scatter their partials through each other's idle rings over distributed
// shared memory, each summing and storing 1 / r of the slice: no global partials, fences or
// arrival counters.
#ifndef MARLIN_KERNELS_CUDA_HOPPER_KERNEL_CUH_
#define MARLIN_KERNELS_CUDA_HOPPER_KERNEL_CUH_

#include <cuda.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/hopper_config.cuh"
#include "kernels/cuda/hopper_dequant.cuh"
#include "kernels/cuda/hopper_epilogue.cuh"
#include "kernels/cuda/hopper_ptx.cuh"
#include "kernels/cuda/hopper_trace.cuh"
#include "kernels/cuda/ptx_helpers.cuh"
#include "kernels/cuda/striped_partition.cuh"
#include "kernels/cuda/wgmma_ops.cuh"

namespace marlin::cuda::hopper {

// The bytes of one stage's C::kXBoxes activation boxes of XBoxRows rows (EncodeActivationMap).
template <typename C>
__device__ __forceinline__ uint32_t StageActivationBytes(const HopperParams& p) {
  return C::kXBoxes * XBoxRows<C>(p.box_rows, p.k_tiles) * 128;
}

// Issues one stage's weight and scale copies on `bar`, announcing their bytes (one of the slot's
// two arrivals: LoadActivationStage makes the other). A stage's scale rows
// (its scale groups) come in one copy, per channel each a copy of the one row: each copy costs the
// producer a fixed time (XBoxesInOneCopy). Measured on the H100 (session 24, alternated twice in
// one call with two copies a split-k stage, us at one row): L70B.o 14.9, 14.9 -> 14.3, 13.8;
// L8B.qkv 9.0, 9.0 -> 8.6, 8.7; L8B.down 13.9, 13.7 -> 13.3, 13.2.
template <typename C>
__device__ __forceinline__ void LoadWeightStage(const HopperMaps& maps, const HopperParams& p,
                                                StageCursor at, const StageSmem<C>& smem,
                                                uint32_t bar) {
  const int k_tile0 = at.stage * C::kStageKTiles;
  const int n_tile0 = SliceCoordsOf<C>(p, at.slice).column_slice * C::kBlockNTiles;
  ptx::BarrierArriveExpectBytes(bar, C::kWBytes + C::kSBytes);
  ptx::TensorLoad3d(smem.w, &maps.w, 0, n_tile0, k_tile0, bar);
  if (!p.per_channel) {
    ptx::TensorLoad2d(smem.s, &maps.s, n_tile0 * 64, k_tile0 / kGroupKTiles, bar);
    return;
  }
#pragma unroll
  for (int row = 0; row < C::kScaleRows; ++row) {
    ptx::TensorLoad2d(smem.s + row * C::kScaleRowBytes, &maps.s, n_tile0 * 64, 0, bar);
  }
}

// Issues one stage's activation copies (the row part's rows, from row p.x_row0 of `x_map` or, with
// C::kPartSlices, from the first row of the slice's part, one box per 64 of its k values) on `bar`:
// one copy of all its boxes where XBoxesInOneCopy, else one a box, each at its place.
template <typename C>
__device__ __forceinline__ void LoadActivationStage(const CUtensorMap* x_map, const HopperParams& p,
                                                    StageCursor at, const StageSmem<C>& smem,
                                                    uint32_t bar) {
  const int row0 = p.x_row0 + SliceCoordsOf<C>(p, at.slice).part * C::kBatch;
  const int box0 = at.stage * C::kStageKTiles / kBoxKTiles;
  ptx::BarrierArriveExpectBytes(bar, StageActivationBytes<C>(p));
  if (XBoxesInOneCopy<C>(p.k_tiles)) {
    ptx::TensorLoad3d(smem.x, x_map, 0, row0, box0, bar);
    return;
  }
#pragma unroll
  for (int box = 0; box < C::kXBoxes; ++box) {
    ptx::TensorLoad2d(smem.x + box * C::kXBoxBytes, x_map, (box0 + box) * 64, row0, bar);
  }
}

// The order a block processes its iterations [begin, end) in: [mid, end), then [begin, mid).
// Under the striped partition, in configurations with C::kLastSegmentFirst, a last segment that
// ends inside its slice (a later block holds the slice's final stages and sums it) comes first:
// its partial is written and signalled early in the main loop instead of at its end, so the block
// that sums the slice rarely waits once its own loop is done. Otherwise (one segment, a range
// ending on a slice boundary, the cluster split) mid == begin.
template <typename C>
struct BlockOrder {
  int begin, mid, end;
  __device__ __forceinline__ BlockOrder(const HopperParams& p, int begin_, int end_)
      : begin(begin_), mid(begin_), end(end_) {
    if constexpr (C::kLastSegmentFirst) {
      const int last_slice_begin = (end - 1) / p.stages_per_slice * p.stages_per_slice;
      if (p.cluster_ranks == 0 && end % p.stages_per_slice != 0 && last_slice_begin > begin) {
        mid = last_slice_begin;
      }
    }
  }
  // Moves `at` on to the next stage in this order once `done` - begin stages are processed;
  // `restart` is iteration `begin`'s cursor.
  template <typename P>
  __device__ __forceinline__ void Advance(const P& p, int done, const StageCursor& restart,
                                          StageCursor& at) const {
    at.Advance(p);
    if constexpr (C::kLastSegmentFirst) {
      if (done == begin + (end - mid)) at = restart;  // [mid, end) done: on to `begin`
    }
  }
};

// What a producer thread copies into the ring: every slot takes two arrivals on its `full`
// barrier, one with the weight and scale copies' bytes, one with the activation copies'.
enum class StageCopies { kWeights, kActivations, kBoth };

// Warpgroup 0, one thread (or two, one for each half of StageCopies): fills the ring for the
// block's iterations, in BlockOrder. Weights and scales never change under a call, so the first
// C::kEarlyStages stages of them (2, 8 or a ring's worth) are requested before the grid waits
// for the previous kernel on the stream (programmatic dependent launch): their streaming overlaps
// that kernel's last blocks. Activations (of the block's row part: `x_map`), which the previous
// kernel may have written, come after; so does the rest of the ring, whose slots are still fresh (a
// wait for the parity before a fresh barrier's first phase returns at once).
template <typename C, StageCopies kCopies>
__device__ __forceinline__ void ProduceStages(const HopperMaps& maps, const CUtensorMap* x_map,
                                              const HopperParams& p, const BlockOrder<C>& order,
                                              uint32_t ring, uint32_t full, uint32_t empty) {
  constexpr bool kWeights = kCopies != StageCopies::kActivations;
  constexpr bool kActivations = kCopies != StageCopies::kWeights;
  const int begin = order.begin, end = order.end;
  const int early = end - begin < C::kEarlyStages ? end - begin : C::kEarlyStages;
  const StageCursor restart(p, begin);
  StageCursor at(p, order.mid);
  if constexpr (kWeights) {
    for (int slot = 0; slot < early; ++slot) {
      LoadWeightStage<C>(maps, p, at, StageSmem<C>(ring, slot), full + 8 * slot);
      order.Advance(p, begin + slot + 1, restart, at);
    }
  }
  ptx::GridDependencyWait();
  if constexpr (kActivations) {
    at = StageCursor(p, order.mid);
    for (int slot = 0; slot < early; ++slot) {
      LoadActivationStage<C>(x_map, p, at, StageSmem<C>(ring, slot), full + 8 * slot);
      order.Advance(p, begin + slot + 1, restart, at);
    }
  }
  int slot = early % C::kStages;
  uint32_t phase = early == C::kStages ? 1 : 0;
  for (int iter = begin + early; iter < end; ++iter) {
    ptx::BarrierWait(empty + 8 * slot, phase ^ 1);
    const StageSmem<C> smem(ring, slot);
    const uint32_t bar = full + 8 * slot;
    if constexpr (kWeights) LoadWeightStage<C>(maps, p, at, smem, bar);
    if constexpr (kActivations) LoadActivationStage<C>(x_map, p, at, smem, bar);
    order.Advance(p, iter + 1, restart, at);
    if (++slot == C::kStages) {
      slot = 0;
      phase ^= 1;
    }
  }
}

// Issues one stage's wgmma group from its fragments into `d` (activation boxes `x_box_bytes`
// apart from `x_smem` on); the first k-tile overwrites `d` instead of adding to it when
// `accumulate` is false.
//
// Each k-tile's descriptor is the stage's plus one 64-bit add, from a base whose bits the
// compiler cannot see (HideValue): where the descriptor is warp-uniform, ptxas then steps the
// uniform register pair each wgmma reads with one UIADD3.64, where it had rebuilt both words of
// the pair for every wgmma. Split-k's descriptors start at its warpgroup's half of the stage, an
// offset made warp-uniform to ptxas (WarpUniform in ConsumeStages): before that they kept a
// low-word add, and each wgmma took two R2UR and a rebuilt high word (session 38).
// ptxas 13.0, the innermost loop's SASS, before -> after: 8-row narrow 582 -> 537 instructions a
// four-stage trip, 16-row narrow 598 -> 553, 32-row trio 615 -> 587, 8-row wide 495 -> 469 a
// two-stage one, 16-row wide 280 -> 275, 64-row trio 552 -> 530, 128-row 545 -> 531, 256-row
// 341 -> 337, 16-row split-k 321 -> 322. H200, session 32, both builds twice in one call: the 70B
// block 1-2% faster at 16-32 rows (L8B.gate/up 20.7 -> 20.0 us at 16 rows); 16384^2 at 24-32 rows
// (one block a slice) 1-6% slower in two calls.
template <typename C>
__device__ __forceinline__ void IssueGroup(const StageFragments<C>& a, uint32_t x_smem,
                                           uint32_t x_box_bytes, bool accumulate,
                                           HopperAccumulators<C>& d) {
  ptx::WgmmaFence();
  uint64_t x_desc = ptx::Swizzle128KMajorDescriptor(x_smem);
  ptx::HideValue(x_desc);
#pragma unroll
  for (int kt = 0; kt < C::kWgKTiles; ++kt) {
    const uint32_t b_bytes = kt / kBoxKTiles * x_box_bytes + kt % kBoxKTiles * 32;
    const uint64_t b_desc = ptx::DescriptorPlusBytes64(x_desc, b_bytes);
    // Tiles past N multiply zeros (TMA fills them) and are never stored; a branch here would
    // make the compiler serialize the wgmma pipeline.
#pragma unroll
    for (int j = 0; j < C::kWgTiles; ++j)
      ptx::WgmmaF16F32<C::kBatch>(d[j], a[kt][j], b_desc, kt > 0 || accumulate);
  }
  ptx::WgmmaCommit();
}

// Dequantizes a slot's words with the scale fused in (relative to `powers`) and issues its wgmma
// group (the configurations without kScalesInFp32). The first k-tile overwrites the
// accumulators instead of adding to them when `accumulate` is false (a segment's first stage), so
// they need no zeroing between segments.
template <typename C>
__device__ __forceinline__ void IssueStage(const StageWords<C>& w, const ColumnPowers<C>& powers,
                                           uint32_t x_smem, uint32_t x_box_bytes, bool accumulate,
                                           HopperAccumulators<C>& acc) {
  StageFragments<C> a;
  DequantizeStageScaled<C>(w, powers, a);
  IssueGroup<C>(a, x_smem, x_box_bytes, accumulate, acc);
}

// A stage's scales as FP32, per tile: x for the thread's first column (sub-tile 2 warp), y for
// its second (sub-tile 2 warp + 1).
template <typename C>
struct StageScales {
  float2 v[C::kWgTiles];
};

template <typename C>
__device__ __forceinline__ StageScales<C> ScalesOf(const StageWords<C>& w) {
  StageScales<C> s;
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j) s.v[j] = __half22float2(BitsToHalf2(w.scale_pair[j]));
  return s;
}

// sum += product x scales, accumulator by accumulator (accumulator i of a tile lies in the
// thread's first column when (i / 2) % 2 == 0, else in its second).
template <typename C>
__device__ __forceinline__ void AddScaled(const HopperAccumulators<C>& product,
                                          const StageScales<C>& scales,
                                          HopperAccumulators<C>& sum) {
#pragma unroll
  for (int j = 0; j < C::kWgTiles; ++j)
#pragma unroll
    for (int i = 0; i < C::kAccFloats; ++i) {
      sum[j][i] = fmaf((i / 2) % 2 ? scales.v[j].y : scales.v[j].x, product[j][i], sum[j][i]);
    }
}

// A block's ring in shared memory and its barriers.
struct BlockSync {
  uint32_t ring;         // the first slot
  uint32_t full, empty;  // kStages mbarriers each, 8 bytes apart
  uint32_t shares;       // cluster split: two barriers (ClusterShare) that complete as every
                         // rank's shares land here
  uint32_t written;      // striped: completes once the partial the block signals is written
};

// Consumers, cluster split, after the block's one segment: once every rank's consumers are past
// their ring, each rank scatters its partial to the float4s' owners, and as its two `shares`
// barriers say every rank's shares of its first float4s, then of the rest, have landed, sums and
// stores them (hopper_epilogue.cuh). Both cluster barriers arrive relaxed. The first only says the
// barriers are initialized: the fence before it (RunBlock) publishes them. The second only says
// the ring's readers are done: every wgmma group has retired and every load of the ring has
// returned, so nothing of the ring is read after the arrival. A block receives nothing once both
// its `shares` barriers have completed and sends nothing after that, so every block may exit.
template <typename C>
__device__ __forceinline__ void FinishClusterSlice(const HopperParams& p, int slice,
                                                   const ConsumerRole& role, const BlockSync& sync,
                                                   const HopperAccumulators<C>& acc) {
  ptx::ClusterWait();  // every block's barriers are initialized (RunBlock)
  const int rank = static_cast<int>(ptx::ClusterRank());
  ptx::ClusterArriveRelaxed();  // this block's consumers are past the ring
  ptx::ClusterWait();
  TraceAt(kTraceClusterRingsFree);
  ScatterPartials<C>(p, role, rank, sync.ring, sync.shares, acc);
  TraceAt(kTraceClusterScattered);
  ptx::ClusterBarrierWait(sync.shares, 0);  // the first float4s' shares (ClusterShare)
  TraceAt(kTraceClusterSharesLanded);
  SumOwnedPartials<C>(p, slice, role, rank, sync.ring, sync.shares + 8);
}

// Warpgroups 1..C::kConsumers: multiply every ring slot, release it, finish slices. Two stages'
// wgmma groups are in flight within a segment: a stage's group runs while the next slot is waited
// for, read, dequantized and issued; a slot goes back to the producer once the group that reads
// it has completed.
template <typename C>
__device__ __forceinline__ void ConsumeStages(const HopperParams& p, int block,
                                              const BlockOrder<C>& order, const BlockSync& sync) {
  const int begin = order.begin, end = order.end;
  const ConsumerRole role(threadIdx.x - kWarpgroupThreads);
  const uint32_t word_offset = TileWordOffset(role, p.word_major_tiles);
  const uint32_t x_box_bytes = XBoxStride<C>(p.box_rows, p.k_tiles);
  // Where this warpgroup's activations start in a stage's boxes (split-k: its k half). The value
  // is the same across a warp, but derived from threadIdx ptxas cannot tell: taken from lane 0
  // (WarpUniform), it and the wgmma descriptors built on it stay in uniform registers. That took
  // the split-k loops from 314 to 277 instructions a two-stage trip at 8 rows, 322 -> 286 at 16,
  // 692 -> 592 (four stages) at 32 and 582 -> 533 at 64: two R2UR and a rebuilt high word a wgmma
  // gone (ptxas 13.0, session 38).
  const uint32_t x_offset = ptx::WarpUniform(FirstKTileOf<C>(role) / kBoxKTiles * x_box_bytes);
  const uint32_t full = sync.full, empty = sync.empty;
  // A block splits at most its first and its last slice with other blocks. It sums, after its main
  // loop, the split slices whose final stages it holds (its first segment, when it ends before
  // the block's range, always does); for the other, a producer thread signals the block that does
  // (SignalSlice).
  int first_split = -1, last_split = -1;
  int held_split = -1;  // the split slice whose partial the accumulators keep (SumHeldSlice)
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
  int range_end = end;  // [mid, end), then [begin, mid) (BlockOrder)
  int segment = 0;      // the segment's number in this block, for the trace (TraceSegment)
  for (int segment_begin = order.mid; segment_begin < range_end; ++segment) {
    TraceSegment(segment, 0);
    const int slice = segment_begin / p.stages_per_slice;
    const int segment_end = min(range_end, (slice + 1) * p.stages_per_slice);
    int in_flight = -1;  // the slot whose wgmma group may still be reading it
    // Waits for the current slot's copies; its words and the activations this warpgroup reads.
    struct Stage {
      StageWords<C> words;
      uint32_t x;
    };
    auto wait_stage = [&] {
      ptx::BarrierWait(full + 8 * slot, phase);
      const StageSmem<C> smem(sync.ring, slot);
      return Stage{LoadStageWords<C>(role, word_offset, smem), smem.x + x_offset};
    };
    // Once the group that read the in-flight slot is done: that slot goes back to the producer,
    // the current one is in flight, the ring moves on.
    auto next_slot = [&] {
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
    if constexpr (!C::kScalesInFp32) {
      ColumnPowers<C> powers;  // set by each segment's first stage
      auto consume = [&](bool first) {
        const Stage stage = wait_stage();
        if (first) powers = PowersOf<C>(stage.words);
        IssueStage<C>(stage.words, powers, stage.x, x_box_bytes, /*accumulate=*/!first, acc);
        ptx::WgmmaWait<1>();  // the previous stage's group is done: its slot can go back
        next_slot();
      };
      for (; iter + 1 < segment_end; iter += 2) {
        consume(iter == segment_begin);
        consume(false);
      }
      if (iter < segment_end) consume(iter == segment_begin);
      ptx::WgmmaWait<0>();
      PinAccumulators<C>(acc);
      MultiplyByPowers<C>(powers, acc);
    } else if constexpr (C::kProducts == 2) {
      // Each scale group (one stage) is multiplied into products a and b in turn, two or four
      // stages a loop trip: the trip issues a's group and, once the next slot is dequantized, b's
      // behind it, so the tensor pipe has b queued while a's product joins the sum (after a wait
      // for a alone), and so on. A trip ends with no group in flight and the next stage
      // dequantized (`ready`): where accumulators are read after a wait for a group issued before
      // the loop's back edge, ptxas serializes every wgmma (C7514).
      int oldest = slot;  // the first slot whose group has not retired
      struct Ready {
        StageFragments<C> a;
        StageScales<C> scales;
        uint32_t x;
      };
      // Dequantizes the current slot into `r` and moves on to the next.
      auto prepare = [&](Ready& r) {
        const Stage stage = wait_stage();
        DequantizeStage<C, /*kScaled=*/false>(stage.words, r.a);
        r.scales = ScalesOf<C>(stage.words);
        r.x = stage.x;
        if (++slot == C::kStages) {
          slot = 0;
          phase ^= 1;
        }
      };
      // Once a group is done: its product joins the sum, its slot (the oldest taken) goes back.
      auto retire = [&](HopperAccumulators<C>& product, const StageScales<C>& scales) {
        PinAccumulators<C>(product);
        AddScaled<C>(product, scales, acc);
        PinAccumulators<C>(acc);  // else the additions sink below the next issue (C7514)
        release(oldest);
        if (++oldest == C::kStages) oldest = 0;
      };
      HopperAccumulators<C> product_a, product_b;
      ZeroAccumulators<C>(acc);
      Ready ready;
      prepare(ready);
      Ready second;
      // Dequantizes the current slot into `r` while the group before it runs, issues it into
      // `product`, and once that earlier group (`previous`) is done, retires it.
      auto step = [&](Ready& r, HopperAccumulators<C>& product, HopperAccumulators<C>& previous,
                      const StageScales<C>& previous_scales) {
        prepare(r);
        IssueGroup<C>(r.a, r.x, x_box_bytes, /*accumulate=*/false, product);
        ptx::WgmmaWait<1>();
        retire(previous, previous_scales);
      };
      // `stages` (two or four) stages from `ready`, products a, b, a, b: ends with the stage after
      // them, if the segment has one, in `ready`.
      auto trip = [&](int stages) {
        IssueGroup<C>(ready.a, ready.x, x_box_bytes, /*accumulate=*/false, product_a);
        step(second, product_b, product_a, ready.scales);
        if (stages == 4) {
          step(ready, product_a, product_b, second.scales);
          step(second, product_b, product_a, ready.scales);
        }
        if (iter + stages < segment_end) prepare(ready);  // while b's group runs
        ptx::WgmmaWait<0>();
        retire(product_b, second.scales);
      };
      // Four stages a trip where a warpgroup has one tile: H200, session 30, each build twice in
      // one call, against two a trip: L70B 3.05 -> 3.14-3.17 per model at 1-8 rows, 1-2% at
      // 16-32; 16384^2 38.4 -> 36.5 us at 1-8 rows. The 8-row wide configuration keeps two
      // (L8B.gate/up 18.1 -> 18.8 us at 1-8 rows with four).
      if constexpr (C::kWgTiles == 1) {
        for (; iter + 3 < segment_end; iter += 4) trip(4);
        if (iter + 1 < segment_end) {
          trip(2);
          iter += 2;
        }
      } else {
        for (; iter + 1 < segment_end; iter += 2) trip(2);
      }
      if (iter < segment_end) {
        IssueGroup<C>(ready.a, ready.x, x_box_bytes, /*accumulate=*/false, product_a);
        ptx::WgmmaWait<0>();
        retire(product_a, ready.scales);
      }
    } else {
      // Each scale group (two stages of the 16- and 32-row wide configurations; the branch takes
      // one-stage groups too) is multiplied into one product. A group's first stage overwrites it
      // once the previous group's product, all wgmmas done, has joined the sum — after this
      // stage's dequantization, before its issue: a read of accumulators while a group that may
      // write them is in flight made ptxas serialize every wgmma (C7514). A wide group's second
      // stage adds to the product behind the first. A wide segment starting mid-group starts with
      // that group's second stage, which then overwrites the product.
      static_assert(C::kStagesPerGroup == 1 || C::kStagesPerGroup == 2, "groups of 1-2 stages");
      HopperAccumulators<C> product;  // the open group's unscaled product
      StageScales<C> scales{};        // the open group's scales
      ZeroAccumulators<C>(acc);
      ZeroAccumulators<C>(product);
      auto open_group = [&] {
        const Stage stage = wait_stage();
        StageFragments<C> a;
        DequantizeStage<C, /*kScaled=*/false>(stage.words, a);  // while the previous group runs
        ptx::WgmmaWait<0>();
        PinAccumulators<C>(product);
        AddScaled<C>(product, scales, acc);
        scales = ScalesOf<C>(stage.words);
        next_slot();
        IssueGroup<C>(a, stage.x, x_box_bytes, /*accumulate=*/false, product);
      };
      auto close_group = [&](bool opens) {
        const Stage stage = wait_stage();
        scales = ScalesOf<C>(stage.words);  // the group's (a segment's first stage may open it)
        StageFragments<C> a;
        DequantizeStage<C, /*kScaled=*/false>(stage.words, a);
        IssueGroup<C>(a, stage.x, x_box_bytes, /*accumulate=*/!opens, product);
        ptx::WgmmaWait<1>();  // the group's first stage is done: its slot can go back
        next_slot();
      };
      auto second_stage = [&] {  // of a trip
        if constexpr (C::kStagesPerGroup == 1) {
          open_group();
        } else {
          close_group(/*opens=*/false);
        }
      };
      if ((segment_begin - slice * p.stages_per_slice) % C::kStagesPerGroup != 0) {
        close_group(/*opens=*/true);
        ++iter;
      }
      for (; iter + 1 < segment_end; iter += 2) {
        open_group();
        second_stage();
      }
      if (iter < segment_end) open_group();
      ptx::WgmmaWait<0>();
      PinAccumulators<C>(product);
      AddScaled<C>(product, scales, acc);
    }
    if constexpr (C::kProducts != 2) release(in_flight);  // that branch released its slots
    TraceSegment(segment, 1);
    if constexpr (C::kSplitK) {
      ExchangeKHalves<C>(role, sync.ring + C::kStages * C::kStageBytes, acc);
    }
    const StageCursor last(p, segment_end - 1);
    if constexpr (ClusterRanksOf<C>() > 1) {
      if (p.cluster_ranks > 1) {  // one segment
        FinishClusterSlice<C>(p, slice, role, sync, acc);
        TraceSegment(segment, 2);
        break;
      }
    }
    const bool split = !OwnsWholeSlice(p, begin, last);
    // This block sums a split slice whose final stages it holds: its first segment when that ends
    // before the block's range, or a last one that ends on the slice's end.
    const bool sums = split && (segment_end != end || last.stage + 1 == p.stages_per_slice);
    // Whether no segment follows this one, so the accumulators keep its partial.
    const bool final_segment = segment_end == range_end &&
                               !(C::kLastSegmentFirst && range_end == end && order.mid != begin);
    if (kSumsHeldPartial<C> && sums && final_segment) {
      held_split = slice;
    } else {
      FinishSegment<C>(p, block, begin, last, role, acc);
    }
    if (split) {
      if (segment_end != end) {
        first_split = slice;
      } else if (last.stage + 1 == p.stages_per_slice) {
        last_split = slice;
      } else {
        PartialWritten(sync.written);  // a producer thread signals it (SignalSlice)
      }
    }
    TraceSegment(segment, 2);
    segment_begin = segment_end;
    if constexpr (C::kLastSegmentFirst) {
      if (segment_begin == end && order.mid != begin) {
        segment_begin = begin;
        range_end = order.mid;
      }
    }
  }
  // The held slice first: the accumulators are free for the other sum's loads once it is stored.
  if constexpr (kSumsHeldPartial<C>) {
    if (held_split >= 0) {
      const SliceBlocks blocks(p, held_split);
      WaitForSlice<C>(p, blocks, role);
      TraceAt(kTraceHeldSumWaited);
      SumHeldSlice<C>(p, held_split, blocks, role, acc);
      TraceAt(kTraceHeldSumDone);
    }
  }
  // Both other sums in one loop, so the summing code exists once: it runs once a call, from a cold
  // instruction cache (Nsight Compute, L8B.qkv striped at 256 rows: most of the epilogue's stall
  // samples were instruction fetches).
#pragma unroll 1
  for (int k = 0; k < 2; ++k) {
    const int split = k == 0 ? first_split : last_split;
    if (split < 0 || split == held_split) continue;
    const SliceBlocks blocks(p, split);
    WaitForSlice<C>(p, blocks, role);
    TraceAt(kTraceSumWaited);
    SumSlice<C>(p, split, blocks, role);
    TraceAt(kTraceSumDone);
  }
}

// One block's work: the ring's barriers, then the producer and the consumer warpgroups. `p` holds
// the parameters of the block's row part, `block` is the block's index within that part.
template <typename C>
__device__ __forceinline__ void RunBlock(const HopperMaps& maps, const CUtensorMap* x_map,
                                         const HopperParams& p, int block) {
  extern __shared__ __align__(1024) uint8_t smem[];
  __shared__ __align__(8) uint64_t full_bars[C::kStages];
  __shared__ __align__(8) uint64_t empty_bars[C::kStages];
  __shared__ __align__(8) uint64_t shares_bars[2];
  __shared__ __align__(8) uint64_t written_bar;
  // TMA's 128-byte swizzle repeats every 1024 bytes: the ring starts on such a boundary.
  const BlockSync sync{.ring = (ptx::SharedAddress(smem) + 1023) & ~1023u,
                       .full = ptx::SharedAddress(full_bars),
                       .empty = ptx::SharedAddress(empty_bars),
                       .shares = ptx::SharedAddress(shares_bars),
                       .written = ptx::SharedAddress(&written_bar)};
  const BlockOrder<C> order(p, FirstIteration(p, block), FirstIteration(p, block + 1));
  constexpr bool kClusters = ClusterRanksOf<C>() > 1;  // whether C runs the cluster split's sums

  if (threadIdx.x == 0) {
    for (int s = 0; s < C::kStages; ++s) {
      ptx::BarrierInit(sync.full + 8 * s, 2);                   // StageCopies' two arrivals
      ptx::BarrierInit(sync.empty + 8 * s, C::kConsumers * 4);  // one arrival per consumer warp
    }
    ptx::BarrierInit(sync.written, C::kConsumerThreads);  // PartialWritten's arrivals
    if (kClusters && p.cluster_ranks > 1) {
      ptx::BarrierInit(sync.shares, SharesArrivals<C>(p.cluster_ranks));
      ptx::BarrierInit(sync.shares + 8, SharesArrivals<C>(p.cluster_ranks));
    }
    ptx::FenceBarrierInit();
    ptx::PrefetchTensorMap(x_map);
    ptx::PrefetchTensorMap(&maps.w);
    ptx::PrefetchTensorMap(&maps.s);
  }
  __syncthreads();
  // Cluster split: no block's barriers are used by another before they are initialized (each
  // thread waits for this arrival before it touches another block or exits: ClusterWait). The
  // fence above published the initializations.
  if (kClusters && p.cluster_ranks > 1) ptx::ClusterArriveRelaxed();

  // The next kernel on the stream may be scheduled now; it waits (GridDependencyWait) before it
  // touches anything this one writes.
  ptx::LaunchDependents();
  if (threadIdx.x < kWarpgroupThreads) {
    ptx::LowerRegisterBudget<C::kProducerRegisters>();
    // Each TMA copy costs its issuing thread a fixed time, so two threads of different warps
    // share a stage's copies, except in split-k, where one thread issuing all three (weights,
    // scales, one copy of the four activation boxes) measured faster. H200, session 25, both
    // builds in turn in one call, us: two threads, L70B.qkv 17.9, 18.4, 17.8 -> 17.3 (x3) at one
    // row; L8B.gate/up 22.0, 21.7, 21.8 -> 20.7, 20.6, 20.7 at 16; 16384^2 40.4-40.7 -> 38.9-39.1
    // at 4. Split-k with two threads: L8B.o 5.4, 5.4 -> 5.7, 5.7 at 4 rows, L70B.o 12.5, 12.5
    // -> 12.9, 12.8.
    constexpr StageCopies kFirst = C::kSplitK ? StageCopies::kBoth : StageCopies::kWeights;
    if (threadIdx.x == 0) {
      ProduceStages<C, kFirst>(maps, x_map, p, order, sync.ring, sync.full, sync.empty);
    } else if (threadIdx.x == 32) {
      if constexpr (!C::kSplitK) {
        ProduceStages<C, StageCopies::kActivations>(maps, x_map, p, order, sync.ring, sync.full,
                                                    sync.empty);
      }
    } else if (threadIdx.x == 64) {
      SignalSlice(p, order.begin, order.end, sync.written);
    }
    if (kClusters && p.cluster_ranks > 1) ptx::ClusterWait();
  } else {
    ptx::RaiseRegisterBudget<C::kConsumerRegisters>();
    TraceAt(kTraceConsumersStart);
    ptx::GridDependencyWait();  // before the workspace and y, which the previous call used
    TraceAt(kTraceDependencyMet);
    ConsumeStages<C>(p, block, order, sync);
    TraceAt(kTraceConsumersEnd);
  }
}

// The kernel. Launched with several row parts (kSplit, HopperParams), each block narrows the
// launch's parameters to its part and keeps them in shared memory (held in registers across the
// main loop they made the 128-row configuration spill). With one part the parameters are used as
// launched, at no cost to the passes that have one part.
template <typename C, RowSplit kSplit>
__global__ void __launch_bounds__(C::kThreads, 1)
    HopperGemmKernel(const __grid_constant__ HopperMaps maps, const HopperParams pass) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (kSplit != RowSplit::kOnePart) {
    __shared__ HopperParams part_params;
    const RowPartOf at(pass, blockIdx.x);
    if (threadIdx.x == 0) part_params = RowPart<C, kSplit>(pass, at.part);
    __syncthreads();
    const CUtensorMap* x_map = kSplit == RowSplit::kTall ? &maps.x[0] : &maps.x[at.part];
    RunBlock<C>(maps, x_map, part_params, at.block);
  } else {
    RunBlock<C>(maps, &maps.x[0], pass, blockIdx.x);
  }
#endif
}

}  // namespace marlin::cuda::hopper

#endif  // MARLIN_KERNELS_CUDA_HOPPER_KERNEL_CUH_
