// The FP16 x INT4 kernel body (Ampere-style: cp.async pipeline + mma.sync), one template per tile
// configuration. Included only by marlin_gemm.cu; the host API is marlin_gemm.h.
//
// Work decomposition. N is cut into column slices of kBlockNTiles 64-column tiles, K into stages of
// kStageKTiles 16-row tiles. The (slice, stage) iterations, slice-major, are split evenly over a
// grid of one block per SM (two for long runs of small batches: kBlocksPerSm), "striped": every
// block streams the same number of weight bytes whatever the layer shape. Inside a block, warp w
// takes warp column w % kWarpCols (a whole 64-column tile, or half of one for tall batches) and
// every kWarpsK-th k-tile of each stage; the kWarpsK partial sums meet in shared memory. A slice
// split between blocks is finished by whichever block arrives last: each writes its FP32 partial
// to the workspace, and the last one (an atomic counter tells) adds them in k order and writes
// FP16 - deterministic, and no block ever waits for another.
#ifndef MARLIN_KERNELS_CUDA_MARLIN_KERNEL_CUH_
#define MARLIN_KERNELS_CUDA_MARLIN_KERNEL_CUH_

#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/ptx_helpers.cuh"
#include "kernels/cuda/striped_partition.cuh"

namespace marlin::cuda {

inline constexpr int kThreads = 256;
// K rows per scale in grouped weights (the format's only grouped size; stages never straddle one).
inline constexpr int kGroupRows = 128;
inline constexpr int kWarps = kThreads / 32;

template <int kMTiles_, int kBlockNTiles_, int kWarpSubtiles_, int kWarpsK_, int kStageKTiles_,
          int kStages_, int kBlocksPerSm_ = 1>
struct TileConfig {
  static constexpr int kBlocksPerSm = kBlocksPerSm_;    // resident blocks per SM the launch aims at
  static constexpr int kMTiles = kMTiles_;              // 16-row tiles of activations per pass
  static constexpr int kBlockNTiles = kBlockNTiles_;    // 64-column weight tiles per slice
  static constexpr int kWarpSubtiles = kWarpSubtiles_;  // 8-column sub-tiles per warp: 8 or 4
  static constexpr int kWarpsK = kWarpsK_;              // warps sharing one warp column
  static constexpr int kStageKTiles = kStageKTiles_;    // 16-row k-tiles per pipeline stage
  static constexpr int kStages = kStages_;              // pipeline depth
  static_assert(kWarpSubtiles == 8 || kWarpSubtiles == 4, "a warp takes a tile or half a tile");
  static constexpr int kWarpCols = kBlockNTiles * (8 / kWarpSubtiles);  // warp columns per slice
  static_assert(kWarpCols * kWarpsK == kWarps, "every warp owns one (column, k-phase)");
  static_assert(kStageKTiles % kWarpsK == 0, "k-tiles split evenly over the warps");

  static constexpr int kRows = 16 * kMTiles;
  static constexpr int kStageK = 16 * kStageKTiles;
  static constexpr int kAChunksPerRow = kStageK * 2 / 16;  // 16-byte chunks of one row of A
  static_assert(kAChunksPerRow % 8 == 0, "the A swizzle needs 8 chunks per row");
  static_assert(kGroupRows % kStageK == 0, "a stage lies inside one scale group");
  static constexpr int kBBytes = kStageKTiles * kBlockNTiles * 512;
  static constexpr int kABytes = kRows * kStageK * 2;
  static constexpr int kSBytes = kBlockNTiles * 64 * 2;
  static constexpr int kStageBytes = kBBytes + kABytes + kSBytes;
  static constexpr int kAccFloats = kMTiles * kWarpSubtiles * 4;  // accumulators per thread
  static constexpr int kReduceBytes = (kWarpsK - 1) * kWarpCols * 32 * kAccFloats * 4;
  static constexpr int kSmemBytes = kStages * kStageBytes + kReduceBytes + 16;
  static constexpr int kSlotFloats = kWarpCols * 32 * kAccFloats;
};

struct GemmParams {
  const __half* x;       // m_rows x k activations
  const uint4* qweight;  // packed tiles
  const __half* scales;  // permuted scales
  __half* y;             // m_rows x n output
  int m_rows;
  int k;
  int n;
  bool per_channel;      // one scale row; else one per kGroupRows rows of K
  int k_tiles;           // k / 16
  int n_tiles;           // n / 64
  int stages_per_slice;  // ceil(k_tiles / kStageKTiles)
  int total_iters;       // slices * stages_per_slice
  int grid;              // blocks launched
  int* counters;         // one arrival counter per block index, zero between calls
  float* partials;       // 2 slots of kSlotFloats per block
};

// Issues the cp.async copies of one stage (weights, activations, scales) into `stage_smem`.
// Tiles past N or K and activation rows past M are not copied at all: ComputeStage skips such
// tiles, and whatever sits in a missing row of A only reaches output rows that are never stored
// (an mma row of the result depends on the same row of A alone).
template <typename C>
__device__ __forceinline__ void LoadStage(const GemmParams& p, StageCursor at,
                                          uint32_t stage_smem) {
  const int k_tile0 = at.stage * C::kStageKTiles;
  const int n_tile0 = at.slice * C::kBlockNTiles;
  const int tid = threadIdx.x;

  const uint32_t b_smem = stage_smem;
  static_assert(C::kBBytes / 16 % kThreads == 0, "weight copies split evenly");
#pragma unroll
  for (int r = 0; r < C::kBBytes / 16 / kThreads; ++r) {
    const int i = tid + r * kThreads;
    const int kt = i / (C::kBlockNTiles * 32);
    const int nt = (i / 32) % C::kBlockNTiles;
    const int lane = i % 32;
    ptx::CopyAsync16If(
        k_tile0 + kt < p.k_tiles && n_tile0 + nt < p.n_tiles, b_smem + i * 16,
        p.qweight + (static_cast<int64_t>(k_tile0 + kt) * p.n_tiles + n_tile0 + nt) * 32 + lane);
  }

  const uint32_t a_smem = stage_smem + C::kBBytes;
  constexpr int kAChunks = C::kRows * C::kAChunksPerRow;
#pragma unroll
  for (int r = 0; r < (kAChunks + kThreads - 1) / kThreads; ++r) {
    const int i = tid + r * kThreads;
    if (kAChunks % kThreads != 0 && i >= kAChunks) break;
    const int row = i / C::kAChunksPerRow;
    const int chunk = i % C::kAChunksPerRow;
    const int col = k_tile0 * 16 + chunk * 8;
    ptx::CopyAsync16If(row < p.m_rows && col < p.k,
                       a_smem + (row * C::kAChunksPerRow + (chunk ^ (row & 7))) * 16,
                       p.x + static_cast<int64_t>(row) * p.k + col);
  }

  const uint32_t s_smem = a_smem + C::kABytes;
  if (tid < C::kBlockNTiles * 8) {
    const int nt = tid / 8;
    const int group = p.per_channel ? 0 : k_tile0 / (kGroupRows / 16);
    ptx::CopyAsync16If(
        n_tile0 + nt < p.n_tiles, s_smem + tid * 16,
        p.scales + static_cast<int64_t>(group) * p.n + (n_tile0 + nt) * 64 + (tid % 8) * 8);
  }
}

// Which part of a slice this thread's warp multiplies.
template <typename C>
struct WarpRole {
  int lane;
  int col;   // warp column within the slice, 0 .. kWarpCols-1
  int k;     // k-phase: this warp takes every kWarpsK-th k-tile of a stage
  int tile;  // 64-column tile within the slice
  int half;  // which half of the tile (always 0 when a warp takes whole tiles)

  __device__ __forceinline__ WarpRole() {
    lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    col = warp % C::kWarpCols;
    k = warp / C::kWarpCols;
    tile = col / (8 / C::kWarpSubtiles);
    half = col % (8 / C::kWarpSubtiles);
  }
};

template <typename C>
using Accumulators = float[C::kMTiles][C::kWarpSubtiles][4];

template <typename C>
__device__ __forceinline__ void ZeroAccumulators(Accumulators<C>& acc) {
#pragma unroll
  for (int mt = 0; mt < C::kMTiles; ++mt)
#pragma unroll
    for (int sub = 0; sub < C::kWarpSubtiles; ++sub)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mt][sub][r] = 0.f;
}

// acc += v, one float4 of partial sums at accumulator group r4 (= mt * kWarpSubtiles + sub).
template <typename C>
__device__ __forceinline__ void AddPartial(Accumulators<C>& acc, int r4, float4 v) {
  float* a = acc[r4 / C::kWarpSubtiles][r4 % C::kWarpSubtiles];
  a[0] += v.x;
  a[1] += v.y;
  a[2] += v.z;
  a[3] += v.w;
}

template <typename C>
__device__ __forceinline__ float4 PartialOf(const Accumulators<C>& acc, int r4) {
  const float* a = acc[r4 / C::kWarpSubtiles][r4 % C::kWarpSubtiles];
  return make_float4(a[0], a[1], a[2], a[3]);
}

// This lane's packed words of one k-tile: 4 for a whole tile, 2 for half a tile.
template <typename C>
struct WeightWords {
  uint32_t word[C::kWarpSubtiles / 2];
};

template <typename C>
__device__ __forceinline__ WeightWords<C> LoadWeightWords(uint32_t tile_smem,
                                                          const WarpRole<C>& role) {
  WeightWords<C> w;
  if constexpr (C::kWarpSubtiles == 8) {
    const uint4 v = ptx::LoadShared16(tile_smem + role.lane * 16);
    w.word[0] = v.x;
    w.word[1] = v.y;
    w.word[2] = v.z;
    w.word[3] = v.w;
  } else {
    const uint2 v = ptx::LoadShared8(tile_smem + role.lane * 16 + role.half * 8);
    w.word[0] = v.x;
    w.word[1] = v.y;
  }
  return w;
}

// Dequantizes and scales one k-tile's words into B fragments, one pair per 8-column sub-tile.
template <typename C>
__device__ __forceinline__ void DequantizeFragments(const WeightWords<C>& words,
                                                    const WarpRole<C>& role,
                                                    const __half (&scales)[C::kWarpSubtiles],
                                                    half2 (&frag)[C::kWarpSubtiles][2]) {
#pragma unroll
  for (int w = 0; w < C::kWarpSubtiles / 2; ++w) {
    const FragmentPair pair = DequantizeWord(words.word[w]);
    frag[2 * w][0] = pair.a[0];
    frag[2 * w][1] = pair.a[1];
    frag[2 * w + 1][0] = pair.b[0];
    frag[2 * w + 1][1] = pair.b[1];
  }
#pragma unroll
  for (int sub = 0; sub < C::kWarpSubtiles; ++sub) {
    ScaleFragment(frag[sub], scales[sub]);
  }
}

// Multiplies this warp's k-tiles of one stage; kCheckBound skips k-tiles past K.
template <typename C, bool kCheckBound>
__device__ __forceinline__ void MultiplyKTiles(const GemmParams& p, int k_tile0, uint32_t b_smem,
                                               uint32_t a_lane, const WarpRole<C>& role,
                                               const __half (&scales)[C::kWarpSubtiles],
                                               Accumulators<C>& acc) {
  constexpr int kWarpKTiles = C::kStageKTiles / C::kWarpsK;
  constexpr uint32_t kMTileBytes = 16 * C::kAChunksPerRow * 16;
  WeightWords<C> words[kWarpKTiles];
#pragma unroll
  for (int j = 0; j < kWarpKTiles; ++j) {
    const int kt = role.k + j * C::kWarpsK;
    words[j] = LoadWeightWords<C>(b_smem + (kt * C::kBlockNTiles + role.tile) * 512, role);
  }
#pragma unroll
  for (int j = 0; j < kWarpKTiles; ++j) {
    const int kt = role.k + j * C::kWarpsK;
    if (kCheckBound && k_tile0 + kt >= p.k_tiles) break;
    half2 frag[C::kWarpSubtiles][2];
    DequantizeFragments<C>(words[j], role, scales, frag);
    const uint32_t a_chunk = a_lane + ((kt * 2 + role.lane / 16) ^ (role.lane % 8)) * 16;
#pragma unroll
    for (int mt = 0; mt < C::kMTiles; ++mt) {
      uint32_t a[4];
      ptx::LoadMatrixX4(a, a_chunk + mt * kMTileBytes);
#pragma unroll
      for (int sub = 0; sub < C::kWarpSubtiles; ++sub) {
        ptx::MmaF16F32(acc[mt][sub], a, *reinterpret_cast<const uint32_t*>(&frag[sub][0]),
                       *reinterpret_cast<const uint32_t*>(&frag[sub][1]));
      }
    }
  }
}

// Multiplies one stage: this warp's k-tiles of its warp column into `acc`.
template <typename C>
__device__ __forceinline__ void ComputeStage(const GemmParams& p, StageCursor at,
                                             uint32_t stage_smem, Accumulators<C>& acc) {
  const WarpRole<C> role;
  const int k_tile0 = at.stage * C::kStageKTiles;
  if (at.slice * C::kBlockNTiles + role.tile >= p.n_tiles) return;

  const uint32_t b_smem = stage_smem;
  const uint32_t a_smem = stage_smem + C::kBBytes;
  const uint32_t s_smem = a_smem + C::kABytes;
  // This lane's column scales, one per sub-tile it multiplies.
  const uint32_t scale_addr = s_smem + role.tile * 128 + (role.lane / 4) * 16;
  __half scales[C::kWarpSubtiles];
  if constexpr (C::kWarpSubtiles == 8) {
    const uint4 bits = ptx::LoadShared16(scale_addr);
    *reinterpret_cast<uint4*>(scales) = bits;
  } else {
    const uint2 bits = ptx::LoadShared8(scale_addr + role.half * 8);
    *reinterpret_cast<uint2*>(scales) = bits;
  }

  // ldmatrix row addresses: lane l points at row l % 16 of an m-tile, 16-byte chunk l / 16 of the
  // k-tile, swizzled by row % 8 (= l % 8 for every m-tile, so one base serves all of them).
  const uint32_t a_lane = a_smem + (role.lane % 16) * C::kAChunksPerRow * 16;
  // Full stages (all but a per-channel weight's last) run without a bound check, so nothing stops
  // the compiler from hoisting the next k-tile's loads above this one's math.
  if (k_tile0 + C::kStageKTiles <= p.k_tiles) {
    MultiplyKTiles<C, false>(p, k_tile0, b_smem, a_lane, role, scales, acc);
  } else {
    MultiplyKTiles<C, true>(p, k_tile0, b_smem, a_lane, role, scales, acc);
  }
}

// Adds the kWarpsK partial sums of each warp column into the warps of k-phase 0, in k order.
template <typename C>
__device__ __forceinline__ void ReduceAcrossWarps(float* reduce_smem, Accumulators<C>& acc) {
  if constexpr (C::kWarpsK > 1) {
    const WarpRole<C> role;
    constexpr int kGroups = C::kAccFloats / 4;
    float4* slots = reinterpret_cast<float4*>(reduce_smem);
    auto slot = [&](int wk, int r4) {
      return &slots[(((wk - 1) * kGroups + r4) * C::kWarpCols + role.col) * 32 + role.lane];
    };
    if (role.k > 0) {
#pragma unroll
      for (int r4 = 0; r4 < kGroups; ++r4) *slot(role.k, r4) = PartialOf<C>(acc, r4);
    }
    __syncthreads();
    if (role.k == 0) {
#pragma unroll
      for (int wk = 1; wk < C::kWarpsK; ++wk)
#pragma unroll
        for (int r4 = 0; r4 < kGroups; ++r4) AddPartial<C>(acc, r4, *slot(wk, r4));
    }
  }
}

// Rounds one warp's accumulators to FP16 and stores the rows that exist.
template <typename C>
__device__ __forceinline__ void StoreOutput(const GemmParams& p, int n_tile,
                                            const WarpRole<C>& role, const Accumulators<C>& acc) {
#pragma unroll
  for (int mt = 0; mt < C::kMTiles; ++mt) {
    const int row = mt * 16 + role.lane / 4;
#pragma unroll
    for (int sub = 0; sub < C::kWarpSubtiles; ++sub) {
      const int col = n_tile * 64 + (role.half * C::kWarpSubtiles + sub) * 8 + (role.lane % 4) * 2;
      if (row < p.m_rows) {
        *reinterpret_cast<half2*>(p.y + static_cast<int64_t>(row) * p.n + col) =
            __floats2half2_rn(acc[mt][sub][0], acc[mt][sub][1]);
      }
      if (row + 8 < p.m_rows) {
        *reinterpret_cast<half2*>(p.y + static_cast<int64_t>(row + 8) * p.n + col) =
            __floats2half2_rn(acc[mt][sub][2], acc[mt][sub][3]);
      }
    }
  }
}

// Finishes the segment of `slice` that ends at iteration `iter`: writes it, or hands it over.
template <typename C>
__device__ void FinishSegment(const GemmParams& p, int begin, StageCursor at, float* reduce_smem,
                              int* last_flag, Accumulators<C>& acc) {
  const WarpRole<C> role;
  constexpr int kGroups = C::kAccFloats / 4;
  const int slice = at.slice;
  const int slice_begin = slice * p.stages_per_slice;
  const int n_tile = slice * C::kBlockNTiles + role.tile;
  const bool owner = role.k == 0 && n_tile < p.n_tiles;

  ReduceAcrossWarps<C>(reduce_smem, acc);
  if (begin <= slice_begin && at.stage + 1 == p.stages_per_slice) {  // the whole slice is ours
    if (owner) StoreOutput<C>(p, n_tile, role, acc);
  } else {
    auto slot_ptr = [&](int slot, int r4) {
      return reinterpret_cast<float4*>(p.partials + static_cast<int64_t>(slot) * C::kSlotFloats) +
             (r4 * C::kWarpCols + role.col) * 32 + role.lane;
    };
    if (owner) {
      const int slot = SlotOf(p, blockIdx.x, slice);
#pragma unroll
      for (int r4 = 0; r4 < kGroups; ++r4) __stcg(slot_ptr(slot, r4), PartialOf<C>(acc, r4));
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) *last_flag = ArriveLast(p, slice);
    __syncthreads();
    if (*last_flag) {
      __threadfence();
      if (owner) {
        const SliceBlocks blocks(p, slice);
        ZeroAccumulators<C>(acc);
        if constexpr (kGroups <= 16) {
          // Two blocks' loads in flight where the registers allow it without spilling.
          constexpr int kBlocksInFlight = C::kBlocksPerSm == 1 && kGroups <= 12 ? 2 : 1;
          SumPartials<kGroups, kBlocksInFlight>(
              blocks, [&](int slot, int r4) { return __ldcg(slot_ptr(slot, r4)); },
              [&](int r4, float4 v) { AddPartial<C>(acc, r4, v); });
        } else {  // the tallest configurations have no registers to spare: one load at a time
          for (int b = blocks.first; b <= blocks.last; ++b) {
            const int slot = blocks.SlotOfBlock(b);
#pragma unroll
            for (int r4 = 0; r4 < kGroups; ++r4) AddPartial<C>(acc, r4, __ldcg(slot_ptr(slot, r4)));
          }
        }
        StoreOutput<C>(p, n_tile, role, acc);
      }
    }
  }
  ZeroAccumulators<C>(acc);
}

template <typename C>
__global__ void __launch_bounds__(kThreads, C::kBlocksPerSm) MarlinGemmKernel(const GemmParams p) {
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem_base = ptx::SharedAddress(smem);
  float* reduce_smem = reinterpret_cast<float*>(smem + C::kStages * C::kStageBytes);
  int* last_flag = reinterpret_cast<int*>(smem + C::kStages * C::kStageBytes + C::kReduceBytes);

  const int begin = BlockBegin(p, blockIdx.x);
  const int end = BlockBegin(p, blockIdx.x + 1);
  Accumulators<C> acc;
  ZeroAccumulators<C>(acc);

  StageCursor load_at(p, begin);
  StageCursor compute_at = load_at;
#pragma unroll
  for (int s = 0; s < C::kStages - 1; ++s) {
    if (begin + s < end) {
      LoadStage<C>(p, load_at, smem_base + s * C::kStageBytes);
      load_at.Advance(p);
    }
    ptx::CopyAsyncCommit();
  }
  int buffer = 0;
  for (int iter = begin; iter < end; ++iter) {
    ptx::CopyAsyncWait<C::kStages - 2>();
    __syncthreads();
    const int next_buffer = buffer == 0 ? C::kStages - 1 : buffer - 1;
    if (iter + C::kStages - 1 < end) {
      LoadStage<C>(p, load_at, smem_base + next_buffer * C::kStageBytes);
      load_at.Advance(p);
    }
    ptx::CopyAsyncCommit();
    ComputeStage<C>(p, compute_at, smem_base + buffer * C::kStageBytes, acc);
    if (compute_at.stage + 1 == p.stages_per_slice || iter + 1 == end) {
      FinishSegment<C>(p, begin, compute_at, reduce_smem, last_flag, acc);
    }
    compute_at.Advance(p);
    buffer = buffer + 1 == C::kStages ? 0 : buffer + 1;
  }
  ptx::CopyAsyncWait<0>();
}

}  // namespace marlin::cuda

#endif  // MARLIN_KERNELS_CUDA_MARLIN_KERNEL_CUH_
