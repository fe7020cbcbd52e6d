// The kernel timeline's host side (hopper_trace.h) without a GPU: the slot names, and a clear
// refusal where the build has no trace. A traced build's stamps are read on the GPU by
// `marlin-bench --profile-layer L --profile-m M --trace`.
#include "kernels/cuda/hopper_trace.h"

#include <set>
#include <string>

#include "gtest/gtest.h"

namespace marlin::cuda::hopper {
namespace {

TEST(HopperTraceTest, EverySlotHasItsOwnName) {
  std::set<std::string> names;
  for (int slot = 0; slot < kTraceSlots; ++slot) {
    const std::string name = TraceSlotName(slot);
    EXPECT_NE(name, "?") << slot;
    EXPECT_TRUE(names.insert(name).second) << name;
  }
  EXPECT_STREQ(TraceSlotName(kTraceSegmentStart + 3 * 1 + 1), "segment 1 loop end");
  EXPECT_STREQ(TraceSlotName(kTraceClusterScattered), "cluster: scattered");
  EXPECT_STREQ(TraceSlotName(-1), "?");
  EXPECT_STREQ(TraceSlotName(kTraceSlots), "?");
}

TEST(HopperTraceTest, AnUntracedBuildRefusesToReadOrClear) {
  if (TraceBuilt()) GTEST_SKIP() << "a traced build (MARLIN_HOPPER_TRACE) reads a GPU's stamps";
  const absl::Status cleared = ClearTrace();
  EXPECT_EQ(cleared.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(cleared.message().find("MARLIN_HOPPER_TRACE"), absl::string_view::npos)
      << cleared.message();
  EXPECT_EQ(ReadTrace().status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace marlin::cuda::hopper
