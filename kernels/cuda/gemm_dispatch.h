// Which path multiplies a product: the Ampere path (cp.async + mma.sync, sm_80 and later), the
// Hopper path (TMA + wgmma, sm_90a), or for tall products the dequant-cublas path (W dequantized to
// FP16 chunk by chunk, cuBLAS). Gemm consults ChooseGemmPath on every call; the table behind it
// holds what marlin-bench measured on an H100 (docs/perf/kernel-h100.md), as does the Hopper
// path's rules for tall launches (MeasuredTallPartRows, MeasuredTallLaunch).
//
//   GemmPath path = ChooseGemmPath(/*sm=*/90, m, k, n);
//   ForceGemmPathForTesting(GemmPath::kHopper);  // tests and the benchmark only
//   ForceHopperPartitionForTesting(HopperPartition::kClusterSplit);
//   int part_rows = MeasuredTallPartRows(product, sm_count);            // hopper_gemm.cu
//   TallLaunch launch = MeasuredTallLaunch(shape, sm_count, l2_bytes);
#ifndef MARLIN_KERNELS_CUDA_GEMM_DISPATCH_H_
#define MARLIN_KERNELS_CUDA_GEMM_DISPATCH_H_

#include <cstdint>

namespace marlin::cuda {

enum class GemmPath {
  kAuto,           // the dispatch table decides
  kAmpere,         // kernels/cuda/marlin_kernel.cuh
  kHopper,         // kernels/cuda/hopper_kernel.cuh
  kDequantCublas,  // kernels/cuda/dequant_cublas.h: W to FP16 in chunks, cuBLAS (sm_80 and later)
};

const char* GemmPathName(GemmPath path);

// Whether this build carries `path`'s machine code and it runs on compute capability `sm`
// (major * 10 + minor).
bool GemmPathAvailable(GemmPath path, int sm);

// The path for an m x k by k x n product on compute capability `sm`; never kAuto.
GemmPath ChooseGemmPath(int sm, int64_t m, int64_t k, int64_t n);

// The fastest of our own kernels on `sm`: kHopper where it runs, else kAmpere.
GemmPath ChooseKernelPath(int sm);

// Test and benchmark hook: every later Gemm call in this process takes `path` (kAuto restores
// the table). Gemm fails with FailedPrecondition when the forced path cannot run on the device.
void ForceGemmPathForTesting(GemmPath path);
GemmPath ForcedGemmPath();

// How a Hopper pass spreads its (column slice, k stage) iterations over the grid.
enum class HopperPartition {
  kAuto,          // the measured rule in hopper_gemm.cu decides per pass
  kStriped,       // even runs of iterations per block; split slices summed through global memory;
                  // products of two row parts or more (hopper_gemm.h) run their whole parts as
                  // one striped launch over every part's slices
  kClusterSplit,  // a cluster of blocks per slice, its k stages split between them, partials
                  // summed through distributed shared memory; only where every slice gets a
                  // co-resident cluster (else striped); products of two row parts or more run
                  // their whole parts as one launch, a block or cluster per (part, slice)
  kPasses,        // products taller than one pass run as passes of 256 rows, each partitioned by
                  // the measured rule, never as one tall launch (hopper_gemm.h)
};

const char* HopperPartitionName(HopperPartition partition);

// Test and benchmark hook, like ForceGemmPathForTesting, for the Hopper path's partition.
void ForceHopperPartitionForTesting(HopperPartition partition);
HopperPartition ForcedHopperPartition();

// Test and benchmark hook: the rows of a tall launch's parts, 128 or 256 (0 restores the measured
// rule, MeasuredTallPartRows).
void ForceTallPartRowsForTesting(int part_rows);
int ForcedTallPartRows();

// A product that the Hopper path may run as tall launches (hopper_gemm.cu, LaunchGemm), as 256-row
// parts would run it.
struct TallProductShape {
  int64_t rows;          // rows left to multiply (at least 256)
  int slices;            // column slices of the weight (128 columns each)
  int stages_per_slice;  // 64-k stages of a slice
  int ranks;             // blocks per (256-row part, slice) in waves: the cluster split's, else 1
};

// The measured rule (docs/perf/kernel-h100.md, session 18) for the rows of `product`'s tall parts
// on a device of `sm_count` SMs: 128 or 256.
int MeasuredTallPartRows(const TallProductShape& product, int sm_count);

// How the Hopper path runs a tall product's whole row parts (hopper_gemm.cu, LaunchGemm).
enum class TallLaunch {
  kPasses,   // one pass each
  kWaves,    // one launch, a block or cluster per (part, column slice), the blocks in waves
  kStriped,  // one launch, the striped partition over every part's slices
  kRuns,     // one launch, each block a run of whole (part, column slice) units, back to back
};

// A tall launch of the Hopper path's 128- or 256-row configuration over one weight.
struct TallLaunchShape {
  int parts;             // whole row parts
  int part_rows;         // rows of a part: 128 or 256
  int slices;            // column slices of the weight (128 columns each)
  int stages_per_slice;  // 64-k stages of a slice (whatever stages the configuration takes)
  int ranks;             // blocks per (part, slice) in waves: the cluster split's, else 1
  int64_t x_bytes;       // the parts' activations
};

// The measured rule (docs/perf/kernel-h100.md, sessions 16-18) for `shape` on a device of
// `sm_count` SMs and `l2_bytes` of L2.
TallLaunch MeasuredTallLaunch(const TallLaunchShape& shape, int sm_count, int64_t l2_bytes);

// The launch the rules above chose for a tall product (its parts fitted to the rows).
struct ChosenTallLaunch {
  TallLaunch launch;
  int64_t units;        // parts x slices (0 for kPasses)
  int ranks;            // blocks per unit in waves
  int part_rows = 128;  // rows of a part (128-256)
};

// Whether `units` units of one block each fill at least 90% of `sm_count` SMs in one wave.
bool FillsOneWave(int64_t units, int sm_count);

// The measured rule (docs/perf/kernel-h100.md, session 21) for whether one wave of fitted parts
// (as many parts of 128-256 rows as make the product's units fill one wave: FillsOneWave) replaces
// `chosen` on a device of `sm_count` SMs: where `chosen` leaves the SMs under-filled (a striped
// launch of few units, waves that keep under 90% of the SMs busy).
bool OneWavePays(const ChosenTallLaunch& chosen, int sm_count);

// The measured rule (docs/perf/kernel-h100.md, session 37) for whether that one wave, whose parts
// multiply `one_wave_rows` rows (padding included), may replace a plan that multiplies
// `plan_rows`: where it adds at most a tenth to them.
bool OneWavePadsLittle(int64_t plan_rows, int64_t one_wave_rows);

// The measured rule (docs/perf/kernel-h100.md, session 21) for whether `chosen`, waves of one
// block per unit, runs instead as runs of whole units (TallLaunch::kRuns: as many blocks as units
// per wave, each taking as many consecutive units as there are waves, back to back), on a device
// of `sm_count` SMs and `l2_bytes` of L2, the product's activations `x_bytes`.
bool RunsPay(const ChosenTallLaunch& chosen, int64_t x_bytes, int sm_count, int64_t l2_bytes);

// The measured rule (docs/perf/kernel-h100.md, session 26) for whether a tall product of `rows`
// rows runs, instead of `chosen`, as waves of the Hopper path's three-consumer configuration (one
// block per 128-row part and 192-column slice, `trio_slices` of them) on a device of `sm_count`
// SMs: on whole 128-row parts, where those units fill at least 90% of the SMs in one wave against
// passes, two against waves or runs, three against a striped launch, and in fewer waves than
// `chosen` takes, counted in 128-row parts.
bool ThreeConsumerWavesPay(const ChosenTallLaunch& chosen, int64_t rows, int trio_slices,
                           int sm_count);

// The measured rule (docs/perf/kernel-h100.md, session 36) for whether a tall product of whole
// 128-row parts runs, instead of `chosen_blocks` blocks in waves (one wave), as waves of the Hopper
// path's three-consumer configuration on a cluster split of `trio_ranks` >= 2 blocks for each of
// its `trio_units` units (128-row part x 192-column slice) on a device of `sm_count` SMs: where
// those clusters fill at least 90% of the SMs in one wave on at least 1.3x the blocks, so each
// block multiplies at most 10/13 of what a block of the plan it replaces does.
bool ClusteredThreeConsumersPay(int64_t chosen_blocks, int64_t trio_units, int trio_ranks,
                                int sm_count);

}  // namespace marlin::cuda

#endif  // MARLIN_KERNELS_CUDA_GEMM_DISPATCH_H_
