// The dispatch table between the Ampere, Hopper and dequant-cublas paths.
#include "kernels/cuda/gemm_dispatch.h"

#include <atomic>
#include <cstdint>

namespace marlin::cuda {
namespace {

std::atomic<GemmPath> forced_path{GemmPath::kAuto};
std::atomic<HopperPartition> forced_partition{HopperPartition::kAuto};

// The fewest rows from which the dequant-cublas path takes an m x k by k x n product. On sm_90, by
// weight size (marlin-bench --paths hopper,dequant-cublas at 512-8192 rows on the H100,
// docs/perf/kernel-h100.md): the Hopper path's 256-row passes each pay a fixed cost that the
// smaller weights cannot hide, while the dequantization costs a fixed read and write of the weight
// that the taller products hide. Per layer (cuBLAS FP16 / path, hopper against dequant-cublas):
// L8B.o 0.64 / 0.64 at 512 rows, 0.60 / 0.76 at 1024; L8B.qkv 0.71 / 0.62 and 0.68 / 0.76; L8B.down
// 0.82 / 0.76 at 1024, 0.82 / 0.86 at 2048; L70B.o 0.92 / 0.87 at 2048, 0.90 / 0.91 at 4096;
// L70B.qkv 0.74 / 0.73 at 2048, 0.71 / 0.88 at 4096; L8B.gate/up 0.78 / 0.76 and 0.74 / 0.89. The
// weights past 2^27 elements stay on the Hopper path: within 3% either way up to 8192 rows
// (L70B.gate/up 0.95 / 0.97, L70B.down 1.00 / 1.01, 16384^2 1.04 / 0.98 at 8192). On sm_80-89 no
// card was measured: from 1024 rows, where the Ampere path's 128-row passes read the weight eight
// times or more, against an FP16 GEMM near its peak.
int64_t DequantCublasMinRows(int sm, int64_t k, int64_t n) {
  constexpr int64_t kNever = INT64_MAX;
  if (!GemmPathAvailable(GemmPath::kHopper, sm)) return 1024;
  const int64_t elements = k * n;
  if (elements <= (int64_t{1} << 25)) return 1024;
  if (elements < (int64_t{1} << 26)) return 2048;
  if (elements <= (int64_t{1} << 27)) return 4096;
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
  }
  return "?";
}

void ForceHopperPartitionForTesting(HopperPartition partition) {
  forced_partition.store(partition);
}

HopperPartition ForcedHopperPartition() { return forced_partition.load(); }

}  // namespace marlin::cuda
