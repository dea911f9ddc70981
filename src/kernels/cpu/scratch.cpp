#include "kernels/cpu/scratch.h"

#include <algorithm>
#include <cstdlib>
#include <memory>

namespace gp::cpu {

namespace {
struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
struct Buffer {
  std::unique_ptr<float, FreeDeleter> data;
  size_t capacity = 0;
};
}  // namespace

float* thread_scratch(ScratchSlot slot, size_t n) {
  thread_local Buffer buffers[kNumScratchSlots];
  Buffer& b = buffers[slot];
  if (n > b.capacity) {
    // Round up so that small growth does not reallocate every call.
    const size_t cap = (std::max<size_t>(n, 2 * b.capacity) + 15) / 16 * 16;
    b.data.reset(static_cast<float*>(std::aligned_alloc(64, cap * sizeof(float))));
    b.capacity = cap;
  }
  return b.data.get();
}

}  // namespace gp::cpu
