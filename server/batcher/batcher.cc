#include "server/batcher/batcher.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace marlin::batcher {
namespace {

class RealClock : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
};

using Aborted = std::vector<std::pair<std::shared_ptr<Item>, absl::Status>>;

void RunAborts(Aborted& aborted) {
  for (auto& [item, status] : aborted) item->Abort(status);
  aborted.clear();
}

}  // namespace

const Clock* Clock::Real() {
  static const RealClock* clock = new RealClock();
  return clock;
}

absl::Time FakeClock::Now() const {
  std::lock_guard<std::mutex> lock(mu_);
  return now_;
}

void FakeClock::Advance(absl::Duration d) {
  std::lock_guard<std::mutex> lock(mu_);
  now_ += d;
}

absl::StatusOr<std::unique_ptr<Batcher>> Batcher::Create(const Options& options,
                                                         const Clock* clock) {
  if (options.max_batch_rows < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch_rows must be >= 1, got ", options.max_batch_rows));
  }
  if (options.max_queue_delay < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("max_queue_delay must not be negative");
  }
  if (options.max_queue_rows < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue_rows must be >= 1, got ", options.max_queue_rows));
  }
  if (clock == nullptr) return absl::InvalidArgumentError("clock must not be null");
  return std::unique_ptr<Batcher>(new Batcher(options, clock));
}

Batcher::~Batcher() { Stop(); }

absl::Status Batcher::Enqueue(const std::string& key, std::shared_ptr<Item> item) {
  const int64_t rows = item->rows();
  if (rows < 1) return absl::InvalidArgumentError(absl::StrCat("rows must be >= 1, got ", rows));
  const absl::Time now = clock_->Now();
  if (item->deadline() <= now) {
    return absl::DeadlineExceededError("deadline passed before the request was queued");
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_ || stopped_) return absl::UnavailableError("server is shutting down");
  if (queued_rows_ + rows > options_.max_queue_rows) {
    return absl::ResourceExhaustedError(absl::StrCat("batch queue full: ", queued_rows_,
                                                     " rows waiting, ", rows, " more would pass ",
                                                     "--max-queue-rows=", options_.max_queue_rows));
  }
  item->enqueued_ = now;
  Queue& q = queues_[key];
  q.items.push_back(std::move(item));
  q.rows += rows;
  queued_rows_ += rows;
  ++queued_requests_;
  WakeLocked();
  return absl::OkStatus();
}

void Batcher::WakeLocked() {
  if (waiting_ == 0) return;  // every lane is busy: the first to finish finds the queue
  if (!options_.work_conserving) {
    // A waiting lane sleeps until the next event it knew of; this request may be due earlier
    // (size, or its deadline), so every waiting lane re-computes.
    ++wakeups_;
    cv_.notify_all();
    return;
  }
  // A waiting lane takes this request at once. One lane is enough: the lanes already woken take
  // what comes before they run, so a burst of requests wakes one lane, not one lane each.
  if (waiting_ > signalled_) {
    ++signalled_;
    ++wakeups_;
    cv_.notify_one();
  }
}

void Batcher::SweepLocked(absl::Time now, Aborted* aborted) {
  for (auto it = queues_.begin(); it != queues_.end();) {
    Queue& q = it->second;
    for (auto item_it = q.items.begin(); item_it != q.items.end();) {
      Item& item = **item_it;
      absl::Status status;
      // The deadline first: a call whose deadline passed is also cancelled by gRPC.
      if (item.deadline() <= now) {
        status = absl::DeadlineExceededError(
            absl::StrCat("deadline passed after ", absl::ToInt64Microseconds(now - item.enqueued()),
                         " us in the batch queue; not computed"));
      } else if (item.cancelled()) {
        status = absl::CancelledError("request cancelled while queued");
      } else {
        ++item_it;
        continue;
      }
      q.rows -= item.rows();
      queued_rows_ -= item.rows();
      --queued_requests_;
      aborted->emplace_back(std::move(*item_it), std::move(status));
      item_it = q.items.erase(item_it);
    }
    it = q.items.empty() ? queues_.erase(it) : std::next(it);
  }
}

std::optional<Batch> Batcher::FormLocked(absl::Time now) {
  if (queues_.empty()) return std::nullopt;
  // Round-robin: start after the key served last, wrap around.
  auto start = queues_.upper_bound(last_served_);
  for (size_t visited = 0; visited < queues_.size(); ++visited) {
    if (start == queues_.end()) start = queues_.begin();
    Queue& q = start->second;
    CloseReason reason;
    if (closed_) {
      reason = CloseReason::kDrain;
    } else if (q.rows >= options_.max_batch_rows) {
      reason = CloseReason::kSize;
    } else if (now - q.items.front()->enqueued() >= options_.max_queue_delay) {
      reason = CloseReason::kDelay;
    } else if (options_.work_conserving) {
      reason = CloseReason::kIdleLane;  // the caller is a lane with nothing to do
    } else {
      ++start;
      continue;
    }
    Batch batch;
    batch.key = start->first;
    batch.closed = now;
    batch.reason = reason;
    while (!q.items.empty()) {
      const int64_t rows = q.items.front()->rows();
      if (batch.rows > 0 && batch.rows + rows > options_.max_batch_rows) break;
      batch.rows += rows;
      batch.items.push_back(std::move(q.items.front()));
      q.items.pop_front();
    }
    q.rows -= batch.rows;
    queued_rows_ -= batch.rows;
    queued_requests_ -= static_cast<int64_t>(batch.items.size());
    last_served_ = start->first;
    if (q.items.empty()) queues_.erase(start);
    return batch;
  }
  return std::nullopt;
}

absl::Time Batcher::NextEventLocked() const {
  absl::Time next = absl::InfiniteFuture();
  for (const auto& [key, q] : queues_) {
    if (closed_ || q.rows >= options_.max_batch_rows) return absl::InfinitePast();
    next = std::min(next, q.items.front()->enqueued() + options_.max_queue_delay);
    for (const auto& item : q.items) next = std::min(next, item->deadline());
  }
  return next;
}

std::optional<Batch> Batcher::TryNextLocked(Aborted* aborted) {
  const absl::Time now = clock_->Now();
  SweepLocked(now, aborted);
  return FormLocked(now);
}

std::optional<Batch> Batcher::TryNext() {
  Aborted aborted;
  std::optional<Batch> batch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    batch = TryNextLocked(&aborted);
  }
  RunAborts(aborted);
  return batch;
}

std::optional<Batch> Batcher::Next() {
  Aborted aborted;
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (stopped_) break;
    std::optional<Batch> batch = TryNextLocked(&aborted);
    if (!aborted.empty()) {
      lock.unlock();
      RunAborts(aborted);
      lock.lock();
    }
    if (batch.has_value()) return batch;
    if (stopped_ || (closed_ && queues_.empty())) break;
    // Work-conserving, a lane gets here only with every queue empty: it waits for an Enqueue.
    const absl::Time wake = NextEventLocked();
    ++waiting_;
    if (wake == absl::InfiniteFuture()) {
      cv_.wait(lock);
    } else {
      // The clock may be a fake one; wait for the same span of real time (at least 20 us; at most
      // a minute, so that the steady clock's arithmetic cannot overflow). The loop re-checks.
      const absl::Duration span =
          std::clamp(wake - clock_->Now(), absl::Microseconds(20), absl::Minutes(1));
      cv_.wait_for(lock, absl::ToChronoNanoseconds(span));
    }
    --waiting_;
    // Woken by Enqueue, by a broadcast, by the timer or spuriously: either way this lane now runs,
    // so at most one fewer signal is outstanding. Under-counting only costs an extra wake-up.
    if (signalled_ > 0) --signalled_;
  }
  return std::nullopt;
}

void Batcher::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
  cv_.notify_all();
}

int64_t Batcher::AbortAll(const absl::Status& status) {
  Aborted aborted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [key, q] : queues_) {
      for (auto& item : q.items) aborted.emplace_back(std::move(item), status);
    }
    queues_.clear();
    queued_rows_ = 0;
    queued_requests_ = 0;
    cv_.notify_all();
  }
  const int64_t n = static_cast<int64_t>(aborted.size());
  RunAborts(aborted);
  return n;
}

void Batcher::Stop() {
  std::lock_guard<std::mutex> lock(mu_);
  stopped_ = true;
  cv_.notify_all();
}

absl::Time Batcher::NextEvent() const {
  std::lock_guard<std::mutex> lock(mu_);
  return NextEventLocked();
}

int64_t Batcher::queued_rows() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_rows_;
}

int64_t Batcher::queued_requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_requests_;
}

bool Batcher::closed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

int64_t Batcher::wakeups() const {
  std::lock_guard<std::mutex> lock(mu_);
  return wakeups_;
}

int Batcher::waiting_lanes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waiting_;
}

}  // namespace marlin::batcher
