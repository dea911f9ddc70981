// Per-target building blocks shared by the linear and attention kernels: the register-blocked
// matrix-multiply micro-kernel and float-format conversion. Included once per Highway target.
#if defined(GP_KERNELS_CPU_GEMM_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef GP_KERNELS_CPU_GEMM_INL_H_
#undef GP_KERNELS_CPU_GEMM_INL_H_
#else
#define GP_KERNELS_CPU_GEMM_INL_H_
#endif

#include <cstring>

#include "hwy/highway.h"
#include "tensor/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace gp::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Rows of the register tile: MR rows x 2 vectors of accumulators, plus 2 for B and 1 broadcast,
// fit the 16 vector registers of SSE4/AVX2/NEON.
constexpr int kMR = 6;

// Columns of the register tile (two vectors): the width of every packed B panel.
HWY_INLINE size_t PanelWidth() { return 2 * hn::Lanes(hn::ScalableTag<float>()); }

// C[r, 0..NR) (=|+=) sum_k A[r][k] * B[k, 0..NR) for r < MR, where B is a packed panel
// [kc][NR] (aligned) and A, C are given by row pointers. With `init` (NR values), C starts from
// init instead of its current contents.
template <int MR>
HWY_INLINE void MicroKernel(const float* const* a, size_t kc, const float* HWY_RESTRICT b,
                            float* const* c, const float* init) {
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  const size_t N = hn::Lanes(d);
  const float* a0 = a[0];
  const float* a1 = MR > 1 ? a[1] : a0;
  const float* a2 = MR > 2 ? a[2] : a0;
  const float* a3 = MR > 3 ? a[3] : a0;
  const float* a4 = MR > 4 ? a[4] : a0;
  const float* a5 = MR > 5 ? a[5] : a0;
  auto start = [&](int r, size_t half) -> V {
    return init ? hn::LoadU(d, init + half * N) : hn::LoadU(d, c[r] + half * N);
  };
  V c00 = start(0, 0), c01 = start(0, 1);
  V c10 = c00, c11 = c01, c20 = c00, c21 = c01, c30 = c00, c31 = c01, c40 = c00, c41 = c01,
    c50 = c00, c51 = c01;
  if constexpr (MR > 1) c10 = start(1, 0), c11 = start(1, 1);
  if constexpr (MR > 2) c20 = start(2, 0), c21 = start(2, 1);
  if constexpr (MR > 3) c30 = start(3, 0), c31 = start(3, 1);
  if constexpr (MR > 4) c40 = start(4, 0), c41 = start(4, 1);
  if constexpr (MR > 5) c50 = start(5, 0), c51 = start(5, 1);
  const size_t NR = 2 * N;
  for (size_t k = 0; k < kc; ++k) {
    const V b0 = hn::Load(d, b + k * NR), b1 = hn::Load(d, b + k * NR + N);
    V av = hn::Set(d, a0[k]);
    c00 = hn::MulAdd(av, b0, c00);
    c01 = hn::MulAdd(av, b1, c01);
    if constexpr (MR > 1) {
      av = hn::Set(d, a1[k]);
      c10 = hn::MulAdd(av, b0, c10);
      c11 = hn::MulAdd(av, b1, c11);
    }
    if constexpr (MR > 2) {
      av = hn::Set(d, a2[k]);
      c20 = hn::MulAdd(av, b0, c20);
      c21 = hn::MulAdd(av, b1, c21);
    }
    if constexpr (MR > 3) {
      av = hn::Set(d, a3[k]);
      c30 = hn::MulAdd(av, b0, c30);
      c31 = hn::MulAdd(av, b1, c31);
    }
    if constexpr (MR > 4) {
      av = hn::Set(d, a4[k]);
      c40 = hn::MulAdd(av, b0, c40);
      c41 = hn::MulAdd(av, b1, c41);
    }
    if constexpr (MR > 5) {
      av = hn::Set(d, a5[k]);
      c50 = hn::MulAdd(av, b0, c50);
      c51 = hn::MulAdd(av, b1, c51);
    }
  }
  hn::StoreU(c00, d, c[0]);
  hn::StoreU(c01, d, c[0] + N);
  if constexpr (MR > 1) hn::StoreU(c10, d, c[1]), hn::StoreU(c11, d, c[1] + N);
  if constexpr (MR > 2) hn::StoreU(c20, d, c[2]), hn::StoreU(c21, d, c[2] + N);
  if constexpr (MR > 3) hn::StoreU(c30, d, c[3]), hn::StoreU(c31, d, c[3] + N);
  if constexpr (MR > 4) hn::StoreU(c40, d, c[4]), hn::StoreU(c41, d, c[4] + N);
  if constexpr (MR > 5) hn::StoreU(c50, d, c[5]), hn::StoreU(c51, d, c[5] + N);
}

// MicroKernel for mr = 1..kMR rows, chosen at run time.
HWY_INLINE void MicroKernelRows(size_t mr, const float* const* a, size_t kc,
                                const float* HWY_RESTRICT b, float* const* c, const float* init) {
  switch (mr) {
    case 1:
      return MicroKernel<1>(a, kc, b, c, init);
    case 2:
      return MicroKernel<2>(a, kc, b, c, init);
    case 3:
      return MicroKernel<3>(a, kc, b, c, init);
    case 4:
      return MicroKernel<4>(a, kc, b, c, init);
    case 5:
      return MicroKernel<5>(a, kc, b, c, init);
    default:
      return MicroKernel<6>(a, kc, b, c, init);
  }
}

// As MicroKernelRows, but only the first nc (< NR) columns of each C row exist: the tile goes
// through a buffer `tile` [kMR][NR].
HWY_INLINE void MicroKernelPartial(size_t mr, size_t nc, const float* const* a, size_t kc,
                                   const float* HWY_RESTRICT b, float* const* c, const float* init,
                                   float* tile) {
  const size_t NR = PanelWidth();
  float* rows[kMR];
  for (size_t r = 0; r < mr; ++r) {
    rows[r] = tile + r * NR;
    if (!init) {
      std::memcpy(rows[r], c[r], nc * sizeof(float));
      std::memset(rows[r] + nc, 0, (NR - nc) * sizeof(float));
    }
  }
  MicroKernelRows(mr, a, kc, b, rows, init);
  for (size_t r = 0; r < mr; ++r) std::memcpy(c[r], rows[r], nc * sizeof(float));
}

// Lanes i .. i+N of src stored as `t` (BF16, F16 or F32), as f32. Unaligned src.
template <class DF>
HWY_INLINE hn::Vec<DF> LoadAsF32(DF df, DType t, const void* src, size_t i) {
  if (t == DType::F32) return hn::LoadU(df, static_cast<const float*>(src) + i);
  if (t == DType::BF16) {
    const hn::RebindToUnsigned<DF> du32;
    const hn::Rebind<uint16_t, DF> du16;
    const auto* p = static_cast<const uint16_t*>(src) + i;
    return hn::BitCast(df, hn::ShiftLeft<16>(hn::PromoteTo(du32, hn::LoadU(du16, p))));
  }
  const hn::Rebind<hwy::float16_t, DF> dh;
  return hn::PromoteTo(df, hn::LoadU(dh, static_cast<const hwy::float16_t*>(src) + i));
}

// dst[0..n) = src[0..n) stored as `t` (BF16, F16 or F32), converted to f32. Unaligned src.
HWY_INLINE void ToF32(DType t, const void* src, size_t n, float* HWY_RESTRICT dst) {
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(LoadAsF32(df, t, src, i), df, dst + i);
  for (; i < n; ++i) dst[i] = load_float(t, src, i);
}

// sum_i a[i] * b[i] over n values (any n), f32 with vector accumulators.
HWY_INLINE float Dot(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  auto s0 = hn::Zero(d), s1 = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    s0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), s0);
    s1 = hn::MulAdd(hn::LoadU(d, a + i + N), hn::LoadU(d, b + i + N), s1);
  }
  for (; i + N <= n; i += N) s0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), s0);
  float s = hn::GetLane(hn::SumOfLanes(d, hn::Add(s0, s1)));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace gp::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // GP_KERNELS_CPU_GEMM_INL_H_
