// The dispatch table between the Ampere, Hopper and dequant-cublas paths.
#include "kernels/cuda/gemm_dispatch.h"

#include <atomic>
#include <cstdint>

namespace marlin::cuda {
namespace {

std::atomic<GemmPath> forced_path{GemmPath::kAuto};
std::atomic<HopperPartition> forced_partition{HopperPartition::kAuto};
std::atomic<int> forced_tall_part_rows{0};

// Whether `blocks` blocks in waves keep at least `num` / `den` of `sm_count` SMs busy.
bool WavesKeepBusy(int64_t blocks, int sm_count, int num, int den) {
  const int64_t waves = (blocks + sm_count - 1) / sm_count;
  return den * blocks >= num * waves * sm_count;
}

// The fewest rows from which the dequant-cublas path takes an m x k by k x n product. On sm_90, by
// weight size (marlin-bench --paths hopper:passes,hopper:cluster,hopper:striped,dequant-cublas at
// 512-8192 rows on the H100, docs/perf/kernel-h100.md "Session 16"): since the Hopper path runs
// tall products as tall launches (hopper_gemm.h), the dequantization's fixed read and write of
// the weight pays only on small weights at the tallest products. Per layer (cuBLAS FP16 / path,
// the Hopper path's best launch against dequant-cublas): L8B.o 0.90 / 0.93 at 4096 rows, 0.83 /
// 0.94 at 8192; L8B.qkv 0.89 / 0.92 and 0.93 / 0.99; L8B.down 0.93 / 0.93 at 4096, 0.96 / 0.99 at
// 8192. Larger weights stay on the Hopper path: L8B.gate/up 0.98 / 0.91, L70B.qkv 1.02 / 1.01,
// L70B.o 1.00 / 0.98 and L70B.down 1.04 / 1.00 at 8192 rows. On sm_80-89 no card was measured:
// from 1024 rows, where the Ampere path's 128-row passes read the weight eight times or more,
// against an FP16 GEMM near its peak.
int64_t DequantCublasMinRows(int sm, int64_t k, int64_t n) {
  constexpr int64_t kNever = INT64_MAX;
  if (!GemmPathAvailable(GemmPath::kHopper, sm)) return 1024;
  const int64_t elements = k * n;
  if (elements <= (int64_t{1} << 25)) return 4096;
  if (elements < (int64_t{1} << 26)) return 8192;
  return kNever;
}

}  // namespace

const char* GemmPathName(GemmPath path) {
  switch (path) {
    case GemmPath::kAuto:
      return "auto";
    case GemmPath::kAmpere:
      return "ampere";
    case GemmPath::kHopper:
      return "hopper";
    case GemmPath::kDequantCublas:
      return "dequant-cublas";
  }
  return "?";
}

bool GemmPathAvailable(GemmPath path, int sm) {
  switch (path) {
    case GemmPath::kAuto:
      return true;
    case GemmPath::kAmpere:
      return sm >= 80;
    case GemmPath::kHopper:
#ifdef MARLIN_HAS_SM90A
      return sm == 90;
#else
      return false;
#endif
    case GemmPath::kDequantCublas:
      return sm >= 80;
  }
  return false;
}

// The H100 table (marlin-bench --paths ampere,hopper over the Llama-3 8B/70B layers and 16384^2,
// docs/perf/kernel-h100.md): since the split-slice sums stopped waiting for one block at a time,
// the Hopper path wins on every layer at every row count (the Ampere path had kept 4096 x 4096
// and 4096 x 6144 up to 64 rows before, by 0-7%); within 0.5% on L8B.o at 128 rows.
GemmPath ChooseKernelPath(int sm) {
  return GemmPathAvailable(GemmPath::kHopper, sm) ? GemmPath::kHopper : GemmPath::kAmpere;
}

GemmPath ChooseGemmPath(int sm, int64_t m, int64_t k, int64_t n) {
  if (GemmPathAvailable(GemmPath::kDequantCublas, sm) && m >= DequantCublasMinRows(sm, k, n)) {
    return GemmPath::kDequantCublas;
  }
  return ChooseKernelPath(sm);
}

void ForceGemmPathForTesting(GemmPath path) { forced_path.store(path); }

GemmPath ForcedGemmPath() { return forced_path.load(); }

const char* HopperPartitionName(HopperPartition partition) {
  switch (partition) {
    case HopperPartition::kAuto:
      return "auto";
    case HopperPartition::kStriped:
      return "striped";
    case HopperPartition::kClusterSplit:
      return "cluster";
    case HopperPartition::kPasses:
      return "passes";
  }
  return "?";
}

void ForceHopperPartitionForTesting(HopperPartition partition) {
  forced_partition.store(partition);
}

HopperPartition ForcedHopperPartition() { return forced_partition.load(); }

void ForceTallPartRowsForTesting(int part_rows) { forced_tall_part_rows.store(part_rows); }

int ForcedTallPartRows() { return forced_tall_part_rows.load(); }

// The rows of a tall launch's parts, measured on the H100 (a build whose part rows an environment
// variable forced, marlin-bench --paths hopper:striped,hopper:cluster at 256-1024 rows with 128-
// and 256-row parts, each twice in one call, docs/perf/kernel-h100.md "Session 18"; speedups
// over cuBLAS FP16). 128-row parts (the 128-row configuration: group stages) quarter the
// quantization of units whose 256-row counterparts fill the SMs badly, and let a product of an odd
// number of 128-row parts run in one launch instead of a tall launch (or pass) and a pass:
// - They won where 256-row units (parts x slices; blocks, with a cluster split whose ranks take at
//   least 128 stages each) keep under 90% of the SMs busy in waves and number at most 1.5x the
//   SMs: L8B.o at 512 rows 0.95 (128 units in waves) against 0.76 (64 units on two-block
//   clusters), L8B.down 0.98 against 0.91, L8B.qkv at 512-1024 rows 0.81-0.87 against 0.76-0.81,
//   L70B.qkv at 256 rows 1.01 (striped over 160 units) against 0.93 (its striped pass, as
//   dispatched before), L70B.o at 768 0.93 against 0.91.
// - And at such fill with an odd number of 128-row parts: at 384 rows (before, a 256-row pass and
//   a 128-row one) L8B.gate/up 1.04 against 0.93, L8B.qkv 0.84 against 0.66, L70B.qkv 0.95
//   against 0.81, L8B.down 1.34 against 1.12.
// - They lost where 256-row waves keep the SMs busy (L8B.o at 1024 rows, 128 units: 0.88 against
//   0.96; L70B.down at 256 rows, two-block clusters of 224 stages a rank: 1.08-1.15 against 1.18;
//   16384^2 at 384, 128 units: 0.97 against 0.99). Misses of this rule, within 3%: L8B.gate/up at
//   256 rows (0.96 against 0.98-0.99), L70B.down at 768 (0.98 against 0.99-1.00), L8B.down at 256
//   (128-row waves 1.20 / 1.10 against 1.19; the next call read 1.22 for both).
int MeasuredTallPartRows(const TallProductShape& product, int sm_count) {
  const int64_t parts = product.rows / 256;  // rows >= 256: at least one
  const int64_t units = parts * product.slices;
  const bool long_ranks = product.ranks > 1 && product.stages_per_slice / product.ranks >= 128;
  const int64_t blocks = long_ranks ? units * product.ranks : units;
  const bool odd_parts = product.rows % 256 >= 128;
  if (WavesKeepBusy(blocks, sm_count, 9, 10)) return 256;
  return odd_parts || 2 * blocks <= 3 * sm_count ? 128 : 256;
}

// How a tall launch's parts run, measured on the H100 (marlin-bench --paths
// hopper:passes,hopper:cluster,hopper:striped at 512-8192 rows, docs/perf/kernel-h100.md "Session
// 17": its second call, whose striped launch kept the summed share in registers, a variant not
// kept that took 0.95-1.11x this one's time in the same call, over 1.03x on L8B.qkv, L8B.o and
// L8B.down at 512-768 rows and on L8B.qkv and L70B.o at 1536; speedups over cuBLAS FP16):
// - The striped launch keeps every SM busy and streams from slice to slice without a block's
//   fill and drain, but sums split slices. Since its blocks process the segment another block
//   sums first (session 17) it won with 3.5 or more units (parts x slices) per SM (L70B.down at
//   2048-4096 rows 1.02-1.05 against 1.00-1.03 in waves, L8B.gate/up at 512-4096 rows 0.94-1.03
//   against 0.84-0.93, L8B.o at 4096 rows 0.92 against 0.89) and where the waves leave > 10% of the
//   SMs idle, with more units than SMs (L70B.qkv at 512 rows, 160 units: 0.88, waves 0.61; L8B.qkv
//   at 1536, 288 units: 0.84 against 0.69) or slices of >= 128 stages (L8B.down at 768 rows, 96
//   units of 224 stages: 0.85 against 0.76); with fewer units it lost (L8B.qkv at 512 rows, 96
//   units of 64 stages: 0.65 against 0.79).
// - Its blocks work on every part at once: at 8192 rows (32 parts) whose activations exceed twice
//   the L2 it collapsed (L70B.down 0.84 against 1.11 in waves, L70B.gate/up 0.88 against 1.05), as
//   it did on any product whose activations exceeded L2 before session 17.
// - Waves won everywhere else where their blocks keep at least 70% of the SMs busy (L8B.o at 1024
//   rows, 128 units: 0.96 against 0.74 striped); below that, passes.
// Against session 16's rule (third call, both builds' dispatch in turn): L70B 0.96-0.99 ->
// 0.99-1.00 per model at 1536-4096 rows, 16384^2 0.97-0.99 -> 0.99-1.04 at 512-4096, L8B 0.92 ->
// 0.97 at 8192, the rest within 1%.
// 128-row parts (MeasuredTallPartRows) follow the same rule, their stages counted in 64 k: in
// session 18's measurements it picked the faster of their two launches wherever they were chosen
// (L8B.o at 512 rows: waves 0.95 against 0.77 striped; L8B.qkv at 512: striped 0.81 against 0.71)
// but on L70B.qkv at 384 rows (waves 0.94 against 0.95).
TallLaunch MeasuredTallLaunch(const TallLaunchShape& shape, int sm_count, int64_t l2_bytes) {
  const int64_t units = int64_t{1} * shape.parts * shape.slices;
  const int64_t blocks = units * shape.ranks;
  const bool busy_waves = WavesKeepBusy(blocks, sm_count, 9, 10);
  const bool striped_misses_l2 =
      int64_t{1} * shape.parts * shape.part_rows >= 8192 && shape.x_bytes > 2 * l2_bytes;
  const bool long_slices = shape.stages_per_slice >= 128;
  if (!striped_misses_l2 &&
      (2 * units >= 7 * sm_count || (!busy_waves && (units > sm_count || long_slices)))) {
    return TallLaunch::kStriped;
  }
  return WavesKeepBusy(blocks, sm_count, 7, 10) ? TallLaunch::kWaves : TallLaunch::kPasses;
}

bool FillsOneWave(int64_t units, int sm_count) {
  return units <= sm_count && WavesKeepBusy(units, sm_count, 9, 10);
}

// One wave, measured on the H100 (session 21: marlin-bench --paths auto at 257-1024 rows, the rule
// switched on by the environment, each build twice in one call; speedups over cuBLAS FP16, base ->
// one wave). Where the rules above leave the SMs under-filled (a striped launch of fewer than 3.5
// units per SM, waves that keep under 90% of them busy), as many parts as make the product's units
// fill 90% or more of one wave, one block each, won or tied wherever they applied: L8B.o at 448 /
// 640 / 768 / 896 rows 0.84-0.92 / 0.80 / 0.82 / 0.90 -> 1.03 / 0.95 / 0.94 / 1.09 (four parts of
// 128-224 rows, 128 units, against 96-224 units of 128-160 rows), L8B.down 0.93 / 0.91 / 0.93 /
// 1.05 -> 0.97 / 0.98 / 0.93 / 1.12, L70B.o at 384 / 448 0.89 / 0.92 -> 0.93 / 1.11 (two parts of
// 192 / 224 rows); L70B.o and L70B.down at 257-320 rows within 0.03 either way. Passes stay:
// L70B.down at 384 rows (a 256-row pass and a 128-row one) read 0.95 in four runs of two calls, as
// one wave of two 192-row parts 0.92-0.96 in six (0.93-0.94 in four).
// Over one wave it mostly lost (L70B.qkv at 512 rows 0.91 -> 0.76 in two waves of 3 x 192 rows,
// 16384^2 at 384 0.99 -> 0.92, L8B.qkv at 896 0.96 -> 0.89-0.94). Parts of 96 rows, which would
// fill one wave at 320-384 rows, were left out: L8B.o at 384 rows 0.76 -> 0.83, L8B.down 1.32-1.34
// -> 1.15-1.26 (its unchanged plan read 1.18-1.35 in the same call).
bool OneWavePays(const ChosenTallLaunch& chosen, int sm_count) {
  switch (chosen.launch) {
    case TallLaunch::kStriped:
      return 2 * chosen.units < 7 * sm_count;
    case TallLaunch::kWaves:
      return !WavesKeepBusy(chosen.units * chosen.ranks, sm_count, 9, 10);
    case TallLaunch::kPasses:
    case TallLaunch::kRuns:
      return false;
  }
  return false;
}

// Padding, measured on the H200 (session 37, marlin-bench --paths auto --layers L8B at 384-512
// rows, both builds twice in one call, best, us). One wave of four 128-row parts (512 rows) in
// place of three parts of 136 (408 rows) lost: with the rule, L8B.down at 385 / 400 / 408 rows
// 93.8 / 89.4 / 94.6 -> 80.0 / 82.3 / 86.3 (striped), L8B.o at 385 / 400 30.4 / 28.8 -> 26.9 / 26.4
// (cluster split); at 416 / 432 rows (three parts of 144, 432 rows) L8B.down 88.6 / 90.3 -> 86.9 /
// 87.3; elsewhere level. The one waves that won in session 21 multiplied at most 7% more rows than
// the plans they replaced (L8B.o at 448 rows: four parts of 128 against three of 160).
bool OneWavePadsLittle(int64_t plan_rows, int64_t one_wave_rows) {
  return 10 * one_wave_rows <= 11 * plan_rows;
}

// Runs of whole units, measured on the H100 (session 21: marlin-bench --paths auto at 512-4096
// rows, each build twice in one call, the rule switched on by the environment; speedups over
// cuBLAS FP16, waves -> runs). A block that takes consecutive units streams from one to the next
// as the striped launch does, without a block's launch, pipeline fill and drain between them, and
// none of its slices is split: L8B.qkv at 1024 / 2048 rows 0.88 / 0.93 -> 0.94-0.95 /
// 0.97, L8B.o at 1536 / 2048 0.88-0.89 / 0.90-0.91 -> 0.94 / 0.95-0.96, L70B.o at 768 / 1536
// 0.93-0.94 / 0.96 -> 0.96 / 0.97-0.98; the other waves it replaced (L8B.down at 1536 and 2048,
// L70B.qkv at 768, L70B.down at 768-1536, 16384^2 at 512 and 768) within 0.01 either way. Runs of
// whole units in place of the striped launches that the rules above choose lost (L70B.qkv at 1536
// rows 0.97 -> 0.93, 16384^2 at 4096 1.03-1.04 -> 1.00-1.01, L8B.gate/up at 4096 0.97-0.99 ->
// 0.93-0.95: their 132 blocks beat 128 with no sums). The blocks at work at once take units all
// over the product, so they read the activations of every part: only where those fit twice the L2
// (the striped launch's guard, MeasuredTallLaunch); none was measured beyond.
bool RunsPay(const ChosenTallLaunch& chosen, int64_t x_bytes, int sm_count, int64_t l2_bytes) {
  if (chosen.launch != TallLaunch::kWaves || chosen.ranks != 1 || x_bytes > 2 * l2_bytes) {
    return false;
  }
  const int64_t waves = (chosen.units + sm_count - 1) / sm_count;
  return waves >= 2 && chosen.units % waves == 0 && FillsOneWave(chosen.units / waves, sm_count);
}

// Three consumer warpgroups at 128 rows, measured on an H200 (session 26, marlin-bench --paths
// auto, each build twice in one call; speedups over cuBLAS FP16 or us, base -> three consumers). A
// unit of theirs (128 rows x 192 columns) costs a block about 1.5x a narrow one (no group stages),
// so it pays only where it fills waves the narrow plans leave part-empty. First, wherever its units
// fill 90% of whole waves: L8B.qkv at 512 rows 0.80 -> 0.97 (striped over 192 units: 128 in one
// wave); L8B.down and L8B.o at 1536 0.95 / 0.93-0.94 -> 0.98-0.99 / 0.94-0.95, L70B.o and L70B.down
// at 768 0.94 / 0.96-0.97 -> 0.97 / 0.99 (three waves of runs: two of 264 / 258 units); L70B.down
// at 384 0.95-0.96 -> 1.00 (two passes: one wave of 129). It lost in four or more waves
// (L8B.gate/up at 512 / 768 / 1536 rows 0.97 / 1.01 / 1.03 -> 0.92 / 0.98 / 0.97, L70B.gate/up at
// 512 0.97 -> 0.87, L70B.o and L70B.qkv at 1536 0.97 -> 0.95) and in place of one wave of fitted
// parts (L8B.o at 768 rows 41.5 / 40.3 -> 42.0 / 41.7 us, L8B.down 137.6 / 140.4 -> 140.7 / 141.0).
// Then within three waves, fewer than the plan it replaced: in two waves as above (L8B.qkv 48.8
// / 50.6 -> 41.3 / 42.6 us at 512 rows, L70B.o 174.7 / 174.2 -> 164.3 / 167.4 at 768, L8B.o 85.5
// / 86.7 -> 82.3 / 82.4 at 1408) or level (L8B.qkv at 1024 rows, against three waves of runs, 84.2
// / 86.4 -> 85.5 / 83.8); where its units take three waves within 1.5% either way (L8B.o and
// L8B.down at 2176 and 2304 rows, L70B.qkv at 896, L70B.o and L70B.down at 1152; that rule did not
// count a 256-row part's waves as two, so it may have left some to their plans); 16384^2 at 384
// rows, two waves against two passes, 322.1 / 322.5 -> 327.4 / 328.2 us. Last, three waves against
// a striped launch (this rule against one without them): L8B.qkv 131.6 / 134.4 -> 124.8 / 124.7 us
// at 1536 rows (0.86 -> 0.91), L8B.o 141.7 / 144.2 -> 130.9 / 133.8 at 2304 (0.86 -> 0.91).
bool ThreeConsumerWavesPay(const ChosenTallLaunch& chosen, int64_t rows, int trio_slices,
                           int sm_count) {
  if (rows % 128 != 0) return false;
  const int64_t units = rows / 128 * trio_slices;
  const int64_t waves = (units + sm_count - 1) / sm_count;
  const int64_t most_waves = chosen.launch == TallLaunch::kPasses    ? 1
                             : chosen.launch == TallLaunch::kStriped ? 3
                                                                     : 2;
  if (waves > most_waves || !WavesKeepBusy(units, sm_count, 9, 10)) return false;
  // `chosen` counted in 128-row parts: a 256-row part's unit or wave takes about two.
  switch (chosen.launch) {
    case TallLaunch::kPasses:
      return true;
    case TallLaunch::kStriped:
      return waves * sm_count * 128 < chosen.units * chosen.part_rows;
    case TallLaunch::kWaves:
    case TallLaunch::kRuns:
      return waves * 128 <
             (chosen.units * chosen.ranks + sm_count - 1) / sm_count * chosen.part_rows;
  }
  return false;
}

// Three consumer warpgroups at 128 rows on a cluster split, measured on an H200 (session 36:
// marlin-bench --paths auto --layers L8B, each build in turn, two and three rounds in two calls).
// Where a tall plan's waves fill one wave badly because the weight's 128-column slices are too few
// for the SMs and too many to split further, 192-column slices split over more ranks fill it:
// L8B.qkv at 256 rows (2 x 48 units, one block each, 96 of 132 SMs; as 2 x 32 units on two-block
// clusters, 128 blocks of 3/4 the MACs) 27.2-28.6 -> 26.0-27.4 us in all five rounds, L8B.o at 384
// (3 x 32 units, 96 blocks; as 3 x 22 on two-block clusters, 132) 25.7-26.6 -> 24.1-25.4. On
// L8B.qkv a block of theirs multiplied about a fifth slower than a narrow one (50.3M MACs in ~26
// us against 67.1M in ~27.6; 64-k stages against 128-k ones, and cluster sums), so it takes at
// least 1.3x the blocks.
bool ClusteredThreeConsumersPay(int64_t chosen_blocks, int64_t trio_units, int trio_ranks,
                                int sm_count) {
  if (trio_ranks < 2 || chosen_blocks > sm_count) return false;
  const int64_t trio_blocks = trio_units * trio_ranks;
  return FillsOneWave(trio_blocks, sm_count) && 10 * trio_blocks >= 13 * chosen_blocks;
}

}  // namespace marlin::cuda
