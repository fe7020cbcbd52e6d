// Reads a GPU's SM clock and its energy counter through NVML, which the driver installs and which
// is loaded at run time (dlopen of libnvidia-ml.so.1), so marlin-bench builds anywhere and runs
// where NVML is missing, without these figures. marlin-bench reports with each timing the clock
// and power it ran at: a card at its power limit lowers its clock as its draw rises, so a kernel's
// speed depends on what ran before it and for how long (graph_timing.h).
//
//   absl::StatusOr<std::unique_ptr<PowerMonitor>> nvml = PowerMonitor::Create(/*cuda_device=*/0);
//   if (nvml.ok()) {
//     absl::StatusOr<PowerSample> before = (*nvml)->Sample();
//     ... run ...
//     absl::StatusOr<PowerSample> after = (*nvml)->Sample();
//     double watts = AveragePowerWatts(*before, *after);
//   }
#ifndef MARLIN_KERNELS_BENCH_POWER_MONITOR_H_
#define MARLIN_KERNELS_BENCH_POWER_MONITOR_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"

namespace marlin::bench {

struct NvmlApi;  // NVML's entry points, loaded at run time (power_monitor.cc)

// One reading of the card.
struct PowerSample {
  int sm_clock_mhz = 0;         // the SM clock now
  uint64_t energy_mj = 0;       // the board's energy since the driver loaded, millijoules
  int64_t steady_clock_ns = 0;  // when it was read (std::chrono::steady_clock)
};

// The mean power between two samples, from the energy counter (which NVML updates every 20-100
// ms, so windows much shorter than a second read coarsely); 0 where no time passed.
double AveragePowerWatts(const PowerSample& before, const PowerSample& after);

class PowerMonitor {
 public:
  // The card of CUDA device `cuda_device`, matched by PCI bus id. Unavailable when NVML cannot be
  // loaded or initialized (no driver), NotFound when it does not know the device.
  static absl::StatusOr<std::unique_ptr<PowerMonitor>> Create(int cuda_device);
  PowerMonitor(const PowerMonitor&) = delete;
  PowerMonitor& operator=(const PowerMonitor&) = delete;
  ~PowerMonitor();  // shuts NVML down

  // The clock and the energy counter now. Internal when NVML fails a query.
  absl::StatusOr<PowerSample> Sample() const;

  // The power limit the card enforces, in watts (its clock drops to keep below it).
  absl::StatusOr<double> PowerLimitWatts() const;

 private:
  PowerMonitor(std::unique_ptr<NvmlApi> api, void* device);
  std::unique_ptr<NvmlApi> api_;
  void* device_;  // nvmlDevice_t
};

}  // namespace marlin::bench

#endif  // MARLIN_KERNELS_BENCH_POWER_MONITOR_H_
