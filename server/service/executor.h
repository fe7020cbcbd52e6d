// The batch executor: one thread per backend lane pulls closed batches from the Batcher, runs them
// on the backend and answers every request of the batch.
//
// Requests enter as MatmulItems: a pinned weight version, pointers to the request's activation
// bytes and to its (pre-sized) output bytes, and a completion called exactly once, from an
// executor thread, or from whoever aborts the item (deadline, cancellation, drain).
//
//   ASSIGN_OR_RETURN(auto exec, BatchExecutor::Create(backend, batcher, metrics, on_unhealthy));
//   ... batcher->Close(); batcher->Stop(); exec->Join();
#ifndef MARLIN_SERVER_SERVICE_EXECUTOR_H_
#define MARLIN_SERVER_SERVICE_EXECUTOR_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/backend/backend.h"
#include "server/batcher/batcher.h"
#include "server/metrics/metrics.h"
#include "server/weight_store/weight_store.h"

namespace marlin {

// What the server tells a client about how its request ran.
struct RunTiming {
  absl::Duration queued;   // arrival to the start of its batch
  absl::Duration compute;  // the batch's gather, copies, kernel and scatter
  int64_t batch_rows = 0;
};

class MatmulItem : public batcher::Item {
 public:
  using Done = std::function<void(const absl::Status&, const RunTiming&)>;
  // `x` (rows*K FP16) and `y` (rows*N FP16) must stay valid until `done` runs; `cancelled` may be
  // null.
  MatmulItem(std::shared_ptr<const Weight> weight, const void* x, int64_t rows, void* y,
             absl::Time deadline, const std::atomic<bool>* cancelled, Done done)
      : weight_(std::move(weight)),
        x_(x),
        rows_(rows),
        y_(y),
        deadline_(deadline),
        cancelled_(cancelled),
        done_(std::move(done)) {}

  int64_t rows() const override { return rows_; }
  absl::Time deadline() const override { return deadline_; }
  bool cancelled() const override { return cancelled_ != nullptr && cancelled_->load(); }
  void Abort(const absl::Status& status) override { Finish(status, RunTiming{}); }

  const std::shared_ptr<const Weight>& weight() const { return weight_; }
  const void* x() const { return x_; }
  void* y() const { return y_; }
  // Calls the completion (once; later calls are ignored).
  void Finish(const absl::Status& status, const RunTiming& timing);

 private:
  std::shared_ptr<const Weight> weight_;  // the version this request was validated against
  const void* x_;
  int64_t rows_;
  void* y_;
  absl::Time deadline_;
  const std::atomic<bool>* cancelled_;
  Done done_;
  std::atomic<bool> finished_{false};
};

// The batch queue key of a weight version: requests on different versions never share a batch.
std::string BatchKey(const Weight& weight);

class BatchExecutor {
 public:
  // Starts backend->lanes() threads. `on_unhealthy` runs once when the backend turns unhealthy.
  static absl::StatusOr<std::unique_ptr<BatchExecutor>> Create(backend::Backend* backend,
                                                               batcher::Batcher* batcher,
                                                               ServerMetrics* metrics,
                                                               std::function<void()> on_unhealthy);
  ~BatchExecutor();  // joins (the batcher must have been stopped or closed and drained)
  // Waits for every lane thread to exit (after batcher->Stop(), or Close() and an empty queue).
  void Join();
  int64_t batches_run() const { return batches_.load(); }

 private:
  BatchExecutor(backend::Backend* backend, batcher::Batcher* batcher, ServerMetrics* metrics,
                std::function<void()> on_unhealthy)
      : backend_(backend),
        batcher_(batcher),
        metrics_(metrics),
        on_unhealthy_(std::move(on_unhealthy)) {}
  void Loop(int lane);
  void RunBatch(int lane, batcher::Batch& batch);

  backend::Backend* const backend_;
  batcher::Batcher* const batcher_;
  ServerMetrics* const metrics_;
  std::function<void()> on_unhealthy_;
  std::atomic<bool> reported_unhealthy_{false};
  std::atomic<int64_t> batches_{0};
  std::vector<std::thread> threads_;
};

}  // namespace marlin

#endif  // MARLIN_SERVER_SERVICE_EXECUTOR_H_
