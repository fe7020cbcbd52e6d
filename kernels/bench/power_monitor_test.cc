#include "kernels/bench/power_monitor.h"

#include <chrono>
#include <memory>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace marlin::bench {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;

TEST(AveragePowerWattsTest, EnergyOverElapsedTime) {
  const PowerSample before{.sm_clock_mhz = 1980, .energy_mj = 1'000, .steady_clock_ns = 0};
  const PowerSample after{
      .sm_clock_mhz = 1500, .energy_mj = 351'000, .steady_clock_ns = 500'000'000};  // 350 J, 0.5 s
  EXPECT_DOUBLE_EQ(AveragePowerWatts(before, after), 700.0);
  EXPECT_EQ(AveragePowerWatts(after, after), 0.0);
}

// Where the driver is installed the monitor reads a live SM clock and an energy counter that never
// runs backwards; elsewhere (CI has no GPU) Create says why, naming NVML or the device.
TEST(PowerMonitorTest, ReadsTheCardOrSaysWhyNot) {
  absl::StatusOr<std::unique_ptr<PowerMonitor>> monitor = PowerMonitor::Create(0);
  if (!monitor.ok()) {
    EXPECT_THAT(monitor.status().code(),
                AnyOf(absl::StatusCode::kUnavailable, absl::StatusCode::kNotFound));
    EXPECT_THAT(monitor.status().message(),
                AnyOf(HasSubstr("libnvidia-ml"), HasSubstr("nvmlInit"), HasSubstr("PCI")));
    GTEST_SKIP() << "no NVML here: " << monitor.status();
  }
  absl::StatusOr<PowerSample> first = (*monitor)->Sample();
  ASSERT_TRUE(first.ok()) << first.status();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  absl::StatusOr<PowerSample> second = (*monitor)->Sample();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_GT(first->sm_clock_mhz, 0);
  EXPECT_LT(first->sm_clock_mhz, 5000);
  EXPECT_GE(second->energy_mj, first->energy_mj);
  EXPECT_GT(second->steady_clock_ns, first->steady_clock_ns);
  // No board draws kilowatts, nor is limited to less than an idle card's tens of watts.
  EXPECT_LT(AveragePowerWatts(*first, *second), 2000.0);
  absl::StatusOr<double> limit = (*monitor)->PowerLimitWatts();
  ASSERT_TRUE(limit.ok()) << limit.status();
  EXPECT_GT(*limit, 50.0);
  EXPECT_LT(*limit, 2000.0);
}

}  // namespace
}  // namespace marlin::bench
