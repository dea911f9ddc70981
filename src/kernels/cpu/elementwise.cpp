// Row-wise and elementwise ops: rms_norm, layer_norm, rope, gelu_tanh(_mul), add, and the f16
// conversions of the KV cache.
// Small inputs run inline on the calling thread; large ones are split by rows or ranges.
#include <algorithm>
#include <cmath>
#include <vector>

#include "base/thread_pool.h"
#include "kernels/cpu/cpu.h"
#include "tensor/dtype.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/elementwise.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// The per-target headers below must follow foreach_target.h.
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

#ifndef GP_KERNELS_CPU_ELEMENTWISE_ONCE
#define GP_KERNELS_CPU_ELEMENTWISE_ONCE
namespace gp::cpu {
// Below this many values per call, waking the pool costs more than the work.
constexpr int64_t kInlineValues = int64_t{1} << 15;

// Runs fn(begin, end) over [0, n) items of `per_item` values each, in parallel when large.
template <class Fn>
void for_rows(int64_t n, int64_t per_item, const Fn& fn) {
  if (n * per_item < kInlineValues || n == 1) return fn(0, n);
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(per_item, 1));
  ThreadPool::global().parallel_for(n, grain, [&](size_t b, size_t e, int) { fn(b, e); });
}
}  // namespace gp::cpu
#endif

HWY_BEFORE_NAMESPACE();
namespace gp::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// sum of x[i]^2 (or of (x[i] - mean)^2), f32 with vector accumulators.
float SumSquares(const float* HWY_RESTRICT x, int64_t d, float mean) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto m = hn::Set(df, mean);
  auto s0 = hn::Zero(df), s1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * N <= d; i += 2 * N) {
    const auto a = hn::Sub(hn::LoadU(df, x + i), m), b = hn::Sub(hn::LoadU(df, x + i + N), m);
    s0 = hn::MulAdd(a, a, s0);
    s1 = hn::MulAdd(b, b, s1);
  }
  for (; i + N <= d; i += N) {
    const auto a = hn::Sub(hn::LoadU(df, x + i), m);
    s0 = hn::MulAdd(a, a, s0);
  }
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(s0, s1)));
  for (; i < d; ++i) s += (x[i] - mean) * (x[i] - mean);
  return s;
}

float Sum(const float* HWY_RESTRICT x, int64_t d) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto s0 = hn::Zero(df), s1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * N <= d; i += 2 * N) {
    s0 = hn::Add(hn::LoadU(df, x + i), s0);
    s1 = hn::Add(hn::LoadU(df, x + i + N), s1);
  }
  for (; i + N <= d; i += N) s0 = hn::Add(hn::LoadU(df, x + i), s0);
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(s0, s1)));
  for (; i < d; ++i) s += x[i];
  return s;
}

void RmsNormImpl(const float* x, const float* w, int64_t n, int64_t d, float eps, float* y) {
  for_rows(n, d, [&](int64_t t0, int64_t t1) {
    const hn::ScalableTag<float> df;
    const int64_t N = static_cast<int64_t>(hn::Lanes(df));
    for (int64_t t = t0; t < t1; ++t) {
      const float* xr = x + t * d;
      float* yr = y + t * d;
      const double ss = SumSquares(xr, d, 0.0f);
      const float inv = static_cast<float>(1.0 / std::sqrt(ss / d + eps));
      const auto vinv = hn::Set(df, inv), one = hn::Set(df, 1.0f);
      int64_t i = 0;
      for (; i + N <= d; i += N) {
        const auto v = hn::Mul(hn::LoadU(df, xr + i), vinv);
        hn::StoreU(hn::Mul(v, hn::Add(one, hn::LoadU(df, w + i))), df, yr + i);
      }
      for (; i < d; ++i) yr[i] = xr[i] * inv * (1.0f + w[i]);
    }
  });
}

void LayerNormImpl(const float* x, const float* w, const float* b, int64_t n, int64_t d, float eps,
                   float* y) {
  for_rows(n, d, [&](int64_t t0, int64_t t1) {
    const hn::ScalableTag<float> df;
    const int64_t N = static_cast<int64_t>(hn::Lanes(df));
    for (int64_t t = t0; t < t1; ++t) {
      const float* xr = x + t * d;
      float* yr = y + t * d;
      const float mean = Sum(xr, d) / static_cast<float>(d);
      const double var = SumSquares(xr, d, mean) / d;
      const float inv = static_cast<float>(1.0 / std::sqrt(var + eps));
      const auto vinv = hn::Set(df, inv), vmean = hn::Set(df, mean);
      int64_t i = 0;
      for (; i + N <= d; i += N) {
        const auto v = hn::Mul(hn::Sub(hn::LoadU(df, xr + i), vmean), vinv);
        hn::StoreU(hn::MulAdd(v, hn::LoadU(df, w + i), hn::LoadU(df, b + i)), df, yr + i);
      }
      for (; i < d; ++i) yr[i] = (xr[i] - mean) * inv * w[i] + b[i];
    }
  });
}

void RopeImpl(float* x, int64_t n, int n_heads, int head_dim, const float* cs) {
  const int half = head_dim / 2;
  for_rows(n, int64_t{n_heads} * head_dim, [&](int64_t t0, int64_t t1) {
    const hn::ScalableTag<float> df;
    const int N = static_cast<int>(hn::Lanes(df));
    for (int64_t t = t0; t < t1; ++t) {
      const float* c = cs + t * head_dim;
      const float* s = c + half;
      for (int h = 0; h < n_heads; ++h) {
        float* lo = x + (t * n_heads + h) * head_dim;
        float* hi = lo + half;
        int i = 0;
        for (; i + N <= half; i += N) {
          const auto a = hn::LoadU(df, lo + i), b = hn::LoadU(df, hi + i);
          const auto vc = hn::LoadU(df, c + i), vs = hn::LoadU(df, s + i);
          hn::StoreU(hn::NegMulAdd(b, vs, hn::Mul(a, vc)), df, lo + i);
          hn::StoreU(hn::MulAdd(a, vs, hn::Mul(b, vc)), df, hi + i);
        }
        for (; i < half; ++i) {
          const float a = lo[i], b = hi[i];
          lo[i] = a * c[i] - b * s[i];
          hi[i] = b * c[i] + a * s[i];
        }
      }
    }
  });
}

// gelu_tanh(x) = 0.5 x (1 + tanh(z)) = x / (1 + exp(-2z)), z = sqrt(2/pi) (x + 0.044715 x^3).
// The second form has no cancellation for negative x; it runs in f64 where the target has it,
// so the result is the correctly rounded f32 of the f64 formula in almost every case.
#if HWY_HAVE_FLOAT64
using GeluT = double;
#else
using GeluT = float;
#endif

template <class D, class V>
HWY_INLINE V GeluVec(D d, V x) {
  using T = hn::TFromD<D>;
  const V c = hn::Set(d, static_cast<T>(0.7978845608028654));
  const V k = hn::Set(d, static_cast<T>(0.044715));
  const V x2 = hn::Mul(x, x);
  const V z = hn::Mul(hn::Mul(c, x), hn::MulAdd(k, x2, hn::Set(d, T(1))));
  // exp overflows to garbage past ~709 (f64) / ~88 (f32); the quotient is 0 there anyway.
  const V arg =
      hn::Min(hn::Mul(z, hn::Set(d, T(-2))), hn::Set(d, static_cast<T>(sizeof(T) == 8 ? 700 : 87)));
  return hn::Div(x, hn::Add(hn::Set(d, T(1)), hn::Exp(d, arg)));
}

float GeluScalar(float v) {
  const GeluT x = v;
  const GeluT z =
      static_cast<GeluT>(0.7978845608028654) * x * (1 + static_cast<GeluT>(0.044715) * x * x);
  return static_cast<float>(x /
                            (1 + std::exp(std::min<GeluT>(-2 * z, sizeof(GeluT) == 8 ? 700 : 87))));
}

// out[i] = gelu(g[i]) (* u[i] when u is given) over [i0, i1).
void GeluRange(const float* g, const float* u, float* out, int64_t i0, int64_t i1) {
  const hn::ScalableTag<GeluT> dt;
  const hn::Rebind<float, decltype(dt)> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(dt));
  int64_t i = i0;
  for (; i + N <= i1; i += N) {
    auto r = GeluVec(dt, hn::PromoteTo(dt, hn::LoadU(df, g + i)));
    auto rf = hn::DemoteTo(df, r);
    if (u) rf = hn::Mul(rf, hn::LoadU(df, u + i));
    hn::StoreU(rf, df, out + i);
  }
  for (; i < i1; ++i) out[i] = u ? GeluScalar(g[i]) * u[i] : GeluScalar(g[i]);
}

void GeluTanhMulImpl(const float* g, const float* u, int64_t n, float* out) {
  // A value costs about as much as 8 of an add's (an f64 exp and divide): a decode step's
  // 10240 values take two threads.
  constexpr int64_t kCost = 8;
  for_rows((n + 1023) / 1024, 1024 * kCost,
           [&](int64_t b, int64_t e) { GeluRange(g, u, out, b * 1024, std::min(n, e * 1024)); });
}

void GeluTanhImpl(float* x, int64_t n) { GeluTanhMulImpl(x, nullptr, n, x); }

void AddImpl(float* x, const float* y, int64_t n) {
  for_rows((n + 1023) / 1024, 1024, [&](int64_t b, int64_t e) {
    const hn::ScalableTag<float> df;
    const int64_t N = static_cast<int64_t>(hn::Lanes(df)), i1 = std::min(n, e * 1024);
    int64_t i = b * 1024;
    for (; i + N <= i1; i += N) {
      hn::StoreU(hn::Add(hn::LoadU(df, x + i), hn::LoadU(df, y + i)), df, x + i);
    }
    for (; i < i1; ++i) x[i] += y[i];
  });
}

// f32 <-> IEEE half with the bits of tensor/dtype's from_f32 / to_f32 (round to nearest even).
// Vectors only where the conversion is an instruction (x86 F16C, on the AVX2 target and up; 64-bit
// ARM): Highway's emulation elsewhere truncates. A vector holding a NaN takes the scalar code,
// whose NaN bits (sign, then the canonical quiet NaN) the instructions do not give.
#undef GP_F16_VECTORS
#if (HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2 && !defined(HWY_DISABLE_F16C)) || HWY_ARCH_ARM_A64
#define GP_F16_VECTORS 1
#else
#define GP_F16_VECTORS 0
#endif

void F32ToF16Impl(const float* x, int64_t n, void* h) {
  auto* out = static_cast<uint16_t*>(h);
  int64_t i = 0;
#if GP_F16_VECTORS
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  for (; i + N <= n; i += N) {
    const auto v = hn::LoadU(df, x + i);
    if (hn::AllFalse(df, hn::IsNaN(v))) {
      hn::StoreU(hn::DemoteTo(dh, v), dh, reinterpret_cast<hwy::float16_t*>(out + i));
    } else {
      from_f32(DType::F16, x + i, static_cast<size_t>(N), out + i);
    }
  }
#endif
  from_f32(DType::F16, x + i, static_cast<size_t>(n - i), out + i);
}

void F16ToF32Impl(const void* h, int64_t n, float* x) {
  const auto* in = static_cast<const uint16_t*>(h);
  int64_t i = 0;
#if GP_F16_VECTORS
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  for (; i + N <= n; i += N) {
    const auto v =
        hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(in + i)));
    if (hn::AllFalse(df, hn::IsNaN(v))) {
      hn::StoreU(v, df, x + i);
    } else {
      to_f32(DType::F16, in + i, static_cast<size_t>(N), x + i);
    }
  }
#endif
  to_f32(DType::F16, in + i, static_cast<size_t>(n - i), x + i);
}

}  // namespace gp::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace gp::cpu {

HWY_EXPORT(RmsNormImpl);
HWY_EXPORT(LayerNormImpl);
HWY_EXPORT(RopeImpl);
HWY_EXPORT(GeluTanhMulImpl);
HWY_EXPORT(GeluTanhImpl);
HWY_EXPORT(AddImpl);
HWY_EXPORT(F32ToF16Impl);
HWY_EXPORT(F16ToF32Impl);

void rms_norm(const float* x, const float* w, int64_t n, int64_t d, float eps, float* y) {
  HWY_DYNAMIC_DISPATCH(RmsNormImpl)(x, w, n, d, eps, y);
}
void layer_norm(const float* x, const float* w, const float* b, int64_t n, int64_t d, float eps,
                float* y) {
  HWY_DYNAMIC_DISPATCH(LayerNormImpl)(x, w, b, n, d, eps, y);
}
void rope_angles(const int32_t* pos, int64_t n, int head_dim, float base, float pos_scale,
                 float* cs) {
  // In double: angles reach 131072 rad, where f32 would lose the fraction.
  const int half = head_dim / 2;
  std::vector<double> inv_freq(half);
  for (int i = 0; i < half; ++i)
    inv_freq[i] = std::pow(static_cast<double>(base), -2.0 * i / head_dim);
  for (int64_t t = 0; t < n; ++t) {
    const double p = static_cast<double>(pos[t]) * pos_scale;
    for (int i = 0; i < half; ++i) {
      cs[t * head_dim + i] = static_cast<float>(std::cos(p * inv_freq[i]));
      cs[t * head_dim + half + i] = static_cast<float>(std::sin(p * inv_freq[i]));
    }
  }
}
void rope(float* x, int64_t n, int n_heads, int head_dim, const float* cs) {
  HWY_DYNAMIC_DISPATCH(RopeImpl)(x, n, n_heads, head_dim, cs);
}
void gelu_tanh_mul(const float* g, const float* u, int64_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(GeluTanhMulImpl)(g, u, n, out);
}
void gelu_tanh(float* x, int64_t n) { HWY_DYNAMIC_DISPATCH(GeluTanhImpl)(x, n); }
void add(float* x, const float* y, int64_t n) { HWY_DYNAMIC_DISPATCH(AddImpl)(x, y, n); }
void f32_to_f16(const float* x, int64_t n, void* h) { HWY_DYNAMIC_DISPATCH(F32ToF16Impl)(x, n, h); }
void f16_to_f32(const void* h, int64_t n, float* x) { HWY_DYNAMIC_DISPATCH(F16ToF32Impl)(h, n, x); }

}  // namespace gp::cpu
#endif  // HWY_ONCE
