// The int8 kernels of linear_q8 on 64-bit ARM, in NEON: `sdot` (vdotq_s32) where the CPU has the
// dot-product extension, widening multiply-adds (smull / smlal / sadalp) where it does not. Which
// one runs is decided once, from what the CPU reports at run time (never assumed), and holds for
// every Highway target (NEON and SVE CPUs both run NEON). Only built on aarch64.
#pragma once

#if defined(__aarch64__)
#include <cstdint>
#include <span>

namespace gp::cpu::arm {

// The weight layouts are those of linear_q8.cpp: a row is groups of 32 bytes of nibbles (byte i:
// element 2i low, 2i+1 high); a prefill panel is [kc/4][4 rows][4 bytes] of unpacked u8.
struct Q8Kernels {
  const char* name;  // "neon-sdot" or "neon-smull"
  // sum_g sd[g] * (q_g · xq_g) over the gpr groups of one weight row, where each group of xq
  // holds its 32 even elements, then its 32 odd ones.
  float (*row_dot)(const uint32_t* row, const int8_t* xq, const float* sd, int64_t gpr);
  // Q8MicroKernel of linear_q8.cpp for 4 rows of x against one 4-column panel.
  void (*micro)(const int8_t* const* a, const float* const* dx, const float* const* xs, int64_t kc,
                const uint8_t* panel, const float* sc, const float* bi, float* const* c, bool first,
                const float* init);
};

// Columns of a prefill panel: the int32 lanes of one NEON vector.
constexpr int64_t kQ8PanelWidth = 4;

// The kernels linear_q8 runs: the best this CPU supports, unless a test chose others.
const Q8Kernels& q8_kernels();
// Every kernel set this CPU can run, best first.
std::span<const Q8Kernels* const> q8_kernels_available();
// For tests: run `k` (one of q8_kernels_available()) from now on; nullptr restores the best.
void set_q8_kernels_for_test(const Q8Kernels* k);

}  // namespace gp::cpu::arm
#endif  // __aarch64__
