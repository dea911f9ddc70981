// NEON int8 kernels of linear_q8 (see q8_arm.h). Nibbles are 0..15 and activations -127..127,
// so every product fits in 11 bits: sixteen of them still fit in an int16 lane, which the
// widening kernels use to add several products before widening to int32.
#if defined(__aarch64__)
#include "kernels/cpu/q8_arm.h"

#include <arm_neon.h>

#include <atomic>
#include <cstring>

#if defined(__linux__)
#include <sys/auxv.h>
#endif

// The sdot functions are compiled for the dot-product extension whatever the baseline, and are
// only called where the CPU reports it. (GCC 12 declares vdotq_s32 for armv8.2-a+dotprod, and
// every CPU with the extension implements ARMv8.2.)
#if defined(__clang__)
#define GP_TARGET_DOTPROD __attribute__((target("dotprod")))
#else
#define GP_TARGET_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#endif

namespace gp::cpu::arm {
namespace {

constexpr int64_t kGroup = 64;
// How far ahead of the weight bytes being read the decode kernel prefetches (the x86 kernel's
// distance, for the same stream; prefetches never fault).
constexpr int64_t kPrefetchAhead = 2048;

// The low and high nibbles of 16 weight bytes, as int8 (0..15).
inline int8x16_t LowNibbles(uint8x16_t w) {
  return vreinterpretq_s8_u8(vandq_u8(w, vdupq_n_u8(15)));
}
inline int8x16_t HighNibbles(uint8x16_t w) { return vreinterpretq_s8_u8(vshrq_n_u8(w, 4)); }

// 4 int8 activations repeated over a vector.
inline int8x16_t Broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return vreinterpretq_s8_s32(vdupq_n_s32(v));
}

// ---------------------------------------------------------------- one activation row

// Bytes c..c+15 of a group: their low nibbles are elements xq[c..c+15] of the group's even
// half, their high nibbles xq[32+c..] of its odd half.
GP_TARGET_DOTPROD inline int32x4_t GroupDotSdot(const uint8_t* wb, const int8_t* xg) {
  const uint8x16_t w0 = vld1q_u8(wb), w1 = vld1q_u8(wb + 16);
  int32x4_t d = vdotq_s32(vdupq_n_s32(0), LowNibbles(w0), vld1q_s8(xg));
  d = vdotq_s32(d, LowNibbles(w1), vld1q_s8(xg + 16));
  d = vdotq_s32(d, HighNibbles(w0), vld1q_s8(xg + 32));
  return vdotq_s32(d, HighNibbles(w1), vld1q_s8(xg + 48));
}

// The same with 16-bit products: each int16 lane adds 8 of them (<= 8 * 1905).
inline int32x4_t GroupDotSmull(const uint8_t* wb, const int8_t* xg) {
  const uint8x16_t w0 = vld1q_u8(wb), w1 = vld1q_u8(wb + 16);
  const int8x16_t l0 = LowNibbles(w0), l1 = LowNibbles(w1);
  const int8x16_t h0 = HighNibbles(w0), h1 = HighNibbles(w1);
  const int8x16_t x0 = vld1q_s8(xg), x1 = vld1q_s8(xg + 16);
  const int8x16_t x2 = vld1q_s8(xg + 32), x3 = vld1q_s8(xg + 48);
  int16x8_t s = vmull_s8(vget_low_s8(l0), vget_low_s8(x0));
  s = vmlal_high_s8(s, l0, x0);
  s = vmlal_s8(s, vget_low_s8(l1), vget_low_s8(x1));
  s = vmlal_high_s8(s, l1, x1);
  s = vmlal_s8(s, vget_low_s8(h0), vget_low_s8(x2));
  s = vmlal_high_s8(s, h0, x2);
  s = vmlal_s8(s, vget_low_s8(h1), vget_low_s8(x3));
  s = vmlal_high_s8(s, h1, x3);
  return vpaddlq_s16(s);
}

// A row: two groups at a time into two accumulators, prefetching one cache line ahead per pair.
// Written out twice rather than shared through a template: the sdot loop must be compiled
// for the dot-product extension and the other one must not be.
GP_TARGET_DOTPROD float RowDotSdot(const uint32_t* row, const int8_t* xq, const float* sd,
                                   int64_t gpr) {
  const auto* wb = reinterpret_cast<const uint8_t*>(row);
  float32x4_t a0 = vdupq_n_f32(0), a1 = vdupq_n_f32(0);
  int64_t g = 0;
  for (; g + 2 <= gpr; g += 2) {
    __builtin_prefetch(wb + g * 32 + kPrefetchAhead);
    a0 = vfmaq_n_f32(a0, vcvtq_f32_s32(GroupDotSdot(wb + g * 32, xq + g * kGroup)), sd[g]);
    a1 = vfmaq_n_f32(a1, vcvtq_f32_s32(GroupDotSdot(wb + g * 32 + 32, xq + (g + 1) * kGroup)),
                     sd[g + 1]);
  }
  if (g < gpr) {
    a0 = vfmaq_n_f32(a0, vcvtq_f32_s32(GroupDotSdot(wb + g * 32, xq + g * kGroup)), sd[g]);
  }
  return vaddvq_f32(vaddq_f32(a0, a1));
}

float RowDotSmull(const uint32_t* row, const int8_t* xq, const float* sd, int64_t gpr) {
  const auto* wb = reinterpret_cast<const uint8_t*>(row);
  float32x4_t a0 = vdupq_n_f32(0), a1 = vdupq_n_f32(0);
  int64_t g = 0;
  for (; g + 2 <= gpr; g += 2) {
    __builtin_prefetch(wb + g * 32 + kPrefetchAhead);
    a0 = vfmaq_n_f32(a0, vcvtq_f32_s32(GroupDotSmull(wb + g * 32, xq + g * kGroup)), sd[g]);
    a1 = vfmaq_n_f32(a1, vcvtq_f32_s32(GroupDotSmull(wb + g * 32 + 32, xq + (g + 1) * kGroup)),
                     sd[g + 1]);
  }
  if (g < gpr) {
    a0 = vfmaq_n_f32(a0, vcvtq_f32_s32(GroupDotSmull(wb + g * 32, xq + g * kGroup)), sd[g]);
  }
  return vaddvq_f32(vaddq_f32(a0, a1));
}

// ---------------------------------------------------------------- many activation rows

// The float part of the micro-kernel: acc += p * (sc * dx) + bi * xs for one group, in the
// order of the x86 kernel.
inline float32x4_t ScaleGroup(float32x4_t acc, int32x4_t p, float32x4_t sv, float32x4_t bv,
                              float dx, float xs) {
  acc = vfmaq_f32(acc, vcvtq_f32_s32(p), vmulq_n_f32(sv, dx));
  return vfmaq_n_f32(acc, bv, xs);
}

inline float32x4_t Start(float* const* c, int r, bool first, const float* init) {
  if (!first) return vld1q_f32(c[r]);
  return init ? vld1q_f32(init) : vdupq_n_f32(0);
}

// Each 16 panel bytes hold 4 inputs of the 4 columns; sdot by lane l of 16 activations adds
// their inputs 4l..4l+3 to every column at once.
GP_TARGET_DOTPROD void MicroSdot(const int8_t* const* a, const float* const* dx,
                                 const float* const* xs, int64_t kc, const uint8_t* panel,
                                 const float* sc, const float* bi, float* const* c, bool first,
                                 const float* init) {
  const int8_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
  float32x4_t c0 = Start(c, 0, first, init), c1 = Start(c, 1, first, init);
  float32x4_t c2 = Start(c, 2, first, init), c3 = Start(c, 3, first, init);
  const auto* pw = reinterpret_cast<const int8_t*>(panel);
  for (int64_t g = 0; g < kc / kGroup; ++g) {
    int32x4_t p0 = vdupq_n_s32(0), p1 = p0, p2 = p0, p3 = p0;
    for (int64_t k = g * kGroup; k < (g + 1) * kGroup; k += 16) {
      const int8x16_t w0 = vld1q_s8(pw + k * 4), w1 = vld1q_s8(pw + k * 4 + 16);
      const int8x16_t w2 = vld1q_s8(pw + k * 4 + 32), w3 = vld1q_s8(pw + k * 4 + 48);
      const int8x16_t x0 = vld1q_s8(a0 + k), x1 = vld1q_s8(a1 + k);
      const int8x16_t x2 = vld1q_s8(a2 + k), x3 = vld1q_s8(a3 + k);
      p0 = vdotq_laneq_s32(p0, w0, x0, 0);
      p1 = vdotq_laneq_s32(p1, w0, x1, 0);
      p2 = vdotq_laneq_s32(p2, w0, x2, 0);
      p3 = vdotq_laneq_s32(p3, w0, x3, 0);
      p0 = vdotq_laneq_s32(p0, w1, x0, 1);
      p1 = vdotq_laneq_s32(p1, w1, x1, 1);
      p2 = vdotq_laneq_s32(p2, w1, x2, 1);
      p3 = vdotq_laneq_s32(p3, w1, x3, 1);
      p0 = vdotq_laneq_s32(p0, w2, x0, 2);
      p1 = vdotq_laneq_s32(p1, w2, x1, 2);
      p2 = vdotq_laneq_s32(p2, w2, x2, 2);
      p3 = vdotq_laneq_s32(p3, w2, x3, 2);
      p0 = vdotq_laneq_s32(p0, w3, x0, 3);
      p1 = vdotq_laneq_s32(p1, w3, x1, 3);
      p2 = vdotq_laneq_s32(p2, w3, x2, 3);
      p3 = vdotq_laneq_s32(p3, w3, x3, 3);
    }
    const float32x4_t sv = vld1q_f32(sc + g * 4), bv = vld1q_f32(bi + g * 4);
    c0 = ScaleGroup(c0, p0, sv, bv, dx[0][g], xs[0][g]);
    c1 = ScaleGroup(c1, p1, sv, bv, dx[1][g], xs[1][g]);
    c2 = ScaleGroup(c2, p2, sv, bv, dx[2][g], xs[2][g]);
    c3 = ScaleGroup(c3, p3, sv, bv, dx[3][g], xs[3][g]);
  }
  vst1q_f32(c[0], c0);
  vst1q_f32(c[1], c1);
  vst1q_f32(c[2], c2);
  vst1q_f32(c[3], c3);
}

// 16-bit products of the panel bytes with 4 activations repeated: the low half of each int16
// vector holds columns 0-1, the high half columns 2-3, each lane adding one product per step
// (16 steps a group, <= 16 * 1905); pairwise adds then give one int32 per column.
void MicroSmull(const int8_t* const* a, const float* const* dx, const float* const* xs, int64_t kc,
                const uint8_t* panel, const float* sc, const float* bi, float* const* c, bool first,
                const float* init) {
  const int8_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
  float32x4_t c0 = Start(c, 0, first, init), c1 = Start(c, 1, first, init);
  float32x4_t c2 = Start(c, 2, first, init), c3 = Start(c, 3, first, init);
  const auto* pw = reinterpret_cast<const int8_t*>(panel);
  auto columns = [](int16x8_t lo, int16x8_t hi) {
    return vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi));
  };
  for (int64_t g = 0; g < kc / kGroup; ++g) {
    int16x8_t l0 = vdupq_n_s16(0), l1 = l0, l2 = l0, l3 = l0;
    int16x8_t h0 = l0, h1 = l0, h2 = l0, h3 = l0;
    for (int64_t k = g * kGroup; k < (g + 1) * kGroup; k += 4) {
      const int8x16_t w = vld1q_s8(pw + k * 4);
      const int8x8_t wl = vget_low_s8(w);
      const int8x16_t x0 = Broadcast4(a0 + k), x1 = Broadcast4(a1 + k);
      const int8x16_t x2 = Broadcast4(a2 + k), x3 = Broadcast4(a3 + k);
      l0 = vmlal_s8(l0, wl, vget_low_s8(x0));
      h0 = vmlal_high_s8(h0, w, x0);
      l1 = vmlal_s8(l1, wl, vget_low_s8(x1));
      h1 = vmlal_high_s8(h1, w, x1);
      l2 = vmlal_s8(l2, wl, vget_low_s8(x2));
      h2 = vmlal_high_s8(h2, w, x2);
      l3 = vmlal_s8(l3, wl, vget_low_s8(x3));
      h3 = vmlal_high_s8(h3, w, x3);
    }
    const float32x4_t sv = vld1q_f32(sc + g * 4), bv = vld1q_f32(bi + g * 4);
    c0 = ScaleGroup(c0, columns(l0, h0), sv, bv, dx[0][g], xs[0][g]);
    c1 = ScaleGroup(c1, columns(l1, h1), sv, bv, dx[1][g], xs[1][g]);
    c2 = ScaleGroup(c2, columns(l2, h2), sv, bv, dx[2][g], xs[2][g]);
    c3 = ScaleGroup(c3, columns(l3, h3), sv, bv, dx[3][g], xs[3][g]);
  }
  vst1q_f32(c[0], c0);
  vst1q_f32(c[1], c1);
  vst1q_f32(c[2], c2);
  vst1q_f32(c[3], c3);
}

constexpr Q8Kernels kSdot{"neon-sdot", RowDotSdot, MicroSdot};
constexpr Q8Kernels kSmull{"neon-smull", RowDotSmull, MicroSmull};

// The dot-product extension (ARMv8.2 FEAT_DotProd): required by the compiler's baseline, or
// reported by the Linux kernel; elsewhere, not assumed.
bool cpu_has_dotprod() {
#if defined(__ARM_FEATURE_DOTPROD)
  return true;
#elif defined(__linux__) && defined(HWCAP_ASIMDDP)
  return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
  return false;
#endif
}

std::atomic<const Q8Kernels*> g_test_choice{nullptr};

}  // namespace

std::span<const Q8Kernels* const> q8_kernels_available() {
  static const Q8Kernels* const with_dotprod[] = {&kSdot, &kSmull};
  static const Q8Kernels* const without[] = {&kSmull};
  static const bool dotprod = cpu_has_dotprod();
  if (dotprod) return with_dotprod;
  return without;
}

const Q8Kernels& q8_kernels() {
  if (const Q8Kernels* k = g_test_choice.load(std::memory_order_relaxed)) return *k;
  static const Q8Kernels& best = *q8_kernels_available()[0];
  return best;
}

void set_q8_kernels_for_test(const Q8Kernels* k) { g_test_choice.store(k); }

}  // namespace gp::cpu::arm
#endif  // __aarch64__
