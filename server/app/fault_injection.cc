#include "server/app/fault_injection.h"

#include <utility>

#include "server/logging/log.h"

namespace marlin {
namespace {

class FaultyBackend final : public backend::Backend {
 public:
  FaultyBackend(std::unique_ptr<backend::Backend> inner, const FaultOptions& options)
      : inner_(std::move(inner)), options_(options) {}

  std::string name() const override { return inner_->name(); }
  std::string device_name() const override { return inner_->device_name(); }
  backend::DeviceMemory memory() const override { return inner_->memory(); }
  uint64_t BytesFor(const WeightShape& shape) const override { return inner_->BytesFor(shape); }
  int lanes() const override { return inner_->lanes(); }
  bool healthy() const override { return !failed_.load() && inner_->healthy(); }

  absl::StatusOr<std::shared_ptr<const backend::PreparedWeight>> Prepare(
      const PackedWeight& weight) override {
    if (options_.fail_prepares_after >= 0 &&
        prepares_.fetch_add(1) >= options_.fail_prepares_after) {
      MARLIN_LOG(kWarning, "injected fault: prepare out of memory");
      return absl::ResourceExhaustedError(
          "out of memory (injected by --inject-upload-oom-after): cudaMalloc failed");
    }
    return inner_->Prepare(weight);
  }

  absl::Status Run(int lane, const backend::PreparedWeight& weight,
                   absl::Span<const backend::BatchSlice> slices, int64_t rows) override {
    if (failed_.load() ||
        (options_.fail_runs_after >= 0 && runs_.fetch_add(1) >= options_.fail_runs_after)) {
      if (!failed_.exchange(true)) {
        MARLIN_LOG(kWarning, "injected fault: backend failed for good");
      }
      return absl::InternalError(
          "injected CUDA error (--inject-backend-fault-after): an illegal memory access was "
          "encountered");
    }
    return inner_->Run(lane, weight, slices, rows);
  }

 private:
  const std::unique_ptr<backend::Backend> inner_;
  const FaultOptions options_;
  std::atomic<int64_t> runs_{0};
  std::atomic<int64_t> prepares_{0};
  std::atomic<bool> failed_{false};
};

}  // namespace

std::unique_ptr<backend::Backend> WithInjectedFaults(std::unique_ptr<backend::Backend> inner,
                                                     const FaultOptions& options) {
  if (!options.enabled()) return inner;
  return std::make_unique<FaultyBackend>(std::move(inner), options);
}

}  // namespace marlin
