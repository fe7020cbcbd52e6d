// The in-place layout conversion of device_layout.h: one warp per 512-byte tile.
#include "kernels/cuda/device_layout.h"

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_resources.h"
#include "kernels/cuda/gemm_dispatch.h"

namespace marlin::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

// Each warp rewrites whole tiles: every lane reads its four words (one 16-byte load from a packed
// tile, four 4-byte loads from a word-major one), the warp synchronizes, and every lane writes
// them back in the other order. No tile is read by one warp and written by another.
__global__ void ConvertTilesKernel(uint32_t* words, int64_t tiles, bool to_word_major) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t{gridDim.x} * kWarpsPerBlock;
  for (int64_t tile = int64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32; tile < tiles;
       tile += warps) {
    uint32_t* t = words + tile * (kTileBytes / 4);
    uint32_t v[4];
    if (to_word_major) {
      const uint4 packed = reinterpret_cast<const uint4*>(t)[lane];
      v[0] = packed.x, v[1] = packed.y, v[2] = packed.z, v[3] = packed.w;
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = t[32 * j + lane];
    }
    __syncwarp();  // every lane's reads of this tile land before any lane's writes
    if (to_word_major) {
#pragma unroll
      for (int j = 0; j < 4; ++j) t[32 * j + lane] = v[j];
    } else {
      reinterpret_cast<uint4*>(t)[lane] = make_uint4(v[0], v[1], v[2], v[3]);
    }
  }
}

}  // namespace

const char* DeviceLayoutName(DeviceLayout layout) {
  switch (layout) {
    case DeviceLayout::kPacked:
      return "packed";
    case DeviceLayout::kWordMajorTiles:
      return "word-major tiles";
  }
  return "?";
}

DeviceLayout FastestDeviceLayout(int compute_capability) {
  return GemmPathAvailable(GemmPath::kHopper, compute_capability) ? DeviceLayout::kWordMajorTiles
                                                                  : DeviceLayout::kPacked;
}

absl::Status ConvertDeviceLayout(void* qweight, const WeightShape& shape, DeviceLayout from,
                                 DeviceLayout to, cudaStream_t stream) {
  if (absl::Status valid = ValidateShape(shape); !valid.ok()) return valid;
  if (qweight == nullptr || reinterpret_cast<uintptr_t>(qweight) % 16 != 0) {
    return absl::InvalidArgumentError(
        "ConvertDeviceLayout: qweight must be a non-null, 16-byte aligned device pointer");
  }
  if (from == to) return absl::OkStatus();
  const int64_t tiles = shape.k * shape.n / 2 / kTileBytes;
  constexpr int64_t kMaxBlocks = 4096;  // grid-stride beyond: enough to saturate any device
  const int blocks =
      static_cast<int>(std::min(kMaxBlocks, (tiles + kWarpsPerBlock - 1) / kWarpsPerBlock));
  ConvertTilesKernel<<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(
      static_cast<uint32_t*>(qweight), tiles, to == DeviceLayout::kWordMajorTiles);
  MARLIN_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace marlin::cuda
