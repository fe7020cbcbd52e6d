#include "kernels/bench/power_monitor.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <chrono>
#include <memory>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace marlin::bench {

// NVML's C entry points that the monitor uses. Their types follow nvml.h (not installed here):
// every call returns an nvmlReturn_t, 0 on success; a device is an opaque pointer.
struct NvmlApi {
  void* library = nullptr;  // the dlopen handle, closed with the monitor
  int (*init)() = nullptr;
  int (*shutdown)() = nullptr;
  const char* (*error_string)(int) = nullptr;
  int (*handle_by_pci_bus_id)(const char*, void**) = nullptr;
  int (*clock_info)(void*, int, unsigned int*) = nullptr;
  int (*total_energy)(void*, unsigned long long*) = nullptr;  // NOLINT(runtime/int): NVML's type
  int (*power_limit)(void*, unsigned int*) = nullptr;         // milliwatts
};

namespace {

constexpr const char* kNvmlLibrary = "libnvidia-ml.so.1";
constexpr int kNvmlClockSm = 1;  // nvmlClockType_t NVML_CLOCK_SM

// Opens NVML and binds the entry points; Unavailable, naming the library, when it cannot.
absl::StatusOr<std::unique_ptr<NvmlApi>> LoadNvml() {
  void* lib = dlopen(kNvmlLibrary, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot load ", kNvmlLibrary, " (NVML, from the driver): ", dlerror()));
  }
  auto api = std::make_unique<NvmlApi>();
  api->library = lib;
  bool missing = false;
  auto bind = [&](auto& fn, const char* symbol) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, symbol));
    missing |= fn == nullptr;
  };
  bind(api->init, "nvmlInit_v2");
  bind(api->shutdown, "nvmlShutdown");
  bind(api->error_string, "nvmlErrorString");
  bind(api->handle_by_pci_bus_id, "nvmlDeviceGetHandleByPciBusId_v2");
  bind(api->clock_info, "nvmlDeviceGetClockInfo");
  bind(api->total_energy, "nvmlDeviceGetTotalEnergyConsumption");
  bind(api->power_limit, "nvmlDeviceGetEnforcedPowerLimit");
  if (missing) {
    dlclose(lib);
    return absl::UnavailableError(absl::StrCat(kNvmlLibrary, " lacks an NVML entry point"));
  }
  return api;
}

}  // namespace

double AveragePowerWatts(const PowerSample& before, const PowerSample& after) {
  const int64_t ns = after.steady_clock_ns - before.steady_clock_ns;
  if (ns <= 0) return 0.0;
  return static_cast<double>(after.energy_mj - before.energy_mj) * 1e6 / static_cast<double>(ns);
}

absl::StatusOr<std::unique_ptr<PowerMonitor>> PowerMonitor::Create(int cuda_device) {
  absl::StatusOr<std::unique_ptr<NvmlApi>> api = LoadNvml();
  if (!api.ok()) return api.status();
  if (const int rc = (*api)->init(); rc != 0) {
    const std::string why = (*api)->error_string(rc);
    dlclose((*api)->library);
    return absl::UnavailableError(absl::StrCat("nvmlInit: ", why));
  }
  // From here the monitor owns NVML: its destructor shuts it down.
  std::unique_ptr<PowerMonitor> monitor(new PowerMonitor(*std::move(api), nullptr));
  char bus_id[32] = {};
  if (const cudaError_t rc = cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), cuda_device);
      rc != cudaSuccess) {
    return absl::NotFoundError(
        absl::StrCat("cudaDeviceGetPCIBusId(", cuda_device, "): ", cudaGetErrorString(rc)));
  }
  if (const int rc = monitor->api_->handle_by_pci_bus_id(bus_id, &monitor->device_); rc != 0) {
    return absl::NotFoundError(absl::StrCat("NVML has no device at PCI bus ", bus_id, ": ",
                                            monitor->api_->error_string(rc)));
  }
  return monitor;
}

PowerMonitor::PowerMonitor(std::unique_ptr<NvmlApi> api, void* device)
    : api_(std::move(api)), device_(device) {}

PowerMonitor::~PowerMonitor() {
  api_->shutdown();
  dlclose(api_->library);
}

absl::StatusOr<PowerSample> PowerMonitor::Sample() const {
  PowerSample s;
  unsigned int mhz = 0;
  if (const int rc = api_->clock_info(device_, kNvmlClockSm, &mhz); rc != 0) {
    return absl::InternalError(absl::StrCat("nvmlDeviceGetClockInfo: ", api_->error_string(rc)));
  }
  unsigned long long mj = 0;  // NOLINT(runtime/int): NVML's type
  if (const int rc = api_->total_energy(device_, &mj); rc != 0) {
    return absl::InternalError(
        absl::StrCat("nvmlDeviceGetTotalEnergyConsumption: ", api_->error_string(rc)));
  }
  s.sm_clock_mhz = static_cast<int>(mhz);
  s.energy_mj = mj;
  s.steady_clock_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  return s;
}

absl::StatusOr<double> PowerMonitor::PowerLimitWatts() const {
  unsigned int mw = 0;
  if (const int rc = api_->power_limit(device_, &mw); rc != 0) {
    return absl::InternalError(
        absl::StrCat("nvmlDeviceGetEnforcedPowerLimit: ", api_->error_string(rc)));
  }
  return mw / 1000.0;
}

}  // namespace marlin::bench
