// Dynamic scheduling over the global pool: threads take blocks from a shared counter, so a
// thread that starts late (a busy machine, a slow core of a big.LITTLE phone) takes fewer
// blocks instead of holding everyone up.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "base/thread_pool.h"

namespace gp::cpu {

// Calls fn(block, thread) for every block in [0, n_blocks), on all threads of the pool.
template <class Fn>
void parallel_blocks(int64_t n_blocks, const Fn& fn) {
  ThreadPool& pool = ThreadPool::global();
  if (n_blocks <= 1 || pool.size() == 1) {
    for (int64_t b = 0; b < n_blocks; ++b) fn(b, 0);
    return;
  }
  pool.run_tasks(n_blocks, [&](int64_t b, int thread) { fn(b, thread); });
}

// Linears of one or a few rows: below this many weight bytes the hand-off to the pool costs more
// than it saves, and the caller runs them alone.
constexpr size_t kGemvInlineBytes = size_t{256} << 10;

// parallel_blocks for a linear that reads `bytes` weight bytes: on the caller alone below
// kGemvInlineBytes.
template <class Fn>
void parallel_blocks(int64_t n_blocks, size_t bytes, const Fn& fn) {
  if (bytes < kGemvInlineBytes) {
    for (int64_t b = 0; b < n_blocks; ++b) fn(b, 0);
    return;
  }
  parallel_blocks(n_blocks, fn);
}

// Output rows per block of a one-row linear: about 16 blocks per thread, a multiple of 4.
inline int64_t gemv_row_block(int64_t out) {
  const int64_t rb = out / (16 * ThreadPool::global().size());
  return std::clamp<int64_t>(rb / 4 * 4, 8, 256);
}

}  // namespace gp::cpu
