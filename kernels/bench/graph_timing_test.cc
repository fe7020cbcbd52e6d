#include "kernels/bench/graph_timing.h"

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/bench/random_fill.h"
#include "kernels/cuda/cuda_resources.h"

namespace marlin::bench {
namespace {

using ::testing::HasSubstr;

TEST(GraphTimerTest, RefusesNoVariants) {
  absl::StatusOr<std::unique_ptr<GraphTimer>> timer = GraphTimer::Create(nullptr, {}, nullptr);
  EXPECT_EQ(timer.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GraphTimerTest, RefusesAGraphWithoutCalls) {
  absl::StatusOr<std::unique_ptr<GraphTimer>> timer =
      GraphTimer::Create(nullptr, {{0, [](int) { return absl::OkStatus(); }}}, nullptr);
  EXPECT_EQ(timer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(timer.status().message(), HasSubstr("call"));
}

// Two variants whose calls fill 16 MB and 128 MB of random bytes: both ways of timing put the
// larger fill, eight times the bytes of a memory-bound kernel, well above the smaller one, and
// keep each variant's figures at its own index. A window shorter than a launch still times three.
TEST(GraphTimerTest, TimesInTurnsAndSustainedInVariantOrder) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  absl::StatusOr<cuda::Stream> stream = cuda::Stream::Create();
  ASSERT_TRUE(stream.ok()) << stream.status();
  constexpr size_t kSmall = size_t{16} << 20, kLarge = size_t{128} << 20;
  absl::StatusOr<cuda::DeviceBuffer> buffer = cuda::DeviceBuffer::Create(kLarge);
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  auto fill = [&](size_t bytes) {
    return [&, bytes](int i) { return FillRandomBytes(buffer->get(), bytes, i, stream->get()); };
  };
  absl::StatusOr<std::unique_ptr<GraphTimer>> timer =
      GraphTimer::Create(stream->get(), {{4, fill(kSmall)}, {4, fill(kLarge)}}, nullptr);
  ASSERT_TRUE(timer.ok()) << timer.status();

  absl::StatusOr<std::vector<Timing>> turns = (*timer)->TimeInTurns(5, 10.f);
  ASSERT_TRUE(turns.ok()) << turns.status();
  ASSERT_EQ(turns->size(), 2u);
  EXPECT_GT((*turns)[0].us, 0.0);
  EXPECT_GT((*turns)[1].us, 3.0 * (*turns)[0].us);
  EXPECT_EQ((*turns)[0].sm_clock_mhz, 0);  // no monitor, no clock

  absl::StatusOr<std::vector<Timing>> alone = (*timer)->TimeSustained(50.f, 1.f);
  ASSERT_TRUE(alone.ok()) << alone.status();
  ASSERT_EQ(alone->size(), 2u);
  EXPECT_GT((*alone)[0].us, 0.0);
  EXPECT_GT((*alone)[1].us, 3.0 * (*alone)[0].us);

  absl::StatusOr<std::vector<Timing>> brief = (*timer)->TimeSustained(0.001f, 0.f);
  ASSERT_TRUE(brief.ok()) << brief.status();
  EXPECT_GT((*brief)[1].us, 3.0 * (*brief)[0].us);
  EXPECT_EQ((*timer)->TimeInTurns(0, 0.f).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace marlin::bench
