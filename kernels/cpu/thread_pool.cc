// ThreadPool: helpers claim items of a ParallelFor from a shared atomic counter.
#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>

namespace marlin {
namespace {

// One ParallelFor call. Helpers hold it by shared_ptr, so one that starts after the call has
// returned only sees `next` >= count and leaves without touching `fn`.
struct Job {
  const std::function<void(int64_t)>* fn = nullptr;
  int64_t count = 0;
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::condition_variable all_done;
  int64_t done = 0;  // guarded by mu

  // Runs items until none are left; returns how many this thread ran.
  void Work() {
    int64_t ran = 0;
    for (int64_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) {
      (*fn)(i);
      ++ran;
    }
    if (ran > 0) {
      std::lock_guard<std::mutex> lock(mu);
      done += ran;
      if (done == count) all_done.notify_all();
    }
  }
};

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::WorkerLoop() {
  while (true) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_ready_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
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
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int64_t i = 0; i < helpers; ++i) tasks_.push_back([job] { job->Work(); });
    }
    if (helpers == 1) {
      work_ready_.notify_one();
    } else {
      work_ready_.notify_all();
    }
  }
  job->Work();
  std::unique_lock<std::mutex> lock(job->mu);
  job->all_done.wait(lock, [&] { return job->done == job->count; });
}

}  // namespace marlin
