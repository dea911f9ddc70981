// A persistent pool of worker threads; parallel_for splits a range over all of them.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace gp {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads <= 0: all hardware threads
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(begin, end, thread_index) on contiguous chunks of [0, n) whose sizes are multiples of
  // `grain` (except the last), one chunk per thread; returns when all are done.
  void parallel_for(size_t n, size_t grain, const std::function<void(size_t, size_t, int)>& fn);

  // The pool shared by the engine; set_global_threads() replaces it (call before heavy work).
  static ThreadPool& global();
  static void set_global_threads(int n_threads);

 private:
  void worker(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int)>* job_ = nullptr;
  size_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

}  // namespace gp
