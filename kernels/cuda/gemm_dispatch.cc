// The dispatch table between the Ampere and Hopper paths.
#include "kernels/cuda/gemm_dispatch.h"

#include <atomic>
#include <cstdint>

namespace marlin::cuda {
namespace {

std::atomic<GemmPath> forced_path{GemmPath::kAuto};

// The H100 table (marlin-bench --paths ampere,hopper over the Llama-3 8B/70B layers and 16384^2,
// docs/perf/kernel-h100.md). Above 128 rows the Hopper path won on every layer (1.7-2.3x); from
// 17 rows on every weight of at least 2^25 elements (the Ampere path kept the 4096 x 4096 and
// 4096 x 6144 layers, by 1-30%); up to 16 rows, where both stream weights near the same rate, on
// the largest weights (>= 2^27 elements) and the long-K down projections (K >= 14336).
constexpr int64_t kHopperAllFromRows = 129;
constexpr int64_t kMediumFromRows = 17;
constexpr int64_t kMediumMinElements = int64_t{1} << 25;
constexpr int64_t kSmallMinElements = int64_t{1} << 27;
constexpr int64_t kSmallMinK = 14336;

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
  const int64_t elements = k * n;
  bool hopper = false;
  if (m >= kHopperAllFromRows) {
    hopper = true;
  } else if (m >= kMediumFromRows) {
    hopper = elements >= kMediumMinElements;
  } else {
    hopper = elements >= kSmallMinElements || k >= kSmallMinK;
  }
  return hopper ? GemmPath::kHopper : GemmPath::kAmpere;
}

void ForceGemmPathForTesting(GemmPath path) { forced_path.store(path); }

GemmPath ForcedGemmPath() { return forced_path.load(); }

}  // namespace marlin::cuda
