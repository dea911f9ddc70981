// linear_q8: the decode linear with the activation row quantized to int8 per group of 64, so
// that the inner products are exact integer multiply-adds of nibbles and int8 values:
//   y = sum_g scale_g * dx_g * (q_g · xq_g) + bias_g * sum(x_g),   x ≈ dx_g * xq_g.
// Cheaper than the f32 path per weight byte; less precise by the int8 rounding of x.
#include <algorithm>
#include <cmath>

#include "base/thread_pool.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/scratch.h"
#include "tensor/dtype.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/linear_q8.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// The per-target headers below must follow foreach_target.h.
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "kernels/cpu/gemm-inl.h"

HWY_BEFORE_NAMESPACE();
namespace gp::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

constexpr int64_t kGroup = 64;

// At most 16 lanes of 16 bits: one load covers (part of) the 32 bytes of one group's nibbles.
using D16 = hn::CappedTag<int16_t, 16>;
using D32 = hn::Repartition<int32_t, D16>;
using DF = hn::Rebind<float, D32>;

// Lane j of u16 word v holds elements 4(v+j) .. 4(v+j)+3 of the group (low nibble first), so
// (u16 >> 4s) & 15 is element 4(v+j)+s. xq is stored in that order, as int16:
// xq[g*64 + v*4 + s*L + j] = round(x[g*64 + 4*(v+j) + s] / dx_g), for v = 0, L, .. < 16.
void QuantizeX(const float* x, int64_t in, int16_t* HWY_RESTRICT xq, float* HWY_RESTRICT dx,
               float* HWY_RESTRICT xsum) {
  const size_t L = hn::Lanes(D16());
  for (int64_t g = 0; g < in / kGroup; ++g) {
    const float* xg = x + g * kGroup;
    float amax = 0, sum = 0;
    for (int64_t i = 0; i < kGroup; ++i) {
      amax = std::max(amax, std::fabs(xg[i]));
      sum += xg[i];
    }
    const float inv = amax > 0 ? 127.0f / amax : 0.0f;
    dx[g] = amax / 127.0f;
    xsum[g] = sum;
    int16_t* qg = xq + g * kGroup;
    // Adding and removing 1.5 * 2^23 rounds |v| <= 127 to the nearest integer, inline.
    constexpr float kRound = 12582912.0f;
    for (size_t v = 0; v < 16; v += L) {
      for (size_t s = 0; s < 4; ++s) {
        for (size_t j = 0; j < L; ++j) {
          const float r = (xg[4 * (v + j) + s] * inv + kRound) - kRound;
          qg[v * 4 + s * L + j] = static_cast<int16_t>(r);
        }
      }
    }
  }
}

// Per-lane int32 partial sums of q_k * xq_k over one group.
HWY_INLINE hn::Vec<D32> GroupDotI(const uint16_t* words, const int16_t* HWY_RESTRICT xq) {
  const D16 d16;
  const hn::RebindToUnsigned<D16> du16;
  const D32 d32;
  const size_t L = hn::Lanes(d16);
  const auto mask = hn::Set(du16, 0xF);
  auto sum0 = hn::Zero(d32), sum1 = hn::Zero(d32);
  for (size_t v = 0; v < 16; v += L) {
    const auto w = hn::LoadU(du16, words + v);
    const int16_t* xv = xq + v * 4;
    const auto q0 = hn::BitCast(d16, hn::And(w, mask));
    const auto q1 = hn::BitCast(d16, hn::And(hn::ShiftRight<4>(w), mask));
    const auto q2 = hn::BitCast(d16, hn::And(hn::ShiftRight<8>(w), mask));
    const auto q3 = hn::BitCast(d16, hn::ShiftRight<12>(w));
    sum0 = hn::ReorderWidenMulAccumulate(d32, q0, hn::Load(d16, xv), sum0, sum1);
    sum0 = hn::ReorderWidenMulAccumulate(d32, q1, hn::Load(d16, xv + L), sum0, sum1);
    sum0 = hn::ReorderWidenMulAccumulate(d32, q2, hn::Load(d16, xv + 2 * L), sum0, sum1);
    sum0 = hn::ReorderWidenMulAccumulate(d32, q3, hn::Load(d16, xv + 3 * L), sum0, sum1);
  }
  // Only the total over all lanes matters, whatever order the products landed in.
  return hn::Add(sum0, sum1);
}

void GemvQ8Rows(const Weight& w, const int16_t* xq, const float* dx, const float* xsum, int64_t r0,
                int64_t r1, float* y, const float* bias) {
  const DF df;
  const int64_t gpr = w.groups_per_row(), wpr = w.in / 8;
  const size_t ss = dtype_size(w.scale_dtype);
  float* sc = thread_scratch(kScratchA, 4 * gpr);
  float* bi = thread_scratch(kScratchB, 4 * gpr);
  auto words = [&](int64_t row) { return reinterpret_cast<const uint16_t*>(w.q + row * wpr); };
  auto finish = [&](int64_t o, hn::Vec<DF> acc, const float* b) {
    y[o] = hn::GetLane(hn::SumOfLanes(df, acc)) + Dot(b, xsum, gpr) + (bias ? bias[o] : 0.0f);
  };
  int64_t o = r0;
  for (; o + 4 <= r1; o += 4) {
    ToF32(w.scale_dtype, static_cast<const uint8_t*>(w.scales) + o * gpr * ss, 4 * gpr, sc);
    ToF32(w.scale_dtype, static_cast<const uint8_t*>(w.biases) + o * gpr * ss, 4 * gpr, bi);
    for (int64_t r = 0; r < 4; ++r) {
      for (int64_t g = 0; g < gpr; ++g) sc[r * gpr + g] *= dx[g];
    }
    const uint16_t *q0 = words(o), *q1 = words(o + 1), *q2 = words(o + 2), *q3 = words(o + 3);
    auto a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
    // Two blocks of 4 rows ahead, 128 bytes per group: the rows are short streams that the
    // hardware prefetchers pick up too late. Prefetches never fault.
    const auto* ahead = reinterpret_cast<const uint8_t*>(w.q + (o + 8) * wpr);
    for (int64_t g = 0; g < gpr; ++g) {
      hwy::Prefetch(ahead + g * 128);
      hwy::Prefetch(ahead + g * 128 + 64);
      const int16_t* xg = xq + g * kGroup;
      a0 = hn::MulAdd(hn::ConvertTo(df, GroupDotI(q0 + g * 16, xg)), hn::Set(df, sc[g]), a0);
      a1 = hn::MulAdd(hn::ConvertTo(df, GroupDotI(q1 + g * 16, xg)), hn::Set(df, sc[gpr + g]), a1);
      a2 = hn::MulAdd(hn::ConvertTo(df, GroupDotI(q2 + g * 16, xg)), hn::Set(df, sc[2 * gpr + g]),
                      a2);
      a3 = hn::MulAdd(hn::ConvertTo(df, GroupDotI(q3 + g * 16, xg)), hn::Set(df, sc[3 * gpr + g]),
                      a3);
    }
    finish(o, a0, bi);
    finish(o + 1, a1, bi + gpr);
    finish(o + 2, a2, bi + 2 * gpr);
    finish(o + 3, a3, bi + 3 * gpr);
  }
  for (; o < r1; ++o) {
    ToF32(w.scale_dtype, static_cast<const uint8_t*>(w.scales) + o * gpr * ss, gpr, sc);
    ToF32(w.scale_dtype, static_cast<const uint8_t*>(w.biases) + o * gpr * ss, gpr, bi);
    const uint16_t* q0 = words(o);
    auto a0 = hn::Zero(df);
    for (int64_t g = 0; g < gpr; ++g) {
      a0 = hn::MulAdd(hn::ConvertTo(df, GroupDotI(q0 + g * 16, xq + g * kGroup)),
                      hn::Set(df, sc[g] * dx[g]), a0);
    }
    finish(o, a0, bi);
  }
}

void LinearQ8Impl(const Weight& w, const float* x, float* y, const float* bias) {
  const int64_t gpr = w.groups_per_row();
  // int16 values in a float scratch buffer: 2 per float, aligned the same way.
  auto* xq = reinterpret_cast<int16_t*>(thread_scratch(kScratchC, w.in / 2));
  float* dx = thread_scratch(kScratchD, gpr);
  float* xsum = thread_scratch(kScratchE, gpr);
  QuantizeX(x, w.in, xq, dx, xsum);
  if (w.bytes() < (size_t{256} << 10)) return GemvQ8Rows(w, xq, dx, xsum, 0, w.out, y, bias);
  // About 16 blocks of rows per thread, taken dynamically.
  const int64_t rb =
      std::clamp<int64_t>(w.out / (16 * ThreadPool::global().size()) / 4 * 4, 8, 256);
  parallel_blocks((w.out + rb - 1) / rb, [&](int64_t b, int) {
    GemvQ8Rows(w, xq, dx, xsum, b * rb, std::min(w.out, (b + 1) * rb), y, bias);
  });
}

}  // namespace gp::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace gp::cpu {

HWY_EXPORT(LinearQ8Impl);

void linear_q8(const Weight& w, const float* x, int64_t n, float* y, const float* bias) {
  // Only one activation row of an MLX 4-bit group-64 weight has an int8 path.
  if (n != 1 || !w.quantized || w.fmt.bits != 4 || w.fmt.group_size != 64) {
    return linear(w, x, n, y, bias);
  }
  HWY_DYNAMIC_DISPATCH(LinearQ8Impl)(w, x, y, bias);
}

}  // namespace gp::cpu
#endif  // HWY_ONCE
