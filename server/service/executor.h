// The batch executor: one thread per backend lane pulls closed batches from the Batcher and runs
// them on the backend; answering the batch's requests (writing each result back through its
// reactor, which serializes it and often sends it inline) is handed to a small pool of answer
// threads, so that a lane goes straight back to the backend instead of spending most of its
// cycle in gRPC: on the H100, ~55 answers a batch cost more than the batch's copies and kernel.
//
// Requests enter as MatmulItems: a pinned weight version, pointers to the request's activation
// bytes and to its (pre-sized) output bytes, and a completion called exactly once, from an
// executor thread, or from whoever aborts the item (deadline, cancellation, drain).
//
//   ASSIGN_OR_RETURN(auto exec, BatchExecutor::Create(backend, batcher, metrics, on_unhealthy,
//                                                     {.answer_threads = 4}));
//   ... batcher->Close(); batcher->Stop(); exec->Join();
#ifndef MARLIN_SERVER_SERVICE_EXECUTOR_H_
#define MARLIN_SERVER_SERVICE_EXECUTOR_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"

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

 protected:
  // For items that are their request's whole state (the stream's calls): no std::function, one
  // allocation per request. Set the request's pointers with Bind before enqueueing.
  MatmulItem(absl::Time deadline, const std::atomic<bool>* cancelled)
      : x_(nullptr), rows_(0), y_(nullptr), deadline_(deadline), cancelled_(cancelled) {}
  void Bind(std::shared_ptr<const Weight> weight, const void* x, int64_t rows, void* y) {
    weight_ = std::move(weight);
    x_ = x;
    rows_ = rows;
    y_ = y;
  }
  // Lets go of the weight version (a deleted or replaced weight is freed when its last request is
  // answered, not when the answer has been written).
  void ReleaseWeight() { weight_.reset(); }
  // The completion, called once by Finish; the default runs `done`.
  virtual void Complete(const absl::Status& status, const RunTiming& timing);

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

struct ExecutorOptions {
  // Threads that answer finished batches; 0: each lane thread answers its own batches (one
  // hand-off fewer, for machines with few cores). A batch's requests are split over the threads.
  int answer_threads = 0;
};

class BatchExecutor {
 public:
  // Starts backend->lanes() lane threads and options.answer_threads answer threads. `on_unhealthy`
  // runs once when the backend turns unhealthy.
  static absl::StatusOr<std::unique_ptr<BatchExecutor>> Create(backend::Backend* backend,
                                                               batcher::Batcher* batcher,
                                                               ServerMetrics* metrics,
                                                               std::function<void()> on_unhealthy,
                                                               const ExecutorOptions& options = {});
  ~BatchExecutor();  // joins (the batcher must have been stopped or closed and drained)
  // Waits for every lane thread to exit (after batcher->Stop(), or Close() and an empty queue),
  // then for every batch to be answered.
  void Join();
  int64_t batches_run() const { return batches_.load(); }

 private:
  // Requests of a run batch, to be answered with one status.
  struct Answers {
    std::vector<std::shared_ptr<batcher::Item>> items;
    absl::Status status;
    absl::Time start;        // of the batch's run
    absl::Duration compute;  // the backend's Run
    int64_t batch_rows = 0;
  };

  BatchExecutor(backend::Backend* backend, batcher::Batcher* batcher, ServerMetrics* metrics,
                std::function<void()> on_unhealthy)
      : backend_(backend),
        batcher_(batcher),
        metrics_(metrics),
        on_unhealthy_(std::move(on_unhealthy)) {}
  void Loop(int lane);
  Answers RunBatch(int lane, batcher::Batch& batch);
  // Hands `answers` to the answer threads (split into one part per thread, at least
  // kMinAnswersPerPart requests each), or answers them here when there are none.
  void Post(Answers answers);
  void Answer(const Answers& answers);
  void AnswerLoop();

  backend::Backend* const backend_;
  batcher::Batcher* const batcher_;
  ServerMetrics* const metrics_;
  std::function<void()> on_unhealthy_;
  std::atomic<bool> reported_unhealthy_{false};
  std::atomic<int64_t> batches_{0};
  std::vector<std::thread> threads_;

  std::mutex answer_mu_;
  std::condition_variable answer_cv_;  // an Answers was queued, or the lanes have exited
  std::deque<Answers> answer_queue_ ABSL_GUARDED_BY(answer_mu_);
  bool lanes_done_ ABSL_GUARDED_BY(answer_mu_) = false;
  std::vector<std::thread> answer_threads_;
};

}  // namespace marlin

#endif  // MARLIN_SERVER_SERVICE_EXECUTOR_H_
