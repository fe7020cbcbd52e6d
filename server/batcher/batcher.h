// Dynamic batching of matmul requests: one FIFO queue per key (a weight version), closed into a
// batch when a lane asks for work (work-conserving), when it holds `max_batch_rows` rows, or when
// its oldest request has waited `max_queue_delay`. No gRPC here: the service wraps its calls in
// `Item`s.
//
// Work-conserving (the default): a backend lane that asks for work (Next/TryNext) takes what is
// queued at once, up to `max_batch_rows`, so a lone request never waits for company while a lane
// is idle. While every lane is busy, requests wait and form the next batch; the batch grows with
// the load (a lane comes back to a longer queue). `max_queue_delay` stays the upper bound of the
// wait for company: with `work_conserving = false` (the timed policy) a lane that asks takes only
// queues that are full or whose oldest request has waited that long.
//
// Rules:
//  - Requests join a batch whole and in arrival order; a request larger than a batch runs alone.
//  - A bound on the rows waiting over all queues: beyond `max_queue_rows`, Enqueue refuses with
//    RESOURCE_EXHAUSTED at once.
//  - A request whose deadline passes in the queue is aborted with DEADLINE_EXCEEDED and a cancelled
//    one with CANCELLED; neither is ever handed out in a batch.
//  - Queues are independent; when several are ready they are served round-robin, so a busy weight
//    cannot starve a quiet one.
//  - Close() starts a drain: Enqueue answers UNAVAILABLE and every queue is ready at once.
//
// Time comes from a Clock so tests drive the batcher with a FakeClock and TryNext() (a lane that
// asks for work now; not calling it is a lane that is busy):
//
//   FakeClock clock;
//   ASSIGN_OR_RETURN(auto b, Batcher::Create({.max_batch_rows = 64}, &clock));
//   RETURN_IF_ERROR(b->Enqueue("w1#1", item));
//   clock.Advance(absl::Microseconds(500));
//   std::optional<Batch> batch = b->TryNext();
//
// Lane threads call the blocking Next(), which returns std::nullopt once the batcher is closed
// and empty (or stopped). Enqueue wakes one waiting lane only when it has something to take, and
// no lane at all while every lane is busy: under load the lanes find the next batch without a
// wake-up.
#ifndef MARLIN_SERVER_BATCHER_BATCHER_H_
#define MARLIN_SERVER_BATCHER_BATCHER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace marlin::batcher {

// The source of "now" for every batching decision.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // The process-wide wall clock.
  static const Clock* Real();
};

// A clock that moves only when told to; thread-safe.
class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::UnixEpoch() + absl::Hours(1)) : now_(start) {}
  absl::Time Now() const override;
  void Advance(absl::Duration d);

 private:
  mutable std::mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

// One request waiting for a batch. rows() and deadline() must not change once enqueued;
// cancelled() may be called from any thread.
class Item {
 public:
  virtual ~Item() = default;
  virtual int64_t rows() const = 0;
  virtual absl::Time deadline() const { return absl::InfiniteFuture(); }
  virtual bool cancelled() const { return false; }
  // Answers the request without computing it (deadline, cancellation, shutdown). The batcher calls
  // it at most once, outside its lock, and then forgets the item.
  virtual void Abort(const absl::Status& status) = 0;

  // When the batcher accepted it (set by Enqueue).
  absl::Time enqueued() const { return enqueued_; }

 private:
  friend class Batcher;
  absl::Time enqueued_;
};

// Why a batch closed: full, its oldest request waited max_queue_delay, the drain, or an idle lane
// took it (work-conserving) before either.
enum class CloseReason { kSize, kDelay, kDrain, kIdleLane };

struct Batch {
  std::string key;
  std::vector<std::shared_ptr<Item>> items;
  int64_t rows = 0;
  absl::Time closed;  // when it was handed out
  CloseReason reason = CloseReason::kSize;
};

struct Options {
  int64_t max_batch_rows = 64;
  absl::Duration max_queue_delay = absl::Microseconds(1000);
  int64_t max_queue_rows = 8192;  // over all queues
  // A lane that asks takes any waiting request at once (see the top of this file); false: only
  // full queues and queues whose oldest request waited max_queue_delay.
  bool work_conserving = true;
};

class Batcher {
 public:
  static absl::StatusOr<std::unique_ptr<Batcher>> Create(const Options& options,
                                                         const Clock* clock = Clock::Real());
  ~Batcher();
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues `item` under `key`. RESOURCE_EXHAUSTED when the bound would be passed, UNAVAILABLE once
  // closed, DEADLINE_EXCEEDED when its deadline has already passed, INVALID_ARGUMENT for rows < 1.
  // On error the item is not kept and Abort is not called: the caller answers it.
  absl::Status Enqueue(const std::string& key, std::shared_ptr<Item> item);

  // A lane asks for work without blocking: sweeps expired and cancelled requests (aborting them),
  // then closes and returns the next ready batch, if any, at the clock's now.
  std::optional<Batch> TryNext();
  // A lane asks for work and waits until a batch is ready; std::nullopt once closed and empty, or
  // after Stop().
  std::optional<Batch> Next();

  // Starts the drain: Enqueue refuses with UNAVAILABLE, every queue is ready at once.
  void Close();
  // Aborts everything still queued with `status` (after a drain timeout) and returns how many.
  int64_t AbortAll(const absl::Status& status);
  // Makes every Next() return std::nullopt from now on (after AbortAll at shutdown).
  void Stop();

  // The earliest time at which TryNext could hand out a batch or expire a request with no further
  // Enqueue; InfiniteFuture when nothing is queued.
  absl::Time NextEvent() const;
  int64_t queued_rows() const;
  int64_t queued_requests() const;
  bool closed() const;
  // Times Enqueue woke waiting lanes, and lanes waiting in Next() now (tests).
  int64_t wakeups() const;
  int waiting_lanes() const;
  const Options& options() const { return options_; }

 private:
  struct Queue {
    std::deque<std::shared_ptr<Item>> items;
    int64_t rows = 0;
  };
  Batcher(const Options& options, const Clock* clock) : options_(options), clock_(clock) {}

  // Removes expired and cancelled items into `aborted` (item, status).
  void SweepLocked(absl::Time now,
                   std::vector<std::pair<std::shared_ptr<Item>, absl::Status>>* aborted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The next batch a lane asking at `now` takes (work-conserving: any queue).
  std::optional<Batch> FormLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After an Enqueue: wakes the lanes that may now have something to do.
  void WakeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Time NextEventLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<Batch> TryNextLocked(
      std::vector<std::pair<std::shared_ptr<Item>, absl::Status>>* aborted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  const Clock* const clock_;
  // std::mutex, not absl::Mutex: ThreadSanitizer sees it with Debian's uninstrumented Abseil.
  // ABSL_GUARDED_BY is documentation only: libstdc++'s std::mutex is no clang capability.
  mutable std::mutex mu_;
  // Notified by Enqueue (one lane, see WakeLocked), Close, AbortAll and Stop (all lanes).
  std::condition_variable cv_;
  std::map<std::string, Queue> queues_ ABSL_GUARDED_BY(mu_);  // empty queues are erased
  std::string last_served_ ABSL_GUARDED_BY(mu_);              // round-robin cursor: key served last
  int64_t queued_rows_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t queued_requests_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;    // lanes blocked in Next()
  int signalled_ ABSL_GUARDED_BY(mu_) = 0;  // of those, woken by Enqueue and not yet running
  int64_t wakeups_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace marlin::batcher

#endif  // MARLIN_SERVER_BATCHER_BATCHER_H_
