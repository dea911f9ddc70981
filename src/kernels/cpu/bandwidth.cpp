// The memory read bandwidth probe: the decode roofline of gemma-bench and kernels_bench. Blocks of
// 64 KiB are taken in turn from a shared counter, so the threads read neighbouring blocks, and
// summed with full-width vector loads: neighbouring blocks keep more cache lines in flight than
// each thread summing its own distant half, so the probe reads at least as fast as the decode
// kernel streams its weights (docs/BENCHMARKS.md, Design measurements).
#include "kernels/cpu/bandwidth.h"

#include <algorithm>
#include <vector>

#include "base/sys.h"
#include "base/thread_pool.h"
#include "kernels/cpu/parallel.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/bandwidth.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// The per-target header below must follow foreach_target.h.
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace gp::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Sum of n words; n is a multiple of 32.
uint64_t SumWordsImpl(const uint64_t* HWY_RESTRICT p, size_t n) {
  const hn::CappedTag<uint64_t, 8> d;
  const size_t L = hn::Lanes(d);
  auto s0 = hn::Zero(d), s1 = hn::Zero(d), s2 = hn::Zero(d), s3 = hn::Zero(d);
  for (size_t i = 0; i + 4 * L <= n; i += 4 * L) {
    s0 = hn::Add(s0, hn::Load(d, p + i));
    s1 = hn::Add(s1, hn::Load(d, p + i + L));
    s2 = hn::Add(s2, hn::Load(d, p + i + 2 * L));
    s3 = hn::Add(s3, hn::Load(d, p + i + 3 * L));
  }
  // Summed in scalar unsigned words: SumOfLanes on AVX-512 is gcc's _mm512_reduce_add_epi64,
  // which adds as signed long long, and the words of weight pages overflow that (UBSan).
  HWY_ALIGN uint64_t lanes[8];
  hn::Store(hn::Add(hn::Add(s0, s1), hn::Add(s2, s3)), d, lanes);
  uint64_t sum = 0;
  for (size_t i = 0; i < L; ++i) sum += lanes[i];
  return sum;
}

}  // namespace gp::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace gp::cpu {

HWY_EXPORT(SumWordsImpl);

double read_bandwidth_gbs(size_t bytes, int reps) {
  ThreadPool& pool = ThreadPool::global();
  constexpr size_t kWords = (size_t{64} << 10) / sizeof(uint64_t);  // one block
  const size_t n_blocks = std::max<size_t>(1, bytes / (kWords * sizeof(uint64_t)));
  const auto owner = hwy::AllocateAligned<uint64_t>(n_blocks * kWords);
  uint64_t* buf = owner.get();
  pool.parallel_for(n_blocks * kWords, 4096, [&](size_t b, size_t e, int) {
    for (size_t i = b; i < e; ++i) buf[i] = i;  // each thread touches pages before the timing
  });
  struct alignas(64) Sum {  // one cache line per thread: no false sharing
    uint64_t v = 0;
  };
  std::vector<Sum> sums(pool.size());
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    Timer t;
    parallel_blocks(static_cast<int64_t>(n_blocks), [&](int64_t b, int thread) {
      sums[thread].v += HWY_DYNAMIC_DISPATCH(SumWordsImpl)(buf + b * kWords, kWords);
    });
    best = std::max(best, static_cast<double>(n_blocks * kWords * 8) / t.seconds() / 1e9);
  }
  volatile uint64_t sink = 0;
  for (const Sum& s : sums) sink = sink + s.v;
  return best;
}

double read_bandwidth_gbs(std::span<const std::span<const uint8_t>> ranges, int reps) {
  constexpr size_t kBlock = size_t{64} << 10, kStep = 32 * sizeof(uint64_t);  // SumWordsImpl's
  struct Block {
    const uint64_t* p;
    size_t words;
  };
  std::vector<Block> blocks;
  size_t bytes = 0;
  for (const auto& r : ranges) {
    // From the first cache line inside the range, whole steps of 256 bytes.
    const auto begin = reinterpret_cast<uintptr_t>(r.data()), end = begin + r.size();
    for (uintptr_t b = (begin + 63) / 64 * 64; b + kStep <= end; b += kBlock) {
      const size_t n = std::min(kBlock, (end - b) / kStep * kStep);
      blocks.push_back({reinterpret_cast<const uint64_t*>(b), n / sizeof(uint64_t)});
      bytes += n;
    }
  }
  if (bytes == 0) return 0;
  ThreadPool& pool = ThreadPool::global();
  struct alignas(64) Sum {
    uint64_t v = 0;
  };
  std::vector<Sum> sums(pool.size());
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    Timer t;
    parallel_blocks(static_cast<int64_t>(blocks.size()), [&](int64_t b, int thread) {
      sums[thread].v += HWY_DYNAMIC_DISPATCH(SumWordsImpl)(blocks[b].p, blocks[b].words);
    });
    best = std::max(best, static_cast<double>(bytes) / t.seconds() / 1e9);
  }
  volatile uint64_t sink = 0;
  for (const Sum& s : sums) sink = sink + s.v;
  return best;
}

}  // namespace gp::cpu
#endif  // HWY_ONCE
