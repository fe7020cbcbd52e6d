// The column-range dequantization of dequantize_weight.h: one warp per 512-byte tile.
#include "kernels/cuda/dequantize_weight.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_resources.h"
#include "kernels/cuda/dequant.cuh"

namespace marlin::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

struct DequantizeParams {
  const uint32_t* qweight;  // the whole weight's tiles
  const __half* scales;     // the whole weight's scales, permuted per tile (weight-format.md 4.4)
  __half* out;              // k x cols
  int64_t k, n;
  int64_t group_rows;
  int64_t cols;
  int64_t first_tile;  // n0 / 64
  int64_t col_tiles;   // cols / 64
  bool word_major;     // DeviceLayout::kWordMajorTiles
};

// Lane `lane`'s four words of the tile at `tile` (the packed layout keeps them together, the
// word-major one 128 bytes apart).
__device__ __forceinline__ uint4 LoadLaneWords(const uint32_t* tile, int lane, bool word_major) {
  if (!word_major) return reinterpret_cast<const uint4*>(tile)[lane];
  return make_uint4(tile[lane], tile[32 + lane], tile[64 + lane], tile[96 + lane]);
}

// A warp's staging tile in shared memory: 16 rows of 64 halves, each row padded by 8 halves so that
// the fragment stores below (rows 2t apart for t = 0..3) fall into distinct banks.
constexpr int kStagingRowHalves = kTileN + 8;
constexpr int kStagingHalves = kTileK * kStagingRowHalves;

// Stores a fragment register (rows k, k + 1 of column n of the tile) into the staging tile.
__device__ __forceinline__ void StageColumnPair(__half* tile, int k, int n, half2 pair) {
  tile[k * kStagingRowHalves + n] = __low2half(pair);
  tile[(k + 1) * kStagingRowHalves + n] = __high2half(pair);
}

// Each warp dequantizes whole tiles: lane l = 4c + t holds, in word w, columns 8(2w) + c and
// 8(2w + 1) + c of the tile at rows 2t, 2t + 1, 2t + 8 and 2t + 9 (weight-format.md 4.2), and
// the 8 scales of its columns c, 8 + c, ... are the 16 bytes at c * 8 of the tile's scale row.
// The values go through the warp's staging tile so that the output is written in whole 128-byte
// rows (16 bytes a lane).
__global__ void DequantizeTilesKernel(DequantizeParams p) {
  __shared__ __align__(16) __half staging[kWarpsPerBlock][kStagingHalves];
  const int lane = threadIdx.x % 32;
  const int c = lane / 4, t = lane % 4;
  __half* tile_smem = staging[threadIdx.x / 32];
  const int64_t n_tiles = p.n / kTileN;
  const int64_t tiles = p.k / kTileK * p.col_tiles;
  const int64_t warps = int64_t{gridDim.x} * kWarpsPerBlock;
  for (int64_t i = int64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32; i < tiles; i += warps) {
    const int64_t kt = i / p.col_tiles, local_tile = i % p.col_tiles;
    const int64_t nt = p.first_tile + local_tile;
    const uint4 words =
        LoadLaneWords(p.qweight + (kt * n_tiles + nt) * (kTileBytes / 4), lane, p.word_major);
    const int64_t group = kt * kTileK / p.group_rows;
    const uint4 scale_bits =
        *reinterpret_cast<const uint4*>(p.scales + group * p.n + nt * kTileN + c * 8);
    const uint32_t word[4] = {words.x, words.y, words.z, words.w};
    const uint32_t scale_pair[4] = {scale_bits.x, scale_bits.y, scale_bits.z, scale_bits.w};
    __syncwarp();  // the previous tile's rows are read out of the staging tile
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      FragmentPair f = DequantizeWord(word[w]);
      const half2 scales = BitsToHalf2(scale_pair[w]);  // sub-tiles 2w and 2w + 1
      ScaleFragment(f.a, __low2half(scales));
      ScaleFragment(f.b, __high2half(scales));
      const int col_a = 8 * (2 * w) + c, col_b = col_a + 8;
      StageColumnPair(tile_smem, 2 * t, col_a, f.a[0]);
      StageColumnPair(tile_smem, 2 * t + 8, col_a, f.a[1]);
      StageColumnPair(tile_smem, 2 * t, col_b, f.b[0]);
      StageColumnPair(tile_smem, 2 * t + 8, col_b, f.b[1]);
    }
    __syncwarp();
    // Four rows per step, 8 lanes a row.
#pragma unroll
    for (int step = 0; step < kTileK / 4; ++step) {
      const int row = 4 * step + lane / 8, piece = lane % 8;
      const uint4 v =
          *reinterpret_cast<const uint4*>(tile_smem + row * kStagingRowHalves + piece * 8);
      *reinterpret_cast<uint4*>(p.out + (kt * kTileK + row) * p.cols + local_tile * kTileN +
                                piece * 8) = v;
    }
  }
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace

absl::Status DequantizeColumns(const DeviceWeight& w, int64_t n0, int64_t cols, __half* out,
                               cudaStream_t stream) {
  if (absl::Status valid = ValidateShape(w.shape); !valid.ok()) return valid;
  if (cols <= 0 || n0 < 0 || n0 % kTileN != 0 || cols % kTileN != 0 || n0 + cols > w.shape.n) {
    return absl::InvalidArgumentError(
        absl::StrCat("DequantizeColumns: columns [", n0, ", ", n0 + cols,
                     ") must be a non-empty range of whole 64-column tiles within N=", w.shape.n));
  }
  if (w.qweight == nullptr || w.scales == nullptr || out == nullptr || !Aligned16(w.qweight) ||
      !Aligned16(w.scales) || !Aligned16(out)) {
    return absl::InvalidArgumentError(
        "DequantizeColumns: qweight, scales and out must be non-null and 16-byte "
        "aligned");
  }
  const DequantizeParams p{.qweight = static_cast<const uint32_t*>(w.qweight),
                           .scales = w.scales,
                           .out = out,
                           .k = w.shape.k,
                           .n = w.shape.n,
                           .group_rows = w.shape.group_rows(),
                           .cols = cols,
                           .first_tile = n0 / kTileN,
                           .col_tiles = cols / kTileN,
                           .word_major = w.layout == DeviceLayout::kWordMajorTiles};
  const int64_t tiles = w.shape.k / kTileK * p.col_tiles;
  constexpr int64_t kMaxBlocks = 8192;  // grid-stride beyond: enough to saturate any device
  const int blocks =
      static_cast<int>(std::min(kMaxBlocks, (tiles + kWarpsPerBlock - 1) / kWarpsPerBlock));
  DequantizeTilesKernel<<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(p);
  MARLIN_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace marlin::cuda
