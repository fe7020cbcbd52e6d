// A small persistent thread pool for data-parallel loops, shared by concurrent callers.
//
// ParallelFor(count, fn) runs fn(0) .. fn(count - 1) on the pool's workers and on the calling
// thread, and returns when all have finished. Many threads may call ParallelFor at once: each
// caller also works through its own items, so a busy pool slows a call down but never blocks it.
//
//   marlin::ThreadPool pool(/*num_threads=*/4);  // 3 workers + the caller
//   pool.ParallelFor(panels, [&](int64_t i) { ComputePanel(i); });
#ifndef MARLIN_KERNELS_CPU_THREAD_POOL_H_
#define MARLIN_KERNELS_CPU_THREAD_POOL_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace marlin {

class ThreadPool {
 public:
  // num_threads counts the caller: num_threads - 1 workers are started (none for 1).
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(i) for every i in [0, count) and waits for all of them. Thread-safe.
  void ParallelFor(int64_t count, const std::function<void(int64_t)>& fn);

 private:
  void WorkerLoop();

  // std::mutex rather than absl::Mutex so that ThreadSanitizer sees the synchronization even
  // when Abseil is a prebuilt, uninstrumented library.
  std::mutex mu_;
  std::condition_variable work_ready_;
  std::deque<std::function<void()>> tasks_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> workers_;
};

}  // namespace marlin

#endif  // MARLIN_KERNELS_CPU_THREAD_POOL_H_
