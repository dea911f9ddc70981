// linear: y = x · Wᵀ (+ bias) for MLX 4-bit and float weights.
// One activation row (decode) streams the weight once, split by output rows over the threads.
// Many rows (prefill, vision) dequantize blocks of weight rows into per-thread f32 panels and
// reuse them over many activation rows with a register-blocked FMA micro-kernel.
#include <algorithm>
#include <cstring>

#include "base/thread_pool.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/scratch.h"
#include "kernels/ref/ref.h"
#include "tensor/dtype.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/linear.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// The per-target headers below must follow foreach_target.h.
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "kernels/cpu/gemm-inl.h"

HWY_BEFORE_NAMESPACE();
namespace gp::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

constexpr int64_t kGroup = 64;  // MLX group size; every word holds 8 nibbles

// ---------------------------------------------------------------- one activation row

// Vectors of at most 8 lanes: one load covers (a part of) the 8 words of one group.
using DL = hn::CappedTag<float, 8>;

// Word-parallel unpacking: lane j of (words >> 4s) & 15 is element 8j+s of the group. x is
// permuted once per call to match that order, and pre-multiplied by 16^-s so that masking
// without shifting (nibble * 16^s, exact in f32) gives the same products; the top nibble is
// shifted down instead, since it would be negative as int32.
// xp[g*64 + v*8 + s*L + j] = x[g*64 + 8*(v+j) + s] * 16^-s (s < 7), for v = 0, L, .. < 8.
void PermuteX(const float* x, int64_t in, float* HWY_RESTRICT xp, float* HWY_RESTRICT xsum) {
  const size_t L = hn::Lanes(DL());
  static constexpr float kInvPow16[8] = {1.0f,         1.0f / 16,      1.0f / 256,      1.0f / 4096,
                                         1.0f / 65536, 1.0f / 1048576, 1.0f / 16777216, 1.0f};
  for (int64_t g = 0; g < in / kGroup; ++g) {
    const float* xg = x + g * kGroup;
    float* pg = xp + g * kGroup;
    float sum = 0;
    for (size_t v = 0; v < 8; v += L) {
      for (size_t s = 0; s < 8; ++s) {
        for (size_t j = 0; j < L; ++j) pg[v * 8 + s * L + j] = xg[8 * (v + j) + s] * kInvPow16[s];
      }
    }
    for (int64_t i = 0; i < kGroup; ++i) sum += xg[i];
    xsum[g] = sum;
  }
}

// Per-lane partial sums of q_k * x_k over one group: 8 words against its 64 permuted x.
HWY_INLINE hn::Vec<DL> GroupDot(const uint32_t* words, const float* HWY_RESTRICT xg) {
  const DL d;
  const hn::RebindToUnsigned<DL> du;
  const hn::RebindToSigned<DL> di;
  const size_t L = hn::Lanes(d);
  auto s0 = hn::Zero(d), s1 = hn::Zero(d);
  for (size_t v = 0; v < 8; v += L) {
    const auto wu = hn::LoadU(du, words + v);
    const auto wi = hn::BitCast(di, wu);
    const float* xv = xg + v * 8;
    s0 = hn::MulAdd(hn::ConvertTo(d, hn::And(wi, hn::Set(di, 0xF))), hn::Load(d, xv), s0);
    s1 = hn::MulAdd(hn::ConvertTo(d, hn::And(wi, hn::Set(di, 0xF0))), hn::Load(d, xv + L), s1);
    s0 = hn::MulAdd(hn::ConvertTo(d, hn::And(wi, hn::Set(di, 0xF00))), hn::Load(d, xv + 2 * L), s0);
    s1 =
        hn::MulAdd(hn::ConvertTo(d, hn::And(wi, hn::Set(di, 0xF000))), hn::Load(d, xv + 3 * L), s1);
    s0 = hn::MulAdd(hn::ConvertTo(d, hn::And(wi, hn::Set(di, 0xF0000))), hn::Load(d, xv + 4 * L),
                    s0);
    s1 = hn::MulAdd(hn::ConvertTo(d, hn::And(wi, hn::Set(di, 0xF00000))), hn::Load(d, xv + 5 * L),
                    s1);
    s0 = hn::MulAdd(hn::ConvertTo(d, hn::And(wi, hn::Set(di, 0xF000000))), hn::Load(d, xv + 6 * L),
                    s0);
    s1 = hn::MulAdd(hn::ConvertTo(d, hn::BitCast(di, hn::ShiftRight<28>(wu))),
                    hn::Load(d, xv + 7 * L), s1);
  }
  return hn::Add(s0, s1);
}

HWY_INLINE float SumLanes(hn::Vec<DL> v) { return hn::GetLane(hn::SumOfLanes(DL(), v)); }

// How far ahead of the rows being read the decode kernels prefetch, in blocks of 4 rows: each
// block is four short streams (one per row) that hardware prefetchers pick up too late.
constexpr int64_t kPrefetchBlocks = 2;

// Rows [r0, r1) of a quantized weight against one permuted row: y = sum_g s_g * (q_g · x_g)
// + b_g * sum(x_g), four rows at a time so that the activation loads are shared.
void GemvQuantRows(const Weight& w, const float* xp, const float* xsum, int64_t r0, int64_t r1,
                   float* y, const float* bias) {
  const DL d;
  const int64_t gpr = w.groups_per_row(), wpr = w.in / 8;
  const size_t ss = dtype_size(w.scale_dtype);
  float* sc = thread_scratch(kScratchA, 4 * gpr);
  float* bi = thread_scratch(kScratchB, 4 * gpr);
  int64_t o = r0;
  for (; o + 4 <= r1; o += 4) {
    // Scales and biases of 4 consecutive rows are contiguous: convert them once.
    ToF32(w.scale_dtype, static_cast<const uint8_t*>(w.scales) + o * gpr * ss, 4 * gpr, sc);
    ToF32(w.scale_dtype, static_cast<const uint8_t*>(w.biases) + o * gpr * ss, 4 * gpr, bi);
    const uint32_t* q0 = w.q + o * wpr;
    const uint32_t* q1 = q0 + wpr;
    const uint32_t* q2 = q1 + wpr;
    const uint32_t* q3 = q2 + wpr;
    auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
    // Spread over the groups: 128 bytes (4 rows x 32) per group. Prefetches never fault.
    const auto* ahead = reinterpret_cast<const uint8_t*>(q0 + kPrefetchBlocks * 4 * wpr);
    for (int64_t g = 0; g < gpr; ++g) {
      hwy::Prefetch(ahead + g * 128);
      hwy::Prefetch(ahead + g * 128 + 64);
      const float* xg = xp + g * kGroup;
      a0 = hn::MulAdd(GroupDot(q0 + g * 8, xg), hn::Set(d, sc[g]), a0);
      a1 = hn::MulAdd(GroupDot(q1 + g * 8, xg), hn::Set(d, sc[gpr + g]), a1);
      a2 = hn::MulAdd(GroupDot(q2 + g * 8, xg), hn::Set(d, sc[2 * gpr + g]), a2);
      a3 = hn::MulAdd(GroupDot(q3 + g * 8, xg), hn::Set(d, sc[3 * gpr + g]), a3);
    }
    y[o] = SumLanes(a0) + Dot(bi, xsum, gpr) + (bias ? bias[o] : 0.0f);
    y[o + 1] = SumLanes(a1) + Dot(bi + gpr, xsum, gpr) + (bias ? bias[o + 1] : 0.0f);
    y[o + 2] = SumLanes(a2) + Dot(bi + 2 * gpr, xsum, gpr) + (bias ? bias[o + 2] : 0.0f);
    y[o + 3] = SumLanes(a3) + Dot(bi + 3 * gpr, xsum, gpr) + (bias ? bias[o + 3] : 0.0f);
  }
  for (; o < r1; ++o) {
    ToF32(w.scale_dtype, static_cast<const uint8_t*>(w.scales) + o * gpr * ss, gpr, sc);
    ToF32(w.scale_dtype, static_cast<const uint8_t*>(w.biases) + o * gpr * ss, gpr, bi);
    const uint32_t* q0 = w.q + o * wpr;
    auto a0 = hn::Zero(d);
    for (int64_t g = 0; g < gpr; ++g) {
      a0 = hn::MulAdd(GroupDot(q0 + g * 8, xp + g * kGroup), hn::Set(d, sc[g]), a0);
    }
    y[o] = SumLanes(a0) + Dot(bi, xsum, gpr) + (bias ? bias[o] : 0.0f);
  }
}

// Loads N weights of a float row stored as T, as f32.
template <DType T, class D>
HWY_INLINE hn::Vec<D> LoadWeights(D d, const void* row, int64_t i) {
  if constexpr (T == DType::F32) {
    return hn::LoadU(d, static_cast<const float*>(row) + i);
  } else if constexpr (T == DType::BF16) {
    const hn::RebindToUnsigned<D> du32;
    const hn::Rebind<uint16_t, D> du16;
    const auto* p = static_cast<const uint16_t*>(row) + i;
    return hn::BitCast(d, hn::ShiftLeft<16>(hn::PromoteTo(du32, hn::LoadU(du16, p))));
  } else {
    const hn::Rebind<hwy::float16_t, D> dh;
    return hn::PromoteTo(d, hn::LoadU(dh, static_cast<const hwy::float16_t*>(row) + i));
  }
}

// Rows [r0, r1) of a float weight against one activation row, four rows at a time.
template <DType T>
void GemvFloatRows(const Weight& w, const float* x, int64_t r0, int64_t r1, float* y,
                   const float* bias) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d)), in = w.in;
  const size_t row_bytes = in * dtype_size(T);
  const auto* base = static_cast<const uint8_t*>(w.data);
  int64_t o = r0;
  for (; o + 4 <= r1; o += 4) {
    const void* w0 = base + o * row_bytes;
    const void* w1 = base + (o + 1) * row_bytes;
    const void* w2 = base + (o + 2) * row_bytes;
    const void* w3 = base + (o + 3) * row_bytes;
    auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
    int64_t i = 0;
    // Prefetch the rows kPrefetchBlocks blocks ahead (see GemvQuantRows).
    const size_t ahead = kPrefetchBlocks * 4 * row_bytes;
    for (; i + N <= in; i += N) {
      const size_t at = ahead + i * dtype_size(T);
      hwy::Prefetch(static_cast<const uint8_t*>(w0) + at);
      hwy::Prefetch(static_cast<const uint8_t*>(w1) + at);
      hwy::Prefetch(static_cast<const uint8_t*>(w2) + at);
      hwy::Prefetch(static_cast<const uint8_t*>(w3) + at);
      const auto xv = hn::LoadU(d, x + i);
      a0 = hn::MulAdd(LoadWeights<T>(d, w0, i), xv, a0);
      a1 = hn::MulAdd(LoadWeights<T>(d, w1, i), xv, a1);
      a2 = hn::MulAdd(LoadWeights<T>(d, w2, i), xv, a2);
      a3 = hn::MulAdd(LoadWeights<T>(d, w3, i), xv, a3);
    }
    float s[4] = {hn::GetLane(hn::SumOfLanes(d, a0)), hn::GetLane(hn::SumOfLanes(d, a1)),
                  hn::GetLane(hn::SumOfLanes(d, a2)), hn::GetLane(hn::SumOfLanes(d, a3))};
    for (; i < in; ++i) {
      s[0] += load_float(T, w0, i) * x[i];
      s[1] += load_float(T, w1, i) * x[i];
      s[2] += load_float(T, w2, i) * x[i];
      s[3] += load_float(T, w3, i) * x[i];
    }
    for (int r = 0; r < 4; ++r) y[o + r] = s[r] + (bias ? bias[o + r] : 0.0f);
  }
  for (; o < r1; ++o) {
    const void* w0 = base + o * row_bytes;
    auto a0 = hn::Zero(d);
    int64_t i = 0;
    for (; i + N <= in; i += N) a0 = hn::MulAdd(LoadWeights<T>(d, w0, i), hn::LoadU(d, x + i), a0);
    float s = hn::GetLane(hn::SumOfLanes(d, a0));
    for (; i < in; ++i) s += load_float(T, w0, i) * x[i];
    y[o] = s + (bias ? bias[o] : 0.0f);
  }
}

void Gemv(const Weight& w, const float* x, float* y, const float* bias) {
  const float* xp = nullptr;
  const float* xsum = nullptr;
  if (w.quantized) {
    float* p = thread_scratch(kScratchD, w.in);
    float* s = thread_scratch(kScratchE, w.groups_per_row());
    PermuteX(x, w.in, p, s);
    xp = p;
    xsum = s;
  }
  auto rows = [&](size_t r0, size_t r1, int) {
    if (w.quantized) return GemvQuantRows(w, xp, xsum, r0, r1, y, bias);
    switch (w.dtype) {
      case DType::BF16:
        return GemvFloatRows<DType::BF16>(w, x, r0, r1, y, bias);
      case DType::F16:
        return GemvFloatRows<DType::F16>(w, x, r0, r1, y, bias);
      default:
        return GemvFloatRows<DType::F32>(w, x, r0, r1, y, bias);
    }
  };
  const int64_t rb = gemv_row_block(w.out);
  parallel_blocks((w.out + rb - 1) / rb, w.bytes(),
                  [&](int64_t b, int t) { rows(b * rb, std::min(w.out, (b + 1) * rb), t); });
}

// ---------------------------------------------------------------- many activation rows

constexpr int64_t kKC = 256;  // inputs per panel: a multiple of the group size

// panel[k][j] = W[min(o + j, out - 1)][k0 + k] for j < NR, k < kc: NR weight rows dequantized
// and transposed so that the micro-kernel loads two vectors of outputs per input. The words
// at one input position of N rows are gathered, then each nibble position becomes one vector.
void PackQuantPanel(const Weight& w, int64_t o, int64_t k0, int64_t kc, float* HWY_RESTRICT panel) {
  const hn::ScalableTag<float> df;
  const hn::RebindToSigned<decltype(df)> di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df)), NR = 2 * N;
  const int64_t gpr = w.groups_per_row(), wpr = w.in / 8;
  HWY_ALIGN int32_t idx[HWY_MAX_BYTES / 4];
  HWY_ALIGN float sc[HWY_MAX_BYTES / 4], bi[HWY_MAX_BYTES / 4];
  const auto* words = reinterpret_cast<const int32_t*>(w.q);
  for (int64_t h = 0; h < 2; ++h) {
    int64_t rows[HWY_MAX_BYTES / 4];
    for (int64_t j = 0; j < N; ++j) {
      rows[j] = std::min(o + h * N + j, w.out - 1);
      idx[j] = static_cast<int32_t>(rows[j] * wpr);
    }
    const auto vidx = hn::Load(di, idx);
    for (int64_t g = k0 / kGroup; g < (k0 + kc) / kGroup; ++g) {
      for (int64_t j = 0; j < N; ++j) {
        sc[j] = load_float(w.scale_dtype, w.scales, rows[j] * gpr + g);
        bi[j] = load_float(w.scale_dtype, w.biases, rows[j] * gpr + g);
      }
      const auto vs = hn::Load(df, sc), vb = hn::Load(df, bi);
      for (int64_t wi = g * 8; wi < g * 8 + 8; ++wi) {
        const auto wv = hn::GatherIndex(di, words + wi, vidx);
        float* dst = panel + (wi * 8 - k0) * NR + h * N;
        for (int s = 0; s < 8; ++s) {
          const auto q = hn::And(hn::ShiftRightSame(wv, 4 * s), hn::Set(di, 0xF));
          hn::Store(hn::MulAdd(hn::ConvertTo(df, q), vs, vb), df, dst + s * NR);
        }
      }
    }
  }
}

// As PackQuantPanel for a float weight: rows are converted, then scattered into columns.
void PackFloatPanel(const Weight& w, int64_t o, int64_t k0, int64_t kc, float* HWY_RESTRICT panel,
                    float* HWY_RESTRICT row) {
  const int64_t NR = static_cast<int64_t>(PanelWidth());
  const size_t ds = dtype_size(w.dtype);
  for (int64_t j = 0; j < NR; ++j) {
    const int64_t r = std::min(o + j, w.out - 1);
    ToF32(w.dtype, static_cast<const uint8_t*>(w.data) + (r * w.in + k0) * ds, kc, row);
    for (int64_t k = 0; k < kc; ++k) panel[k * NR + j] = row[k];
  }
}

void Gemm(const Weight& w, const float* x, int64_t n, float* y, const float* bias) {
  const int64_t NR = static_cast<int64_t>(PanelWidth());
  const int64_t NB = 4 * NR;  // output rows per task: panels kept in L2 across token tiles
  const int64_t n_ob = (w.out + NB - 1) / NB;
  ThreadPool& pool = ThreadPool::global();
  // Token blocks of equal size: at most 40 tiles of kMR rows (each dequantized panel is reused
  // that often), at least 4 tiles, and enough blocks for about 8 tasks per thread.
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  int64_t n_blocks = ceil_div(n, 40 * kMR);
  const int64_t want = 8 * pool.size();
  if (n_ob * n_blocks < want) {
    n_blocks = std::max(n_blocks, std::min(ceil_div(want, n_ob), ceil_div(n, 4 * kMR)));
  }
  const int64_t tb = ceil_div(ceil_div(n, n_blocks), kMR) * kMR;
  const int64_t n_tb = ceil_div(n, tb);
  parallel_blocks(n_ob * n_tb, [&](int64_t task, int) {
    float* panels = thread_scratch(kScratchA, kKC * NB);
    float* tile = thread_scratch(kScratchB, kMR * NR);
    float* init = thread_scratch(kScratchC, NB);
    float* row = thread_scratch(kScratchD, kKC);
    const int64_t o0 = task / n_tb * NB;
    const int64_t o1 = std::min(w.out, o0 + NB);
    const int64_t t0 = task % n_tb * tb, t1 = std::min(n, t0 + tb);
    const int64_t np = (o1 - o0 + NR - 1) / NR;
    for (int64_t j = 0; j < np * NR; ++j) init[j] = bias && o0 + j < o1 ? bias[o0 + j] : 0.0f;
    for (int64_t k0 = 0; k0 < w.in; k0 += kKC) {
      const int64_t kc = std::min(kKC, w.in - k0);
      for (int64_t p = 0; p < np; ++p) {
        if (w.quantized) {
          PackQuantPanel(w, o0 + p * NR, k0, kc, panels + p * kKC * NR);
        } else {
          PackFloatPanel(w, o0 + p * NR, k0, kc, panels + p * kKC * NR, row);
        }
      }
      for (int64_t t = t0; t < t1; t += kMR) {
        const int64_t mr = std::min<int64_t>(kMR, t1 - t);
        const float* a[kMR];
        float* c[kMR];
        for (int64_t r = 0; r < mr; ++r) a[r] = x + (t + r) * w.in + k0;
        for (int64_t p = 0; p < np; ++p) {
          const int64_t oc = o0 + p * NR, nc = std::min(NR, o1 - oc);
          for (int64_t r = 0; r < mr; ++r) c[r] = y + (t + r) * w.out + oc;
          const float* start = k0 == 0 ? init + p * NR : nullptr;
          if (nc == NR) {
            MicroKernelRows(mr, a, kc, panels + p * kKC * NR, c, start);
          } else {
            MicroKernelPartial(mr, nc, a, kc, panels + p * kKC * NR, c, start, tile);
          }
        }
      }
    }
  });
}

void LinearImpl(const Weight& w, const float* x, int64_t n, float* y, const float* bias) {
  if (n <= 0 || w.out <= 0) return;
  if (n == 1) return Gemv(w, x, y, bias);
  Gemm(w, x, n, y, bias);
}

const char* TargetNameImpl() { return hwy::TargetName(HWY_TARGET); }

}  // namespace gp::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace gp::cpu {

HWY_EXPORT(LinearImpl);
HWY_EXPORT(TargetNameImpl);

void linear(const Weight& w, const float* x, int64_t n, float* y, const float* bias) {
  // The kernels are written for MLX's 4-bit, group-64 layout; anything else takes the reference.
  if (w.quantized && (w.fmt.bits != 4 || w.fmt.group_size != 64)) {
    return ref::linear(w, x, n, y, bias);
  }
  HWY_DYNAMIC_DISPATCH(LinearImpl)(w, x, n, y, bias);
}

const char* target_name() { return HWY_DYNAMIC_DISPATCH(TargetNameImpl)(); }

bool select_simd_target(const std::string& name) {
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    if (name == hwy::TargetName(target)) {
      hwy::SetSupportedTargetsForTest(target);
      return true;
    }
  }
  return false;
}

std::string simd_targets_available() {
  std::string out;
  for (int64_t target : hwy::SupportedAndGeneratedTargets())
    out += (out.empty() ? "" : ", ") + std::string(hwy::TargetName(target));
  return out;
}

}  // namespace gp::cpu
#endif  // HWY_ONCE
