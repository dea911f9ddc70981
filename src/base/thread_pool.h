// A persistent pool of worker threads; parallel_for splits a range over all of them.
// A decode step hands the pool a few hundred short jobs (one per matrix), so idle workers spin
// for a moment before they sleep: waking a sleeping thread costs tens of microseconds.
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

  // Calls fn(begin, end, thread_index) on contiguous chunks of [0, n) whose sizes are multiples of
  // `grain` (except the last), one chunk per thread; returns when all are done. Called from one
  // thread at a time.
  void parallel_for(size_t n, size_t grain, const std::function<void(size_t, size_t, int)>& fn);

  // The pool shared by the engine; set_global_threads() replaces it (call before heavy work).
  static ThreadPool& global();
  static void set_global_threads(int n_threads);

 private:
  void worker(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* job_ = nullptr;  // published by generation_
  std::atomic<uint64_t> generation_{0};            // bumped once per job
  std::atomic<int> pending_{0};                    // workers still running the job
  std::atomic<int> sleepers_{0};                   // workers blocked on wake_
  std::atomic<bool> stop_{false};
  std::mutex mutex_;  // guards the sleep / wake hand-off only
  std::condition_variable wake_;
};

}  // namespace gp
