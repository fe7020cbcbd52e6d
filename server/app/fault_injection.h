// Test-only fault injection: a Backend decorator that fails like a broken device.
//
// After `fail_runs_after` successful Run calls every Run returns INTERNAL ("injected CUDA error")
// and the backend reports unhealthy for good, as the CUDA backend does after a sticky CUDA error.
// After `fail_prepares_after` successful Prepare calls every Prepare returns RESOURCE_EXHAUSTED
// ("out of memory"), as a device allocation failing during an upload does. Negative: never.
// marlin-server exposes these as --inject-backend-fault-after and --inject-upload-oom-after,
// documented as test-only; they are off by default.
#ifndef MARLIN_SERVER_APP_FAULT_INJECTION_H_
#define MARLIN_SERVER_APP_FAULT_INJECTION_H_

#include <atomic>
#include <cstdint>
#include <memory>

#include "server/backend/backend.h"

namespace marlin {

struct FaultOptions {
  int64_t fail_runs_after = -1;
  int64_t fail_prepares_after = -1;
  bool enabled() const { return fail_runs_after >= 0 || fail_prepares_after >= 0; }
};

std::unique_ptr<backend::Backend> WithInjectedFaults(std::unique_ptr<backend::Backend> inner,
                                                     const FaultOptions& options);

}  // namespace marlin

#endif  // MARLIN_SERVER_APP_FAULT_INJECTION_H_
