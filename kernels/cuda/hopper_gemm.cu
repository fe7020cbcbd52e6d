// Host side of the Hopper kernel: configuration per row count, tensor maps, launch.
#include "kernels/cuda/hopper_gemm.h"

#include <algorithm>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_resources.h"
#include "kernels/cuda/hopper_kernel.cuh"
#include "kernels/cuda/tensor_map.h"

namespace marlin::cuda::hopper {
namespace {

// Up to 128 rows each consumer warpgroup takes two 64-column tiles (256-column slices, as the
// Ampere path); 256 rows need 128 accumulators a thread per tile, so one tile each (128-column
// slices). Taller products run as 256-row passes.
using Rows16 = HopperConfig<16, 2>;
using Rows32 = HopperConfig<32, 2>;
using Rows64 = HopperConfig<64, 2>;
using Rows128 = HopperConfig<128, 2>;
using Rows256 = HopperConfig<256, 1>;

template <typename C>
absl::StatusOr<HopperMaps> EncodeMaps(const __half* x, int rows, const DeviceWeight& w) {
  const uint64_t k = w.shape.k, n = w.shape.n;
  const uint64_t k_tiles = k / 16, n_tiles = n / 64;
  const absl::StatusOr<CUtensorMap> x_map =
      EncodeTiledMap({.type = CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                      .rank = 2,
                      .base = x,
                      .dims = {k, static_cast<uint64_t>(rows), 0},
                      .strides = {k * 2, 0},
                      .box = {64, C::kBatch, 0},
                      .swizzle = CU_TENSOR_MAP_SWIZZLE_128B});
  const absl::StatusOr<CUtensorMap> w_map =
      EncodeTiledMap({.type = CU_TENSOR_MAP_DATA_TYPE_UINT64,
                      .rank = 3,
                      .base = w.qweight,
                      .dims = {64, n_tiles, k_tiles},
                      .strides = {512, n_tiles * 512},
                      .box = {64, C::kBlockNTiles, kStageKTiles},
                      .swizzle = CU_TENSOR_MAP_SWIZZLE_NONE});
  const absl::StatusOr<CUtensorMap> s_map =
      EncodeTiledMap({.type = CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                      .rank = 2,
                      .base = w.scales,
                      .dims = {n, static_cast<uint64_t>(w.shape.num_groups()), 0},
                      .strides = {n * 2, 0},
                      .box = {C::kBlockNTiles * 64, 1, 0},
                      .swizzle = CU_TENSOR_MAP_SWIZZLE_NONE});
  for (const absl::StatusOr<CUtensorMap>* map : {&x_map, &w_map, &s_map}) {
    if (!map->ok()) return map->status();
  }
  return HopperMaps{*x_map, *w_map, *s_map};
}

// Largest configuration launched with programmatic dependent launch.
constexpr int kMaxOverlappedBatch = 64;

template <typename C>
absl::Status Launch(const __half* x, int rows, const DeviceWeight& w, __half* y, int* counters,
                    float* partials, int sm_count, cudaStream_t stream) {
  absl::StatusOr<HopperMaps> maps = EncodeMaps<C>(x, rows, w);
  if (!maps.ok()) return maps.status();
  HopperParams p{};
  p.y = y;
  p.m_rows = rows;
  p.n = static_cast<int>(w.shape.n);
  p.k_tiles = static_cast<int>(w.shape.k / 16);
  p.n_tiles = static_cast<int>(w.shape.n / 64);
  p.per_channel = w.shape.group_size == kPerChannel;
  const int slices = (p.n_tiles + C::kBlockNTiles - 1) / C::kBlockNTiles;
  p.stages_per_slice = (p.k_tiles + kStageKTiles - 1) / kStageKTiles;
  p.total_iters = slices * p.stages_per_slice;
  p.grid = std::min(sm_count, p.total_iters);
  p.counters = counters;
  p.partials = partials;
  static_assert(2 * C::kSlotFloats <= kSlotFloatsPerSm, "kSlotFloatsPerSm too small");
  MARLIN_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
      HopperGemmKernel<C>, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes));
  // Programmatic dependent launch: this kernel may start while the previous one on the stream
  // finishes (it streams weights first and waits for that kernel before anything else). Measured
  // on the H100 (L70B block, same run): 2-4% faster up to 32 rows, 2-6% slower from 128 rows,
  // where the calls are compute-bound; so only for the memory-bound configurations.
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = C::kBatch <= kMaxOverlappedBatch ? 1 : 0;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(p.grid);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = C::kSmemBytes;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  MARLIN_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&config, HopperGemmKernel<C>, *maps, p));
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchPass(const __half* x, int rows, const DeviceWeight& w, __half* y, int* counters,
                        float* partials, int sm_count, cudaStream_t stream) {
  if (rows <= 16) return Launch<Rows16>(x, rows, w, y, counters, partials, sm_count, stream);
  if (rows <= 32) return Launch<Rows32>(x, rows, w, y, counters, partials, sm_count, stream);
  if (rows <= 64) return Launch<Rows64>(x, rows, w, y, counters, partials, sm_count, stream);
  if (rows <= 128) return Launch<Rows128>(x, rows, w, y, counters, partials, sm_count, stream);
  if (rows <= kMaxPassRows) {
    return Launch<Rows256>(x, rows, w, y, counters, partials, sm_count, stream);
  }
  return absl::InternalError(absl::StrCat("Hopper pass of ", rows, " rows"));
}

}  // namespace marlin::cuda::hopper
