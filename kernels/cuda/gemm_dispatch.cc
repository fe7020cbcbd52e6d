// The dispatch table between the Ampere and Hopper paths.
#include "kernels/cuda/gemm_dispatch.h"

#include <atomic>
#include <cstdint>

namespace marlin::cuda {
namespace {

std::atomic<GemmPath> forced_path{GemmPath::kAuto};

// The H100 table (marlin-bench --paths ampere,hopper over the Llama-3 8B/70B layers and 16384^2,
// docs/perf/kernel-h100.md): the Hopper path won on every weight of at least 2^25 elements at
// every row count, and on every weight above 64 rows; the Ampere path kept the small weights
// (4096 x 4096, 4096 x 6144) up to 64 rows, by 0-7%.
constexpr int64_t kHopperFromElements = int64_t{1} << 25;
constexpr int64_t kHopperAboveRows = 64;

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

GemmPath ChooseGemmPath(int sm, int64_t m, int64_t k, int64_t n) {
  if (!GemmPathAvailable(GemmPath::kHopper, sm)) return GemmPath::kAmpere;
  const bool hopper = m > kHopperAboveRows || k * n >= kHopperFromElements;
  return hopper ? GemmPath::kHopper : GemmPath::kAmpere;
}

void ForceGemmPathForTesting(GemmPath path) { forced_path.store(path); }

GemmPath ForcedGemmPath() { return forced_path.load(); }

}  // namespace marlin::cuda
