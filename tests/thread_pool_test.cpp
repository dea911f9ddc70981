// ThreadPool: every task runs exactly once, on a thread index no other running task holds, for
// any number of tasks and threads, job after job.
#include "base/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

namespace gp {
namespace {

TEST(ThreadPool, EveryTaskOnceOnAnIndexOfItsOwn) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    for (int64_t n : {0, 1, 2, 3, 7, 64, 1000}) {
      for (int job = 0; job < 20; ++job) {
        std::vector<std::atomic<int>> runs(n);
        std::vector<std::atomic<int>> busy(threads);
        std::atomic<int> clashes{0}, bad_index{0};
        pool.run_tasks(n, [&](int64_t t, int thread) {
          if (thread < 0 || thread >= threads) {
            ++bad_index;
            return;
          }
          if (busy[thread].fetch_add(1) != 0) ++clashes;
          runs[t].fetch_add(1);
          busy[thread].fetch_sub(1);
        });
        for (int64_t t = 0; t < n; ++t) ASSERT_EQ(runs[t].load(), 1) << "task " << t;
        EXPECT_EQ(clashes.load(), 0);
        EXPECT_EQ(bad_index.load(), 0);
      }
    }
  }
}

// A thread held up inside its first task (as by another process taking its core) does not hold
// up the other tasks: the rest are taken by the other threads, and the call returns once the
// held-up task ends.
TEST(ThreadPool, OthersTakeOverFromAHeldUpThread) {
  ThreadPool pool(2);
  for (int job = 0; job < 20; ++job) {
    constexpr int64_t kTasks = 200;
    std::atomic<int64_t> done{0};
    std::atomic<bool> held{false};
    std::atomic<int> gave_up{0};
    pool.run_tasks(kTasks, [&](int64_t, int thread) {
      if (thread == 1 && !held.exchange(true)) {
        // The others must finish every other task while this one waits (10 s at most).
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (done.load() < kTasks - 1) {
          if (std::chrono::steady_clock::now() > until) {
            ++gave_up;
            break;
          }
          std::this_thread::yield();
        }
      }
      done.fetch_add(1);
    });
    EXPECT_EQ(done.load(), kTasks);
    EXPECT_EQ(gave_up.load(), 0);
  }
}

TEST(ThreadPool, ParallelForCoversTheRangeInGrains) {
  for (int threads : {1, 2, 5}) {
    ThreadPool pool(threads);
    for (size_t n : {1, 5, 100, 4097}) {
      for (size_t grain : {1, 4, 64}) {
        std::vector<std::atomic<int>> hits(n);
        std::atomic<int> misaligned{0};
        pool.parallel_for(n, grain, [&](size_t b, size_t e, int) {
          if (b % grain != 0 || (e % grain != 0 && e != n)) ++misaligned;
          for (size_t i = b; i < e; ++i) hits[i].fetch_add(1);
        });
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n " << n << " i " << i;
        EXPECT_EQ(misaligned.load(), 0);
      }
    }
  }
}

}  // namespace
}  // namespace gp
