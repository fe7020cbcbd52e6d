// ThreadPool: helpers claim items of a ParallelFor from a shared atomic counter.
#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>

#include "absl/synchronization/mutex.h"

namespace marlin {
namespace {

// One ParallelFor call. Helpers hold it by shared_ptr, so one that starts after the call has
// returned only sees `next` >= count and leaves without touching `fn`.
struct Job {
  const std::function<void(int64_t)>* fn = nullptr;
  int64_t count = 0;
  std::atomic<int64_t> next{0};
  absl::Mutex mu;
  int64_t done ABSL_GUARDED_BY(mu) = 0;

  // Runs items until none are left; returns how many this thread ran.
  void Work() {
    int64_t ran = 0;
    for (int64_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) {
      (*fn)(i);
      ++ran;
    }
    if (ran > 0) {
      absl::MutexLock lock(&mu);
      done += ran;
    }
  }
};

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::WorkerLoop() {
  while (true) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](ThreadPool* p)
               ABSL_SHARED_LOCKS_REQUIRED(p->mu_) { return p->stopping_ || !p->tasks_.empty(); },
          this));
      if (tasks_.empty()) return;  // stopping, and nothing left to do
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

void ThreadPool::ParallelFor(int64_t count, const std::function<void(int64_t)>& fn) {
  if (count <= 0) return;
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->count = count;
  const int64_t helpers = std::min<int64_t>(static_cast<int64_t>(workers_.size()), count - 1);
  if (helpers > 0) {
    absl::MutexLock lock(&mu_);
    for (int64_t i = 0; i < helpers; ++i) tasks_.push_back([job] { job->Work(); });
  }
  job->Work();
  absl::MutexLock lock(&job->mu);
  job->mu.Await(absl::Condition(
      +[](Job* j) ABSL_SHARED_LOCKS_REQUIRED(j->mu) { return j->done == j->count; }, job.get()));
}

}  // namespace marlin
