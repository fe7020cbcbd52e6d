#include "server/backend/backend.h"

#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/backend/cpu_backend.h"
#include "server/backend/null_backend.h"
#include "server/logging/log.h"
#ifdef MARLIN_SERVER_CUDA_BACKEND
#include "kernels/cuda/cuda_resources.h"
#include "server/backend/cuda_backend.h"
#endif

namespace marlin::backend {

bool HaveCudaBackend() {
#ifdef MARLIN_SERVER_CUDA_BACKEND
  return true;
#else
  return false;
#endif
}

DeviceMemory HostMemory() {
  DeviceMemory mem;
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
    uint64_t kib = 0;
    if (parts.size() < 2 || !absl::SimpleAtoi(parts[1], &kib)) continue;
    if (parts[0] == "MemTotal:") mem.total = kib * 1024;
    if (parts[0] == "MemAvailable:") mem.free = kib * 1024;
  }
  if (mem.total == 0) {
    const long pages = sysconf(_SC_PHYS_PAGES);
    const long avail = sysconf(_SC_AVPHYS_PAGES);
    const long page = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page > 0) mem.total = static_cast<uint64_t>(pages) * page;
    if (avail > 0 && page > 0) mem.free = static_cast<uint64_t>(avail) * page;
  }
  return mem;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options) {
  std::string kind = options.kind;
  if (kind == "auto") {
#ifdef MARLIN_SERVER_CUDA_BACKEND
    const int devices = cuda::DeviceCount();
    kind = devices > 0 ? "cuda" : "cpu";
    MARLIN_LOG(kInfo, "backend auto-selected")
        .Kv("backend", kind)
        .Kv("cuda_devices", devices)
        .Kv("reason", devices > 0 ? "CUDA device present" : "no CUDA device visible");
#else
    kind = "cpu";
    MARLIN_LOG(kInfo, "backend auto-selected")
        .Kv("backend", kind)
        .Kv("reason", "built without the CUDA backend");
#endif
  }
  if (kind == "cpu") {
    auto b = CpuBackend::Create(options.lanes, options.cpu_threads);
    if (!b.ok()) return b.status();
    return std::unique_ptr<Backend>(*std::move(b));
  }
  if (kind == "null") {
    auto b = NullBackend::Create(options.lanes);
    if (!b.ok()) return b.status();
    return std::unique_ptr<Backend>(*std::move(b));
  }
  if (kind == "cuda") {
#ifdef MARLIN_SERVER_CUDA_BACKEND
    auto b = CudaBackend::Create(options);
    if (!b.ok()) return b.status();
    return std::unique_ptr<Backend>(*std::move(b));
#else
    return absl::UnavailableError(
        "--backend=cuda: this binary was built without CUDA (no nvcc or the kernel library)");
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backend '", options.kind, "' (auto, cuda, cpu, null)"));
}

}  // namespace marlin::backend
