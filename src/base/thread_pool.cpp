#include "base/thread_pool.h"

#include <algorithm>
#include <memory>

namespace gp {

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  n_threads_ = n_threads;
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker(int index) {
  size_t seen = 0;
  for (;;) {
    const std::function<void(int)>* job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
    }
    (*job)(index);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(size_t n, size_t grain,
                              const std::function<void(size_t, size_t, int)>& fn) {
  if (n == 0) return;
  grain = std::max<size_t>(grain, 1);
  const size_t n_grains = (n + grain - 1) / grain;
  const int n_used = static_cast<int>(std::min<size_t>(n_threads_, n_grains));
  auto chunk = [&](int t) {
    if (t >= n_used) return;
    const size_t g0 = n_grains * t / n_used, g1 = n_grains * (t + 1) / n_used;
    const size_t b = g0 * grain, e = std::min(n, g1 * grain);
    if (b < e) fn(b, e, t);
  };
  if (n_used == 1) {
    chunk(0);
    return;
  }
  std::function<void(int)> job = chunk;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &job;
    pending_ = n_threads_ - 1;
    ++generation_;
  }
  wake_.notify_all();
  chunk(0);
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return pending_ == 0; });
}

namespace {
std::unique_ptr<ThreadPool>& global_pool() {
  static std::unique_ptr<ThreadPool> pool;
  return pool;
}
}  // namespace

ThreadPool& ThreadPool::global() {
  auto& pool = global_pool();
  if (!pool) pool = std::make_unique<ThreadPool>(0);
  return *pool;
}

void ThreadPool::set_global_threads(int n_threads) {
  global_pool() = std::make_unique<ThreadPool>(n_threads);
}

}  // namespace gp
