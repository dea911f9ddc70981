// Per-thread reusable buffers, so that kernels do not allocate on every call.
#pragma once

#include <cstddef>

namespace gp::cpu {

// Slots a kernel may use at once on one thread; each one holds a separate buffer.
enum ScratchSlot { kScratchA, kScratchB, kScratchC, kScratchD, kScratchE, kNumScratchSlots };

// A 64-byte aligned buffer of at least n floats owned by the calling thread; valid until the
// same thread asks for the same slot again.
float* thread_scratch(ScratchSlot slot, size_t n);

}  // namespace gp::cpu
