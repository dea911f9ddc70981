// linear_q8: the linear with each activation row quantized to int8 per group of 64, so that the
// inner products are exact integer multiply-adds of nibbles and int8 values:
//   y = sum_g scale_g * dx_g * (q_g · xq_g) + bias_g * sum(x_g),   x ≈ dx_g * xq_g.
// One row (decode) streams the weight once with u8 x i8 pair multiply-adds of the nibbles
// (vpdpbusd on AVX-512 VNNI and AVX-VNNI, pmaddubsw on other x86, sdot or smull on 64-bit ARM
// (q8_arm.cpp); 16-bit products elsewhere), several weights of the same input in one pass over
// the pool; many rows (prefill) unpack blocks of weight rows into u8 panels for the same
// multiply-adds, about twice the f32 GEMM's rate. Less precise than linear by the int8 rounding
// of x. On AVX3_DL a load may repack a weight's nibbles into the vertical kernels' layout
// (q8_repack, Weight::vq): every int8 path of that target then reads the copy instead.
#include "kernels/cpu/linear_q8.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "base/thread_pool.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/q8_arm.h"
#include "kernels/cpu/scratch.h"
#include "tensor/dtype.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

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

// Vectors of at most 256 bits: the x86 byte multiply-adds below come in 128 and 256 bits.
using DB32 = hn::CappedTag<int32_t, 8>;
using DBU8 = hn::Repartition<uint8_t, DB32>;
using DBI8 = hn::Repartition<int8_t, DB32>;
using DBI16 = hn::Repartition<int16_t, DB32>;
using DBF = hn::Repartition<float, DB32>;

#undef GP_Q8_X86
#if HWY_ARCH_X86 && (HWY_TARGET <= HWY_SSSE3)
#define GP_Q8_X86 1
// u8 x i8 products summed over adjacent byte pairs, to int16 (pmaddubsw). Nibbles <= 15 and
// |x| <= 127 keep every pair sum <= 3810, far from saturation.
HWY_INLINE hn::Vec<DBI16> PairDotU8I8(hn::Vec<DBU8> w, hn::Vec<DBI8> x) {
#if HWY_TARGET <= HWY_AVX2
  return hn::Vec<DBI16>{_mm256_maddubs_epi16(w.raw, x.raw)};
#else
  return hn::Vec<DBI16>{_mm_maddubs_epi16(w.raw, x.raw)};
#endif
}
// Adjacent int16 pairs summed to int32 (pmaddwd by ones).
// The empty asm keeps the result opaque: in a function that carries the avxvnni target (the
// AVX2 kernels' kVnni = false instances do, see GP_AVXVNNI_ATTR), clang would otherwise fuse
// pmaddwd and the add after it into an AVX-VNNI vpdpwssd, which CPUs without it cannot run.
HWY_INLINE hn::Vec<DB32> PairSumI16(hn::Vec<DBI16> v) {
#if HWY_TARGET <= HWY_AVX2
  __m256i r = _mm256_madd_epi16(v.raw, _mm256_set1_epi16(1));
#else
  __m128i r = _mm_madd_epi16(v.raw, _mm_set1_epi16(1));
#endif
  __asm__("" : "+x"(r));
  return hn::Vec<DB32>{r};
}
#else
#define GP_Q8_X86 0
#endif

#undef GP_Q8_AVXVNNI
#undef GP_AVXVNNI_ATTR
#if GP_Q8_X86 && HWY_TARGET == HWY_AVX2
// AVX-VNNI (Intel client parts from Alder Lake on, AMD Zen 5): the VEX form of vpdpbusd sums 4 u8
// x i8 products into each int32 lane in one instruction where pmaddubsw + pmaddwd + add take
// three. Neither saturates here, so both give the same int32 sums and the same outputs bit for
// bit. The CPU must report it (avx_vnni_in_use()), so the kernels using it are templates over
// kVnni, called by that flag; both instances carry the target, since clang inlines no avxvnni
// helper into a function without it (the kVnni = false ones use none).
#define GP_Q8_AVXVNNI 1
#define GP_AVXVNNI_ATTR __attribute__((target(HWY_TARGET_STR ",avxvnni")))
// acc + the sums of the 4 products of u8 w and i8 x in each int32 lane.
GP_AVXVNNI_ATTR HWY_INLINE hn::Vec<DB32> DotAccVnni(hn::Vec<DB32> acc, hn::Vec<DBU8> w,
                                                    hn::Vec<DBI8> x) {
  return hn::Vec<DB32>{_mm256_dpbusd_avx_epi32(acc.raw, w.raw, x.raw)};
}
#else
#define GP_Q8_AVXVNNI 0
#define GP_AVXVNNI_ATTR
#endif

#undef GP_Q8_VNNI512
#undef GP_Q8_VNNI512_CPU
#undef GP_VNNI_ATTR
// 512-bit u8 x i8 dot products of 4 bytes into int32 (vpdpbusd): one instruction where AVX2
// needs pmaddubsw + pmaddwd + add, over twice the bytes. Highway's AVX3_DL target names only
// the VEX form (avxvnni), so the functions using it add avx512vnni; Highway picks AVX3_DL only on
// CPUs that have AVX512-VNNI (GP_Q8_VNNI512: always taken). Its AVX3 target also runs on CPUs
// with AVX512-VNNI but no VBMI (Intel Cascade Lake, Cooper Lake), so there the same one-row and
// panel kernels are taken where the CPU reports it (GP_Q8_VNNI512_CPU, avx512_vnni_in_use()),
// and the 256-bit pmaddubsw ones elsewhere; only the functions that use it carry avx512vnni.
#if HWY_TARGET == HWY_AVX3_DL
#define GP_Q8_VNNI512 1
#define GP_Q8_VNNI512_CPU 0
#define GP_VNNI_ATTR __attribute__((target(HWY_TARGET_STR ",avx512vnni")))
#elif GP_Q8_X86 && HWY_TARGET == HWY_AVX3
#define GP_Q8_VNNI512 0
#define GP_Q8_VNNI512_CPU 1
#define GP_VNNI_ATTR __attribute__((target(HWY_TARGET_STR ",avx512vnni")))
#else
#define GP_Q8_VNNI512 0
#define GP_Q8_VNNI512_CPU 0
#endif

// 64-bit ARM: the NEON kernels of q8_arm.cpp (sdot or widening multiply-adds, chosen by what
// the CPU reports), for the NEON and the SVE targets alike.
#undef GP_Q8_ARM
#if HWY_ARCH_ARM_A64 && HWY_TARGET != HWY_SCALAR
#define GP_Q8_ARM 1
#else
#define GP_Q8_ARM 0
#endif

// ---------------------------------------------------------------- one activation row

// Whether this call takes the AVX-VNNI variant: on the AVX2 target, where the CPU has it.
HWY_INLINE bool UseAvxVnni() {
#if GP_Q8_AVXVNNI
  return avx_vnni_in_use();
#else
  return false;
#endif
}

// Whether this call takes the 512-bit vpdpbusd one-row and panel kernels: always on AVX3_DL, on
// AVX3 where the CPU has AVX512-VNNI.
HWY_INLINE bool UseVnni512() {
#if GP_Q8_VNNI512
  return true;
#elif GP_Q8_VNNI512_CPU
  return avx512_vnni_in_use();
#else
  return false;
#endif
}

// Per-group scale of x: x ≈ dx * xq with xq = round(x / dx) in [-127, 127], dx = max|x| / 127,
// inv = 127 / max|x| (0 for a group of zeros), and the group's sum, added in element order.
// `count` consecutive groups at xb (dx, inv and sum [count]), one group per lane, so that each
// group's 64 dependent adds run in its own lane; a last short vector's spare lanes read group 0
// and are dropped.
HWY_INLINE void GroupScales(const float* HWY_RESTRICT xb, int64_t count, float* HWY_RESTRICT dx,
                            float* HWY_RESTRICT inv, float* HWY_RESTRICT sum) {
  const hn::CappedTag<float, 16> df;
  const hn::RebindToSigned<decltype(df)> di;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  const auto lanes = hn::Mul(hn::Iota(di, 0), hn::Set(di, static_cast<int32_t>(kGroup)));
  const auto k127 = hn::Set(df, 127.0f);
  for (int64_t k = 0; k < count; k += L) {
    const size_t m = static_cast<size_t>(std::min(L, count - k));
    const auto idx = hn::IfThenElseZero(hn::FirstN(di, m), lanes);
    const float* p = xb + k * kGroup;
    auto amax = hn::Zero(df), s = hn::Zero(df);
    for (int64_t i = 0; i < kGroup; ++i) {
      const auto v = hn::GatherIndex(df, p + i, idx);
      amax = hn::Max(amax, hn::Abs(v));
      s = hn::Add(s, v);
    }
    // Through a buffer: a partial store (BlendedStore) may touch the lanes past m on some targets.
    float t[3][16];
    hn::StoreU(s, df, t[0]);
    hn::StoreU(hn::Div(amax, k127), df, t[1]);
    hn::StoreU(hn::IfThenElseZero(hn::Gt(amax, hn::Zero(df)), hn::Div(k127, amax)), df, t[2]);
    std::copy_n(t[0], m, sum + k);
    std::copy_n(t[1], m, dx + k);
    std::copy_n(t[2], m, inv + k);
  }
}
// Each group g of a row x [gpr * 64]: dx[g] and xsum[g] (GroupScales, 16 groups at a time), then
// quantize(g, xg, inv_g) writes its xq.
template <class Fn>
HWY_INLINE void ScaleGroups(const float* x, int64_t gpr, float* HWY_RESTRICT dx,
                            float* HWY_RESTRICT xsum, const Fn& quantize) {
  float inv[16];
  for (int64_t g0 = 0; g0 < gpr; g0 += 16) {
    const int64_t count = std::min<int64_t>(16, gpr - g0);
    GroupScales(x + g0 * kGroup, count, dx + g0, inv, xsum + g0);
    for (int64_t g = g0; g < g0 + count; ++g) quantize(g, x + g * kGroup, inv[g - g0]);
  }
}
HWY_INLINE float RoundQ(float v) {
  constexpr float kRound = 12582912.0f;
  return (v + kRound) - kRound;
}

#if GP_Q8_X86 || GP_Q8_ARM
// Byte i of a group's 32 nibble bytes holds elements 2i (low nibble) and 2i+1 (high). Each
// group of xq is stored as its 32 even elements, then its 32 odd ones, as int8, so that the low
// and the high nibbles each meet their activations in one u8 x i8 multiply-add.
using XQ = int8_t;
using DQ32 = DB32;  // int32 partial sums of GroupDotQ
// Where group g's 32 even and 32 odd elements are in a row of xq. With pairs (the layout of the
// 512-bit vpdpbusd kernels), two groups' 64 nibble bytes are one 512-bit load: their even
// elements, then their odd ones, so that each nibble half meets its activations in one
// vpdpbusd; a last unpaired group, and every group without pairs, has its even then its odd.
struct XQHalves {
  int64_t even, odd;
};
HWY_INLINE XQHalves XQGroupHalves(int64_t g, int64_t gpr, bool pairs) {
  if (pairs && (g | 1) < gpr) {
    const int64_t even = (g & ~int64_t{1}) * kGroup + (g & 1) * (kGroup / 2);
    return {even, even + kGroup};
  }
  return {g * kGroup, g * kGroup + kGroup / 2};
}
constexpr bool kPairLayout = GP_Q8_VNNI512 || GP_Q8_VNNI512_CPU;  // pairs can be asked for
// pairs: the layout of the 512-bit vpdpbusd kernels (UseVnni512()).
void QuantizeX(const float* x, int64_t in, XQ* HWY_RESTRICT xq, float* HWY_RESTRICT dx,
               float* HWY_RESTRICT xsum, [[maybe_unused]] bool pairs = GP_Q8_VNNI512) {
  const int64_t gpr = in / kGroup;
  ScaleGroups(x, gpr, dx, xsum, [&](int64_t g, const float* xg, float inv) {
    const XQHalves h = XQGroupHalves(g, gpr, kPairLayout && pairs);
    XQ* even = xq + h.even;
    XQ* odd = xq + h.odd;
    for (int64_t i = 0; i < kGroup / 2; ++i) {
      even[i] = static_cast<XQ>(RoundQ(xg[2 * i] * inv));
      odd[i] = static_cast<XQ>(RoundQ(xg[2 * i + 1] * inv));
    }
  });
}

#if GP_Q8_X86
// QuantizeX for the one-row kernel, in vectors: the same xq and dx, the group sums added in
// lanes (the one-row path has its own bits; the few-row kernel keeps QuantizeX, whose rows must
// match the panel kernel's). A decode step quantizes 4 rows per layer on one thread while the
// others wait.
void QuantizeXOne(const float* x, int64_t in, XQ* HWY_RESTRICT xq, float* HWY_RESTRICT dx,
                  float* HWY_RESTRICT xsum, [[maybe_unused]] bool pairs) {
  const hn::CappedTag<float, 16> df;
  const hn::RebindToSigned<decltype(df)> di32;
  const hn::Rebind<int8_t, decltype(di32)> di8;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  const int64_t gpr = in / kGroup;
  const auto round = hn::Set(df, 12582912.0f);  // as RoundQ
  for (int64_t g = 0; g < gpr; ++g) {
    const float* xg = x + g * kGroup;
    auto amax = hn::Zero(df), sum = hn::Zero(df);
    for (int64_t i = 0; i < kGroup; i += L) {
      const auto v = hn::LoadU(df, xg + i);
      amax = hn::Max(amax, hn::Abs(v));
      sum = hn::Add(sum, v);
    }
    const float a = hn::GetLane(hn::MaxOfLanes(df, amax));
    xsum[g] = hn::GetLane(hn::SumOfLanes(df, sum));
    dx[g] = a / 127.0f;
    const auto inv = hn::Set(df, a > 0 ? 127.0f / a : 0.0f);
    const XQHalves h = XQGroupHalves(g, gpr, kPairLayout && pairs);
    XQ* even = xq + h.even;
    XQ* odd = xq + h.odd;
    for (int64_t i = 0; i < kGroup; i += 2 * L) {
      const auto v0 = hn::LoadU(df, xg + i), v1 = hn::LoadU(df, xg + i + L);
      const auto e = hn::Sub(hn::Add(hn::Mul(hn::ConcatEven(df, v1, v0), inv), round), round);
      const auto o = hn::Sub(hn::Add(hn::Mul(hn::ConcatOdd(df, v1, v0), inv), round), round);
      hn::StoreU(hn::DemoteTo(di8, hn::ConvertTo(di32, e)), di8, even + i / 2);
      hn::StoreU(hn::DemoteTo(di8, hn::ConvertTo(di32, o)), di8, odd + i / 2);
    }
  }
}

// Per-lane int32 partial sums of q_k * xq_k over one group (8 words against its 64 xq).
template <bool kVnni>
GP_AVXVNNI_ATTR HWY_INLINE hn::Vec<DB32> GroupDotQ(const uint32_t* words,
                                                   const XQ* HWY_RESTRICT xg) {
  const DBU8 du8;
  const DBI8 di8;
  const hn::Repartition<uint16_t, DB32> du16;
  const DB32 d32;
  constexpr size_t kBytes = kGroup / 2;
  const size_t L = hn::Lanes(du8);
  const auto* wb = reinterpret_cast<const uint8_t*>(words);
  const auto mask = hn::Set(du8, 0x0F);
  auto acc = hn::Zero(d32);
  for (size_t c = 0; c < kBytes; c += L) {
    const auto w = hn::LoadU(du8, wb + c);
    const auto lo = hn::And(w, mask);
    const auto hi = hn::And(hn::BitCast(du8, hn::ShiftRight<4>(hn::BitCast(du16, w))), mask);
#if GP_Q8_AVXVNNI
    if constexpr (kVnni) {
      acc = DotAccVnni(DotAccVnni(acc, lo, hn::Load(di8, xg + c)), hi,
                       hn::Load(di8, xg + kBytes + c));
      continue;
    }
#endif
    // Each int16 lane: two pair sums <= 2 * 3810, no saturation.
    const auto s = hn::Add(PairDotU8I8(lo, hn::Load(di8, xg + c)),
                           PairDotU8I8(hi, hn::Load(di8, xg + kBytes + c)));
    acc = hn::Add(acc, PairSumI16(s));
  }
  return acc;
}
#endif  // GP_Q8_X86
#else
// Other targets: 16-bit products. Lane j of u16 word v holds elements 4(v+j) .. 4(v+j)+3 of the
// group (low nibble first), so (u16 >> 4s) & 15 is element 4(v+j)+s. xq is stored in that
// order, as int16: xq[g*64 + v*4 + s*L + j] = round(x[g*64 + 4*(v+j) + s] / dx_g).
using D16 = hn::CappedTag<int16_t, 16>;
using DQ32 = hn::Repartition<int32_t, D16>;
using XQ = int16_t;
void QuantizeX(const float* x, int64_t in, XQ* HWY_RESTRICT xq, float* HWY_RESTRICT dx,
               float* HWY_RESTRICT xsum, bool /*pairs*/ = false) {
  const size_t L = hn::Lanes(D16());
  ScaleGroups(x, in / kGroup, dx, xsum, [&](int64_t g, const float* xg, float inv) {
    XQ* qg = xq + g * kGroup;
    for (size_t v = 0; v < 16; v += L) {
      for (size_t s = 0; s < 4; ++s) {
        for (size_t j = 0; j < L; ++j) {
          qg[v * 4 + s * L + j] = static_cast<XQ>(RoundQ(xg[4 * (v + j) + s] * inv));
        }
      }
    }
  });
}

template <bool kVnni>  // no AVX-VNNI on these targets
HWY_INLINE hn::Vec<DQ32> GroupDotQ(const uint32_t* group_words, const XQ* HWY_RESTRICT xq) {
  const D16 d16;
  const hn::RebindToUnsigned<D16> du16;
  const DQ32 d32;
  const size_t L = hn::Lanes(d16);
  const auto* words = reinterpret_cast<const uint16_t*>(group_words);
  const auto mask = hn::Set(du16, 0xF);
  auto sum0 = hn::Zero(d32), sum1 = hn::Zero(d32);
  for (size_t v = 0; v < 16; v += L) {
    const auto w = hn::LoadU(du16, words + v);
    const XQ* xv = xq + v * 4;
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
#endif

// How far ahead of the bytes being read the decode kernel prefetches: one row (1-5 KB) is one
// stream, and 2 KB beat the other distances tried (docs/BENCHMARKS.md, Design measurements).
// Prefetches never fault.
constexpr int64_t kPrefetchAhead = 2048;

#if !GP_Q8_ARM && !GP_Q8_VNNI512
// acc + sd_g * (q_g · xq_g) for group g of a weight row. (A function, not a lambda of its
// caller: clang inlines no avxvnni helper into a lambda.)
template <bool kVnni, class DF>
GP_AVXVNNI_ATTR HWY_INLINE hn::Vec<DF> GroupStep(DF df, const uint32_t* row, int64_t g,
                                                 const XQ* HWY_RESTRICT xq,
                                                 const float* HWY_RESTRICT sd, hn::Vec<DF> acc) {
  return hn::MulAdd(hn::ConvertTo(df, GroupDotQ<kVnni>(row + g * 8, xq + g * kGroup)),
                    hn::Set(df, sd[g]), acc);
}
#endif

#if GP_Q8_VNNI512 || GP_Q8_VNNI512_CPU
// Two groups' 64 nibble bytes against their xq (even elements of both, then odd ones): lanes
// 0-7 hold the first group's int32 partial sums, lanes 8-15 the second's, as f32.
GP_VNNI_ATTR HWY_INLINE __m512 PairDotVnni(const uint8_t* w, const XQ* x, __m512i mask,
                                           __m512i zero) {
  const __m512i v = _mm512_loadu_si512(w);
  const __m512i d = _mm512_dpbusd_epi32(zero, _mm512_and_si512(v, mask), _mm512_loadu_si512(x));
  return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(d, _mm512_and_si512(_mm512_srli_epi16(v, 4), mask),
                                                _mm512_loadu_si512(x + 64)));
}

// sum_g sd_g * (q_g · xq_g) over one weight row, in the 16 lanes of the result (only their
// total counts): two groups per 64-byte load, lanes 0-7 the first group's, 8-15 the second's.
GP_VNNI_ATTR hn::Vec<hn::ScalableTag<float>> RowDotVnni(const uint32_t* row_words,
                                                        const XQ* HWY_RESTRICT xq,
                                                        const float* HWY_RESTRICT sd, int64_t gpr) {
  const auto* row = reinterpret_cast<const uint8_t*>(row_words);
  const auto* ahead = row + kPrefetchAhead;
  const __m512i mask = _mm512_set1_epi8(0x0F), zero = _mm512_setzero_si512();
  // Lanes 0-7 take scale 0 (or 2), lanes 8-15 scale 1 (or 3) of four broadcast scales.
  const __m512i pick01 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i pick23 = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 4 <= gpr; g += 4) {  // 128 bytes: two cache lines
    hwy::Prefetch(ahead + g * 32);
    hwy::Prefetch(ahead + g * 32 + 64);
    const __m512 s = _mm512_broadcast_f32x4(_mm_loadu_ps(sd + g));
    a0 = _mm512_fmadd_ps(PairDotVnni(row + g * 32, xq + g * kGroup, mask, zero),
                         _mm512_permutexvar_ps(pick01, s), a0);
    a1 = _mm512_fmadd_ps(PairDotVnni(row + g * 32 + 64, xq + g * kGroup + 128, mask, zero),
                         _mm512_permutexvar_ps(pick23, s), a1);
  }
  if (g + 2 <= gpr) {
    const __m512 s = _mm512_broadcast_f32x4(
        _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(sd + g))));  // sd[g], sd[g+1]
    a0 = _mm512_fmadd_ps(PairDotVnni(row + g * 32, xq + g * kGroup, mask, zero),
                         _mm512_permutexvar_ps(pick01, s), a0);
    g += 2;
  }
  if (g < gpr) {
    // A last unpaired group: 32 bytes, its xq in the order of the other targets, zero-extended
    // to 512 bits. (At 256 bits the compiler picks the VEX form, which needs AVX-VNNI: Ice Lake
    // and Tiger Lake have AVX512-VNNI without it.)
    auto load32 = [](const void* p) {
      return _mm512_zextsi256_si512(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
    };
    const __m512i v = load32(row + g * 32);
    const __m512i d = _mm512_dpbusd_epi32(zero, _mm512_and_si512(v, mask), load32(xq + g * kGroup));
    const __m512i e = _mm512_dpbusd_epi32(d, _mm512_and_si512(_mm512_srli_epi16(v, 4), mask),
                                          load32(xq + g * kGroup + kGroup / 2));
    a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(e), _mm512_set1_ps(sd[g]), a1);
  }
  return hn::Vec<hn::ScalableTag<float>>{_mm512_add_ps(a0, a1)};
}
#endif

// Rows [r0, r1) one after the other, so each thread reads one sequential stream of weight bytes
// (four rows side by side, sharing the activation loads, are four short streams that the
// prefetchers follow badly: slower from DRAM). Four accumulators over the groups. kVnni: the
// target's VNNI variant (AVX-VNNI on AVX2, AVX512-VNNI on AVX3; AVX3_DL has only that one).
template <bool kVnni>
GP_AVXVNNI_ATTR void GemvQ8Rows(const Weight& w, const XQ* xq, const float* dx, const float* xsum,
                                int64_t r0, int64_t r1, float* y, const float* bias) {
  // RowDotVnni's 16 lanes: the scales and biases of one row then take 16 lanes too.
  constexpr bool k512 = GP_Q8_VNNI512 || (GP_Q8_VNNI512_CPU && kVnni);
  using DI = std::conditional_t<k512, hn::ScalableTag<int32_t>, DQ32>;
  const hn::Rebind<float, DI> df;
  const int64_t gpr = w.groups_per_row(), wpr = w.in / 8;
  const size_t ss = dtype_size(w.scale_dtype);
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  float* sd = thread_scratch(kScratchA, gpr);  // scale_g * dx_g of one row
#if GP_Q8_ARM
  const arm::Q8Kernels& arm_kernels = arm::q8_kernels();
#endif
  for (int64_t o = r0; o < r1; ++o) {
    const void* scales = static_cast<const uint8_t*>(w.scales) + o * gpr * ss;
    const void* biases = static_cast<const uint8_t*>(w.biases) + o * gpr * ss;
    // The scales and the bias terms bias_g * xsum_g in one pass, whole vectors: a row whose
    // groups are no multiple of L (2560 inputs: 40 groups) ends with a vector that overlaps the
    // previous one, its repeated lanes left out of the bias sum.
    auto ab = hn::Zero(df);
    int64_t g = 0;
    for (; g + L <= gpr; g += L) {
      hn::StoreU(hn::Mul(LoadAsF32(df, w.scale_dtype, scales, g), hn::LoadU(df, dx + g)), df,
                 sd + g);
      ab = hn::MulAdd(LoadAsF32(df, w.scale_dtype, biases, g), hn::LoadU(df, xsum + g), ab);
    }
    float tail = bias ? bias[o] : 0.0f;
    if (g < gpr && gpr >= L) {
      const int64_t t = gpr - L;
      hn::StoreU(hn::Mul(LoadAsF32(df, w.scale_dtype, scales, t), hn::LoadU(df, dx + t)), df,
                 sd + t);
      const auto fresh = hn::Not(hn::FirstN(df, static_cast<size_t>(g - t)));
      ab = hn::MulAdd(hn::IfThenElseZero(fresh, LoadAsF32(df, w.scale_dtype, biases, t)),
                      hn::LoadU(df, xsum + t), ab);
    } else {
      for (; g < gpr; ++g) {
        sd[g] = load_float(w.scale_dtype, scales, g) * dx[g];
        tail += load_float(w.scale_dtype, biases, g) * xsum[g];
      }
    }
    const uint32_t* row = w.q + o * wpr;
    auto a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
#if GP_Q8_VNNI512 || GP_Q8_VNNI512_CPU
    if constexpr (k512) a0 = RowDotVnni(row, xq, sd, gpr);
#endif
#if GP_Q8_ARM
    const float dot = arm_kernels.row_dot(row, xq, sd, gpr);  // in lane 0 of a0
    a0 = hn::IfThenElseZero(hn::FirstN(df, 1), hn::Set(df, dot));
#elif !GP_Q8_VNNI512
    if constexpr (!k512) {
      const auto* ahead = reinterpret_cast<const uint8_t*>(row) + kPrefetchAhead;
      for (g = 0; g + 4 <= gpr; g += 4) {  // 128 bytes: two cache lines
        hwy::Prefetch(ahead + g * 32);
        hwy::Prefetch(ahead + g * 32 + 64);
        a0 = GroupStep<kVnni>(df, row, g, xq, sd, a0);
        a1 = GroupStep<kVnni>(df, row, g + 1, xq, sd, a1);
        a2 = GroupStep<kVnni>(df, row, g + 2, xq, sd, a2);
        a3 = GroupStep<kVnni>(df, row, g + 3, xq, sd, a3);
      }
      for (; g < gpr; ++g) a0 = GroupStep<kVnni>(df, row, g, xq, sd, a0);
    }
#endif
    // The bias terms join the same lanes: only the total of all lanes counts.
    a1 = hn::Add(a1, ab);
    y[o] = hn::GetLane(hn::SumOfLanes(df, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)))) + tail;
  }
}

// Bounds of the row blocks of the one-row kernel, in weight bytes.
constexpr int64_t kGemvBlockMinBytes = int64_t{24} << 10;
constexpr int64_t kGemvBlockMaxBytes = int64_t{1} << 20;

// One task of a pass over several weights: outputs [r0, r1) of one of them.
struct RowTask {
  const ops::LinearOut* out;
  int64_t r0, r1;
};

// The row blocks of a one-row pass over the weights of outs, in multiples of `unit` rows:
// guided, each block a share of the rows left, so that the first ones are long sequential
// streams (every block start is a cold stream for the prefetchers) and the last ones short, so
// that the threads finish together; at most 1 MB, so that a descheduled thread holds up little.
// The caller's list, reused (no allocation per call), which the pool's threads read too;
// *bytes: the weights' bytes.
std::vector<RowTask>& GuidedTasks(const ops::LinearOut* outs, size_t n_outs, int64_t unit,
                                  size_t* bytes) {
  thread_local std::vector<RowTask> kept;
  kept.clear();
  *bytes = 0;
  int64_t left = 0;  // rows of all weights not yet in a block
  for (size_t j = 0; j < n_outs; ++j) {
    *bytes += outs[j].w->bytes();
    left += outs[j].w->out;
  }
  const int64_t threads = ThreadPool::global().size();
  for (size_t j = 0; j < n_outs; ++j) {
    const Weight& w = *outs[j].w;
    const int64_t row_bytes = static_cast<int64_t>(w.bytes()) / w.out;
    const int64_t lo = std::max<int64_t>(2 * unit, kGemvBlockMinBytes / row_bytes / unit * unit);
    const int64_t hi = std::max(lo, kGemvBlockMaxBytes / row_bytes / unit * unit);
    for (int64_t r = 0; r < w.out;) {
      const int64_t rb =
          std::min(w.out - r, std::clamp(left / (2 * threads) / unit * unit, lo, hi));
      kept.push_back({&outs[j], r, r + rb});
      r += rb;
      left -= rb;
    }
  }
  return kept;
}

// One activation row through several weights with the same input width (ops::linear_many):
// x is quantized once, and the row blocks of all weights share one pass over the thread pool.
void LinearQ8OneRowImpl(const ops::LinearOut* outs, size_t n_outs, const float* x) {
  const int64_t in = outs[0].w->in, gpr = in / kGroup;
  // The int8 (or int16) values in a float scratch buffer, aligned the same way.
  auto* xq = reinterpret_cast<XQ*>(thread_scratch(kScratchC, in * sizeof(XQ) / sizeof(float)));
  float* dx = thread_scratch(kScratchD, gpr);
  float* xsum = thread_scratch(kScratchE, gpr);
  // The target's VNNI variant: AVX-VNNI on AVX2, AVX512-VNNI on AVX3 (its own xq layout).
  const bool vnni512 = UseVnni512();
  [[maybe_unused]] const bool vnni = UseAvxVnni() || (GP_Q8_VNNI512_CPU && vnni512);
#if GP_Q8_X86
  QuantizeXOne(x, in, xq, dx, xsum, vnni512);
#else
  QuantizeX(x, in, xq, dx, xsum, vnni512);
#endif
  size_t bytes = 0;
  const std::vector<RowTask>& blocks = GuidedTasks(outs, n_outs, 4, &bytes);
  auto run = [&](const RowTask& b) {
    const Weight& w = *b.out->w;
#if GP_Q8_AVXVNNI || GP_Q8_VNNI512_CPU
    if (vnni) return GemvQ8Rows<true>(w, xq, dx, xsum, b.r0, b.r1, b.out->y, b.out->bias);
#endif
    GemvQ8Rows<false>(w, xq, dx, xsum, b.r0, b.r1, b.out->y, b.out->bias);
  };
  parallel_blocks(static_cast<int64_t>(blocks.size()), bytes,
                  [&](int64_t b, int) { run(blocks[b]); });
}

// ---------------------------------------------------------------- many activation rows
//
// Every row of x is quantized to int8 per group (natural order), and blocks of weight rows are
// unpacked into u8 panels laid out [k/4][row][4 bytes]: a broadcast of 4 int8 activations times
// one panel vector, summed over byte pairs and then over the pairs' pairs, gives one int32
// partial sum per weight row, so the lanes of every accumulator are output columns.

constexpr int kQMR = 4;         // activation rows of the register tile
constexpr int64_t kQKC = 2048;  // inputs per panel: a multiple of the group size
// Panels per task, reused by every x tile while they are in L1: 32 output columns in all.
HWY_INLINE int64_t QPanels(bool vnni512) { return vnni512 ? 1 : 4; }

// The int32 lanes of a panel vector are its output columns: those of one DB32 vector, or on ARM
// the 4 of one NEON vector, as the kernels of q8_arm.cpp read them on every target.
#if GP_Q8_ARM
using DP32 = hn::CappedTag<int32_t, arm::kQ8PanelWidth>;
#else
using DP32 = DB32;
#endif

// Output columns of one panel: the int32 lanes of one vector (two 512-bit ones with VNNI).
HWY_INLINE int64_t QPanelWidth(bool vnni512 = UseVnni512()) {
  return vnni512 ? 32 : static_cast<int64_t>(hn::Lanes(DP32()));
}

// panel[k][j] = chunk k of rows[j] (4 bytes each), for k < n_chunks and the NB rows: a
// transpose of 32-bit words, done in registers 4x4 or 8x8 when NB is 4 or 8. (Named vectors,
// no arrays of them: SVE vectors are sizeless.)
void TransposeChunks(const uint8_t (*rows)[kQKC], int64_t n_chunks, uint8_t* HWY_RESTRICT panel) {
  constexpr size_t NB = hn::MaxLanes(DP32());
  int64_t k = 0;
#if HWY_TARGET != HWY_SCALAR
  if constexpr (NB == 4 || NB == 8) {
    const DP32 d;
    using V = hn::Vec<DP32>;
    const hn::Repartition<uint64_t, DP32> d64;
    auto row = [&](size_t j, int64_t k) {
      return hn::Load(d, reinterpret_cast<const int32_t*>(rows[j]) + k);
    };
    auto out = [&](int64_t k) { return reinterpret_cast<int32_t*>(panel) + k * NB; };
    for (; k + static_cast<int64_t>(NB) <= n_chunks; k += NB) {
      // Pairs of 32-bit words, then of 64-bit words, within each 128-bit block: block b of
      // u_i holds chunk 4b + i of rows 0-3 (w_i: rows 4-7).
      auto quad = [&](size_t j0, V& u0, V& u1, V& u2, V& u3) {
        const auto r0 = row(j0, k), r1 = row(j0 + 1, k), r2 = row(j0 + 2, k), r3 = row(j0 + 3, k);
        const auto t0 = hn::BitCast(d64, hn::InterleaveLower(d, r0, r1));
        const auto t1 = hn::BitCast(d64, hn::InterleaveUpper(d, r0, r1));
        const auto t2 = hn::BitCast(d64, hn::InterleaveLower(d, r2, r3));
        const auto t3 = hn::BitCast(d64, hn::InterleaveUpper(d, r2, r3));
        u0 = hn::BitCast(d, hn::InterleaveLower(d64, t0, t2));
        u1 = hn::BitCast(d, hn::InterleaveUpper(d64, t0, t2));
        u2 = hn::BitCast(d, hn::InterleaveLower(d64, t1, t3));
        u3 = hn::BitCast(d, hn::InterleaveUpper(d64, t1, t3));
      };
      V u0 = hn::Zero(d), u1 = u0, u2 = u0, u3 = u0;
      quad(0, u0, u1, u2, u3);
      if constexpr (NB == 4) {
        hn::Store(u0, d, out(k));
        hn::Store(u1, d, out(k + 1));
        hn::Store(u2, d, out(k + 2));
        hn::Store(u3, d, out(k + 3));
      } else {
        V w0 = u0, w1 = u0, w2 = u0, w3 = u0;
        quad(4, w0, w1, w2, w3);
        auto both = [&](int i, V u, V w) {
          hn::Store(hn::ConcatLowerLower(d, w, u), d, out(k + i));
          hn::Store(hn::ConcatUpperUpper(d, w, u), d, out(k + 4 + i));
        };
        both(0, u0, w0);
        both(1, u1, w1);
        both(2, u2, w2);
        both(3, u3, w3);
      }
    }
  }
#endif
  for (; k < n_chunks; ++k)
    for (size_t j = 0; j < NB; ++j) std::memcpy(panel + (k * NB + j) * 4, rows[j] + 4 * k, 4);
}

// sc[g*NB + j], bi[g*NB + j] = scale and bias of group k0/64 + g of weight row o + j (clamped to
// the last row), for g < ng, j < NB: each row's groups converted as one vector run, then spread.
// (One value at a time, the dtype switch of each costs about as much as unpacking the nibbles.)
void PanelScales(const Weight& w, int64_t o, int64_t NB, int64_t k0, int64_t ng,
                 float* HWY_RESTRICT sc, float* HWY_RESTRICT bi) {
  const int64_t gpr = w.groups_per_row();
  const size_t ss = dtype_size(w.scale_dtype);
  HWY_ALIGN float row_sc[kQKC / kGroup], row_bi[kQKC / kGroup];
  for (int64_t j = 0; j < NB; ++j) {
    const int64_t first = std::min(o + j, w.out - 1) * gpr + k0 / kGroup;
    ToF32(w.scale_dtype, static_cast<const uint8_t*>(w.scales) + first * ss, ng, row_sc);
    ToF32(w.scale_dtype, static_cast<const uint8_t*>(w.biases) + first * ss, ng, row_bi);
    for (int64_t g = 0; g < ng; ++g) {
      sc[g * NB + j] = row_sc[g];
      bi[g * NB + j] = row_bi[g];
    }
  }
}

#if GP_Q8_VNNI512 || GP_Q8_VNNI512_CPU
#if GP_Q8_VNNI512
// Byte 2i and 2i+1 of a 64-byte vector: byte i of 32 nibble bytes.
constexpr auto kDupBytes = [] {
  std::array<uint8_t, 64> b{};
  for (int i = 0; i < 64; ++i) b[i] = static_cast<uint8_t>(i / 2);
  return b;
}();
#endif

#if GP_Q8_VNNI512
// The weight rows side by side in the vertical kernels (FewRowsQ8V, ManyRowsQ8V), and the bytes
// of one group (32 nibble bytes) of a block of them, in the registers' transposed order or in
// the load's repacked copy (q8_repack, Weight::vq: [ceil(out/16)][gpr] of these).
constexpr int64_t kVRows = 16;
constexpr int64_t kVGroupBytes = kVRows * 32;

// PackQ8PanelVnni from the repacked copy (w.vq: per block of 16 rows and group, dword j of the
// 16 rows in one vector): each dword (8 nibbles) spread to bytes is chunks 2j and 2j + 1 of its
// row, and a dword permute splits them into two 16-row halves of panel rows.
void PackQ8PanelVertical(const Weight& w, int64_t o, int64_t k0, int64_t kc,
                         uint8_t* HWY_RESTRICT panel, float* HWY_RESTRICT sc,
                         float* HWY_RESTRICT bi) {
  constexpr int64_t NB = 32;
  const int64_t gpr = w.groups_per_row(), last = (w.out - 1) / kVRows;
  const __m512i dup = _mm512_loadu_si512(kDupBytes.data());
  const __mmask64 odd = 0xAAAAAAAAAAAAAAAAull;
  const __m512i mask = _mm512_set1_epi8(0x0F);
  const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
  // The low 256 bits of v (8 rows' dwords), each dword spread to 8 bytes in element order.
  auto spread = [&](__m512i v) {
    const __m512i b = _mm512_permutexvar_epi8(dup, v);
    return _mm512_and_si512(_mm512_mask_blend_epi8(odd, b, _mm512_srli_epi16(b, 4)), mask);
  };
  const int64_t ng = kc / kGroup;
  for (int64_t h = 0; h < 2; ++h) {
    const uint8_t* src = w.vq + (std::min(o / kVRows + h, last) * gpr + k0 / kGroup) * kVGroupBytes;
    for (int64_t g = 0; g < ng; ++g) {
      if (g + 4 < ng) {
        HWY_UNROLL(8)
        for (int i = 0; i < 8; ++i) hwy::Prefetch(src + (g + 4) * kVGroupBytes + i * 64);
      }
      HWY_UNROLL(8)
      for (int j = 0; j < 8; ++j) {
        const __m512i t = _mm512_loadu_si512(src + g * kVGroupBytes + j * 64);
        const __m512i a = spread(t);  // rows 0-7: chunk 2j, then 2j + 1, of each
        const __m512i b = spread(_mm512_shuffle_i64x2(t, t, _MM_SHUFFLE(3, 2, 3, 2)));  // 8-15
        uint8_t* p = panel + ((g * 16 + 2 * j) * NB + kVRows * h) * 4;
        _mm512_storeu_si512(p, _mm512_permutex2var_epi32(a, evens, b));
        _mm512_storeu_si512(p + NB * 4, _mm512_permutex2var_epi32(a, odds, b));
      }
    }
  }
  PanelScales(w, o, NB, k0, ng, sc, bi);
}
#endif

// PackQ8Panel for panels of 32 rows: each group (32 nibble bytes) of 4 rows is spread to bytes in
// registers (a byte permute doubles every byte, the odd copies take the high nibble) and
// transposed in 32-bit words within the 128-bit lanes, without a buffer of unpacked rows. From
// the repacked copy where the load made one (AVX3_DL only).
void PackQ8PanelVnni(const Weight& w, int64_t o, int64_t k0, int64_t kc,
                     uint8_t* HWY_RESTRICT panel, float* HWY_RESTRICT sc, float* HWY_RESTRICT bi) {
#if GP_Q8_VNNI512
  if (w.vq) return PackQ8PanelVertical(w, o, k0, kc, panel, sc, bi);
#endif
  constexpr int64_t NB = 32;
  const int64_t wpr = w.in / 8, gpr = w.groups_per_row();
  const size_t ss = dtype_size(w.scale_dtype);
#if GP_Q8_VNNI512
  const __m512i dup = _mm512_loadu_si512(kDupBytes.data());
  const __mmask64 odd = 0xAAAAAAAAAAAAAAAAull;
#endif
  const __m512i mask = _mm512_set1_epi8(0x0F);
  // 128-bit lane L of u goes to chunk c + 4L (4 bytes per row, NB rows per chunk).
  auto store_lanes = [&](__m512i u, int64_t c, int64_t j0) {
    uint8_t* p = panel + (c * NB + j0) * 4;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_castsi512_si128(u));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 16 * NB), _mm512_extracti32x4_epi32(u, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 32 * NB), _mm512_extracti32x4_epi32(u, 2));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 48 * NB), _mm512_extracti32x4_epi32(u, 3));
  };
  // Group by group, all 32 rows: each 128-byte chunk row of the panel is written whole while it
  // is in L1 (row by row, every line would be written four times, from L2). Each row's kc/2
  // bytes are a short stream that the hardware prefetchers barely follow: the lines 4 groups
  // ahead of all rows, then those of the next chunk of inputs, and the scales, are prefetched.
  const uint8_t* src[NB];
  for (int64_t j = 0; j < NB; ++j) {
    const int64_t r = std::min(o + j, w.out - 1);
    src[j] = reinterpret_cast<const uint8_t*>(w.q + r * wpr) + k0 / 2;
    const int64_t first = (r * gpr + k0 / kGroup) * ss;
    hwy::Prefetch(static_cast<const uint8_t*>(w.scales) + first);
    hwy::Prefetch(static_cast<const uint8_t*>(w.biases) + first);
    hwy::Prefetch(src[j]);
    hwy::Prefetch(src[j] + 64);
  }
  constexpr int64_t kAhead = 4 * 32;  // bytes of a row
  const int64_t next_bytes = k0 + kc < w.in ? std::min(kc, w.in - k0 - kc) / 2 : 0;
  auto unpack = [&](int64_t j, int64_t g) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src[j] + g * 32));
#if GP_Q8_VNNI512
    const __m512i b = _mm512_permutexvar_epi8(dup, _mm512_castsi256_si512(v));
    return _mm512_and_si512(_mm512_mask_blend_epi8(odd, b, _mm512_srli_epi16(b, 4)), mask);
#else
    // No byte permute without VBMI: each byte zero-extended to 16 bits, its high nibble shifted
    // into the upper byte.
    const __m512i b = _mm512_cvtepu8_epi16(v);
    return _mm512_and_si512(_mm512_or_si512(b, _mm512_slli_epi16(b, 4)), mask);
#endif
  };
  for (int64_t g = 0; g < kc / kGroup; ++g) {
    const int64_t ahead = g * 32 + kAhead;
    if (g % 2 == 0 && ahead - kc / 2 < next_bytes) {
      // Past the chunk, the same offset into the next one: rows are kc/2 bytes apart there too.
      for (int64_t j = 0; j < NB; ++j) hwy::Prefetch(src[j] + ahead);
    }
    const int64_t c = g * (kGroup / 4);
    for (int64_t j0 = 0; j0 < NB; j0 += 4) {
      // Lane L of v_j holds chunks 4L .. 4L+3 of row j0+j; afterwards lane L of u_i holds
      // chunk 4L+i of the four rows.
      const __m512i v0 = unpack(j0, g), v1 = unpack(j0 + 1, g), v2 = unpack(j0 + 2, g),
                    v3 = unpack(j0 + 3, g);
      const __m512i t0 = _mm512_unpacklo_epi32(v0, v1), t1 = _mm512_unpackhi_epi32(v0, v1);
      const __m512i t2 = _mm512_unpacklo_epi32(v2, v3), t3 = _mm512_unpackhi_epi32(v2, v3);
      store_lanes(_mm512_unpacklo_epi64(t0, t2), c, j0);
      store_lanes(_mm512_unpackhi_epi64(t0, t2), c + 1, j0);
      store_lanes(_mm512_unpacklo_epi64(t1, t3), c + 2, j0);
      store_lanes(_mm512_unpackhi_epi64(t1, t3), c + 3, j0);
    }
  }
  PanelScales(w, o, NB, k0, kc / kGroup, sc, bi);
}

// Q8MicroKernel for panels of 32 columns: a 4 x 32 tile, two vpdpbusd per activation row and
// step of 4 inputs, int32 sums per group.
GP_VNNI_ATTR void Q8MicroKernelVnni(const int8_t* const* a, const float* const* dx,
                                    const float* const* xs, int64_t kc,
                                    const uint8_t* HWY_RESTRICT panel, const float* HWY_RESTRICT sc,
                                    const float* HWY_RESTRICT bi, float* const* c, bool first,
                                    const float* init) {
  constexpr int64_t NB = 32;
  __m512 acc[kQMR][2];
  HWY_UNROLL(4)
  for (int r = 0; r < kQMR; ++r) {
    for (int v = 0; v < 2; ++v) {
      acc[r][v] = !first ? _mm512_loadu_ps(c[r] + 16 * v)
                  : init ? _mm512_loadu_ps(init + 16 * v)
                         : _mm512_setzero_ps();
    }
  }
  for (int64_t g = 0; g < kc / kGroup; ++g) {
    __m512i p[kQMR][2];
    HWY_UNROLL(4)
    for (int r = 0; r < kQMR; ++r) p[r][0] = p[r][1] = _mm512_setzero_si512();
    const uint8_t* pw = panel + g * kGroup * NB;
    // 16 steps: each int32 lane sums 64 products <= 15 * 127, no overflow.
    HWY_UNROLL(2)
    for (int64_t st = 0; st < kGroup / 4; ++st) {
      const __m512i w0 = _mm512_load_si512(pw + st * 4 * NB);
      const __m512i w1 = _mm512_load_si512(pw + st * 4 * NB + 64);
      HWY_UNROLL(4)
      for (int r = 0; r < kQMR; ++r) {
        int32_t xv;
        std::memcpy(&xv, a[r] + g * kGroup + st * 4, 4);
        const __m512i xb = _mm512_set1_epi32(xv);
        p[r][0] = _mm512_dpbusd_epi32(p[r][0], w0, xb);
        p[r][1] = _mm512_dpbusd_epi32(p[r][1], w1, xb);
      }
    }
    const __m512 s0 = _mm512_load_ps(sc + g * NB), s1 = _mm512_load_ps(sc + g * NB + 16);
    const __m512 b0 = _mm512_load_ps(bi + g * NB), b1 = _mm512_load_ps(bi + g * NB + 16);
    HWY_UNROLL(4)
    for (int r = 0; r < kQMR; ++r) {
      const __m512 d = _mm512_set1_ps(dx[r][g]), x = _mm512_set1_ps(xs[r][g]);
      acc[r][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[r][0]), _mm512_mul_ps(s0, d), acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[r][1]), _mm512_mul_ps(s1, d), acc[r][1]);
      acc[r][0] = _mm512_fmadd_ps(b0, x, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(b1, x, acc[r][1]);
    }
  }
  HWY_UNROLL(4)
  for (int r = 0; r < kQMR; ++r) {
    _mm512_storeu_ps(c[r], acc[r][0]);
    _mm512_storeu_ps(c[r] + 16, acc[r][1]);
  }
}
#endif

// Unpacks the nibbles of weight rows o .. o+NB (clamped to the last row) and inputs
// [k0, k0 + kc) into panel [kc/4][NB][4] u8, with their scales and biases as f32 [kc/64][NB].
// Each row is first spread to bytes in natural order with vector ops, then the rows' 4-byte
// chunks are interleaved: for short prompts, where every panel serves only a few rows of x,
// unpacking costs as much as the products.
// vnni512: the panels of 32 rows of the 512-bit vpdpbusd kernel (UseVnni512()).
void PackQ8Panel(const Weight& w, int64_t o, int64_t k0, int64_t kc, uint8_t* HWY_RESTRICT panel,
                 float* HWY_RESTRICT sc, float* HWY_RESTRICT bi, [[maybe_unused]] bool vnni512) {
#if GP_Q8_VNNI512 || GP_Q8_VNNI512_CPU
  if (vnni512) return PackQ8PanelVnni(w, o, k0, kc, panel, sc, bi);
#endif
  const int64_t NB = QPanelWidth(false), wpr = w.in / 8;
  constexpr int64_t kMaxNB = 8;  // DP32 holds at most 8 lanes
  HWY_ALIGN uint8_t rows[kMaxNB][kQKC];
  for (int64_t j = 0; j < NB; ++j) {
    const int64_t r = std::min(o + j, w.out - 1);
    const auto* src = reinterpret_cast<const uint8_t*>(w.q + r * wpr + k0 / 8);
#if HWY_TARGET == HWY_SCALAR
    for (int64_t i = 0; i < kc / 2; ++i) {
      rows[j][2 * i] = src[i] & 0x0F;
      rows[j][2 * i + 1] = src[i] >> 4;
    }
#else
    // Byte i holds element 2i (low nibble) and 2i+1 (high): interleaving the low and the high
    // nibbles of 16 bytes gives 32 elements in order.
    const hn::Full128<uint8_t> d8;
    const hn::Full128<uint16_t> d16;
    const auto mask = hn::Set(d8, 0x0F);
    for (int64_t i = 0; i < kc / 2; i += 16) {
      const auto v = hn::LoadU(d8, src + i);
      const auto lo = hn::And(v, mask);
      const auto hi = hn::And(hn::BitCast(d8, hn::ShiftRight<4>(hn::BitCast(d16, v))), mask);
      hn::Store(hn::InterleaveLower(d8, lo, hi), d8, rows[j] + 2 * i);
      hn::Store(hn::InterleaveUpper(d8, lo, hi), d8, rows[j] + 2 * i + 16);
    }
#endif
  }
  PanelScales(w, o, NB, k0, kc / kGroup, sc, bi);
  TransposeChunks(rows, kc / 4, panel);
}

// c[r][0..NB) (=|+=) sum over the kc inputs of x rows a[r] (int8, offset to the panel's first
// input) against one panel, with the per-group scales: sum_g sc_g * dx_rg * (q_g · xq_rg) +
// bi_g * xsum_rg. dx[r], xs[r] point at the group of the panel's first input. With `first`,
// c starts from init (NB values, or zero when null) instead of its current contents. kVnni:
// the target's VNNI variant (AVX-VNNI on AVX2, AVX512-VNNI's panels of 32 columns on AVX3).
template <bool kVnni>
GP_AVXVNNI_ATTR void Q8MicroKernel(const int8_t* const* a, const float* const* dx,
                                   const float* const* xs, int64_t kc,
                                   const uint8_t* HWY_RESTRICT panel, const float* HWY_RESTRICT sc,
                                   const float* HWY_RESTRICT bi, float* const* c, bool first,
                                   const float* init) {
#if GP_Q8_VNNI512 || GP_Q8_VNNI512_CPU
  if constexpr (GP_Q8_VNNI512 || kVnni)
    return Q8MicroKernelVnni(a, dx, xs, kc, panel, sc, bi, c, first, init);
#endif
#if GP_Q8_ARM
  arm::q8_kernels().micro(a, dx, xs, kc, panel, sc, bi, c, first, init);
#elif GP_Q8_X86
  const DBF df;
  const int64_t NB = QPanelWidth(false);
  const DB32 d32;
  const DBU8 du8;
  const DBI8 di8;
  const DBI16 di16;
  auto bcast = [&](const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return hn::BitCast(di8, hn::Set(d32, v));
  };
  auto start = [&](int r) {
    if (!first) return hn::LoadU(df, c[r]);
    return init ? hn::LoadU(df, init) : hn::Zero(df);
  };
  auto acc0 = start(0), acc1 = start(1), acc2 = start(2), acc3 = start(3);
  const int8_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
  for (int64_t g = 0; g < kc / kGroup; ++g) {
    auto p0 = hn::Zero(d32), p1 = hn::Zero(d32), p2 = hn::Zero(d32), p3 = hn::Zero(d32);
    for (int64_t h = 0; h < 2; ++h) {
      const int64_t k = g * kGroup + h * 32;
      const uint8_t* pw = panel + k * NB;
#if GP_Q8_AVXVNNI
      if constexpr (kVnni) {
        HWY_UNROLL(2)
        for (int64_t st = 0; st < 8; ++st) {
          const auto wv = hn::Load(du8, pw + st * 4 * NB);
          p0 = DotAccVnni(p0, wv, bcast(a0 + k + st * 4));
          p1 = DotAccVnni(p1, wv, bcast(a1 + k + st * 4));
          p2 = DotAccVnni(p2, wv, bcast(a2 + k + st * 4));
          p3 = DotAccVnni(p3, wv, bcast(a3 + k + st * 4));
        }
        continue;
      }
#endif
      // Eight steps of 4 inputs: each int16 lane sums 8 pair sums <= 8 * 3810 < 32768.
      auto s0 = hn::Zero(di16), s1 = hn::Zero(di16), s2 = hn::Zero(di16), s3 = hn::Zero(di16);
      HWY_UNROLL(2)
      for (int64_t st = 0; st < 8; ++st) {
        const auto wv = hn::Load(du8, pw + st * 4 * NB);
        s0 = hn::Add(s0, PairDotU8I8(wv, bcast(a0 + k + st * 4)));
        s1 = hn::Add(s1, PairDotU8I8(wv, bcast(a1 + k + st * 4)));
        s2 = hn::Add(s2, PairDotU8I8(wv, bcast(a2 + k + st * 4)));
        s3 = hn::Add(s3, PairDotU8I8(wv, bcast(a3 + k + st * 4)));
      }
      p0 = hn::Add(p0, PairSumI16(s0));
      p1 = hn::Add(p1, PairSumI16(s1));
      p2 = hn::Add(p2, PairSumI16(s2));
      p3 = hn::Add(p3, PairSumI16(s3));
    }
    const auto sv = hn::Load(df, sc + g * NB), bv = hn::Load(df, bi + g * NB);
    acc0 = hn::MulAdd(hn::ConvertTo(df, p0), hn::Mul(sv, hn::Set(df, dx[0][g])), acc0);
    acc1 = hn::MulAdd(hn::ConvertTo(df, p1), hn::Mul(sv, hn::Set(df, dx[1][g])), acc1);
    acc2 = hn::MulAdd(hn::ConvertTo(df, p2), hn::Mul(sv, hn::Set(df, dx[2][g])), acc2);
    acc3 = hn::MulAdd(hn::ConvertTo(df, p3), hn::Mul(sv, hn::Set(df, dx[3][g])), acc3);
    acc0 = hn::MulAdd(bv, hn::Set(df, xs[0][g]), acc0);
    acc1 = hn::MulAdd(bv, hn::Set(df, xs[1][g]), acc1);
    acc2 = hn::MulAdd(bv, hn::Set(df, xs[2][g]), acc2);
    acc3 = hn::MulAdd(bv, hn::Set(df, xs[3][g]), acc3);
  }
  hn::StoreU(acc0, df, c[0]);
  hn::StoreU(acc1, df, c[1]);
  hn::StoreU(acc2, df, c[2]);
  hn::StoreU(acc3, df, c[3]);
#else
  // Other targets: the same integer arithmetic, one lane at a time.
  const int64_t NB = QPanelWidth(false);
  for (int r = 0; r < kQMR; ++r) {
    for (int64_t j = 0; j < NB; ++j) {
      float acc = !first ? c[r][j] : init ? init[j] : 0.0f;
      for (int64_t g = 0; g < kc / kGroup; ++g) {
        int32_t isum = 0;
        for (int64_t k = g * kGroup; k < (g + 1) * kGroup; ++k) {
          isum += int32_t{panel[((k / 4) * NB + j) * 4 + k % 4]} * a[r][k];
        }
        acc += static_cast<float>(isum) * (sc[g * NB + j] * dx[r][g]) + bi[g * NB + j] * xs[r][g];
      }
      c[r][j] = acc;
    }
  }
#endif
}

// Quantizes rows [t0, t1) of x [n, in] to int8 per group, in natural order (the scale and
// rounding of QuantizeX): xq [n, in], dx, xsum [n, in/64].
void QuantizeRows(const float* x, int64_t in, int64_t t0, int64_t t1, int8_t* HWY_RESTRICT xq,
                  float* HWY_RESTRICT dx, float* HWY_RESTRICT xsum) {
  const int64_t gpr = in / kGroup;
  for (int64_t t = t0; t < t1; ++t) {
    ScaleGroups(x + t * in, gpr, dx + t * gpr, xsum + t * gpr,
                [&](int64_t g, const float* xg, float inv) {
                  int8_t* qg = xq + t * in + g * kGroup;
                  for (int64_t i = 0; i < kGroup; ++i) {
                    qg[i] = static_cast<int8_t>(RoundQ(xg[i] * inv));
                  }
                });
  }
}

void GemmQ8(const Weight& w, const float* x, int64_t n, float* y, const float* bias) {
  const bool vnni512 = UseVnni512();
  const int64_t NB = QPanelWidth(vnni512), gpr = w.groups_per_row(), panels_per = QPanels(vnni512);
  const int64_t OB = panels_per * NB;  // output columns per task
  const int64_t n_ob = (w.out + OB - 1) / OB;
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  // int8 rows and per-group values in the caller's scratch (the workers use slots A and B).
  auto* xq = reinterpret_cast<int8_t*>(thread_scratch(kScratchC, (n * w.in + 3) / 4));
  float* dx = thread_scratch(kScratchD, n * gpr);
  float* xs = thread_scratch(kScratchE, n * gpr);
  const bool small = static_cast<double>(n) * w.in * w.out < double{1 << 22};
  if (small) {
    QuantizeRows(x, w.in, 0, n, xq, dx, xs);
  } else {
    const int64_t qb = std::max<int64_t>(1, ceil_div(n, 8 * ThreadPool::global().size()));
    parallel_blocks(ceil_div(n, qb), [&](int64_t b, int) {
      QuantizeRows(x, w.in, b * qb, std::min(n, (b + 1) * qb), xq, dx, xs);
    });
  }
  // Token blocks of at most 512 rows (x of one block, up to 1 MB of int8, stays in L2; every
  // block unpacks the weight panels again), at least enough tasks for about 8 per thread.
  int64_t n_tb = ceil_div(n, 128 * kQMR);
  const int64_t want = 8 * ThreadPool::global().size();
  if (n_ob * n_tb < want) n_tb = std::max(n_tb, std::min(ceil_div(want, n_ob), ceil_div(n, kQMR)));
  const int64_t tb = ceil_div(ceil_div(n, n_tb), kQMR) * kQMR;
  n_tb = ceil_div(n, tb);
  [[maybe_unused]] const bool vnni = UseAvxVnni() || (GP_Q8_VNNI512_CPU && vnni512);
  auto task = [&](int64_t tk, int) {
    const int64_t kc_max = std::min(kQKC, w.in);
    // Slot A: the panels; slot B: their scales and biases, then the output tile.
    auto* panels =
        reinterpret_cast<uint8_t*>(thread_scratch(kScratchA, panels_per * kc_max * NB / 4));
    float* sb = thread_scratch(kScratchB, 2 * panels_per * (kc_max / kGroup) * NB + kQMR * NB);
    float* sc = sb;
    float* bi = sb + panels_per * (kc_max / kGroup) * NB;
    float* tile = bi + panels_per * (kc_max / kGroup) * NB;
    const int64_t o0 = tk / n_tb * OB, o1 = std::min(w.out, o0 + OB);
    const int64_t t0 = tk % n_tb * tb, t1 = std::min(n, t0 + tb);
    const int64_t np = ceil_div(o1 - o0, NB);
    for (int64_t k0 = 0; k0 < w.in; k0 += kQKC) {
      const int64_t kc = std::min(kQKC, w.in - k0), ng = kc / kGroup;
      for (int64_t p = 0; p < np; ++p) {
        PackQ8Panel(w, o0 + p * NB, k0, kc, panels + p * kc_max * NB, sc + p * ng * NB,
                    bi + p * ng * NB, vnni512);
      }
      for (int64_t t = t0; t < t1; t += kQMR) {
        const int64_t mr = std::min<int64_t>(kQMR, t1 - t);
        const int8_t* a[kQMR];
        const float* d[kQMR];
        const float* s[kQMR];
        for (int64_t r = 0; r < kQMR; ++r) {
          const int64_t row = t + std::min(r, mr - 1);  // missing rows repeat the last one
          a[r] = xq + row * w.in + k0;
          d[r] = dx + row * gpr + k0 / kGroup;
          s[r] = xs + row * gpr + k0 / kGroup;
        }
        for (int64_t p = 0; p < np; ++p) {
          const int64_t oc = o0 + p * NB, nc = std::min(NB, o1 - oc);
          float* c[kQMR];
          // Rows past the block and partial panels go through the tile.
          for (int64_t r = 0; r < kQMR; ++r) {
            c[r] = r < mr && nc == NB ? y + (t + r) * w.out + oc : tile + r * NB;
            if (r < mr && nc < NB && k0 > 0) {
              std::memcpy(c[r], y + (t + r) * w.out + oc, nc * sizeof(float));
            }
          }
          const uint8_t* panel = panels + p * kc_max * NB;
          const float* init = bias && nc == NB ? bias + oc : nullptr;
#if GP_Q8_AVXVNNI || GP_Q8_VNNI512_CPU
          if (vnni) {
            Q8MicroKernel<true>(a, d, s, kc, panel, sc + p * ng * NB, bi + p * ng * NB, c, k0 == 0,
                                init);
          } else
#endif
          {
            Q8MicroKernel<false>(a, d, s, kc, panel, sc + p * ng * NB, bi + p * ng * NB, c, k0 == 0,
                                 init);
          }
          if (nc < NB) {
            for (int64_t r = 0; r < mr; ++r) {
              float* yr = y + (t + r) * w.out + oc;
              for (int64_t j = 0; j < nc; ++j)
                yr[j] = tile[r * NB + j] + (k0 == 0 && bias ? bias[oc + j] : 0.0f);
            }
          }
        }
      }
    }
  };
  if (small) {
    for (int64_t tk = 0; tk < n_ob * n_tb; ++tk) task(tk, 0);
  } else {
    parallel_blocks(n_ob * n_tb, task);
  }
}

// ---------------------------------------------------------------- a few activation rows
//
// Batched decode (2 to kFewRows rows): each weight row is read once from its mapped layout, as
// in decode, and each of its groups meets every row of x, instead of being unpacked into panels
// that so few rows cannot repay. Every output gets GemmQ8's bits: the same exact per-group
// integer sums and the same chain of multiply-adds in group order, started from the bias in
// full panels, the bias added after the first kQKC inputs in a last partial panel. Weight rows
// sit side by side, one output per int32 lane (16 rows at 512 bits, 8 at 256), transposed in
// registers as they are read.
#undef GP_Q8_FEW
#if GP_Q8_VNNI512 || (GP_Q8_X86 && HWY_TARGET <= HWY_AVX2)
#define GP_Q8_FEW 1
// Up to where it beats the panel kernel (BM_LinearQ8Target, docs/BENCHMARKS.md): 8 rows with
// vpdpbusd panels and with pmaddubsw ones.
constexpr int64_t kFewRows = 8;
// On AVX3 with AVX512-VNNI (docs/BENCHMARKS.md, AVX512-VNNI for the AVX3 target) the 512-bit
// vpdpbusd panels overtake the 256-bit few-row kernel from 8 rows.
HWY_INLINE int64_t FewRowsMax() { return !GP_Q8_VNNI512 && UseVnni512() ? 4 : kFewRows; }

// The mapped sources of a vertical block's `count` weight rows o, o+1, ... (past w.out: the last
// row again): the nibbles, the scales and the biases of each. prefetch_next: the next block's
// scales and biases (their own two streams, read at a block's start) are prefetched a whole block
// ahead; the kernels prefetch its nibbles as they read this block's.
HWY_INLINE void VerticalRowPointers(const Weight& w, int64_t o, int count, const uint8_t** rows,
                                    const uint8_t** srow, const uint8_t** brow,
                                    bool prefetch_next) {
  const int64_t gpr = w.groups_per_row(), wpr = w.in / 8;
  const size_t ss = dtype_size(w.scale_dtype);
  const auto* scales = static_cast<const uint8_t*>(w.scales);
  const auto* biases = static_cast<const uint8_t*>(w.biases);
  if (prefetch_next) {
    const uint8_t* s = scales + (o + count) * gpr * ss;
    const uint8_t* b = biases + (o + count) * gpr * ss;
    for (int64_t k = 0; k < count * gpr * static_cast<int64_t>(ss); k += 64) {
      hwy::Prefetch(s + k);
      hwy::Prefetch(b + k);
    }
  }
  for (int i = 0; i < count; ++i) {
    const int64_t r = std::min(o + i, w.out - 1);
    rows[i] = reinterpret_cast<const uint8_t*>(w.q + r * wpr);
    srow[i] = scales + r * gpr * ss;
    brow[i] = biases + r * gpr * ss;
  }
}

// VerticalRowPointers, with the scales and biases converted to f32 rows of gs values (zero past
// gpr) in rs and rb, and srow, brow pointing at those.
HWY_INLINE void VerticalRowSources(const Weight& w, int64_t o, int count, int64_t gs, float* rs,
                                   float* rb, const uint8_t** rows, const uint8_t** srow,
                                   const uint8_t** brow, bool prefetch_next = false) {
  const int64_t gpr = w.groups_per_row();
  VerticalRowPointers(w, o, count, rows, srow, brow, prefetch_next);
  for (int i = 0; i < count; ++i) {
    ToF32(w.scale_dtype, srow[i], gpr, rs + i * gs);
    ToF32(w.scale_dtype, brow[i], gpr, rb + i * gs);
    for (int64_t g = gpr; g < gs; ++g) rs[i * gs + g] = rb[i * gs + g] = 0.0f;
    srow[i] = reinterpret_cast<const uint8_t*>(rs + i * gs);
    brow[i] = reinterpret_cast<const uint8_t*>(rb + i * gs);
  }
}

// The tasks of one pass over the weights of outs: each weight's outputs in runs of whole
// `unit`-row blocks, about 16 runs per thread (gemv_row_block) and at least min_units blocks each
// (a task's first block is read cold: nothing prefetched it; the others were prefetched while the
// block before ran). The caller's list, reused (no allocation per call), which the pool's threads
// read too; *bytes: the weights' bytes.
std::vector<RowTask>& RowTasks(const ops::LinearOut* outs, size_t n_outs, int64_t unit,
                               int64_t min_units, size_t* bytes) {
  thread_local std::vector<RowTask> kept;
  kept.clear();
  *bytes = 0;
  for (size_t j = 0; j < n_outs; ++j) {
    const Weight& w = *outs[j].w;
    const int64_t rb = std::max(min_units * unit, gemv_row_block(w.out) / unit * unit);
    for (int64_t r0 = 0; r0 < w.out; r0 += rb)
      kept.push_back({&outs[j], r0, std::min(w.out, r0 + rb)});
    *bytes += w.bytes();
  }
  return kept;
}

// The vertical kernels' driver for x [n, in], 1 <= n <= 8, through the n_outs weights of outs
// (the same input width, as ops::linear_many's): the rows quantized once, as for decode, then
// blocks of whole kLanes-row groups of outputs of every weight in one pass over the pool, each
// run as block(std::integral_constant<int, n>, out, xq, dx, xsum, r0, r1): the kernels keep the
// n rows' chains in registers, so n is a compile-time constant.
template <int64_t kLanes, typename Block>
void RunVertical(const ops::LinearOut* outs, size_t n_outs, const float* x, int64_t n,
                 const Block& block) {
  const int64_t in = outs[0].w->in, gpr = in / kGroup;
  auto* xq =
      reinterpret_cast<XQ*>(thread_scratch(kScratchC, n * in * sizeof(XQ) / sizeof(float) + 1));
  float* dx = thread_scratch(kScratchD, 2 * n * gpr);
  float* xs = dx + n * gpr;
  for (int64_t r = 0; r < n; ++r)
    QuantizeX(x + r * in, in, xq + r * in, dx + r * gpr, xs + r * gpr);
  size_t bytes = 0;
  // One row (repacked weights) is a decode step's stream: guided blocks, as the one-row kernel's.
  const std::vector<RowTask>& tasks = n == 1 ? GuidedTasks(outs, n_outs, kLanes, &bytes)
                                             : RowTasks(outs, n_outs, kLanes, 4, &bytes);
  auto run = [&](int64_t k, int) {
    const RowTask& t = tasks[k];
    auto go = [&](auto nr) { block(nr, *t.out, xq, dx, xs, t.r0, t.r1); };
    switch (n) {
      case 1:
        return go(std::integral_constant<int, 1>());
      case 2:
        return go(std::integral_constant<int, 2>());
      case 3:
        return go(std::integral_constant<int, 3>());
      case 4:
        return go(std::integral_constant<int, 4>());
      case 5:
        return go(std::integral_constant<int, 5>());
      case 6:
        return go(std::integral_constant<int, 6>());
      case 7:
        return go(std::integral_constant<int, 7>());
      default:
        return go(std::integral_constant<int, 8>());
    }
  };
  parallel_blocks(static_cast<int64_t>(tasks.size()), bytes, run);
}

#if GP_Q8_VNNI512
// The vertical kernel: 16 weight rows side by side, each int32 lane one output, so a group's
// integer sum lands in its output's lane with no horizontal sums, every unpacked weight vector
// serves all rows of x (4 of their bytes broadcast), and the float chain runs 16 outputs per
// vector (kVRows). The rows are transposed in registers as they are read.

// Lane i of t[j] = dword j of row i, for 16 rows of 8 dwords: z[i] holds row i (row i + 4 for
// i >= 4) in its low 256 bits and row i + 4 (i + 8) in its high ones, so that the lanes come
// out in row order.
HWY_INLINE void Transpose16x8(const __m512i* z, __m512i* t) {
  __m512i u[2][4];
  HWY_UNROLL(2)
  for (int q = 0; q < 2; ++q) {
    const __m512i* s = z + 4 * q;
    const __m512i a = _mm512_unpacklo_epi32(s[0], s[1]), b = _mm512_unpackhi_epi32(s[0], s[1]);
    const __m512i c = _mm512_unpacklo_epi32(s[2], s[3]), d = _mm512_unpackhi_epi32(s[2], s[3]);
    u[q][0] = _mm512_unpacklo_epi64(a, c);
    u[q][1] = _mm512_unpackhi_epi64(a, c);
    u[q][2] = _mm512_unpacklo_epi64(b, d);
    u[q][3] = _mm512_unpackhi_epi64(b, d);
  }
  // Block b of u[q][e]: dword e (b even) or e + 4 (b odd) of rows 4 * (2q + b / 2) to +3.
  HWY_UNROLL(4)
  for (int e = 0; e < 4; ++e) {
    t[e] = _mm512_shuffle_i32x4(u[0][e], u[1][e], _MM_SHUFFLE(2, 0, 2, 0));
    t[e + 4] = _mm512_shuffle_i32x4(u[0][e], u[1][e], _MM_SHUFFLE(3, 1, 3, 1));
  }
}

// The row whose 256 bits go to half h of z[i] in Transpose16x8.
constexpr int VRow(int i, int h) { return (i < 4 ? i : i + 4) + 4 * h; }

// 32 bytes at p[VRow(i, h)] + off for the 16 rows, transposed.
HWY_INLINE void LoadTransposed(const uint8_t* const* p, int64_t off, __m512i* t) {
  __m512i z[8];
  HWY_UNROLL(8)
  for (int i = 0; i < 8; ++i) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[VRow(i, 0)] + off));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[VRow(i, 1)] + off));
    z[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  }
  Transpose16x8(z, t);
}

// 32 bytes at p[VRow(i, h)] + off for the 16 rows, the bytes outside `bytes` zero (and not read),
// transposed.
HWY_INLINE void LoadTransposedMasked(const uint8_t* const* p, int64_t off, __mmask32 bytes,
                                     __m512i* t) {
  __m512i z[8];
  HWY_UNROLL(8)
  for (int i = 0; i < 8; ++i) {
    const __m256i lo = _mm256_maskz_loadu_epi8(bytes, p[VRow(i, 0)] + off);
    const __m256i hi = _mm256_maskz_loadu_epi8(bytes, p[VRow(i, 1)] + off);
    z[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  }
  Transpose16x8(z, t);
}

// The scales (or biases) of groups g0 .. g0+15 (those below gpr) of the 16 rows whose mapped
// scales start at p[VRow(i, h)], as f32, 16 outputs per vector: out[k * 16 + i] is group g0 + k
// of row i. Read and transposed as stored, without f32 copies of the rows: a dword of 16-bit
// values holds two groups.
HWY_INLINE void TransposedScales(const uint8_t* const* p, DType t, int64_t g0, int64_t gpr,
                                 float* HWY_RESTRICT out) {
  const int64_t count = std::min<int64_t>(16, gpr - g0);
  __m512i v[8];
  if (t == DType::F32) {
    for (int64_t h = 0; h * 8 < count; ++h) {
      const int64_t c = std::min<int64_t>(8, count - h * 8);
      LoadTransposedMasked(p, (g0 + h * 8) * 4, static_cast<__mmask32>((1ull << (4 * c)) - 1), v);
      HWY_UNROLL(8)
      for (int j = 0; j < 8; ++j) _mm512_store_si512(out + (h * 8 + j) * 16, v[j]);
    }
    return;
  }
  LoadTransposedMasked(p, g0 * 2, static_cast<__mmask32>((1ull << (2 * count)) - 1), v);
  if (t == DType::BF16) {
    const __m512i high = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
    HWY_UNROLL(8)
    for (int j = 0; j < 8; ++j) {
      _mm512_store_si512(out + 2 * j * 16, _mm512_slli_epi32(v[j], 16));
      _mm512_store_si512(out + (2 * j + 1) * 16, _mm512_and_si512(v[j], high));
    }
    return;
  }
  HWY_UNROLL(8)
  for (int j = 0; j < 8; ++j) {  // F16
    _mm512_store_ps(out + 2 * j * 16, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v[j])));
    _mm512_store_ps(out + (2 * j + 1) * 16,
                    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(v[j], 16))));
  }
}

// The cache line at byte off of each of kRows rows of a and of b into L1 (the scales and the
// biases of a block's next groups).
template <int kRows>
HWY_INLINE void PrefetchRowsAt(const uint8_t* const* a, const uint8_t* const* b, int64_t off) {
  HWY_UNROLL(32)
  for (int i = 0; i < kRows; ++i) {
    hwy::Prefetch(a[i] + off);
    hwy::Prefetch(b[i] + off);
  }
}

// Outputs o .. o+15 (those below w.out) for the NR rows of x: xq row r at xq + r * in (QuantizeX
// order), dx and xs [NR, gpr]. The chain of each output is GemmQ8's (see the section's head).
// kPacked: the nibbles come from the repacked copy (w.vq) instead of the mapped rows. cold: no
// earlier block prefetched this one's rows (11 % of a 4-row step, docs/BENCHMARKS.md).
template <int NR, bool kPacked>
GP_VNNI_ATTR void FewRowsQ8V(const Weight& w, const XQ* xq, const float* dx, const float* xs,
                             int64_t o, int64_t o_end, float* y, const float* bias, float* buf,
                             bool cold = false) {
  const int64_t gpr = w.groups_per_row(), wpr = w.in / 8;
  const auto ss = static_cast<int64_t>(dtype_size(w.scale_dtype));
  const int64_t partial = w.out - w.out % QPanelWidth();
  const int64_t first_chunk = std::min(gpr, kQKC / kGroup);
  // The scales and biases of 16 groups of the 16 rows at a time, transposed: 16 outputs per
  // vector.
  float* tsc = buf;
  float* tbi = buf + 16 * kVRows;
  const uint8_t* rows[kVRows];
  const uint8_t *srow[kVRows], *brow[kVRows];
  VerticalRowPointers(w, o, kVRows, rows, srow, brow, o + 2 * kVRows <= o_end);
  const int64_t valid = std::min<int64_t>(kVRows, w.out - o);
  const __mmask16 in_range = static_cast<__mmask16>((1u << valid) - 1);
  const int64_t n_full = std::clamp<int64_t>(partial - o, 0, kVRows);
  const __mmask16 full = static_cast<__mmask16>((1u << n_full) - 1);
  const __m512 bv = bias ? _mm512_maskz_loadu_ps(in_range, bias + o) : _mm512_setzero_ps();
  __m512 acc[NR];
  HWY_UNROLL(8)
  for (int r = 0; r < NR; ++r) acc[r] = _mm512_maskz_mov_ps(full, bv);
  const __m512i mask = _mm512_set1_epi8(0x0F);
  // The next block's bytes, prefetched as one stream while this one is read as 16.
  const bool prefetch_next = o + 2 * kVRows <= o_end;
  const uint8_t* next =
      prefetch_next ? reinterpret_cast<const uint8_t*>(w.q + (o + kVRows) * wpr) : nullptr;
  const uint8_t* pk = kPacked ? w.vq + o / kVRows * gpr * kVGroupBytes : nullptr;
  if (kPacked && cold) {
    // A task's first block: nothing prefetched the bytes before the running prefetch distance.
    for (int64_t b = 0; b < std::min<int64_t>(4 * kPrefetchAhead, gpr * kVGroupBytes); b += 64)
      hwy::Prefetch(pk + b);
  }
  for (int64_t g0 = 0; g0 < gpr; g0 += 16) {
    // The next 16 groups' scales and biases into L1: the next-block prefetch brought them to
    // L2, but a block of long rows (80 KB at in = 10240) evicts them from L1 before they are read.
    if (g0 + 16 < gpr) PrefetchRowsAt<kVRows>(srow, brow, (g0 + 16) * ss);
    TransposedScales(srow, w.scale_dtype, g0, gpr, tsc);
    TransposedScales(brow, w.scale_dtype, g0, gpr, tbi);
    const int64_t g1 = std::min(gpr, g0 + 16);
    for (int64_t g = g0; g < g1; ++g) {
      __m512i t[8];
      if constexpr (kPacked) {
        const uint8_t* p = pk + g * kVGroupBytes;
        hwy::Prefetch(p + 4 * kPrefetchAhead);
        hwy::Prefetch(p + 4 * kPrefetchAhead + 64);
        hwy::Prefetch(p + 4 * kPrefetchAhead + 128);
        hwy::Prefetch(p + 4 * kPrefetchAhead + 192);
        hwy::Prefetch(p + 4 * kPrefetchAhead + 256);
        hwy::Prefetch(p + 4 * kPrefetchAhead + 320);
        hwy::Prefetch(p + 4 * kPrefetchAhead + 384);
        hwy::Prefetch(p + 4 * kPrefetchAhead + 448);
        HWY_UNROLL(8)
        for (int j = 0; j < 8; ++j) t[j] = _mm512_loadu_si512(p + j * 64);
      } else {
        if (prefetch_next) {
          HWY_UNROLL(8)
          for (int i = 0; i < 8; ++i) hwy::Prefetch(next + (g * 8 + i) * 64);
        }
        if (cold && (g & 1) == 0 && g + 8 < gpr) {  // a task's first block: its own rows ahead
          HWY_UNROLL(16)
          for (int i = 0; i < kVRows; ++i) hwy::Prefetch(rows[i] + (g + 8) * 32);
        }
        LoadTransposed(rows, g * 32, t);
      }
      const auto [even, odd] = XQGroupHalves(g, gpr, true);  // in each row of xq
      // Integer sums, exact in any order: with one row, four chains of 4 vpdpbusd instead of
      // two of 8, which a decode step's latency would otherwise bound.
      constexpr int kChains = NR == 1 ? 2 : 1;
      __m512i pe[kChains][NR], po[kChains][NR];
      HWY_UNROLL(8)
      for (int r = 0; r < NR; ++r) {
        for (int c = 0; c < kChains; ++c) pe[c][r] = po[c][r] = _mm512_setzero_si512();
      }
      HWY_UNROLL(8)
      for (int j = 0; j < 8; ++j) {
        const __m512i lo = _mm512_and_si512(t[j], mask);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi32(t[j], 4), mask);
        HWY_UNROLL(8)
        for (int r = 0; r < NR; ++r) {
          int32_t xe, xo;
          std::memcpy(&xe, xq + r * w.in + even + 4 * j, 4);
          std::memcpy(&xo, xq + r * w.in + odd + 4 * j, 4);
          __m512i& e = pe[j % kChains][r];
          __m512i& od = po[j % kChains][r];
          e = _mm512_dpbusd_epi32(e, lo, _mm512_set1_epi32(xe));
          od = _mm512_dpbusd_epi32(od, hi, _mm512_set1_epi32(xo));
        }
      }
      const __m512 sc = _mm512_load_ps(tsc + (g - g0) * kVRows);
      const __m512 bi = _mm512_load_ps(tbi + (g - g0) * kVRows);
      HWY_UNROLL(8)
      for (int r = 0; r < NR; ++r) {
        __m512i sum = _mm512_add_epi32(pe[0][r], po[0][r]);
        if constexpr (kChains == 2)
          sum = _mm512_add_epi32(sum, _mm512_add_epi32(pe[1][r], po[1][r]));
        const __m512 d = _mm512_set1_ps(dx[r * gpr + g]), x = _mm512_set1_ps(xs[r * gpr + g]);
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(sc, d), acc[r]);
        acc[r] = _mm512_fmadd_ps(bi, x, acc[r]);
      }
      if (g + 1 == first_chunk) {
        HWY_UNROLL(8)
        for (int r = 0; r < NR; ++r)
          acc[r] = _mm512_mask_add_ps(acc[r], static_cast<__mmask16>(~full), acc[r], bv);
      }
    }
  }
  HWY_UNROLL(8)
  for (int r = 0; r < NR; ++r) _mm512_mask_storeu_ps(y + r * w.out + o, in_range, acc[r]);
}

// Outputs [r0, r1) (r0 a multiple of 16), 16 at a time.
template <int NR, bool kPacked>
GP_VNNI_ATTR void FewRowsQ8VBlock(const Weight& w, const XQ* xq, const float* dx, const float* xs,
                                  int64_t r0, int64_t r1, float* y, const float* bias) {
  float* buf = thread_scratch(kScratchA, 2 * 16 * kVRows);
  for (int64_t o = r0; o < r1; o += kVRows)
    FewRowsQ8V<NR, kPacked>(w, xq, dx, xs, o, r1, y, bias, buf, o == r0);
}

// x [n, in], 1 <= n <= kFewRows, through the vertical kernel for every weight of outs, each
// read from its repacked copy where it has one (w.vq).
void LinearQ8FewImpl(const ops::LinearOut* outs, size_t n_outs, const float* x, int64_t n) {
  RunVertical<kVRows>(outs, n_outs, x, n,
                      [&](auto nr, const ops::LinearOut& out, const XQ* xq, const float* dx,
                          const float* xs, int64_t r0, int64_t r1) {
                        constexpr int NR = decltype(nr)::value;
                        if (out.w->vq)
                          return FewRowsQ8VBlock<NR, true>(*out.w, xq, dx, xs, r0, r1, out.y,
                                                           out.bias);
                        FewRowsQ8VBlock<NR, false>(*out.w, xq, dx, xs, r0, r1, out.y, out.bias);
                      });
}
#else
// The vertical kernel at 256 bits: 8 weight rows side by side, each int32 lane one output (see
// the AVX3_DL one above), with vpdpbusd (AVX-VNNI) or pmaddubsw + pmaddwd.
constexpr int64_t kV8Rows = 8;

// Lane i of t[j] = dword j of z[i], for 8 vectors of 8 dwords.
HWY_INLINE void Transpose8x8(const __m256i* z, __m256i* t) {
  __m256i u[2][4];
  HWY_UNROLL(2)
  for (int q = 0; q < 2; ++q) {
    const __m256i* s = z + 4 * q;
    const __m256i a = _mm256_unpacklo_epi32(s[0], s[1]), b = _mm256_unpackhi_epi32(s[0], s[1]);
    const __m256i c = _mm256_unpacklo_epi32(s[2], s[3]), d = _mm256_unpackhi_epi32(s[2], s[3]);
    u[q][0] = _mm256_unpacklo_epi64(a, c);
    u[q][1] = _mm256_unpackhi_epi64(a, c);
    u[q][2] = _mm256_unpacklo_epi64(b, d);
    u[q][3] = _mm256_unpackhi_epi64(b, d);
  }
  // Block b of u[q][e]: dword e + 4b of rows 4q to 4q + 3.
  HWY_UNROLL(4)
  for (int e = 0; e < 4; ++e) {
    t[e] = _mm256_permute2x128_si256(u[0][e], u[1][e], 0x20);
    t[e + 4] = _mm256_permute2x128_si256(u[0][e], u[1][e], 0x31);
  }
}

// 32 bytes at p[i] + off for the 8 rows, transposed.
HWY_INLINE void LoadTransposed8(const uint8_t* const* p, int64_t off, __m256i* t) {
  __m256i z[8];
  HWY_UNROLL(8)
  for (int i = 0; i < 8; ++i)
    z[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[i] + off));
  Transpose8x8(z, t);
}

// Outputs o .. o+7 (those below w.out) for the NR rows of x: xq row r at xq + r * in (QuantizeX
// order: each group's 32 even elements, then its 32 odd ones), dx and xs [NR, gpr]. cold: no
// earlier block prefetched this one's rows.
template <int NR, bool kVnni>
GP_AVXVNNI_ATTR void FewRowsQ8V8(const Weight& w, const XQ* xq, const float* dx, const float* xs,
                                 int64_t o, int64_t o_end, float* y, const float* bias, float* buf,
                                 bool cold) {
  const int64_t gpr = w.groups_per_row(), wpr = w.in / 8, gs = (gpr + 7) / 8 * 8;
  const size_t ss = dtype_size(w.scale_dtype);
  const int64_t first_chunk = std::min(gpr, kQKC / kGroup);
  // GemmQ8's panels are 8 outputs wide here: the block is one panel, full or the last partial.
  const bool full = o + kV8Rows <= w.out - w.out % QPanelWidth();
  float* rs = buf;
  float* rb = buf + kV8Rows * gs;
  float* tsc = rb + kV8Rows * gs;
  float* tbi = tsc + 8 * kV8Rows;
  const uint8_t* rows[kV8Rows];
  const uint8_t *srow[kV8Rows], *brow[kV8Rows];
  const int64_t valid = std::min<int64_t>(kV8Rows, w.out - o);
  HWY_ALIGN float bias_lanes[kV8Rows] = {};
  VerticalRowSources(w, o, kV8Rows, gs, rs, rb, rows, srow, brow, o + 2 * kV8Rows <= o_end);
  if (bias)
    for (int i = 0; i < valid; ++i) bias_lanes[i] = bias[o + i];
  const __m256 bv = _mm256_load_ps(bias_lanes);
  __m256 acc[NR];
  HWY_UNROLL(8)
  for (int r = 0; r < NR; ++r) acc[r] = full ? bv : _mm256_setzero_ps();
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const bool prefetch_next = o + 2 * kV8Rows <= o_end;
  const uint8_t* next =
      prefetch_next ? reinterpret_cast<const uint8_t*>(w.q + (o + kV8Rows) * wpr) : nullptr;
  for (int64_t g0 = 0; g0 < gpr; g0 += 8) {
    __m256i t[8];
    LoadTransposed8(srow, g0 * 4, t);
    HWY_UNROLL(8)
    for (int j = 0; j < 8; ++j) _mm256_store_si256(reinterpret_cast<__m256i*>(tsc + j * 8), t[j]);
    LoadTransposed8(brow, g0 * 4, t);
    HWY_UNROLL(8)
    for (int j = 0; j < 8; ++j) _mm256_store_si256(reinterpret_cast<__m256i*>(tbi + j * 8), t[j]);
    const int64_t g1 = std::min(gpr, g0 + 8);
    for (int64_t g = g0; g < g1; ++g) {
      if (prefetch_next) {
        HWY_UNROLL(4)
        for (int i = 0; i < 4; ++i) hwy::Prefetch(next + (g * 4 + i) * 64);
      }
      if (cold && (g & 1) == 0 && g + 8 < gpr) {  // a task's first block: its own rows ahead
        HWY_UNROLL(8)
        for (int i = 0; i < kV8Rows; ++i) hwy::Prefetch(rows[i] + (g + 8) * 32);
      }
      LoadTransposed8(rows, g * 32, t);
      __m256i pa[NR], pb[NR];
      HWY_UNROLL(8)
      for (int r = 0; r < NR; ++r) pa[r] = pb[r] = _mm256_setzero_si256();
      HWY_UNROLL(8)
      for (int j = 0; j < 8; ++j) {
        const __m256i lo = _mm256_and_si256(t[j], mask);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi32(t[j], 4), mask);
        HWY_UNROLL(8)
        for (int r = 0; r < NR; ++r) {
          int32_t xe, xo;
          std::memcpy(&xe, xq + r * w.in + g * kGroup + 4 * j, 4);
          std::memcpy(&xo, xq + r * w.in + g * kGroup + kGroup / 2 + 4 * j, 4);
          const __m256i be = _mm256_set1_epi32(xe), bo = _mm256_set1_epi32(xo);
#if GP_Q8_AVXVNNI
          if constexpr (kVnni) {
            pa[r] = _mm256_dpbusd_avx_epi32(pa[r], lo, be);
            pb[r] = _mm256_dpbusd_avx_epi32(pb[r], hi, bo);
            continue;
          }
#endif
          // int16 lanes: 4 steps of two pair sums <= 4 * 2 * 3810 < 32768 in each of pa, pb.
          const __m256i s =
              _mm256_add_epi16(_mm256_maddubs_epi16(lo, be), _mm256_maddubs_epi16(hi, bo));
          if (j < 4) {
            pa[r] = _mm256_add_epi16(pa[r], s);
          } else {
            pb[r] = _mm256_add_epi16(pb[r], s);
          }
        }
      }
      const __m256 sc = _mm256_load_ps(tsc + (g - g0) * 8), bi = _mm256_load_ps(tbi + (g - g0) * 8);
      HWY_UNROLL(8)
      for (int r = 0; r < NR; ++r) {
        const __m256i isum = kVnni ? _mm256_add_epi32(pa[r], pb[r])
                                   : _mm256_add_epi32(PairSumI16(hn::Vec<DBI16>{pa[r]}).raw,
                                                      PairSumI16(hn::Vec<DBI16>{pb[r]}).raw);
        const __m256 d = _mm256_set1_ps(dx[r * gpr + g]), x = _mm256_set1_ps(xs[r * gpr + g]);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(sc, d), acc[r]);
        acc[r] = _mm256_fmadd_ps(bi, x, acc[r]);
      }
      if (!full && g + 1 == first_chunk) {
        HWY_UNROLL(8)
        for (int r = 0; r < NR; ++r) acc[r] = _mm256_add_ps(acc[r], bv);
      }
    }
  }
  HWY_UNROLL(8)
  for (int r = 0; r < NR; ++r) {
    if (valid == kV8Rows) {
      _mm256_storeu_ps(y + r * w.out + o, acc[r]);
    } else {
      HWY_ALIGN float out[kV8Rows];
      _mm256_store_ps(out, acc[r]);
      std::memcpy(y + r * w.out + o, out, valid * sizeof(float));
    }
  }
}

// Outputs [r0, r1) (r0 a multiple of 8), 8 at a time.
template <int NR, bool kVnni>
GP_AVXVNNI_ATTR void FewRowsQ8V8Block(const Weight& w, const XQ* xq, const float* dx,
                                      const float* xs, int64_t r0, int64_t r1, float* y,
                                      const float* bias) {
  const int64_t gs = (w.groups_per_row() + 7) / 8 * 8;
  float* buf = thread_scratch(kScratchA, 2 * kV8Rows * gs + 2 * 8 * kV8Rows);
  for (int64_t o = r0; o < r1; o += kV8Rows)
    FewRowsQ8V8<NR, kVnni>(w, xq, dx, xs, o, r1, y, bias, buf, o == r0);
}

// x [n, in], 2 <= n <= kFewRows, through the 256-bit vertical kernel for every weight of outs.
void LinearQ8FewImpl(const ops::LinearOut* outs, size_t n_outs, const float* x, int64_t n) {
  [[maybe_unused]] const bool vnni = UseAvxVnni();
  RunVertical<kV8Rows>(outs, n_outs, x, n,
                       [&](auto nr, const ops::LinearOut& out, const XQ* xq, const float* dx,
                           const float* xs, int64_t r0, int64_t r1) {
                         constexpr int NR = decltype(nr)::value;
#if GP_Q8_AVXVNNI
                         if (vnni)
                           return FewRowsQ8V8Block<NR, true>(*out.w, xq, dx, xs, r0, r1, out.y,
                                                             out.bias);
#endif
                         FewRowsQ8V8Block<NR, false>(*out.w, xq, dx, xs, r0, r1, out.y, out.bias);
                       });
}
#endif  // GP_Q8_VNNI512
#endif  // GP_Q8_FEW

// ---------------------------------------------------------------- short prompts
//
// FewRowsMax() + 1 to kManyRows rows (a chat turn), on AVX3_DL: the few-row kernel's vertical
// layout (weight rows side by side, transposed in registers as they are read), 32 outputs at a
// time, each group's transposed nibbles meeting all rows of x, 8 rows at a time. The panel
// kernel instead unpacks every weight into a buffer and reads it back, which costs about as much
// as its products when a panel serves only 16 rows (docs/BENCHMARKS.md, Short prompts). The
// chains are GemmQ8's (see the few-row section's head): the rows' float accumulators live in a
// small buffer, the int32 sums of a tile of rows in registers.
#if GP_Q8_VNNI512
// Up to a chat turn's 128 rows: with its prefetches it beats the panel kernel at 64 and 128
// rows in BM_LinearQ8Panels and in gemma-bench's pp64 (docs/BENCHMARKS.md, Short prompts).
constexpr int64_t kManyRows = 128;
constexpr int kMTile = 8;                // rows of x per tile: 8 x 32 int32 sums in registers
constexpr int64_t kMCols = 32;           // outputs per block: two transposes of kVRows rows
constexpr int64_t kMPrefetchGroups = 4;  // this block's nibbles prefetched into L1 this far ahead
// The fewest blocks of a task: its first block's nibbles are read cold (nothing prefetched
// them), the others were prefetched into L2 while the one before ran.
constexpr int64_t kMTaskBlocks = 4;

// acc[r] (32 outputs) += one group of NR rows of x against the nibbles of 32 weight rows,
// transposed and spread to bytes: u[16h + j] and u[16h + 8 + j] the low and the high nibbles of
// dword j of outputs 16h .. 16h+15. xg: the group's 16 dwords of xq of the NR rows, dword k of
// row r at xg[r * 16 + k] (k < 8: the even elements 4k .. 4k+3, then the odd ones), so that
// every broadcast is at a fixed offset from one pointer and a row's group is two 32-byte copies
// of its xq; d, s: the rows' dx and xsum of the group; sc, bi: the outputs' scales and biases
// of the group.
template <int NR>
GP_VNNI_ATTR HWY_INLINE void ManyRowsTile(const __m512i* HWY_RESTRICT u,
                                          const int32_t* HWY_RESTRICT xg, const __m512* sc,
                                          const __m512* bi, const float* HWY_RESTRICT d,
                                          const float* HWY_RESTRICT s, float* HWY_RESTRICT acc) {
  __m512i p[NR][2];
  HWY_UNROLL(8)
  for (int r = 0; r < NR; ++r) p[r][0] = p[r][1] = _mm512_setzero_si512();
  HWY_UNROLL(8)
  for (int j = 0; j < 8; ++j) {
    const __m512i lo0 = _mm512_load_si512(u + j), lo1 = _mm512_load_si512(u + 16 + j);
    const __m512i hi0 = _mm512_load_si512(u + 8 + j), hi1 = _mm512_load_si512(u + 24 + j);
    HWY_UNROLL(8)
    for (int r = 0; r < NR; ++r) {
      const __m512i xe = _mm512_set1_epi32(xg[r * 16 + j]);
      const __m512i xo = _mm512_set1_epi32(xg[r * 16 + 8 + j]);
      p[r][0] = _mm512_dpbusd_epi32(p[r][0], lo0, xe);
      p[r][1] = _mm512_dpbusd_epi32(p[r][1], lo1, xe);
      p[r][0] = _mm512_dpbusd_epi32(p[r][0], hi0, xo);
      p[r][1] = _mm512_dpbusd_epi32(p[r][1], hi1, xo);
    }
  }
  HWY_UNROLL(8)
  for (int r = 0; r < NR; ++r) {
    const __m512 dv = _mm512_set1_ps(d[r]), sv = _mm512_set1_ps(s[r]);
    HWY_UNROLL(2)
    for (int h = 0; h < 2; ++h) {
      float* ar = acc + r * kMCols + 16 * h;
      __m512 a = _mm512_load_ps(ar);
      a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[r][h]), _mm512_mul_ps(sc[h], dv), a);
      _mm512_store_ps(ar, _mm512_fmadd_ps(bi[h], sv, a));
    }
  }
}

// Outputs o .. o+31 (those below w.out) for n rows of x, given as xt [gpr][np][16] dwords (see
// ManyRowsTile), dt and st [gpr][np] (np a multiple of 4; rows past n repeat the last one and
// are not stored). buf: the f32 scales and biases of 16 groups of the 32 rows, transposed as
// stored (TransposedScales: [2 halves][16 groups][16 outputs] each), the spread nibbles (32
// vectors), then the accumulators [np][32]. kPacked: the nibbles come from the repacked copy
// (w.vq) instead of the mapped rows.
template <bool kPacked>
GP_VNNI_ATTR void ManyRowsQ8V(const Weight& w, const int32_t* xt, const float* dt, const float* st,
                              int64_t n, int64_t np, int64_t o, int64_t o_end, float* y,
                              const float* bias, float* buf) {
  const int64_t gpr = w.groups_per_row(), wpr = w.in / 8;
  const auto ss = static_cast<int64_t>(dtype_size(w.scale_dtype));
  const int64_t partial = w.out - w.out % QPanelWidth();
  const int64_t first_chunk = std::min(gpr, kQKC / kGroup);
  float* tsc = buf;
  float* tbi = tsc + 16 * kMCols;
  auto* u = reinterpret_cast<__m512i*>(tbi + 16 * kMCols);
  float* acc = tbi + 16 * kMCols + 32 * 16;
  const __m512i mask = _mm512_set1_epi8(0x0F);
  const uint8_t* rows[kMCols];
  const uint8_t *srow[kMCols], *brow[kMCols];
  // The next block's scales and biases are prefetched now; its nibbles into L2 while this block
  // runs (a whole block ahead does not fit L1 beside x), this block's into L1 a few groups ahead.
  const bool prefetch_next = o + 2 * kMCols <= o_end;
  VerticalRowPointers(w, o, kMCols, rows, srow, brow, prefetch_next);
  // Per half h (outputs o + 16h ..): the outputs below w.out, those in full panels (started
  // from the bias; the others get it after the first chunk), the bias.
  __mmask16 in_range[2], not_full[2];
  __m512 bv[2];
  for (int h = 0; h < 2; ++h) {
    const int64_t oh = o + 16 * h;
    const int64_t valid = std::clamp<int64_t>(w.out - oh, 0, kVRows);
    const int64_t n_full = std::clamp<int64_t>(partial - oh, 0, kVRows);
    in_range[h] = static_cast<__mmask16>((1u << valid) - 1);
    not_full[h] = static_cast<__mmask16>(~((1u << n_full) - 1));
    bv[h] = bias ? _mm512_maskz_loadu_ps(in_range[h], bias + oh) : _mm512_setzero_ps();
    for (int64_t r = 0; r < np; ++r)
      _mm512_store_ps(acc + r * kMCols + 16 * h,
                      _mm512_maskz_mov_ps(static_cast<__mmask16>(~not_full[h]), bv[h]));
  }
  const uint8_t* next =
      prefetch_next ? reinterpret_cast<const uint8_t*>(w.q + (o + kMCols) * wpr) : nullptr;
  // Packed: the two halves' blocks of 16 rows (the last one again past w.out), each one stream
  // of gpr * kVGroupBytes bytes, the next 32 outputs' two right after them.
  const int64_t last_block = (w.out - 1) / kVRows, block_bytes = gpr * kVGroupBytes;
  const uint8_t* pk[2] = {};
  if constexpr (kPacked) {
    pk[0] = w.vq + std::min(o / kVRows, last_block) * block_bytes;
    pk[1] = w.vq + std::min(o / kVRows + 1, last_block) * block_bytes;
    if (prefetch_next) next = pk[0] + 2 * block_bytes;
  }
  for (int64_t g0 = 0; g0 < gpr; g0 += 16) {
    // The next 16 groups' scales and biases into L1 (as FewRowsQ8V's). These are read as
    // stored, two groups a dword, not copied to f32 rows first: converting 32 rows of them cost
    // a tenth of the kernel at 16 rows.
    if (g0 + 16 < gpr) PrefetchRowsAt<kMCols>(srow, brow, (g0 + 16) * ss);
    for (int h = 0; h < 2; ++h) {
      TransposedScales(srow + 16 * h, w.scale_dtype, g0, gpr, tsc + 16 * kVRows * h);
      TransposedScales(brow + 16 * h, w.scale_dtype, g0, gpr, tbi + 16 * kVRows * h);
    }
    __m512i t[8];
    const int64_t g1 = std::min(gpr, g0 + 16);
    for (int64_t g = g0; g < g1; ++g) {
      if (prefetch_next) {
        HWY_UNROLL(16)
        for (int i = 0; i < 16; ++i) {
          const int64_t off =
              kPacked ? (i / 8) * block_bytes + g * kVGroupBytes + (i % 8) * 64 : (g * 16 + i) * 64;
          _mm_prefetch(reinterpret_cast<const char*>(next + off), _MM_HINT_T1);
        }
      }
      if (g + kMPrefetchGroups < gpr) {
        if constexpr (kPacked) {
          HWY_UNROLL(16)
          for (int i = 0; i < 16; ++i)
            hwy::Prefetch(pk[i / 8] + (g + kMPrefetchGroups) * kVGroupBytes + (i % 8) * 64);
        } else {
          HWY_UNROLL(32)
          for (int i = 0; i < kMCols; ++i) hwy::Prefetch(rows[i] + (g + kMPrefetchGroups) * 32);
        }
      }
      for (int h = 0; h < 2; ++h) {
        if constexpr (kPacked) {
          HWY_UNROLL(8)
          for (int j = 0; j < 8; ++j) t[j] = _mm512_loadu_si512(pk[h] + g * kVGroupBytes + j * 64);
        } else {
          LoadTransposed(rows + 16 * h, g * 32, t);
        }
        HWY_UNROLL(8)
        for (int j = 0; j < 8; ++j) {
          _mm512_store_si512(u + 16 * h + j, _mm512_and_si512(t[j], mask));
          _mm512_store_si512(u + 16 * h + 8 + j,
                             _mm512_and_si512(_mm512_srli_epi32(t[j], 4), mask));
        }
      }
      const __m512 sc[2] = {_mm512_load_ps(tsc + (g - g0) * kVRows),
                            _mm512_load_ps(tsc + (16 + g - g0) * kVRows)};
      const __m512 bi[2] = {_mm512_load_ps(tbi + (g - g0) * kVRows),
                            _mm512_load_ps(tbi + (16 + g - g0) * kVRows)};
      for (int64_t r0 = 0; r0 < np; r0 += kMTile) {
        const int32_t* xg = xt + (g * np + r0) * 16;
        const float* d = dt + g * np + r0;
        const float* s = st + g * np + r0;
        float* a = acc + r0 * kMCols;
        if (np - r0 >= kMTile) {
          ManyRowsTile<kMTile>(u, xg, sc, bi, d, s, a);
        } else {
          ManyRowsTile<4>(u, xg, sc, bi, d, s, a);
        }
      }
      if (g + 1 == first_chunk) {
        for (int64_t r = 0; r < np; ++r) {
          for (int h = 0; h < 2; ++h) {
            float* ar = acc + r * kMCols + 16 * h;
            const __m512 a = _mm512_load_ps(ar);
            _mm512_store_ps(ar, _mm512_mask_add_ps(a, not_full[h], a, bv[h]));
          }
        }
      }
    }
  }
  for (int64_t r = 0; r < n; ++r) {
    for (int h = 0; h < 2; ++h) {
      _mm512_mask_storeu_ps(y + r * w.out + o + 16 * h, in_range[h],
                            _mm512_load_ps(acc + r * kMCols + 16 * h));
    }
  }
}

// One row of x [gpr * 64] quantized with QuantizeX's bits (its group sums added in the same
// order, 16 groups at a time, one per lane; its rounding in the same operations, which the
// compiler contracts alike: gcc fuses both into a multiply-add) straight into row pr of the tiles:
// xt [gpr][np][16] dwords (a group's 32 even elements, then its 32 odd ones), dt and st [gpr][np].
// QuantizeX's scalar chain of 64 dependent adds per group cost about a tenth of the kernel at 16
// rows.
GP_VNNI_ATTR void QuantizeTileRow(const float* x, int64_t gpr, int64_t np, int64_t pr,
                                  int32_t* HWY_RESTRICT xt, float* HWY_RESTRICT dt,
                                  float* HWY_RESTRICT st) {
  const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
  const __m512 round = _mm512_set1_ps(12582912.0f);
  float inv[16], dx[16], sum[16];
  for (int64_t g0 = 0; g0 < gpr; g0 += 16) {
    const int count = static_cast<int>(std::min<int64_t>(16, gpr - g0));
    const float* xb = x + g0 * kGroup;
    GroupScales(xb, count, dx, inv, sum);
    for (int k = 0; k < count; ++k) {
      const int64_t g = g0 + k;
      dt[g * np + pr] = dx[k];
      st[g * np + pr] = sum[k];
      const __m512 iv = _mm512_set1_ps(inv[k]);
      const float* xg = xb + k * kGroup;
      const __m512 v[4] = {_mm512_loadu_ps(xg), _mm512_loadu_ps(xg + 16), _mm512_loadu_ps(xg + 32),
                           _mm512_loadu_ps(xg + 48)};
      auto q = [&](__m512 e) {  // RoundQ(e * inv) as int8, written as RoundQ is
        const __m512 r = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(e, iv), round), round);
        return _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(r));
      };
      auto* out = reinterpret_cast<__m128i*>(xt + (g * np + pr) * 16);
      _mm_storeu_si128(out + 0, q(_mm512_permutex2var_ps(v[0], evens, v[1])));
      _mm_storeu_si128(out + 1, q(_mm512_permutex2var_ps(v[2], evens, v[3])));
      _mm_storeu_si128(out + 2, q(_mm512_permutex2var_ps(v[0], odds, v[1])));
      _mm_storeu_si128(out + 3, q(_mm512_permutex2var_ps(v[2], odds, v[3])));
    }
  }
}

// x [n, in], FewRowsMax() < n <= kManyRows, through the n_outs weights of outs (the same input
// width, as ops::linear_many's): each row quantized once into the tiles' layout (on the pool
// when large), then the blocks of 32-output groups of every weight in one pass over the pool.
// Separately, q, k and v (gate and up) quantized x and woke the pool once each.
void LinearQ8ManyImpl(const ops::LinearOut* outs, size_t n_outs, const float* x, int64_t n) {
  const int64_t in = outs[0].w->in, gpr = in / kGroup, np = (n + 3) / 4 * 4;
  size_t bytes = 0;
  const std::vector<RowTask>& tasks = RowTasks(outs, n_outs, kMCols, kMTaskBlocks, &bytes);
  // Caller's slots D-E (the workers use A): dx and xsum [gpr][np], xt [gpr][np][16] dwords.
  float* dt = thread_scratch(kScratchD, 2 * gpr * np);
  float* st = dt + gpr * np;
  auto* xt = reinterpret_cast<int32_t*>(thread_scratch(kScratchE, gpr * np * 16));
  auto quantize = [&](int64_t r, int) {
    // Row r, and after the last row the padding rows that repeat it.
    for (int64_t pr = r; pr < (r == n - 1 ? np : r + 1); ++pr)
      QuantizeTileRow(x + r * in, gpr, np, pr, xt, dt, st);
  };
  parallel_blocks(n, bytes, quantize);
  auto run = [&](int64_t k, int) {
    const RowTask& t = tasks[k];
    float* buf = thread_scratch(kScratchA, 2 * 16 * kMCols + 32 * 16 + np * kMCols);
    for (int64_t o = t.r0; o < t.r1; o += kMCols) {
      if (t.out->w->vq) {
        ManyRowsQ8V<true>(*t.out->w, xt, dt, st, n, np, o, t.r1, t.out->y, t.out->bias, buf);
      } else {
        ManyRowsQ8V<false>(*t.out->w, xt, dt, st, n, np, o, t.r1, t.out->y, t.out->bias, buf);
      }
    }
  };
  parallel_blocks(static_cast<int64_t>(tasks.size()), bytes, run);
}
#endif  // GP_Q8_VNNI512

// Bytes of w's nibbles in the vertical kernels' layout, 16 rows transposed per group
// ([ceil(out/16)][gpr][8][16] dwords, rows past w.out repeating the last one); 0 where this
// target does not read that layout (all but AVX3_DL) or w has no int8 path.
size_t Q8VerticalBytesImpl(const Weight& w) {
#if GP_Q8_VNNI512
  if (!(w.quantized && w.fmt.bits == 4 && w.fmt.group_size == kGroup) || w.out <= 0) return 0;
  return static_cast<size_t>((w.out + kVRows - 1) / kVRows * w.groups_per_row() * kVGroupBytes);
#else
  (void)w;
  return 0;
#endif
}

// Blocks [b0, b1) of 16 rows of that layout into dst (Q8VerticalBytesImpl(w) bytes), read
// from w.q.
void PackQ8VerticalImpl(const Weight& w, uint8_t* dst, int64_t b0, int64_t b1) {
#if GP_Q8_VNNI512
  const int64_t gpr = w.groups_per_row(), wpr = w.in / 8;
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* rows[kVRows];
    for (int i = 0; i < kVRows; ++i)
      rows[i] = reinterpret_cast<const uint8_t*>(w.q + std::min(b * kVRows + i, w.out - 1) * wpr);
    for (int64_t g = 0; g < gpr; ++g) {
      __m512i t[8];
      LoadTransposed(rows, g * 32, t);
      uint8_t* p = dst + (b * gpr + g) * kVGroupBytes;
      HWY_UNROLL(8)
      for (int j = 0; j < 8; ++j) _mm512_storeu_si512(p + j * 64, t[j]);
    }
  }
#else
  (void)w, (void)dst, (void)b0, (void)b1;
#endif
}

// The most rows the few-row kernel takes on this target (0: none).
int64_t FewRowsMaxImpl() {
#if GP_Q8_FEW
  return FewRowsMax();
#else
  return 0;
#endif
}

// Which int8 kernel linear_q8 runs on this target (linear_q8_kernel_name()).
const char* Q8KernelNameImpl() {
#if GP_Q8_VNNI512 || GP_Q8_VNNI512_CPU
  return UseVnni512() ? "vpdpbusd 512-bit (AVX512-VNNI)" : "pmaddubsw + pmaddwd 256-bit";
#elif GP_Q8_AVXVNNI
  return UseAvxVnni() ? "vpdpbusd 256-bit (AVX-VNNI)" : "pmaddubsw + pmaddwd 256-bit";
#elif GP_Q8_X86
  return HWY_TARGET <= HWY_AVX2 ? "pmaddubsw + pmaddwd 256-bit" : "pmaddubsw + pmaddwd 128-bit";
#elif GP_Q8_ARM
  return arm::q8_kernels().name;
#else
  return "16-bit multiply-adds";
#endif
}

// x [n, in], n >= 1, through every weight of outs (the same input width): one row through the
// one-row kernel; the few-row and the short-prompt kernels run them all in one pass over the
// pool, x quantized once; the panel kernel runs one weight after the other. Each output gets the
// bits of its weight alone. Weights repacked at load (all of outs or none: the load repacks by
// input width) take the vertical kernel for one row too, since they are read from the repacked
// copy only; the one-row kernel would read their mapped rows.
void LinearQ8RowsImpl(const ops::LinearOut* outs, size_t n_outs, const float* x, int64_t n) {
  if (n <= 0) return;
#if GP_Q8_VNNI512
  if (n == 1 && outs[0].w->vq) return LinearQ8FewImpl(outs, n_outs, x, 1);
#endif
  if (n == 1) return LinearQ8OneRowImpl(outs, n_outs, x);
#if GP_Q8_FEW
  if (n <= FewRowsMax()) return LinearQ8FewImpl(outs, n_outs, x, n);
#endif
#if GP_Q8_VNNI512
  if (n <= kManyRows) return LinearQ8ManyImpl(outs, n_outs, x, n);
#endif
  for (size_t j = 0; j < n_outs; ++j) {
    if (outs[j].w->out > 0) GemmQ8(*outs[j].w, x, n, outs[j].y, outs[j].bias);
  }
}

// GemmQ8 for any n: the reference of the few-row kernel's tests.
void LinearQ8GemmImpl(const Weight& w, const float* x, int64_t n, float* y, const float* bias) {
  if (n <= 0 || w.out <= 0) return;
  GemmQ8(w, x, n, y, bias);
}

}  // namespace gp::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace gp::cpu {

HWY_EXPORT(LinearQ8RowsImpl);
HWY_EXPORT(LinearQ8GemmImpl);
HWY_EXPORT(FewRowsMaxImpl);
HWY_EXPORT(Q8VerticalBytesImpl);
HWY_EXPORT(PackQ8VerticalImpl);
HWY_EXPORT(Q8KernelNameImpl);

namespace {
// Only MLX 4-bit group-64 weights have an int8 path.
bool has_q8_path(const Weight& w) {
  return w.quantized && w.fmt.bits == 4 && w.fmt.group_size == 64;
}

std::atomic<bool> g_avx_vnni_enabled{true};
std::atomic<bool> g_avx512_vnni_enabled{true};
// The widest input the load repacks: over the copy of a 2560-input weight the vertical kernel
// gains from 2 rows on and decodes one row from cache 15 % faster than the one-row kernel over
// the mapped rows (from memory on two threads, 0.7-1.2x); at 10240 inputs it decodes slower
// (docs/BENCHMARKS.md, A load-time repack).
constexpr int64_t kRepackMaxIn = 4096;
}  // namespace

bool cpu_has_avx_vnni() {
#if HWY_ARCH_X86
  // CPUID leaf 7, subleaf 1: EAX bit 4. (The OS's saving of the YMM state, which it also needs,
  // is what the AVX2 target that runs it requires.)
  static const bool has = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 4)) != 0;
  }();
  return has;
#else
  return false;
#endif
}

bool avx_vnni_in_use() {
  return cpu_has_avx_vnni() && g_avx_vnni_enabled.load(std::memory_order_relaxed);
}

void set_avx_vnni_enabled(bool enabled) { g_avx_vnni_enabled.store(enabled); }

bool cpu_has_avx512_vnni() {
#if HWY_ARCH_X86
  // CPUID leaf 7, subleaf 0: ECX bit 11. (The OS's saving of the ZMM state, which it also needs,
  // is what the AVX3 target that runs it requires.)
  static const bool has = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 11)) != 0;
  }();
  return has;
#else
  return false;
#endif
}

bool avx512_vnni_in_use() {
  return cpu_has_avx512_vnni() && g_avx512_vnni_enabled.load(std::memory_order_relaxed);
}

void set_avx512_vnni_enabled(bool enabled) { g_avx512_vnni_enabled.store(enabled); }

const char* linear_q8_kernel_name() { return HWY_DYNAMIC_DISPATCH(Q8KernelNameImpl)(); }

void linear_q8(const Weight& w, const float* x, int64_t n, float* y, const float* bias) {
  if (!has_q8_path(w)) return linear(w, x, n, y, bias);
  if (n <= 0 || w.out <= 0) return;
  const ops::LinearOut out{&w, y, bias};
  HWY_DYNAMIC_DISPATCH(LinearQ8RowsImpl)(&out, 1, x, n);
}

void linear_q8_gemm(const Weight& w, const float* x, int64_t n, float* y, const float* bias) {
  if (!has_q8_path(w)) return linear(w, x, n, y, bias);
  HWY_DYNAMIC_DISPATCH(LinearQ8GemmImpl)(w, x, n, y, bias);
}

int64_t linear_q8_few_rows_max() { return HWY_DYNAMIC_DISPATCH(FewRowsMaxImpl)(); }

size_t q8_repack_bytes(const Weight& w) { return HWY_DYNAMIC_DISPATCH(Q8VerticalBytesImpl)(w); }

bool q8_repack_gains(const Weight& w) { return w.in <= kRepackMaxIn && q8_repack_bytes(w) > 0; }

void q8_repack(const Weight& w, uint8_t* dst) {
  constexpr int64_t kTaskBlocks = 8;  // of 16 rows: 40-160 KB of nibbles in 4-bit Gemma layers
  const int64_t blocks = (w.out + 15) / 16, tasks = (blocks + kTaskBlocks - 1) / kTaskBlocks;
  parallel_blocks(tasks, [&](int64_t t, int) {
    HWY_DYNAMIC_DISPATCH(PackQ8VerticalImpl)
    (w, dst, t * kTaskBlocks, std::min(blocks, (t + 1) * kTaskBlocks));
  });
}

void linear_many(std::span<const ops::LinearOut> outs, const float* x, int64_t n,
                 ops::Activations act) {
  if (outs.empty() || n <= 0) return;
  // Every weight int8, of one input width: the one-row kernel, or for a few rows (batched
  // decode) the few-row kernel and for a short prompt the short-prompt one, runs them all in one
  // pass.
  const bool one_pass = act == ops::Activations::kInt8 &&
                        std::all_of(outs.begin(), outs.end(), [&](const ops::LinearOut& o) {
                          return has_q8_path(*o.w) && o.w->in == outs[0].w->in && o.w->out > 0 &&
                                 !o.w->vq == !outs[0].w->vq;
                        });
  if (one_pass) return HWY_DYNAMIC_DISPATCH(LinearQ8RowsImpl)(outs.data(), outs.size(), x, n);
  for (const ops::LinearOut& o : outs) {
    if (act == ops::Activations::kInt8) {
      linear_q8(*o.w, x, n, o.y, o.bias);
    } else {
      linear(*o.w, x, n, o.y, o.bias);
    }
  }
}

}  // namespace gp::cpu
#endif  // HWY_ONCE
