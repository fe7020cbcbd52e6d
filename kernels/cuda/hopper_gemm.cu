// Host side of the Hopper kernel: configuration per row count, tensor maps, launch.
#include "kernels/cuda/hopper_gemm.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_resources.h"
#include "kernels/cuda/gemm_dispatch.h"
#include "kernels/cuda/hopper_kernel.cuh"
#include "kernels/cuda/hopper_trace.h"
#include "kernels/cuda/tensor_map.h"

namespace marlin::cuda::hopper {
namespace {

// The configurations: rows per pass (wgmma N) x 64-column tiles per consumer warpgroup. Wide ones
// (two tiles, 256-column slices) stream more weight bytes per stage and reread the activations for
// half as many slices; narrow ones (one tile, 128-column slices) halve the partial sums a split
// slice needs and the blocks it is split over, and at 128 rows or more leave the registers for two
// wgmma groups in flight. Split-k ones (one 64-column tile shared by both warpgroups, 256 k a
// stage) double the slices of a narrow weight, so the cluster split keeps every SM busy with at
// most two blocks per slice. Passes of 65-256 rows in one part, and taller products (tall
// launches, from 128 rows a part), run in parts of 80-256 rows fitted to them (TallRowsConfig,
// LaunchGemm). Up to 8 rows, m64n8k16 wgmmas:
// a stage's 16 of them cost the consumers less than m64n16k16 ones (H100, both alternated twice in
// one call: L70B.o 17.2-17.5 -> 16.6-16.9 us at 1-8 rows, L8B.down 17.2-17.5 -> 16.6-17.0; per
// model +1-2%). Group stages (a whole scale group, 128 k, per warpgroup and stage: half the stages,
// each with twice the wgmmas for its fixed cost) where they measured faster (H100, each build
// alternated twice with the one without in one call): 128 rows, L8B.qkv 30.8 / 28.8 -> 26.6 / 25.7
// us at 256 rows (two 128-row parts), L70B.gate/up 200 / 204 -> 189 / 190 at 128; 64-row narrow,
// L8B.gate/up 39.0 / 38.4 -> 36.7 / 36.9 at 64 rows, L70B.qkv 28.4 / 28.7 -> 27.4 / 27.2; 8-row
// wide, L8B.gate/up 22.3 / 22.4
// -> 21.3 / 21.6 at one row, L70B.qkv 20.0 / 19.9 -> 19.5 / 19.4. Not the 16-row wide one (L70B.qkv
// 20.5 / 20.4 -> 21.4 / 21.3 at 16 rows, L70B.down 46.7 / 47.2 -> 48.7 / 48.8), and the 64-row wide
// (HopperConfig<64, 2>, replaced by Rows64Trio in session 19) and 256-row ones lack the registers
// for two groups in flight. The narrow ones up to 32 rows take group stages (session 12; their
// registers allow it, and they entered with them).
using Rows8Wide = HopperConfig<8, 2, /*kSplitK=*/false, /*kGroupStages=*/true>;
using Rows8Narrow = HopperConfig<8, 1, /*kSplitK=*/false, /*kGroupStages=*/true>;
using Rows8SplitK = HopperConfig<8, 1, /*kSplitK=*/true>;
using Rows16Wide = HopperConfig<16, 2>;
using Rows16Narrow = HopperConfig<16, 1, /*kSplitK=*/false, /*kGroupStages=*/true>;
using Rows16SplitK = HopperConfig<16, 1, /*kSplitK=*/true>;
using Rows32Wide = HopperConfig<32, 2>;
using Rows32Narrow = HopperConfig<32, 1, /*kSplitK=*/false, /*kGroupStages=*/true>;
using Rows32SplitK = HopperConfig<32, 1, /*kSplitK=*/true>;
// Three consumer warpgroups of one tile each at 9-32 rows, with group stages and two products:
// 192-column slices, where the narrow configuration's slices would be striped
// (TakesThreeConsumers). 128 registers a thread at launch (160 a consumer); ptxas spills 48 / 140
// bytes (16 rows) and 24 / 24 (32 rows).
using Rows16Trio = HopperConfig<16, 1, /*kSplitK=*/false, /*kGroupStages=*/true,
                                /*kPartSlices=*/false, /*kConsumers=*/3>;
using Rows32Trio = HopperConfig<32, 1, /*kSplitK=*/false, /*kGroupStages=*/true,
                                /*kPartSlices=*/false, /*kConsumers=*/3>;
// Three consumer warpgroups of one tile each, with group stages: 192-column slices. At 33-64 rows
// it takes the wide configuration's place (TakesNarrow: where HopperConfig<64, 2> was chosen, so
// was this): one more warp per scheduler than the wide one to hide the dequantization's latency,
// half the stages' fixed cost, 128 registers a thread. Measured on the H100 (session 19, each
// alternated twice with the wide configuration in one call, us): L70B.gate/up, striped, 113.7 /
// 114.8 -> 110.7 / 111.1 at 40 rows and 117.7 / 118.6 -> 115.2 / 115.7 at 64; in place of the
// narrow one too it lost on 16384^2 (66.0 / 66.5 -> 68.1 / 68.0 at 64 rows) and L70B.qkv at 40
// (25.3 / 25.4 -> 25.8 / 25.5) and was within 1% elsewhere.
using Rows64Trio = HopperConfig<64, 1, /*kSplitK=*/false, /*kGroupStages=*/true,
                                /*kPartSlices=*/false, /*kConsumers=*/3>;
using Rows64Narrow = HopperConfig<64, 1, /*kSplitK=*/false, /*kGroupStages=*/true>;
using Rows64SplitK = HopperConfig<64, 1, /*kSplitK=*/true>;
// Four consumer warpgroups of one tile each: the wide configuration's 256-column slices, with
// twice its warps per scheduler, but 96 registers a thread: no group stages (TakesFourConsumers).
using Rows64Quad = HopperConfig<64, 1, /*kSplitK=*/false, /*kGroupStages=*/false,
                                /*kPartSlices=*/false, /*kConsumers=*/4>;
// Configurations of 80-256 rows: one tile per consumer warpgroup, with group stages where the
// accumulators and two group stages' fragments fit the launch's registers (up to 192 rows). Besides
// 128 and 256 rows, parts of 136-240 rows fit the rows of a pass or of a tall launch's parts (a
// product's rows spread evenly over its parts, FittedPartRows) instead of rounding them up to 256
// or leaving a remainder to a pass that streams the weight again. With kPartSlices, the striped
// tall launches' configurations. Measured on the H100 (session 20, each build twice in one call,
// speedups over cuBLAS FP16, before -> fitted): at 129 rows L70B.gate/up 0.99 -> 1.57, L70B.down
// 1.02 -> 1.71, 16384^2 0.95 -> 1.56; at 192 rows 0.97 -> 1.15, 0.98 -> 1.27, 0.91 -> 1.14; at 257
// rows (two parts of 144) L8B.qkv 0.83 -> 1.01, L8B.o 0.83 -> 1.07, L70B.qkv 0.76 -> 0.91, L70B.o
// 0.84 -> 0.99, L70B.gate/up 0.96 -> 1.04; at 320 rows (two of 160) L8B.down 0.78 -> 1.01,
// L70B.gate/up 0.94 -> 1.02, 16384^2 0.87 -> 0.99; at 1000 rows (seven of 144) L8B.o 0.73 ->
// 0.82, L8B.down 0.87 -> 0.96. ptxas: 168 registers; 144 and 128 rows no spills, the others 8
// bytes of spill stores, outside the main loop (SASS). Passes of 65-112 rows in one part take
// the 80-, 96- or 112-row one (LaunchPass) instead of 128 rows; H200, session 27, both builds twice
// in one call, per-model speedups over cuBLAS FP16, 128 -> fitted (with the fused scales in
// both): L70B 1.35 -> 1.70 at 80 rows, 1.18 -> 1.41 at 96, 1.23 -> 1.35 at
// 112; 16384^2 1.11 -> 1.47 at 80, 1.17 -> 1.40 at 96; L8B 1.15 -> 1.37 at 80 (L8B.o, in two
// 64-row parts, unchanged). ptxas: 168 registers, 8 bytes of spill stores. The 136-row one
// (129-136 rows a part; 144 before) measured on the H200 (session 37, both builds twice in one
// call, best, us): at 136 rows 16384^2 123.2 -> 117.6, L70B.qkv 49.4 -> 46.8, L70B.gate/up 225.2
// -> 213.4, L8B.gate/up 65.0 -> 62.2; at 257 rows (two parts) 16384^2 245.5 -> 229.2, L70B.gate/up
// 437.2 -> 418.8, L70B.down 202.0 -> 193.0, L8B.gate/up 119.2 -> 112.3; at 129-136 and 257-272
// rows every layer 2-6% faster or level. ptxas: 168 registers, no stack; its 17 float4s a thread
// go in uneven chunks (Float4Chunks in hopper_epilogue.cuh), which at 160 rows (7, 7, 6 for
// 5 x 4) dropped 8 bytes of stack and moved layers by -2.6% to +2.6% at 150-160 and 300-320 rows.
// The 176-, 208- and 240-row ones (the same session, both builds twice in one call, best, us):
// 16384^2 at 170 / 200 / 235 rows 166.5 / 187.6 / 212.2 -> 152.5 / 173.2 / 198.6, L70B.gate/up
// 289.3 / 331.4 / 381.3 -> 264.1 / 309.4 / 357.5, L70B.qkv at 170 66.1 -> 58.9; at 340 rows (two
// parts of 176) L70B.gate/up 558.8 -> 500.6, L8B.down 76.3 -> 70.0; at 500 (three of 176)
// L70B.gate/up 856.7 -> 769.3, L8B.gate/up 220.8 -> 196.1; the layers whose plans did not change
// level. ptxas: 168 registers, no stack.
template <int kRows, bool kPartSlices = false>
using TallRowsConfig =
    HopperConfig<kRows, 1, /*kSplitK=*/false, /*kGroupStages=*/kRows <= 192, kPartSlices>;
using Rows128Narrow = TallRowsConfig<128>;
using Rows256Narrow = TallRowsConfig<256>;
// Three consumer warpgroups of one tile each at 128 rows: 192-column slices, whose units (128-row
// part x slice) fill whole waves on weights where the 128-column ones leave a wave part-empty
// (ThreeConsumerWavesPay in gemm_dispatch.h), or on a cluster split where a narrow plan's blocks
// leave a quarter of the SMs idle (ClusteredThreeConsumersPay). Only tall launches in waves. No
// group stages: with them the 64 accumulators and two stages' fragments would not fit the 128
// registers a thread of 512 threads launches with. ptxas: 128 registers, 16 bytes of spill stores
// and loads.
using Rows128Trio = HopperConfig<128, 1, /*kSplitK=*/false, /*kGroupStages=*/false,
                                 /*kPartSlices=*/false, /*kConsumers=*/3>;

// The rows of the configurations above, fewest first: the one list that both FittedPartRows and
// WithPartRows read.
using FittedPartRowsList =
    std::integer_sequence<int, 128, 136, 144, 160, 176, 192, 208, 224, 240, 256>;
template <int... kRows>
constexpr std::array<int, sizeof...(kRows)> RowsArray(std::integer_sequence<int, kRows...>) {
  return {kRows...};
}
constexpr auto kFittedPartRows = RowsArray(FittedPartRowsList{});

// The fewest rows of a configuration above that hold `rows` <= kMaxPassRows rows.
int FittedPartRows(int rows) {
  for (const int fitted : kFittedPartRows) {
    if (rows <= fitted) return fitted;
  }
  return static_cast<int>(kMaxPassRows);
}

// WithPartRows over the row counts kRows.
template <typename R, typename F, int... kRows>
R WithPartRowsOf(int part_rows, F& f, std::integer_sequence<int, kRows...>) {
  std::optional<R> result;
  (void)((part_rows == kRows &&
          (result = f.template operator()<TallRowsConfig<kRows>, TallRowsConfig<kRows, true>>(),
           true)) ||
         ...);
  if (result.has_value()) return *std::move(result);
  return absl::InternalError(absl::StrCat("no configuration of ", part_rows, " rows"));
}

// Returns f.template operator()<Waves, Striped>() for the configurations of `part_rows` rows (one
// of kFittedPartRows): Waves runs passes and tall launches in waves, Striped striped tall launches.
template <typename R, typename F>
R WithPartRows(int part_rows, F&& f) {
  return WithPartRowsOf<R>(part_rows, f, FittedPartRowsList{});
}

// Whether a pass of `rows` over a k x n weight takes the split-k configuration. Measured with
// marlin-bench on an H200 (the card lent that day; split-k, then with 128-k stages, and the others
// timed alternately in one call, docs/perf/kernel-h100.md): up to 64 rows it won on every weight
// of at most 6144 columns (64 or 96 slices: the cluster split runs them on 128 or 96 SMs with at
// most two blocks per slice; L8B.o at 16 rows 9.7 -> 8.2 us, L8B.qkv 13.1 -> 12.3, L8B.down 20.0
// -> 19.3) and lost on wider ones, whose 128 or more slices leave one block a whole 64-column
// slice, streaming at a block's 4 KB a stage rate (L70B.down 47.5 -> 63.7 us, L8B gate/up 25.7 ->
// 36.4). 256-k stages since (H100, one call): L8B block 2.33 -> 2.35x at 16 rows, 1.82 -> 1.88 at
// 64. With them, 8192 columns (128 slices, one block each, nothing to sum) win where the weight
// is at most 2^26 elements (H100, both timed twice in one call: L70B.o 18.2-18.7 -> 18.0-18.1 us
// at 1 and 16 rows, 21.1-21.5 -> 18.2-18.3 at 32, 24.2-24.6 -> 20.9-21.1 at 64) and lose on
// deeper ones (L70B.down 47.4-48.4 -> 51.1-52.5 up to 16 rows), as 10240 columns do (L70B.qkv
// 21.3-21.7 -> 24.2-25.1 up to 16 rows).
bool SplitKConfiguration(int rows, int64_t k, int64_t n) {
  if (rows > 64) return false;
  return n <= 6144 || (n <= 8192 && k * n <= (int64_t{1} << 26));
}

// How many row parts (HopperParams) a pass of `rows` rows over a k x n weight runs in: two parts
// of half the rows side by side read the weight twice (the second time mostly from L2) but sum
// partials half as tall over half as many blocks per slice. Measured with marlin-bench on the
// H100 (both alternated in one call, docs/perf/kernel-h100.md): at 128 rows (two 64-row parts) it
// won where n <= 4096 (L8B.o 20.4 -> 13.1 us, L8B.down 37.7 -> 35.6) and lost on wider weights
// (L8B.qkv 24.1 -> 27.4 and worse, L70B.o 37.1 -> 40.3); at 256 rows (two 128-row parts) it won up
// to 2^26 weights (L8B.o 33.0 -> 26.8, L70B.o 65.2 -> 56.0) and lost on larger ones (L70B.qkv 78.0
// -> 82.0, L70B.down 189 -> 228, 16384^2 218 -> 276). Remeasured on today's kernels (session 19,
// twice each in each of two calls, us), one part now wins at 65-128 rows on the deeper of those
// weights (two -> one: L8B.down 33.0 / 34.5 -> 29.0 / 29.5 at 96 rows and 37.5 / 34.3 -> 31.2 /
// 32.2 at 128) but not on L8B.o, 2^24 elements (11.4 / 11.5 -> 14.3 / 14.4 at 96, 12.2 / 12.1 ->
// 15.6 / 15.6 at 128); at 129-255 rows two parts still win (one -> two:
// L8B.down 56.8 / 55.9 -> 47.7 / 51.2 at 160 rows, L8B.o 21.4 / 21.5 -> 19.2 / 18.5 at 192,
// L70B.o 62.9 / 59.0 -> 53.1 / 52.0 at 192). Since one part of 129-256 rows runs in a configuration
// fitted to them (TallRowsConfig; session 20, H100, each alternated twice in one call, speedups
// over cuBLAS FP16, two -> one), one part wins at 129-160 rows (129: L8B.qkv 0.86 -> 1.17, L8B.o
// 1.02 -> 1.21, L8B.down 1.08 -> 1.44, L70B.o 0.98 -> 1.43; 160: L8B.o 0.85 -> 0.98, L8B.down 1.08
// -> 1.27, L70B.o 0.93 -> 1.36) and mostly loses above (224: L8B.o 0.93 -> 0.86, L8B.down 1.21 ->
// 1.10, L8B.qkv 1.11 -> 1.07; L70B.o 1.07 -> 1.18 the exception). With the fused scales of the
// 64-row configurations (session 27, H200, both twice in one call), two 64-row parts on every
// weight at 80-128 rows still lost on all but L8B.o (per model 1.13-1.87 -> 0.87-1.45).
int RowParts(int rows, int64_t k, int64_t n) {
  if (rows > 128) return rows > 160 && k * n <= (int64_t{1} << 26) ? 2 : 1;
  if (rows > 64) return n <= 4096 && k * n <= (int64_t{1} << 25) ? 2 : 1;
  return 1;
}

// Whether configuration C runs passes of several row parts with a map each (the ones RowParts
// leads to).
template <typename C>
constexpr bool kTakesRowParts = C::kBatch == 64 || C::kBatch == 128;

// Whether configuration C runs tall launches in waves (LaunchGemm), whose row parts are passes of
// C.
template <typename C>
constexpr bool kRunsTallLaunches = C::kBatch >= kMinTallPartRows && !C::kPartSlices;

// Whether configuration C runs nothing but tall launches in waves (Rows128Trio): its only kernel.
template <typename C>
constexpr bool kOnlyTallLaunches = C::kConsumers == 3 && kRunsTallLaunches<C>;

// The activation map of configuration C for `rows` rows of x from row `row0` on, in boxes of
// `box_rows` rows: 3D ({64, rows, k / 64}, one copy a stage's C::kXBoxes boxes of XBoxRows rows)
// where XBoxesInOneCopy, else 2D ({k, rows}, one copy a box of `box_rows` rows). A pass's boxes
// are as tall as its rows (<= C::kBatch), not C::kBatch: rows out of bounds, zero-filled, made a
// copy slower (L8B.o at 1 row 9.2 us against 8.3 with none, H100, 2D boxes of 16 rows), and the
// ring rows past them only reach output rows that are never stored (StageActivationBytes). A tall
// launch's map holds all of its rows, C::kBatch of them a box.
template <typename C>
absl::StatusOr<CUtensorMap> EncodeActivationMap(const __half* x, int64_t row0, int64_t rows,
                                                int box_rows, uint64_t k) {
  const int k_tiles = static_cast<int>(k / 16);
  const auto ring_rows = static_cast<uint32_t>(XBoxRows<C>(box_rows, k_tiles));
  if (XBoxesInOneCopy<C>(k_tiles)) {
    return EncodeTiledMap({.type = CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                           .rank = 3,
                           .base = x + row0 * static_cast<int64_t>(k),
                           .dims = {64, static_cast<uint64_t>(rows), k / 64},
                           .strides = {k * 2, 128},
                           .box = {64, ring_rows, static_cast<uint32_t>(C::kXBoxes)},
                           .swizzle = CU_TENSOR_MAP_SWIZZLE_128B});
  }
  return EncodeTiledMap({.type = CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                         .rank = 2,
                         .base = x + row0 * static_cast<int64_t>(k),
                         .dims = {k, static_cast<uint64_t>(rows), 0},
                         .strides = {k * 2, 0},
                         .box = {64, ring_rows, 0},
                         .swizzle = CU_TENSOR_MAP_SWIZZLE_128B});
}

// The maps of a launch of `rows` rows in `parts` row parts of C::kBatch rows: an activation map
// per part, or (`one_map`, tall launches) one of all the rows.
template <typename C>
absl::StatusOr<HopperMaps> EncodeMaps(const __half* x, int rows, int parts, bool one_map,
                                      const DeviceWeight& w) {
  const uint64_t k = w.shape.k, n = w.shape.n;
  const uint64_t k_tiles = k / 16, n_tiles = n / 64;
  HopperMaps maps{};
  for (int part = 0; part < kMaxRowParts; ++part) {
    const int row0 = one_map ? 0 : std::min(part, parts - 1) * C::kBatch;
    const int part_rows = std::min(C::kBatch, rows - row0);
    const absl::StatusOr<CUtensorMap> x_map =
        one_map ? EncodeActivationMap<C>(x, 0, rows, C::kBatch, k)
                : EncodeActivationMap<C>(x, row0, part_rows, part_rows, k);
    if (!x_map.ok()) return x_map.status();
    maps.x[part] = *x_map;
  }
  const absl::StatusOr<CUtensorMap> w_map =
      EncodeTiledMap({.type = CU_TENSOR_MAP_DATA_TYPE_UINT64,
                      .rank = 3,
                      .base = w.qweight,
                      .dims = {64, n_tiles, k_tiles},
                      .strides = {512, n_tiles * 512},
                      .box = {64, C::kBlockNTiles, C::kStageKTiles},
                      .swizzle = CU_TENSOR_MAP_SWIZZLE_NONE});
  // A stage's scale groups come in one copy (LoadWeightStage); per channel each copy is the one
  // row.
  const uint32_t scale_rows = w.shape.group_size == kPerChannel ? 1 : C::kScaleRows;
  const absl::StatusOr<CUtensorMap> s_map =
      EncodeTiledMap({.type = CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                      .rank = 2,
                      .base = w.scales,
                      .dims = {n, static_cast<uint64_t>(w.shape.num_groups()), 0},
                      .strides = {n * 2, 0},
                      .box = {C::kBlockNTiles * 64, scale_rows, 0},
                      .swizzle = CU_TENSOR_MAP_SWIZZLE_NONE});
  for (const absl::StatusOr<CUtensorMap>* map : {&w_map, &s_map}) {
    if (!map->ok()) return map->status();
  }
  maps.w = *w_map;
  maps.s = *s_map;
  return maps;
}

// The fewest k stages a block of the cluster split takes; shorter runs are all pipeline fill.
constexpr int kMinStagesPerRank = 4;

// The kernel whose co-resident clusters are asked for: C's one-part pass, or its only one
// (kOnlyTallLaunches).
template <typename C>
constexpr auto OccupancyKernel() {
  if constexpr (kOnlyTallLaunches<C>) {
    return HopperGemmKernel<C, RowSplit::kTall>;
  } else {
    return HopperGemmKernel<C, RowSplit::kOnePart>;
  }
}

// Co-resident clusters of configuration C on a device, by blocks per cluster (index r, 1 <= r <=
// kMaxClusterRanks; 0 where clusters of r blocks cannot launch).
using ClusterCapacities = std::array<int, kMaxClusterRanks + 1>;

// A fact about the current device, computed by `ask(device)` (returning absl::StatusOr<V>) on the
// device's first call with this `Tag` and remembered after that. A failed answer is not kept.
template <typename Tag, typename V, typename Ask>
absl::StatusOr<V> PerDevice(Ask ask) {
  static std::mutex mu;
  static std::map<int, V> known;  // device -> answer
  int device = 0;
  MARLIN_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mu);
  const auto it = known.find(device);
  if (it != known.end()) return it->second;
  absl::StatusOr<V> answer = ask(device);
  if (answer.ok()) known[device] = *answer;
  return answer;
}

// The current device's ClusterCapacities for configuration C: asked of the driver
// (cudaOccupancyMaxActiveClusters) on a device's first pass, looked up after that.
template <typename C>
absl::StatusOr<ClusterCapacities> DeviceClusterCapacities(int sm_count) {
  return PerDevice<C, ClusterCapacities>([sm_count](int) -> absl::StatusOr<ClusterCapacities> {
    // The driver answers for the kernel's current shared-memory limit: raise it first (a pass may
    // ask before any launch of C, or after launching only C's row-part kernel).
    MARLIN_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
        OccupancyKernel<C>(), cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes));
    ClusterCapacities capacities{};
    capacities[1] = sm_count;  // one block per SM, no cluster launched
    for (int ranks = 2; ranks <= kMaxClusterRanks; ++ranks) {
      cudaLaunchAttribute cluster{};
      cluster.id = cudaLaunchAttributeClusterDimension;
      cluster.val.clusterDim.x = ranks;
      cluster.val.clusterDim.y = 1;
      cluster.val.clusterDim.z = 1;
      cudaLaunchConfig_t config{};
      config.gridDim = dim3(ranks * sm_count);
      config.blockDim = dim3(C::kThreads);
      config.dynamicSmemBytes = C::kSmemBytes;
      config.attrs = &cluster;
      config.numAttrs = 1;
      if (cudaOccupancyMaxActiveClusters(&capacities[ranks], OccupancyKernel<C>(), &config) !=
          cudaSuccess) {
        (void)cudaGetLastError();  // a cluster size this device refuses: none of that size
        capacities[ranks] = 0;
      }
    }
    return capacities;
  });
}

// The cluster split's blocks per slice for a pass of `slices` slices of `stages_per_slice` stages:
// the size that keeps the most SMs busy with every slice's cluster co-resident, every block at
// least kMinStagesPerRank stages and every rank's share of the partials in a ring (ClusterRanksOf);
// 0 when no size fits (more slices than SMs).
template <typename C>
absl::StatusOr<int> BestClusterRanks(int slices, int stages_per_slice, int parts, int sm_count) {
  const absl::StatusOr<ClusterCapacities> capacities = DeviceClusterCapacities<C>(sm_count);
  if (!capacities.ok()) return capacities.status();
  int best = 0;
  for (int ranks = 1; ranks <= ClusterRanksOf<C>(); ++ranks) {
    if (ranks > 1 && stages_per_slice / ranks < kMinStagesPerRank) break;
    if (parts * slices <= (*capacities)[ranks] && parts * slices * ranks <= sm_count) best = ranks;
  }
  return best;
}

// Whether a pass of `rows` rows takes its best cluster split (`ranks` blocks per slice, `blocks`
// in all) over the striped partition. Measured with marlin-bench on the H100, both partitions
// timed alternately in one call (docs/perf/kernel-h100.md): the split won wherever it cut a slice
// in at most two (16 rows: L8B gate/up, one 4096-deep slice per block, 29.2 -> 25.4 us; 16384^2
// 55.9 -> 52.3; L70B.o at 64 and 128 rows 26.1 -> 25.2 and 39.1 -> 36.4) and, up to 16 rows, where
// blocks run at most 24 stages (1 row: L8B.o 10.3 -> 9.4, L8B.qkv 13.2 -> 12.1). It lost with 3
// blocks per slice on long runs (16 rows: L70B.down 51.1 -> 57.8, L8B.down 20.1 -> 23.1), when it
// split slices at 256 rows (L70B.o 64.0 -> 72.8; unsplit, 16384^2 won: 214.9 -> 198.4) and with
// under ~70% of the SMs busy. The H100 holds 30 co-resident clusters of 4 blocks and 39 of 3, so
// a 32-slice layer splits 3 ways on 96 SMs: enough for short runs, not for long ones. Since the
// ranks reduce-scatter their partials (hopper_epilogue.cuh), 256-row slices split too. Of the
// benchmark layers that changes L70B.down (64 slices, two blocks each, against striped): 209.6 /
// 229.6 -> 201.1 / 211.2 us on the H100, each build timed twice in one call, and 167.3 against
// 180.3 striped in the next call's full run. (L70B.qkv's 40 slices stay striped: the H100 holds
// 39 co-resident three-block clusters, and two blocks per slice use under 70% of the SMs.)
bool ClusterSplitPays(int rows, int ranks, int blocks, int stages_per_rank, int sm_count) {
  if (10 * blocks < 7 * sm_count) return false;
  if (ranks == 1) return true;  // one block per slice: nothing to sum
  if (rows > 128) return true;
  return ranks == 2 || (rows <= 16 && stages_per_rank <= 24);
}

// The column slices and k stages of configuration C's passes over weight w.
template <typename C>
struct PassShape {
  int slices;
  int stages_per_slice;
  explicit PassShape(const DeviceWeight& w)
      : slices(static_cast<int>((w.shape.n / 64 + C::kBlockNTiles - 1) / C::kBlockNTiles)),
        stages_per_slice(
            static_cast<int>((w.shape.k / 16 + C::kStageKTiles - 1) / C::kStageKTiles)) {}
};

// The cluster_ranks the measured rule gives configuration C's pass of `rows` rows (of one part)
// in `parts` row parts over w (0: striped), whatever partition a test forces.
template <typename C>
absl::StatusOr<int> MeasuredClusterRanks(int rows, const DeviceWeight& w, int parts, int sm_count) {
  const PassShape<C> shape(w);
  absl::StatusOr<int> ranks =
      BestClusterRanks<C>(shape.slices, shape.stages_per_slice, parts, sm_count);
  if (!ranks.ok() || *ranks == 0) return ranks;
  const bool pays = ClusterSplitPays(rows, *ranks, parts * shape.slices * *ranks,
                                     (shape.stages_per_slice + *ranks - 1) / *ranks, sm_count);
  return pays ? *ranks : 0;
}

// The pass's cluster_ranks (0: striped): the forced partition, else the measured rule.
template <typename C>
absl::StatusOr<int> ChooseClusterRanks(int rows, const DeviceWeight& w, int parts, int sm_count) {
  const HopperPartition forced = ForcedHopperPartition();
  if (forced == HopperPartition::kStriped) return 0;
  if (forced == HopperPartition::kClusterSplit) {
    const PassShape<C> shape(w);
    return BestClusterRanks<C>(shape.slices, shape.stages_per_slice, parts, sm_count);
  }
  return MeasuredClusterRanks<C>(rows, w, parts, sm_count);
}

// Whether a pass of up to 64 rows (`rows` per part) over weight w that does not take the split-k
// configuration takes the narrow configuration Narrow over the wide one Wide, both of its row
// count (from 65 rows on every such pass is narrow). Each is judged by the partition
// the measured rule gives it, whatever a test forces. Measured with marlin-bench on the H100
// (docs/perf/kernel-h100.md, sessions 2 and 12, each choice alternated twice in one call):
// - A partition without global partial sums (one block per slice, or the cluster split) beats
//   the striped one: L8B.gate/up keeps the wide configuration up to 32 rows (112 slices, one block
//   each; narrow, striped: 21.5 -> 26.4 us at 1 row, 24.9 -> 29.2 at 32) and L70B.down takes the
//   narrow one at every row count (64 slices on two-block clusters; wide, striped: 46.0 -> 43.0
//   us at 1 row, 49.9 -> 45.6 at 32, 64.3 -> 60.7 at 64).
// - Between two such partitions fewer blocks per slice win: 16384^2 takes narrow up to 32 rows
//   (128 slices, one block each; wide, two-block clusters: 48.3 -> 46.5 us at 1 row, 50.9 -> 48.3
//   at 32).
// - Between two striped ones, narrow (group stages) wins up to 32 rows (L70B.qkv 22.6 -> 21.4 us at
//   32 rows, L70B.gate/up 96.0 -> 94.9; both within 1% up to 16 rows).
// - At 33-64 rows narrow won on every weight under 2^27 elements (L8B.o 20.5 -> 14.2 us), and on
//   larger ones with fewer wide slices than SMs, where every wide slice is split between blocks
//   and narrow halves the blocks per slice (session 14: 16384^2, 64 wide slices on two-block
//   clusters against 128 narrow ones on one block each, 69.1 / 70.5 / 70.0 -> 65.7 / 65.8 / 65.8
//   us at 64 rows); it lost where the wide slices outnumber the SMs (L70B.gate/up, 224 striped
//   ones: 118.1 -> 119.9 at 64 rows in session 12, 116.0 / 116.6 / 116.9 -> 119.1 / 119.5 / 119.7
//   in session 14).
// At 33-64 rows `Wide` is Rows64Trio since session 19, judged by its own 192-column slices: of the
// benchmark layers the same ones take it as took the wide configuration (L70B.gate/up).
template <typename Wide, typename Narrow>
absl::StatusOr<bool> TakesNarrow(int rows, const DeviceWeight& w, int parts, int sm_count) {
  const absl::StatusOr<int> wide = MeasuredClusterRanks<Wide>(rows, w, parts, sm_count);
  if (!wide.ok()) return wide.status();
  const absl::StatusOr<int> narrow = MeasuredClusterRanks<Narrow>(rows, w, parts, sm_count);
  if (!narrow.ok()) return narrow.status();
  if (*wide == 0 && *narrow > 0) return true;
  if (rows > 32) {
    return w.shape.k * w.shape.n < (int64_t{1} << 27) ||
           parts * PassShape<Wide>(w).slices < sm_count;
  }
  if (*wide == 0) return true;
  return *narrow > 0 && *narrow <= *wide;
}

// Whether a pass of 33-64 rows (`rows` per part) over weight w that does not take the split-k
// configuration takes the four-consumer one (Rows64Quad): where its 256-column slices run one
// block each, nothing summed, on at least 70% of the SMs (MeasuredClusterRanks gives one rank).
// There a block streams a whole slice alone, and its consumers' pace is the call's. Measured on
// the H100 (session 19, each alternated twice with the committed dispatch in one call, us):
// L8B.gate/up, 112 such slices, against its narrow configuration, 35.9 / 36.8 -> 34.0 / 33.7 at
// 64 rows and 33.9 / 33.5 -> 33.0 / 33.1 at 40 (the next call, as dispatched: 36.0 / 36.7 -> 34.0
// / 34.4 at 64 rows, 33.9 / 34.4 -> 33.3 / 34.2 at 40). Where the slices are split or striped it
// lost: against wide, L70B.gate/up (224 striped slices) 117.1 / 117.9 -> 122.9 / 123.0 at 64 rows;
// against narrow, L70B.qkv (40 slices on two-block clusters) 26.5 / 26.4 -> 31.2 / 31.1, L70B.down
// 60.3 / 60.4 -> 66.1 / 66.4, 16384^2 66.6 / 66.1 -> 69.6 / 72.9.
absl::StatusOr<bool> TakesFourConsumers(int rows, const DeviceWeight& w, int parts, int sm_count) {
  if (rows <= 32) return false;
  const absl::StatusOr<int> ranks = MeasuredClusterRanks<Rows64Quad>(rows, w, parts, sm_count);
  if (!ranks.ok()) return ranks.status();
  return *ranks == 1;
}

// Whether a pass of 9-32 rows (`rows` per part) over weight w that takes the narrow configuration
// Narrow (TakesNarrow) takes the three-consumer one of its row count instead: where the measured
// rule stripes Narrow's slices. There a third warp per scheduler hides more of the
// dequantization's latency, and a stage's activations feed 192 columns instead of 128. Measured on
// H200s (session 31: three calls on three cards, each build alternated two or three times in a
// call; us, the best run of each build): L70B.gate/up (448 striped slices) 95.2 -> 86.3, 96.7 ->
// 95.2 and 95.6 -> 89.2 at 32 rows, 78.5 -> 75.2 at 24, 67.8 -> 67.3 at 16; L70B.qkv (80) 18.3
// -> 17.8 at 32 and 18.3 -> 17.9 at 24 (third call), but 16.4 -> 16.6-16.8 at 16 (every call);
// the 70B block 2-4.5% faster at 20-32 rows, 0.7-0.9% at 9-16 (third call). Where Narrow runs one
// block a slice or a cluster split the three-consumer configuration lost (first call, forced):
// 16384^2 (128 slices, one block each) 43.2 -> 45.7 at 16 rows, L70B.down (64 slices on two-block
// clusters) 47.3 -> 49.5 at 32.
template <typename Narrow>
absl::StatusOr<bool> TakesThreeConsumers(int rows, const DeviceWeight& w, int parts, int sm_count) {
  if (rows <= 8 || rows > 32) return false;
  const absl::StatusOr<int> ranks = MeasuredClusterRanks<Narrow>(rows, w, parts, sm_count);
  if (!ranks.ok()) return ranks.status();
  return *ranks == 0;
}

// The cluster_ranks of a tall launch of configuration C (`parts` row parts over w): its best
// cluster split where every (part, slice) gets a co-resident cluster, else one block per (part,
// slice), the blocks running in waves (nothing is summed, so no block waits for another).
template <typename C>
absl::StatusOr<int> TallClusterRanks(const DeviceWeight& w, int parts, int sm_count) {
  const PassShape<C> shape(w);
  const absl::StatusOr<int> ranks =
      BestClusterRanks<C>(shape.slices, shape.stages_per_slice, parts, sm_count);
  if (!ranks.ok()) return ranks.status();
  return std::max(1, *ranks);
}

// Launches configuration C on `rows` rows: a pass (ceil(rows / C::kBatch) row parts side by side,
// each on an equal share of the SMs), or with `tall_ranks` ceil(rows / C::kBatch) >= 2 row parts
// (the last one may be short) in one grid: one block or cluster of *tall_ranks blocks
// (TallClusterRanks) per (part, slice) in waves (RowSplit::kTall), or with C::kPartSlices the
// striped partition over every part's slices (with `unit_runs`, on as many blocks as units per
// wave: each block's run is whole units, TallLaunch::kRuns).
template <typename C>
absl::Status Launch(const __half* x, int rows, const DeviceWeight& w, __half* y, int* counters,
                    float* partials, int sm_count, cudaStream_t stream,
                    std::optional<int> tall_ranks = std::nullopt, bool unit_runs = false) {
  const bool tall = tall_ranks.has_value();
  const int parts = (rows + C::kBatch - 1) / C::kBatch;
  if (tall ? !(kRunsTallLaunches<C> || C::kPartSlices) || parts < 2
           : C::kPartSlices || kOnlyTallLaunches<C> ||
                 parts > (kTakesRowParts<C> ? kMaxRowParts : 1)) {
    return absl::InternalError(absl::StrCat(rows, " rows in ", C::kBatch, "-row parts"));
  }
  const RowSplit split = C::kPartSlices ? RowSplit::kOnePart
                         : tall         ? RowSplit::kTall
                         : parts > 1    ? RowSplit::kPartMaps
                                        : RowSplit::kOnePart;
  auto* const kernel = [&] {
    if constexpr (kOnlyTallLaunches<C>) {
      return HopperGemmKernel<C, RowSplit::kTall>;
    } else {
      if constexpr (kRunsTallLaunches<C>) {
        if (split == RowSplit::kTall) return HopperGemmKernel<C, RowSplit::kTall>;
      }
      if constexpr (kTakesRowParts<C>) {
        if (split == RowSplit::kPartMaps) return HopperGemmKernel<C, RowSplit::kPartMaps>;
      }
      return HopperGemmKernel<C, RowSplit::kOnePart>;
    }
  }();
  absl::StatusOr<HopperMaps> maps = EncodeMaps<C>(x, rows, parts, /*one_map=*/tall, w);
  if (!maps.ok()) return maps.status();
  HopperParams p{};
  p.y = y;
  p.m_rows = rows;
  p.box_rows = tall ? C::kBatch : std::min(rows, C::kBatch);
  p.n = static_cast<int>(w.shape.n);
  p.k_tiles = static_cast<int>(w.shape.k / 16);
  p.n_tiles = static_cast<int>(w.shape.n / 64);
  p.per_channel = w.shape.group_size == kPerChannel;
  p.word_major_tiles = w.layout == DeviceLayout::kWordMajorTiles;
  const PassShape<C> shape(w);
  p.stages_per_slice = shape.stages_per_slice;
  p.part_slices = shape.slices;
  p.total_iters = (C::kPartSlices ? parts : 1) * shape.slices * p.stages_per_slice;
  p.counters = counters;
  p.partials = partials;
  static_assert(2 * C::kSlotFloats <= kSlotFloatsPerSm, "kSlotFloatsPerSm too small");
  MARLIN_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes));
  // The grid's row parts (blocks [q grid, (q + 1) grid) each), each on an equal share of the SMs.
  const int grid_parts = split == RowSplit::kOnePart ? 1 : parts;
  const int part_sms = sm_count / grid_parts;
  const absl::StatusOr<int> ranks = [&]() -> absl::StatusOr<int> {
    if constexpr (kOnlyTallLaunches<C>) {
      return *tall_ranks;
    } else {
      if (C::kPartSlices) return 0;
      if (tall) return *tall_ranks;
      return ChooseClusterRanks<C>(std::min(rows, C::kBatch), w, parts, sm_count);
    }
  }();
  if (!ranks.ok()) return ranks.status();
  p.cluster_ranks = *ranks;
  p.grid = p.cluster_ranks > 0 ? shape.slices * p.cluster_ranks : std::min(part_sms, p.total_iters);
  if (unit_runs) {  // TallLaunch::kRuns: the striped partition's runs are whole units
    const int units = parts * shape.slices;
    const int waves = (units + sm_count - 1) / sm_count;
    if (!C::kPartSlices || !tall || units % waves != 0) {
      return absl::InternalError(absl::StrCat(units, " units in ", waves, " runs"));
    }
    p.grid = units / waves;
  }
  // Programmatic dependent launch: this kernel may start while the previous one on the stream
  // finishes (it streams weights first and waits for that kernel before anything else). Measured
  // on the H100 (L70B block, same run): 2-4% faster up to 32 rows. From 128 rows it read 2-6%
  // slower in session 3's kernels and was kept to 64 rows until session 10, when both, alternated
  // twice in each of two calls, gave +1-3% per model at 128 rows (L70B 1.45 / 1.46 -> 1.47 / 1.49)
  // and between even and +2% at 256 (L8B 0.87 / 0.88 -> 0.89 / 0.90 in the first call).
  cudaLaunchAttribute attributes[2]{};
  attributes[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[0].val.programmaticStreamSerializationAllowed = 1;
  attributes[1].id = cudaLaunchAttributeClusterDimension;
  attributes[1].val.clusterDim.x = std::max(1, p.cluster_ranks);
  attributes[1].val.clusterDim.y = 1;
  attributes[1].val.clusterDim.z = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(grid_parts * p.grid);
  config.blockDim = dim3(C::kThreads);
  config.dynamicSmemBytes = C::kSmemBytes;
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = p.cluster_ranks > 1 ? 2 : 1;
  MARLIN_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&config, kernel, *maps, p));
  return absl::OkStatus();
}

// Launches the narrow configuration Narrow or the wide one Wide (TakesNarrow); with a Trio, that
// one in Narrow's place where TakesThreeConsumers says so.
template <typename Wide, typename Narrow, typename Trio = void>
absl::Status LaunchWideOrNarrow(const __half* x, int rows, int parts, const DeviceWeight& w,
                                __half* y, int* counters, float* partials, int sm_count,
                                cudaStream_t stream) {
  const int part_rows = (rows + parts - 1) / parts;
  const absl::StatusOr<bool> narrow = TakesNarrow<Wide, Narrow>(part_rows, w, parts, sm_count);
  if (!narrow.ok()) return narrow.status();
  if (!*narrow) return Launch<Wide>(x, rows, w, y, counters, partials, sm_count, stream);
  if constexpr (!std::is_void_v<Trio>) {
    const absl::StatusOr<bool> trio = TakesThreeConsumers<Narrow>(part_rows, w, parts, sm_count);
    if (!trio.ok()) return trio.status();
    if (*trio) return Launch<Trio>(x, rows, w, y, counters, partials, sm_count, stream);
  }
  return Launch<Narrow>(x, rows, w, y, counters, partials, sm_count, stream);
}

// Enqueues one pass of 1 <= rows <= kMaxPassRows rows.
absl::Status LaunchPass(const __half* x, int rows, const DeviceWeight& w, __half* y, int* counters,
                        float* partials, int sm_count, cudaStream_t stream) {
  // The configuration is chosen for the rows of one part; Launch splits the pass into its parts.
  const int parts = RowParts(rows, w.shape.k, w.shape.n);
  const int part_rows = (rows + parts - 1) / parts;
  if (SplitKConfiguration(part_rows, w.shape.k, w.shape.n)) {
    if (part_rows <= 8) {
      return Launch<Rows8SplitK>(x, rows, w, y, counters, partials, sm_count, stream);
    }
    if (part_rows <= 16) {
      return Launch<Rows16SplitK>(x, rows, w, y, counters, partials, sm_count, stream);
    }
    if (part_rows <= 32) {
      return Launch<Rows32SplitK>(x, rows, w, y, counters, partials, sm_count, stream);
    }
    return Launch<Rows64SplitK>(x, rows, w, y, counters, partials, sm_count, stream);
  }
  // Every weight left is wider than 4096 columns: wide or narrow by their partitions (TakesNarrow).
  if (part_rows <= 8) {
    return LaunchWideOrNarrow<Rows8Wide, Rows8Narrow>(x, rows, parts, w, y, counters, partials,
                                                      sm_count, stream);
  }
  if (part_rows <= 16) {
    return LaunchWideOrNarrow<Rows16Wide, Rows16Narrow, Rows16Trio>(x, rows, parts, w, y, counters,
                                                                    partials, sm_count, stream);
  }
  if (part_rows <= 32) {
    return LaunchWideOrNarrow<Rows32Wide, Rows32Narrow, Rows32Trio>(x, rows, parts, w, y, counters,
                                                                    partials, sm_count, stream);
  }
  if (part_rows <= 64) {
    const absl::StatusOr<bool> quad = TakesFourConsumers(part_rows, w, parts, sm_count);
    if (!quad.ok()) return quad.status();
    if (*quad) return Launch<Rows64Quad>(x, rows, w, y, counters, partials, sm_count, stream);
    return LaunchWideOrNarrow<Rows64Trio, Rows64Narrow>(x, rows, parts, w, y, counters, partials,
                                                        sm_count, stream);
  }
  if (part_rows <= 128) {
    if (parts == 1 && part_rows <= 80) {
      return Launch<TallRowsConfig<80>>(x, rows, w, y, counters, partials, sm_count, stream);
    }
    if (parts == 1 && part_rows <= 96) {
      return Launch<TallRowsConfig<96>>(x, rows, w, y, counters, partials, sm_count, stream);
    }
    if (parts == 1 && part_rows <= 112) {
      return Launch<TallRowsConfig<112>>(x, rows, w, y, counters, partials, sm_count, stream);
    }
    return Launch<Rows128Narrow>(x, rows, w, y, counters, partials, sm_count, stream);
  }
  if (rows > kMaxPassRows) {
    return absl::InternalError(absl::StrCat("Hopper pass of ", rows, " rows"));
  }
  return WithPartRows<absl::Status>(FittedPartRows(rows), [&]<typename Waves, typename>() {
    return Launch<Waves>(x, rows, w, y, counters, partials, sm_count, stream);
  });
}

// Rows of one tall launch at most (its parts times the slices stay far from the grid's
// and the tensor map's limits); taller products take several.
constexpr int64_t kMaxTallLaunchRows = int64_t{1} << 16;

// The current device's L2 size in bytes: asked of the driver on a device's first call.
absl::StatusOr<int64_t> DeviceL2Bytes() {
  struct L2Bytes {};
  return PerDevice<L2Bytes, int64_t>([](int device) -> absl::StatusOr<int64_t> {
    int bytes = 0;
    MARLIN_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&bytes, cudaDevAttrL2CacheSize, device));
    return bytes;
  });
}

// The cluster ranks of the waves of a tall launch of `parts` parts of `part_rows` rows over w
// (TallClusterRanks of its configuration).
absl::StatusOr<int> TallRanks(const DeviceWeight& w, int part_rows, int parts, int sm_count) {
  return WithPartRows<absl::StatusOr<int>>(part_rows, [&]<typename Waves, typename>() {
    return TallClusterRanks<Waves>(w, parts, sm_count);
  });
}

// The measured rule's launch (MeasuredTallLaunch, gemm_dispatch.h) of configuration C's `parts`
// row parts over w, whose waves would take `ranks` blocks per (part, slice).
template <typename C>
absl::StatusOr<TallLaunch> MeasuredTallLaunchOf(const DeviceWeight& w, int parts, int ranks,
                                                int sm_count) {
  const absl::StatusOr<int64_t> l2_bytes = DeviceL2Bytes();
  if (!l2_bytes.ok()) return l2_bytes.status();
  return MeasuredTallLaunch({.parts = parts,
                             .part_rows = C::kBatch,
                             .slices = PassShape<C>(w).slices,
                             .stages_per_slice = static_cast<int>((w.shape.k + 63) / 64),
                             .ranks = ranks,
                             .x_bytes = int64_t{1} * parts * C::kBatch * w.shape.k * 2},
                            sm_count, *l2_bytes);
}

// How `parts` parts of `part_rows` rows run: the forced partition's TallLaunch (striped:
// kStriped; the cluster split: kWaves; passes: kPasses), else the measured rule.
absl::StatusOr<TallLaunch> ChooseTallLaunch(const DeviceWeight& w, int part_rows, int parts,
                                            int ranks, int sm_count) {
  switch (ForcedHopperPartition()) {
    case HopperPartition::kPasses:
      return TallLaunch::kPasses;
    case HopperPartition::kStriped:
      return TallLaunch::kStriped;
    case HopperPartition::kClusterSplit:
      return TallLaunch::kWaves;
    case HopperPartition::kAuto:
      break;
  }
  return WithPartRows<absl::StatusOr<TallLaunch>>(part_rows, [&]<typename Waves, typename>() {
    return MeasuredTallLaunchOf<Waves>(w, parts, ranks, sm_count);
  });
}

// The height class of the tall parts of a product of `rows` rows over w (128 or 256; ChooseTallPlan
// fits the parts to the rows): the forced one, else the measured rule (MeasuredTallPartRows,
// gemm_dispatch.h).
absl::StatusOr<int> ChooseTallPartRows(const DeviceWeight& w, int64_t rows, int sm_count) {
  if (const int forced = ForcedTallPartRows(); forced != 0) {
    if (forced != kMinTallPartRows && forced != kMaxPassRows) {
      return absl::InvalidArgumentError(absl::StrCat("tall parts of ", forced, " rows"));
    }
    return forced;
  }
  const PassShape<Rows256Narrow> shape(w);
  const int parts = static_cast<int>(rows / kMaxPassRows);  // rows >= kMinTallRows: at least one
  const absl::StatusOr<int> ranks = TallClusterRanks<Rows256Narrow>(w, parts, sm_count);
  if (!ranks.ok()) return ranks.status();
  return MeasuredTallPartRows({.rows = rows,
                               .slices = shape.slices,
                               .stages_per_slice = shape.stages_per_slice,
                               .ranks = *ranks},
                              sm_count);
}

// A tall launch of a product's first `rows` rows: `parts` parts of `part_rows` rows (the last one
// may be short), run as `launch` (kPasses: none), its waves on `ranks` blocks per (part, slice).
struct TallPlan {
  int64_t rows;
  int part_rows;
  int parts;
  int ranks;
  TallLaunch launch;
  bool three_consumers = false;  // waves of Rows128Trio (part_rows 128)
};

// The parts of a tall launch of `rows` rows in the height class `height` (128: as many parts as
// whole 128-row ones fit, 256: as few as hold the rows), their rows spread evenly and fitted to a
// configuration (FittedPartRows): at most 31 padded rows a part, and no rows left to a pass that
// would stream the weight again. Products of whole 128-row (256-row) parts keep them, and in the
// 256 class a multiple of 128 rows keeps its whole 256-row parts and leaves the last 128 rows to a
// pass (`rows` then says how many the launch covers): on the H100 (session 20, one call, twice),
// 16384^2 ran 0.99 at 384 and 640 rows that way against 0.91-0.93 with fitted parts.
struct FittedParts {
  int part_rows;
  int parts;
  int64_t rows;
  FittedParts(int64_t product_rows, int height) : rows(product_rows) {
    if (height == kMaxPassRows && product_rows % kMinTallPartRows == 0) {
      part_rows = height;
      parts = static_cast<int>(product_rows / height);
      rows = int64_t{1} * parts * part_rows;
      return;
    }
    const int64_t even_parts =
        height == kMinTallPartRows ? product_rows / height : (product_rows + height - 1) / height;
    part_rows = FittedPartRows(static_cast<int>((product_rows + even_parts - 1) / even_parts));
    parts = static_cast<int>((product_rows + part_rows - 1) / part_rows);
  }
};

// The tall launch the measured rules give a product of kMinTallRows <= rows <= kMaxTallLaunchRows
// rows: one launch of its rows (FittedParts), in parts of the chosen height class or, where the
// rule runs those as passes, of 256; else (kPasses) a pass.
absl::StatusOr<TallPlan> MeasuredTallPlan(const DeviceWeight& w, int64_t rows, int sm_count) {
  const absl::StatusOr<int> height_class = ChooseTallPartRows(w, rows, sm_count);
  if (!height_class.ok()) return height_class.status();
  for (int height = *height_class; height <= kMaxPassRows; height *= 2) {
    const FittedParts fitted(rows, height);
    if (fitted.parts < 2) break;
    const absl::StatusOr<int> ranks = TallRanks(w, fitted.part_rows, fitted.parts, sm_count);
    if (!ranks.ok()) return ranks.status();
    const absl::StatusOr<TallLaunch> launch =
        ChooseTallLaunch(w, fitted.part_rows, fitted.parts, *ranks, sm_count);
    if (!launch.ok()) return launch.status();
    if (*launch != TallLaunch::kPasses || ForcedTallPartRows() != 0) {
      return TallPlan{fitted.rows, fitted.part_rows, fitted.parts, *ranks, *launch};
    }
  }
  return TallPlan{0, static_cast<int>(kMaxPassRows), 0, 1, TallLaunch::kPasses};
}

// One wave of a product's rows over a weight of `slices` column slices: the fewest parts of 128-256
// rows (the rows spread evenly, each part fitted to a configuration) whose units (parts x slices)
// fill at least 90% of the SMs in one wave of one block each, or none.
std::optional<TallPlan> OneWavePlan(int64_t rows, int slices, int sm_count) {
  const int64_t most_parts = (rows + kMinTallPartRows - 1) / kMinTallPartRows;
  for (int64_t parts = std::max<int64_t>(2, (rows + kMaxPassRows - 1) / kMaxPassRows);
       parts <= most_parts; ++parts) {
    const int part_rows = FittedPartRows(static_cast<int>((rows + parts - 1) / parts));
    const int fitted = static_cast<int>((rows + part_rows - 1) / part_rows);
    const int64_t units = int64_t{1} * fitted * slices;
    if (units > sm_count) break;
    if (FillsOneWave(units, sm_count)) {
      return TallPlan{rows, part_rows, fitted, 1, TallLaunch::kWaves};
    }
  }
  return std::nullopt;
}

// The rows a plan for a product of `rows` rows multiplies, padding included: its parts', and those
// it leaves to passes.
int64_t WorkRows(const TallPlan& plan, int64_t rows) {
  return int64_t{1} * plan.parts * plan.part_rows + (rows - plan.rows);
}

// Waves of Rows128Trio over `rows` rows of whole 128-row parts, `ranks` blocks a unit.
TallPlan ThreeConsumerWaves(int64_t rows, int ranks) {
  return TallPlan{.rows = rows,
                  .part_rows = static_cast<int>(kMinTallPartRows),
                  .parts = static_cast<int>(rows / kMinTallPartRows),
                  .ranks = ranks,
                  .launch = TallLaunch::kWaves,
                  .three_consumers = true};
}

// How a product of kMinTallRows <= rows <= kMaxTallLaunchRows rows starts: the measured rules'
// tall launch (MeasuredTallPlan) or pass; where that leaves the SMs under-filled, one wave of
// fitted parts (OneWavePlan, OneWavePays) that pads few more rows (OneWavePadsLittle); else, where
// 192-column slices fill whole waves, fewer than it takes, waves of the three-consumer
// configuration (ThreeConsumerWavesPay); where its waves fill one wave badly, those units on a
// cluster split that fills it (ClusteredThreeConsumersPay); where it runs several full waves, the
// same units as runs of whole units (RunsPay). A forced partition or part height keeps the first.
absl::StatusOr<TallPlan> ChooseTallPlan(const DeviceWeight& w, int64_t rows, int sm_count) {
  const absl::StatusOr<TallPlan> measured = MeasuredTallPlan(w, rows, sm_count);
  if (!measured.ok() || ForcedTallPartRows() != 0 ||
      ForcedHopperPartition() != HopperPartition::kAuto) {
    return measured;
  }
  const int slices = PassShape<Rows128Narrow>(w).slices;  // every fitted configuration's
  const ChosenTallLaunch chosen{.launch = measured->launch,
                                .units = int64_t{1} * measured->parts * slices,
                                .ranks = measured->ranks,
                                .part_rows = measured->part_rows};
  if (OneWavePays(chosen, sm_count)) {
    const std::optional<TallPlan> one_wave = OneWavePlan(rows, slices, sm_count);
    if (one_wave && OneWavePadsLittle(WorkRows(*measured, rows), WorkRows(*one_wave, rows))) {
      return *one_wave;
    }
  }
  if (ThreeConsumerWavesPay(chosen, rows, PassShape<Rows128Trio>(w).slices, sm_count)) {
    return ThreeConsumerWaves(rows, /*ranks=*/1);
  }
  if (chosen.launch == TallLaunch::kWaves && rows % kMinTallPartRows == 0) {
    const int parts = static_cast<int>(rows / kMinTallPartRows);
    const PassShape<Rows128Trio> trio(w);
    const absl::StatusOr<int> trio_ranks =
        BestClusterRanks<Rows128Trio>(trio.slices, trio.stages_per_slice, parts, sm_count);
    if (!trio_ranks.ok()) return trio_ranks.status();
    if (ClusteredThreeConsumersPay(chosen.units * chosen.ranks, int64_t{1} * parts * trio.slices,
                                   *trio_ranks, sm_count)) {
      return ThreeConsumerWaves(rows, *trio_ranks);
    }
  }
  const absl::StatusOr<int64_t> l2_bytes = DeviceL2Bytes();
  if (!l2_bytes.ok()) return l2_bytes.status();
  if (RunsPay(chosen, rows * w.shape.k * 2, sm_count, *l2_bytes)) {
    TallPlan runs = *measured;
    runs.launch = TallLaunch::kRuns;
    return runs;
  }
  return *measured;
}

// Enqueues the tall launch `plan` (not kPasses) of its plan.rows rows.
absl::Status LaunchTall(const TallPlan& plan, const __half* x, const DeviceWeight& w, __half* y,
                        int* counters, float* partials, int sm_count, cudaStream_t stream) {
  const int rows = static_cast<int>(plan.rows);
  if (plan.three_consumers) {
    return Launch<Rows128Trio>(x, rows, w, y, counters, partials, sm_count, stream, plan.ranks);
  }
  return WithPartRows<absl::Status>(plan.part_rows, [&]<typename Waves, typename Striped>() {
    return plan.launch == TallLaunch::kWaves
               ? Launch<Waves>(x, rows, w, y, counters, partials, sm_count, stream, plan.ranks)
               : Launch<Striped>(x, rows, w, y, counters, partials, sm_count, stream, plan.ranks,
                                 /*unit_runs=*/plan.launch == TallLaunch::kRuns);
  });
}

}  // namespace

absl::Status LaunchGemm(const __half* x, int64_t m, const DeviceWeight& w, __half* y, int* counters,
                        float* partials, int sm_count, cudaStream_t stream) {
  const int64_t k = w.shape.k, n = w.shape.n;
  for (int64_t row0 = 0; row0 < m;) {
    const int64_t left = std::min(kMaxTallLaunchRows, m - row0);
    if (left >= kMinTallRows) {
      const absl::StatusOr<TallPlan> plan = ChooseTallPlan(w, left, sm_count);
      if (!plan.ok()) return plan.status();
      if (plan->launch != TallLaunch::kPasses) {
        const absl::Status s =
            LaunchTall(*plan, x + row0 * k, w, y + row0 * n, counters, partials, sm_count, stream);
        if (!s.ok()) return s;
        row0 += plan->rows;
        continue;
      }
    }
    const int rows = static_cast<int>(std::min(kMaxPassRows, m - row0));
    const absl::Status s =
        LaunchPass(x + row0 * k, rows, w, y + row0 * n, counters, partials, sm_count, stream);
    if (!s.ok()) return s;
    row0 += rows;
  }
  return absl::OkStatus();
}

const char* TraceSlotName(int slot) {
  static constexpr const char* kNames[] = {
      "consumers start",    "grid dependency met",    "segment 0 start",
      "segment 0 loop end", "segment 0 end",          "segment 1 start",
      "segment 1 loop end", "segment 1 end",          "segment 2 start",
      "segment 2 loop end", "segment 2 end",          "cluster: rings free",
      "cluster: scattered", "cluster: shares landed", "held sum: others signalled",
      "held sum stored",    "sum: others signalled",  "sum stored",
      "consumers end"};
  static_assert(std::size(kNames) == kTraceSlots && kTraceSegments == 3);
  return slot >= 0 && slot < kTraceSlots ? kNames[slot] : "?";
}

#ifdef MARLIN_HOPPER_TRACE
bool TraceBuilt() { return true; }

absl::Status ClearTrace() {
  const std::vector<uint64_t> zeros(size_t{kTraceBlocks} * kTraceSlots, 0);
  MARLIN_CUDA_RETURN_IF_ERROR(
      cudaMemcpyToSymbol(g_trace_ns, zeros.data(), zeros.size() * sizeof(uint64_t)));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint64_t>> ReadTrace() {
  std::vector<uint64_t> ns(size_t{kTraceBlocks} * kTraceSlots);
  MARLIN_CUDA_RETURN_IF_ERROR(
      cudaMemcpyFromSymbol(ns.data(), g_trace_ns, ns.size() * sizeof(uint64_t)));
  return ns;
}
#else
bool TraceBuilt() { return false; }

absl::Status ClearTrace() {
  return absl::FailedPreconditionError("built without the trace (cmake -DMARLIN_HOPPER_TRACE=ON)");
}

absl::StatusOr<std::vector<uint64_t>> ReadTrace() { return ClearTrace(); }
#endif

}  // namespace marlin::cuda::hopper
