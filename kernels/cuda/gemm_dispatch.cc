// The dispatch table between the Ampere, Hopper and dequant-cublas paths.
#include "kernels/cuda/gemm_dispatch.h"

#include <atomic>
#include <cstdint>

namespace marlin::cuda {
namespace {

std::atomic<GemmPath> forced_path{GemmPath::kAuto};
std::atomic<HopperPartition> forced_partition{HopperPartition::kAuto};

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

}  // namespace marlin::cuda
