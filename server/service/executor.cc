#include "server/service/executor.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/logging/log.h"

namespace marlin {

void MatmulItem::Finish(const absl::Status& status, const RunTiming& timing) {
  if (finished_.exchange(true)) return;
  Done done = std::move(done_);
  done(status, timing);
}

std::string BatchKey(const Weight& weight) {
  return absl::StrCat(weight.id(), "#", weight.version());
}

absl::StatusOr<std::unique_ptr<BatchExecutor>> BatchExecutor::Create(
    backend::Backend* backend, batcher::Batcher* batcher, ServerMetrics* metrics,
    std::function<void()> on_unhealthy) {
  if (backend == nullptr || batcher == nullptr || metrics == nullptr) {
    return absl::InvalidArgumentError("executor needs a backend, a batcher and metrics");
  }
  auto exec = std::unique_ptr<BatchExecutor>(
      new BatchExecutor(backend, batcher, metrics, std::move(on_unhealthy)));
  for (int lane = 0; lane < backend->lanes(); ++lane) {
    exec->threads_.emplace_back([e = exec.get(), lane] { e->Loop(lane); });
  }
  return exec;
}

BatchExecutor::~BatchExecutor() { Join(); }

void BatchExecutor::Join() {
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

void BatchExecutor::Loop(int lane) {
  while (std::optional<batcher::Batch> batch = batcher_->Next()) {
    metrics_->SetQueuedRows(batcher_->queued_rows());
    RunBatch(lane, *batch);
  }
}

void BatchExecutor::RunBatch(int lane, batcher::Batch& batch) {
  std::vector<backend::BatchSlice> slices;
  slices.reserve(batch.items.size());
  for (const auto& item : batch.items) {
    const auto& m = static_cast<const MatmulItem&>(*item);
    slices.push_back({m.x(), m.rows(), m.y()});
  }
  const Weight& weight = *static_cast<const MatmulItem&>(*batch.items.front()).weight();
  const absl::Time start = absl::Now();
  absl::Status status = backend_->Run(lane, weight.prepared(), slices, batch.rows);
  const absl::Duration compute = absl::Now() - start;
  ++batches_;
  if (!status.ok()) {
    MARLIN_LOG(kError, "batch failed")
        .Kv("weight", weight.id())
        .Kv("rows", batch.rows)
        .Kv("lane", lane)
        .Kv("error", status);
    if (status.code() != absl::StatusCode::kUnavailable &&
        status.code() != absl::StatusCode::kResourceExhausted) {
      status = absl::InternalError(absl::StrCat("backend failed: ", status.message()));
    }
  }
  if (!backend_->healthy() && !reported_unhealthy_.exchange(true) && on_unhealthy_) {
    on_unhealthy_();
  }
  metrics_->RecordBatch(weight.id(), batch.rows, compute);
  for (const auto& item : batch.items) {
    auto& m = static_cast<MatmulItem&>(*item);
    RunTiming timing{start - m.enqueued(), compute, batch.rows};
    metrics_->RecordQueueTime(timing.queued);
    if (status.ok()) weight.CountServed(m.rows());
    m.Finish(status, timing);
  }
}

}  // namespace marlin
