#include "server/service/executor.h"

#include <pthread.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/logging/log.h"

namespace marlin {
namespace {

// Fewer requests than this are not worth another answer thread's wake-up.
constexpr size_t kMinAnswersPerPart = 8;

// Named threads make `perf report --sort comm` and `top -H` readable.
void NameThisThread(const std::string& name) {
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
}

}  // namespace

void MatmulItem::Finish(const absl::Status& status, const RunTiming& timing) {
  if (finished_.exchange(true)) return;
  Complete(status, timing);
}

void MatmulItem::Complete(const absl::Status& status, const RunTiming& timing) {
  Done done = std::move(done_);
  // Before the answer goes out: a client that deletes the weight once answered must find its
  // memory released, not held by a batch an answer thread is still walking.
  ReleaseWeight();
  done(status, timing);
}

std::string BatchKey(const Weight& weight) {
  return absl::StrCat(weight.id(), "#", weight.version());
}

absl::StatusOr<std::unique_ptr<BatchExecutor>> BatchExecutor::Create(
    backend::Backend* backend, batcher::Batcher* batcher, ServerMetrics* metrics,
    std::function<void()> on_unhealthy, const ExecutorOptions& options) {
  if (backend == nullptr || batcher == nullptr || metrics == nullptr) {
    return absl::InvalidArgumentError("executor needs a backend, a batcher and metrics");
  }
  if (options.answer_threads < 0) {
    return absl::InvalidArgumentError("answer_threads must be >= 0");
  }
  auto exec = std::unique_ptr<BatchExecutor>(
      new BatchExecutor(backend, batcher, metrics, std::move(on_unhealthy)));
  for (int i = 0; i < options.answer_threads; ++i) {
    exec->answer_threads_.emplace_back([e = exec.get(), i] {
      NameThisThread(absl::StrCat("marlin-answer", i));
      e->AnswerLoop();
    });
  }
  for (int lane = 0; lane < backend->lanes(); ++lane) {
    exec->threads_.emplace_back([e = exec.get(), lane] {
      NameThisThread(absl::StrCat("marlin-lane", lane));
      e->Loop(lane);
    });
  }
  return exec;
}

BatchExecutor::~BatchExecutor() { Join(); }

void BatchExecutor::Join() {
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
  {
    std::lock_guard<std::mutex> lock(answer_mu_);
    lanes_done_ = true;
  }
  answer_cv_.notify_all();
  for (std::thread& t : answer_threads_) {
    if (t.joinable()) t.join();
  }
}

void BatchExecutor::Loop(int lane) {
  while (std::optional<batcher::Batch> batch = batcher_->Next()) {
    metrics_->SetQueuedRows(batcher_->queued_rows());
    Post(RunBatch(lane, *batch));
  }
}

BatchExecutor::Answers BatchExecutor::RunBatch(int lane, batcher::Batch& batch) {
  std::vector<backend::BatchSlice> slices;
  slices.reserve(batch.items.size());
  for (const auto& item : batch.items) {
    const auto& m = static_cast<const MatmulItem&>(*item);
    slices.push_back({m.x(), m.rows(), m.y()});
  }
  const Weight& weight = *static_cast<const MatmulItem&>(*batch.items.front()).weight();
  Answers answers;
  answers.start = absl::Now();
  answers.status = backend_->Run(lane, weight.prepared(), slices, batch.rows);
  answers.compute = absl::Now() - answers.start;
  answers.batch_rows = batch.rows;
  ++batches_;
  absl::Status& status = answers.status;
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
  metrics_->RecordBatch(weight.id(), batch.rows, answers.compute);
  answers.items = std::move(batch.items);
  return answers;
}

void BatchExecutor::Post(Answers answers) {
  if (answer_threads_.empty()) {
    Answer(answers);
    return;
  }
  const size_t n = answers.items.size();
  const size_t parts = std::clamp<size_t>(n / kMinAnswersPerPart, 1, answer_threads_.size());
  {
    std::lock_guard<std::mutex> lock(answer_mu_);
    // Part p takes items [n*p/parts, n*(p+1)/parts); the last part is `answers` itself.
    for (size_t p = 0; p + 1 < parts; ++p) {
      Answers part;
      part.status = answers.status;
      part.start = answers.start;
      part.compute = answers.compute;
      part.batch_rows = answers.batch_rows;
      part.items.assign(std::make_move_iterator(answers.items.begin() + n * p / parts),
                        std::make_move_iterator(answers.items.begin() + n * (p + 1) / parts));
      answer_queue_.push_back(std::move(part));
    }
    answers.items.erase(answers.items.begin(), answers.items.begin() + n * (parts - 1) / parts);
    answer_queue_.push_back(std::move(answers));
  }
  if (parts == 1) {
    answer_cv_.notify_one();
  } else {
    answer_cv_.notify_all();
  }
}

void BatchExecutor::AnswerLoop() {
  while (true) {
    Answers answers;
    {
      std::unique_lock<std::mutex> lock(answer_mu_);
      answer_cv_.wait(lock, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(answer_mu_) {
        return lanes_done_ || !answer_queue_.empty();
      });
      if (answer_queue_.empty()) return;  // the lanes have exited and everything is answered
      answers = std::move(answer_queue_.front());
      answer_queue_.pop_front();
    }
    Answer(answers);
  }
}

void BatchExecutor::Answer(const Answers& answers) {
  for (const auto& item : answers.items) {
    auto& m = static_cast<MatmulItem&>(*item);
    RunTiming timing{answers.start - m.enqueued(), answers.compute, answers.batch_rows};
    metrics_->RecordQueueTime(timing.queued);
    if (answers.status.ok()) m.weight()->CountServed(m.rows());
    m.Finish(answers.status, timing);
  }
}

}  // namespace marlin
