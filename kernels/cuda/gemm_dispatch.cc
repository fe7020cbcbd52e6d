// The dispatch table between the Ampere and Hopper paths.
#include "kernels/cuda/gemm_dispatch.h"

#include <atomic>
#include <cstdint>

namespace marlin::cuda {
namespace {

std::atomic<GemmPath> forced_path{GemmPath::kAuto};
std::atomic<HopperPartition> forced_partition{HopperPartition::kAuto};

// The H100 table (marlin-bench --paths ampere,hopper over the Llama-3 8B/70B layers and 16384^2,
// docs/perf/kernel-h100.md): since the split-slice sums stopped waiting for one block at a time,
// the Hopper path wins on every layer at every row count (the Ampere path had kept 4096 x 4096
// and 4096 x 6144 up to 64 rows before, by 0-7%); within 0.5% on L8B.o at 128 rows.
}  // namespace

const char* GemmPathName(GemmPath path) {
  switch (path) {
    case GemmPath::kAuto:
      return "auto";
    case GemmPath::kAmpere:
      return "ampere";
    case GemmPath::kHopper:
      return "hopper";
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
  }
  return false;
}

GemmPath ChooseGemmPath(int sm, int64_t /*m*/, int64_t /*k*/, int64_t /*n*/) {
  return GemmPathAvailable(GemmPath::kHopper, sm) ? GemmPath::kHopper : GemmPath::kAmpere;
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
