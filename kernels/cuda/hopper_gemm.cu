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

// The configurations: rows per pass (wgmma N) x 64-column tiles per consumer warpgroup. Wide
// ones (two tiles, 256-column slices) stream more weight bytes per stage and reread the
// activations for half as many slices; narrow ones (one tile, 128-column slices) halve the
// partial sums a split slice needs and the blocks it is split over, and at 128 rows or more leave
// the registers for two wgmma groups in flight. Taller products run as 256-row passes.
using Rows16Wide = HopperConfig<16, 2>;
using Rows16Narrow = HopperConfig<16, 1>;
using Rows32Wide = HopperConfig<32, 2>;
using Rows32Narrow = HopperConfig<32, 1>;
using Rows64Wide = HopperConfig<64, 2>;
using Rows64Narrow = HopperConfig<64, 1>;
using Rows128Narrow = HopperConfig<128, 1>;
using Rows256Narrow = HopperConfig<256, 1>;

// Whether a pass of `rows` over a k x n weight takes the narrow configuration. Measured with
// marlin-bench on the H100 (Llama-3 8B/70B layers and 16384^2, wide and narrow timed alternately in
// one call, docs/perf/kernel-h100.md): up to 32 rows narrow won only where n <= 4096 (L8B.o and
// L8B.down: 13.2 -> 11.5 and 22.2 -> 20.1 us at 32 rows) and lost on the 28672-column gate/up (29.5
// -> 34.6 us at 16); at 33-64 rows it won on every weight under 2^27 elements (L8B.o 20.5 -> 14.2
// us) and lost above (L70B.down 69 -> 74 us); at 128 rows it won or tied everywhere (L8B block
// 0.91 -> 1.21x cuBLAS).
bool NarrowConfiguration(int rows, int64_t k, int64_t n) {
  if (rows <= 32) return n <= 4096;
  if (rows <= 64) return k * n < (int64_t{1} << 27);
  return true;
}

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
  const bool narrow = NarrowConfiguration(rows, w.shape.k, w.shape.n);
  if (rows <= 16) {
    return narrow ? Launch<Rows16Narrow>(x, rows, w, y, counters, partials, sm_count, stream)
                  : Launch<Rows16Wide>(x, rows, w, y, counters, partials, sm_count, stream);
  }
  if (rows <= 32) {
    return narrow ? Launch<Rows32Narrow>(x, rows, w, y, counters, partials, sm_count, stream)
                  : Launch<Rows32Wide>(x, rows, w, y, counters, partials, sm_count, stream);
  }
  if (rows <= 64) {
    return narrow ? Launch<Rows64Narrow>(x, rows, w, y, counters, partials, sm_count, stream)
                  : Launch<Rows64Wide>(x, rows, w, y, counters, partials, sm_count, stream);
  }
  if (rows <= 128) {
    return Launch<Rows128Narrow>(x, rows, w, y, counters, partials, sm_count, stream);
  }
  if (rows <= kMaxPassRows) {
    return Launch<Rows256Narrow>(x, rows, w, y, counters, partials, sm_count, stream);
  }
  return absl::InternalError(absl::StrCat("Hopper pass of ", rows, " rows"));
}

}  // namespace marlin::cuda::hopper
