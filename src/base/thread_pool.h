// A persistent pool of worker threads. Work is handed out as tasks taken one at a time from a
// shared counter, so a thread that another process keeps off its core leaves its share to the
// others instead of holding everyone up, and a worker that has not started by the time every
// task is taken is not waited for. A decode step hands the pool a few hundred short jobs (one per
// matrix), so idle workers spin for a moment before they sleep (waking a sleeping thread costs
// tens of microseconds); an idle pool sleeps and uses no CPU.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace gp {

class ThreadPool {
 public:
  // More workers than this is a typo, not a machine: refused before any thread starts.
  static constexpr int kMaxThreads = 256;
  // n_threads <= 0: all hardware threads. Throws Error beyond kMaxThreads or when a thread
  // cannot be created (the ones started are joined first).
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(task, thread_index) for every task in [0, n_tasks), on the calling thread (index 0)
  // and the workers (1 .. size()-1), each taking the next task until none is left; returns when
  // all are done. Two calls running at once never share a thread index. Called from one thread
  // at a time.
  void run_tasks(int64_t n_tasks, const std::function<void(int64_t, int)>& fn);

  // Calls fn(begin, end, thread_index) on contiguous chunks of [0, n) whose sizes are multiples of
  // `grain` (except the last), a few per thread, through run_tasks.
  void parallel_for(size_t n, size_t grain, const std::function<void(size_t, size_t, int)>& fn);

  // The pool shared by the engine; set_global_threads() replaces it (call before heavy work).
  static ThreadPool& global();
  static void set_global_threads(int n_threads);

 private:
  void worker(int index);
  void take_tasks(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  // The current job, published by generation_ and open_.
  const std::function<void(int64_t, int)>* job_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_task_{0};
  std::atomic<uint64_t> generation_{0};  // bumped once per job
  // A worker counts itself in active_ before it looks at open_; the caller clears open_ once every
  // task is taken and then waits only for the workers counted in active_.
  std::atomic<bool> open_{false};
  std::atomic<int> active_{0};
  std::atomic<int> sleepers_{0};  // workers blocked on wake_
  std::atomic<bool> stop_{false};
  std::mutex mutex_;  // guards the sleep / wake hand-off only
  std::condition_variable wake_;
};

}  // namespace gp
