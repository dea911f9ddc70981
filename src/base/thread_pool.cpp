#include "base/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <system_error>

#include "base/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace gp {

namespace {

// How long an idle worker (or the caller waiting for workers) spins before it blocks: longer
// than the gaps between the jobs of one decode step, short enough to cost nothing while idle.
constexpr auto kSpin = std::chrono::microseconds(200);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Spins until done() holds or kSpin has passed; returns done().
template <class Done>
bool spin_until(const Done& done) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  for (int i = 1;; ++i) {
    if (done()) return true;
    cpu_relax();
    if (i % 64 == 0 && std::chrono::steady_clock::now() > until) return done();
  }
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0)
    n_threads =
        std::min(kMaxThreads, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  check(n_threads <= kMaxThreads, "--threads is " + std::to_string(n_threads) +
                                      ", expected at most " + std::to_string(kMaxThreads));
  n_threads_ = n_threads;
  try {
    for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
  } catch (const std::system_error& e) {
    // The started workers must be joined here: the destructor does not run for a failed
    // constructor.
    const size_t started = workers_.size();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_.store(true);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    throw Error("cannot start worker thread " + std::to_string(started + 1) + " of " +
                std::to_string(n_threads_) + " (" + e.what() +
                "); lower --threads or raise the process limit");
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::take_tasks(int index) {
  for (int64_t t = next_task_.fetch_add(1, std::memory_order_relaxed); t < n_tasks_;
       t = next_task_.fetch_add(1, std::memory_order_relaxed)) {
    (*job_)(t, index);
  }
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;
  for (;;) {
    auto ready = [&] {
      return stop_.load(std::memory_order_relaxed) ||
             generation_.load(std::memory_order_acquire) != seen;
    };
    if (!spin_until(ready)) {
      std::unique_lock<std::mutex> lock(mutex_);
      sleepers_.fetch_add(1);
      wake_.wait(lock, ready);
      sleepers_.fetch_sub(1);
    }
    if (stop_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    // Counted before looking at open_ (both sequentially consistent): either the caller sees this
    // worker in active_ and waits for it, or the worker sees the job closed and keeps off it.
    active_.fetch_add(1);
    if (open_.load()) take_tasks(index);
    if (active_.fetch_sub(1) == 1) active_.notify_all();
  }
}

void ThreadPool::run_tasks(int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
  if (n_tasks <= 0) return;
  if (n_tasks == 1 || n_threads_ == 1) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    return;
  }
  job_ = &fn;
  n_tasks_ = n_tasks;
  next_task_.store(0, std::memory_order_relaxed);
  open_.store(true);
  {
    // Under the lock, so that a worker about to sleep either sees the new generation or is
    // already counted in sleepers_ and gets the notification.
    std::lock_guard<std::mutex> lock(mutex_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  if (sleepers_.load() > 0) wake_.notify_all();
  take_tasks(0);
  open_.store(false);
  // Every task is taken: wait only for the workers still running one.
  auto done = [&] { return active_.load() == 0; };
  if (!spin_until(done)) {
    for (int a = active_.load(); a != 0; a = active_.load()) active_.wait(a);
  }
}

void ThreadPool::parallel_for(size_t n, size_t grain,
                              const std::function<void(size_t, size_t, int)>& fn) {
  if (n == 0) return;
  grain = std::max<size_t>(grain, 1);
  const size_t n_grains = (n + grain - 1) / grain;
  // A few chunks per thread, so that the others can take over from one that is held up.
  const size_t n_chunks = std::min<size_t>(n_grains, size_t{4} * n_threads_);
  run_tasks(static_cast<int64_t>(n_chunks), [&](int64_t c, int thread) {
    const size_t g0 = n_grains * c / n_chunks, g1 = n_grains * (c + 1) / n_chunks;
    const size_t b = g0 * grain, e = std::min(n, g1 * grain);
    if (b < e) fn(b, e, thread);
  });
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
