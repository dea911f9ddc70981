// Multi-head attention with grouped-query sharing and the masks of ops::AttentionMask.
// Few queries (decode): per (query, kv head) dot products over the keys, the keys split over
// threads and the partial softmaxes merged. Many queries (prefill, vision): per kv head, the
// keys are packed into panels (K transposed, V padded) and blocks of query rows run two small
// matrix products per key block with an online softmax in between (flash-attention order).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "base/thread_pool.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/scratch.h"
#include "kernels/ref/ref.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/attention.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// The per-target headers below must follow foreach_target.h.
#include "hwy/cache_control.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "kernels/cpu/gemm-inl.h"

#ifndef GP_KERNELS_CPU_ATTENTION_ONCE
#define GP_KERNELS_CPU_ATTENTION_ONCE
namespace gp::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The arguments of one attention call, with the keys of all segments numbered 0..n_keys.
struct AttnArgs {
  const float* q;
  int64_t n_q;
  int n_heads, n_kv_heads, head_dim, group;
  const int32_t* q_pos;
  const int32_t* q_group;
  std::span<const ops::KvSegment> kv;
  ops::AttentionMask mask;
  float scale;
  float* out;
  std::vector<int64_t> seg_start;  // [kv.size() + 1] first key number of each segment
  int64_t n_keys;
};

// Calls fn(segment, j_begin, j_end, first_key_number) for the keys [k0, k1) segment by segment.
template <class Fn>
void for_key_range(const AttnArgs& a, int64_t k0, int64_t k1, const Fn& fn) {
  for (size_t s = 0; s < a.kv.size(); ++s) {
    const int64_t b = std::max(k0, a.seg_start[s]), e = std::min(k1, a.seg_start[s + 1]);
    if (b < e) fn(a.kv[s], b - a.seg_start[s], e - a.seg_start[s], b);
  }
}

// Whether query row t sees key j of segment `seg` (ref::visible, plus "no mask" cases).
inline bool sees(const AttnArgs& a, int64_t t, const ops::KvSegment& seg, int64_t j) {
  if (!a.q_pos || !seg.pos) return true;
  return ref::visible(a.q_pos[t], a.q_group ? a.q_group[t] : -1, seg.pos[j],
                      seg.group ? seg.group[j] : -1, a.mask);
}

}  // namespace
}  // namespace gp::cpu
#endif  // GP_KERNELS_CPU_ATTENTION_ONCE

HWY_BEFORE_NAMESPACE();
namespace gp::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// x[i] = exp(x[i] - m) over n values, returning their sum; -inf entries give 0.
HWY_NOINLINE float ExpShiftSum(float* HWY_RESTRICT x, int64_t n, float m) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto vm = hn::Set(df, m);
  auto sum = hn::Zero(df);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto e = hn::Exp(df, hn::Sub(hn::LoadU(df, x + i), vm));
    hn::StoreU(e, df, x + i);
    sum = hn::Add(sum, e);
  }
  float s = hn::GetLane(hn::SumOfLanes(df, sum));
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    s += x[i];
  }
  return s;
}

HWY_NOINLINE float MaxOf(const float* HWY_RESTRICT x, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto vmax = hn::Set(df, kNegInf);
  int64_t i = 0;
  for (; i + N <= n; i += N) vmax = hn::Max(vmax, hn::LoadU(df, x + i));
  float m = hn::GetLane(hn::MaxOfLanes(df, vmax));
  for (; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

// x[i] *= s over n values.
HWY_INLINE void Scale(float* HWY_RESTRICT x, int64_t n, float s) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto vs = hn::Set(df, s);
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Mul(hn::LoadU(df, x + i), vs), df, x + i);
  for (; i < n; ++i) x[i] *= s;
}

// acc[i] += p * v[i] over n values.
HWY_INLINE void AddScaled(float* HWY_RESTRICT acc, const float* HWY_RESTRICT v, int64_t n,
                          float p) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto vp = hn::Set(df, p);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::MulAdd(vp, hn::LoadU(df, v + i), hn::LoadU(df, acc + i)), df, acc + i);
  }
  for (; i < n; ++i) acc[i] += p * v[i];
}

// o[0..n) += sum_j p[j] * v_j[0..n) over the keys with vis[j], keeping a strip of o in
// registers across the keys (one load and store of o per block, not per key).
HWY_INLINE void AccumulateV(float* HWY_RESTRICT o, const float* const* v, const float* p,
                            const bool* vis, int64_t nb, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    auto a0 = hn::LoadU(df, o + i), a1 = hn::LoadU(df, o + i + N);
    auto a2 = hn::LoadU(df, o + i + 2 * N), a3 = hn::LoadU(df, o + i + 3 * N);
    for (int64_t j = 0; j < nb; ++j) {
      if (!vis[j]) continue;
      const auto pj = hn::Set(df, p[j]);
      a0 = hn::MulAdd(pj, hn::LoadU(df, v[j] + i), a0);
      a1 = hn::MulAdd(pj, hn::LoadU(df, v[j] + i + N), a1);
      a2 = hn::MulAdd(pj, hn::LoadU(df, v[j] + i + 2 * N), a2);
      a3 = hn::MulAdd(pj, hn::LoadU(df, v[j] + i + 3 * N), a3);
    }
    hn::StoreU(a0, df, o + i);
    hn::StoreU(a1, df, o + i + N);
    hn::StoreU(a2, df, o + i + 2 * N);
    hn::StoreU(a3, df, o + i + 3 * N);
  }
  for (; i + N <= n; i += N) {
    auto a0 = hn::LoadU(df, o + i);
    for (int64_t j = 0; j < nb; ++j) {
      if (vis[j]) a0 = hn::MulAdd(hn::Set(df, p[j]), hn::LoadU(df, v[j] + i), a0);
    }
    hn::StoreU(a0, df, o + i);
  }
  for (; i < n; ++i) {
    for (int64_t j = 0; j < nb; ++j) {
      if (vis[j]) o[i] += p[j] * v[j][i];
    }
  }
}

// out[j] = q · k_j for four keys, with two accumulators each to hide the FMA latency.
HWY_INLINE void Dot4(const float* HWY_RESTRICT q, const float* const* k, int64_t n, float* out) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto a0 = hn::Zero(df), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  int64_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    const auto q0 = hn::LoadU(df, q + i), q1 = hn::LoadU(df, q + i + N);
    a0 = hn::MulAdd(q0, hn::LoadU(df, k[0] + i), a0);
    a1 = hn::MulAdd(q0, hn::LoadU(df, k[1] + i), a1);
    a2 = hn::MulAdd(q0, hn::LoadU(df, k[2] + i), a2);
    a3 = hn::MulAdd(q0, hn::LoadU(df, k[3] + i), a3);
    b0 = hn::MulAdd(q1, hn::LoadU(df, k[0] + i + N), b0);
    b1 = hn::MulAdd(q1, hn::LoadU(df, k[1] + i + N), b1);
    b2 = hn::MulAdd(q1, hn::LoadU(df, k[2] + i + N), b2);
    b3 = hn::MulAdd(q1, hn::LoadU(df, k[3] + i + N), b3);
  }
  for (; i + N <= n; i += N) {
    const auto q0 = hn::LoadU(df, q + i);
    a0 = hn::MulAdd(q0, hn::LoadU(df, k[0] + i), a0);
    a1 = hn::MulAdd(q0, hn::LoadU(df, k[1] + i), a1);
    a2 = hn::MulAdd(q0, hn::LoadU(df, k[2] + i), a2);
    a3 = hn::MulAdd(q0, hn::LoadU(df, k[3] + i), a3);
  }
  out[0] = hn::GetLane(hn::SumOfLanes(df, hn::Add(a0, b0)));
  out[1] = hn::GetLane(hn::SumOfLanes(df, hn::Add(a1, b1)));
  out[2] = hn::GetLane(hn::SumOfLanes(df, hn::Add(a2, b2)));
  out[3] = hn::GetLane(hn::SumOfLanes(df, hn::Add(a3, b3)));
  for (; i < n; ++i) {
    for (int j = 0; j < 4; ++j) out[j] += q[i] * k[j][i];
  }
}

// ---------------------------------------------------------------- few queries

constexpr int64_t kKeyBlock = 64;

// Softmax state of one query row over some keys: running max, sum of exp, unnormalized output.
struct Partial {
  float* m;  // [rows]
  float* l;  // [rows]
  float* o;  // [rows][head_dim]
};

// Query t, kv head kh, keys [k0, k1): the `group` query heads of kh into p (rows = heads).
void AttendKeys(const AttnArgs& a, int64_t t, int kh, int64_t k0, int64_t k1, Partial p) {
  const int hd = a.head_dim, G = a.group;
  float* scores = thread_scratch(kScratchA, G * kKeyBlock);
  for (int hh = 0; hh < G; ++hh) {
    p.m[hh] = kNegInf;
    p.l[hh] = 0;
    std::fill(p.o + hh * hd, p.o + (hh + 1) * hd, 0.0f);
  }
  const float* kp[kKeyBlock];
  const float* vp[kKeyBlock];
  bool vis[kKeyBlock];
  for_key_range(a, k0, k1, [&](const ops::KvSegment& seg, int64_t j0, int64_t j1, int64_t) {
    for (int64_t jb = j0; jb < j1; jb += kKeyBlock) {
      const int64_t nb = std::min(kKeyBlock, j1 - jb);
      bool any = false;
      for (int64_t j = 0; j < nb; ++j) {
        vis[j] = sees(a, t, seg, jb + j);
        any |= vis[j];
        const int64_t off = (jb + j) * seg.pos_stride + kh * seg.head_stride;
        // Hidden keys still get a (valid) pointer so that blocks of four stay simple.
        kp[j] = seg.k + off;
        vp[j] = seg.v + off;
      }
      // Each key row is a short stream the hardware prefetcher picks up late: fetch the next
      // block's rows while this one is computed. Prefetches never fault.
      for (int64_t j = jb + kKeyBlock; j < std::min(j1, jb + 2 * kKeyBlock); ++j) {
        const int64_t off = j * seg.pos_stride + kh * seg.head_stride;
        for (int64_t i = 0; i < hd; i += 64 / sizeof(float)) {
          hwy::Prefetch(seg.k + off + i);
          hwy::Prefetch(seg.v + off + i);
        }
      }
      if (!any) continue;
      for (int hh = 0; hh < G; ++hh) {
        const float* qv = a.q + (t * a.n_heads + kh * G + hh) * hd;
        float* s = scores + hh * kKeyBlock;
        int64_t j = 0;
        for (; j + 4 <= nb; j += 4) Dot4(qv, kp + j, hd, s + j);
        for (; j < nb; ++j) s[j] = Dot(qv, kp[j], hd);
        for (j = 0; j < nb; ++j) s[j] = vis[j] ? s[j] * a.scale : kNegInf;
        const float m_new = std::max(p.m[hh], MaxOf(s, nb));
        const float corr = std::exp(p.m[hh] - m_new);  // 0 while nothing was seen
        float* o = p.o + hh * hd;
        if (corr != 1.0f) Scale(o, hd, corr);
        p.l[hh] = p.l[hh] * corr + ExpShiftSum(s, nb, m_new);
        p.m[hh] = m_new;
        AccumulateV(o, vp, s, vis, nb, hd);
      }
    }
  });
}

void AttendFew(const AttnArgs& a) {
  ThreadPool& pool = ThreadPool::global();
  const int hd = a.head_dim, G = a.group;
  const int64_t units = a.n_q * a.n_kv_heads;
  // Split the keys when there are too few (query, kv head) pairs to keep every thread busy.
  int64_t splits = 1;
  if (units < 4 * pool.size()) {
    const int64_t most = std::max<int64_t>(1, a.n_keys / 256);  // >= 256 keys per split
    splits = std::min<int64_t>((4 * pool.size() + units - 1) / units, most);
  }
  const int64_t rows = units * splits * G;
  std::vector<float> pm(rows), pl(rows), po(splits > 1 ? rows * hd : 0);
  auto task = [&](int64_t i) {
    const int64_t unit = i / splits, s = i % splits;
    const int64_t t = unit / a.n_kv_heads;
    const int kh = static_cast<int>(unit % a.n_kv_heads);
    const int64_t k0 = a.n_keys * s / splits, k1 = a.n_keys * (s + 1) / splits;
    Partial p{pm.data() + i * G, pl.data() + i * G, nullptr};
    p.o = splits > 1 ? po.data() + i * G * hd : thread_scratch(kScratchB, G * hd);
    AttendKeys(a, t, kh, k0, k1, p);
    if (splits > 1) return;
    for (int hh = 0; hh < G; ++hh) {
      float* out = a.out + (t * a.n_heads + kh * G + hh) * hd;
      const float inv = p.l[hh] > 0 ? 1.0f / p.l[hh] : 0.0f;
      for (int d = 0; d < hd; ++d) out[d] = p.o[hh * hd + d] * inv;
    }
  };
  const int64_t n_tasks = units * splits;
  if (n_tasks == 1 || units * a.n_keys * hd < 8192) {
    for (int64_t i = 0; i < n_tasks; ++i) task(i);
  } else {
    parallel_blocks(n_tasks, [&](int64_t i, int) { task(i); });
  }
  if (splits == 1) return;
  // Merge the partial softmaxes of each (query, head): rescale to the common max.
  for (int64_t unit = 0; unit < units; ++unit) {
    const int64_t t = unit / a.n_kv_heads;
    const int kh = static_cast<int>(unit % a.n_kv_heads);
    for (int hh = 0; hh < G; ++hh) {
      float m = kNegInf;
      for (int64_t s = 0; s < splits; ++s) m = std::max(m, pm[(unit * splits + s) * G + hh]);
      float* out = a.out + (t * a.n_heads + kh * G + hh) * hd;
      std::fill(out, out + hd, 0.0f);
      if (m == kNegInf) continue;
      float l = 0;
      for (int64_t s = 0; s < splits; ++s) {
        const int64_t i = (unit * splits + s) * G + hh;
        const float w = std::exp(pm[i] - m);
        l += w * pl[i];
        AddScaled(out, po.data() + i * hd, hd, w);
      }
      Scale(out, hd, 1.0f / l);
    }
  }
}

// ---------------------------------------------------------------- many queries

constexpr int64_t kQueryBlock = 8 * kMR;    // query rows per task block
constexpr int64_t kChunk = 64 * kKeyBlock;  // keys packed at once per kv head

// Visibility facts about one block of keys, to skip or unmask whole tiles.
struct KeyBlockInfo {
  int32_t min_pos = std::numeric_limits<int32_t>::max();  // over non-empty masked keys
  int32_t max_pos = std::numeric_limits<int32_t>::min();
  bool any_empty = false, any_unmasked = false, any_group = false, all_unmasked = true;
};

enum class TileMask { kAll, kNone, kMixed };

TileMask Classify(const AttnArgs& a, const KeyBlockInfo& kb, int32_t q_min, int32_t q_max,
                  bool q_any_group) {
  if (!a.q_pos || kb.all_unmasked) return TileMask::kAll;
  const bool no_masked = kb.min_pos > kb.max_pos;  // every masked key is empty
  if (!kb.any_empty && !no_masked && (!a.mask.causal || kb.max_pos <= q_min) &&
      (a.mask.window == 0 || q_max - kb.min_pos < a.mask.window)) {
    return TileMask::kAll;
  }
  if (!kb.any_unmasked && !(q_any_group && kb.any_group) &&
      (no_masked || (a.mask.causal && kb.min_pos > q_max) ||
       (a.mask.window > 0 && q_min - kb.max_pos >= a.mask.window))) {
    return TileMask::kNone;
  }
  return TileMask::kMixed;
}

void AttendMany(const AttnArgs& a) {
  const int64_t hd = a.head_dim, G = a.group;
  const int64_t NR = static_cast<int64_t>(PanelWidth());
  const int64_t hd_pad = (hd + NR - 1) / NR * NR;
  const int64_t R = a.n_q * G;  // query rows per kv head: (t, hh), t-major
  const int64_t n_qb = (R + kQueryBlock - 1) / kQueryBlock;
  const int64_t chunk = std::min(kChunk, (a.n_keys + kKeyBlock - 1) / kKeyBlock * kKeyBlock);
  const int64_t n_kb_max = chunk / kKeyBlock;
  // Shared by the threads: packed keys of one chunk and the softmax state of one kv head.
  float* kt = thread_scratch(kScratchC, chunk * hd);      // [block][panel][hd][NR]
  float* vt = thread_scratch(kScratchD, chunk * hd_pad);  // [block][hd panel][key][NR]
  float* state = thread_scratch(kScratchE, R * (hd_pad + 2));
  float* o_all = state;  // [R][hd_pad]
  float* m_all = state + R * hd_pad;
  float* l_all = m_all + R;
  std::vector<KeyBlockInfo> kinfo(n_kb_max);
  std::vector<int32_t> kpos(chunk), kgrp(chunk);
  std::vector<uint8_t> kunmasked(chunk);
  for (int kh = 0; kh < a.n_kv_heads; ++kh) {
    for (int64_t c0 = 0; c0 < a.n_keys; c0 += chunk) {
      const int64_t nck = std::min(chunk, a.n_keys - c0), n_kb = (nck + kKeyBlock - 1) / kKeyBlock;
      const bool first = c0 == 0, last = c0 + nck == a.n_keys;
      // Pack: K transposed into panels of NR keys, V into panels of NR dims; zero padding.
      auto pack = [&](int64_t b) {
        const int64_t kb0 = c0 + b * kKeyBlock;
        float* ktb = kt + b * kKeyBlock * hd;
        float* vtb = vt + b * kKeyBlock * hd_pad;
        std::fill(ktb, ktb + kKeyBlock * hd, 0.0f);
        std::fill(vtb, vtb + kKeyBlock * hd_pad, 0.0f);
        KeyBlockInfo info;
        for (int64_t j = std::min(kKeyBlock, a.n_keys - kb0); j < kKeyBlock; ++j) {
          kpos[b * kKeyBlock + j] = -1;
          kunmasked[b * kKeyBlock + j] = 0;
        }
        for_key_range(a, kb0, std::min(kb0 + kKeyBlock, a.n_keys),
                      [&](const ops::KvSegment& seg, int64_t j0, int64_t j1, int64_t key0) {
                        for (int64_t j = j0; j < j1; ++j) {
                          const int64_t jk = key0 + (j - j0) - kb0;  // key within block
                          const int64_t ki = b * kKeyBlock + jk;
                          // Empty slots stay zero: whatever they hold must not reach P·V.
                          if (!a.q_pos || !seg.pos || seg.pos[j] >= 0) {
                            const int64_t off = j * seg.pos_stride + kh * seg.head_stride;
                            const float* kr = seg.k + off;
                            const float* vr = seg.v + off;
                            float* kdst = ktb + (jk / NR) * hd * NR + jk % NR;
                            for (int64_t d = 0; d < hd; ++d) kdst[d * NR] = kr[d];
                            for (int64_t d = 0; d < hd; ++d) {
                              vtb[(d / NR) * kKeyBlock * NR + jk * NR + d % NR] = vr[d];
                            }
                          }
                          kunmasked[ki] = seg.pos == nullptr;
                          kpos[ki] = seg.pos ? seg.pos[j] : 0;
                          kgrp[ki] = seg.group ? seg.group[j] : -1;
                          if (!seg.pos) {
                            info.any_unmasked = true;
                            continue;
                          }
                          info.all_unmasked = false;
                          if (kpos[ki] < 0) {
                            info.any_empty = true;
                            continue;
                          }
                          info.min_pos = std::min(info.min_pos, kpos[ki]);
                          info.max_pos = std::max(info.max_pos, kpos[ki]);
                          info.any_group |= kgrp[ki] >= 0;
                        }
                      });
        kinfo[b] = info;
      };
      if (nck * hd < 16384) {
        for (int64_t b = 0; b < n_kb; ++b) pack(b);
      } else {
        parallel_blocks(n_kb, [&](int64_t b, int) { pack(b); });
      }
      auto compute = [&](int64_t qb) {
        float* s_tile = thread_scratch(kScratchA, kQueryBlock * kKeyBlock);
        float* zeros = thread_scratch(kScratchB, NR);
        std::fill(zeros, zeros + NR, 0.0f);
        const int64_t r0 = qb * kQueryBlock, nr = std::min(kQueryBlock, R - r0);
        const float* q_rows[kQueryBlock];
        const float* p_rows[kQueryBlock];
        float* o_rows[kQueryBlock];
        float* s_rows[kQueryBlock];
        int32_t q_min = std::numeric_limits<int32_t>::max();
        int32_t q_max = std::numeric_limits<int32_t>::min();
        bool q_any_group = false;
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t t = (r0 + r) / G, hh = (r0 + r) % G;
          q_rows[r] = a.q + (t * a.n_heads + kh * G + hh) * hd;
          s_rows[r] = s_tile + r * kKeyBlock;
          p_rows[r] = s_rows[r];
          o_rows[r] = o_all + (r0 + r) * hd_pad;
          if (a.q_pos) {
            q_min = std::min(q_min, a.q_pos[t]);
            q_max = std::max(q_max, a.q_pos[t]);
            q_any_group |= a.q_group && a.q_group[t] >= 0;
          }
          if (first) {
            m_all[r0 + r] = kNegInf;
            l_all[r0 + r] = 0;
            std::fill(o_rows[r], o_rows[r] + hd_pad, 0.0f);
          }
        }
        for (int64_t b = 0; b < n_kb; ++b) {
          const TileMask tm = Classify(a, kinfo[b], q_min, q_max, q_any_group);
          if (tm == TileMask::kNone) continue;
          const float* ktb = kt + b * kKeyBlock * hd;
          const float* vtb = vt + b * kKeyBlock * hd_pad;
          // S = Q Kᵀ for the block.
          for (int64_t r = 0; r < nr; r += kMR) {
            const size_t mr = std::min<int64_t>(kMR, nr - r);
            for (int64_t p = 0; p < kKeyBlock / NR; ++p) {
              float* c[kMR];
              for (size_t i = 0; i < mr; ++i) c[i] = s_rows[r + i] + p * NR;
              MicroKernelRows(mr, q_rows + r, hd, ktb + p * hd * NR, c, zeros);
            }
          }
          // Scale and mask, then the online softmax update of each row.
          const int64_t n_valid = std::min(kKeyBlock, nck - b * kKeyBlock);
          for (int64_t r = 0; r < nr; ++r) {
            float* s = s_rows[r];
            const int64_t t = (r0 + r) / G;
            if (tm == TileMask::kAll) {
              Scale(s, n_valid, a.scale);
            } else {
              const int32_t qp = a.q_pos[t], qg = a.q_group ? a.q_group[t] : -1;
              for (int64_t j = 0; j < n_valid; ++j) {
                const int64_t ki = b * kKeyBlock + j;
                const bool ok = kunmasked[ki] || ref::visible(qp, qg, kpos[ki], kgrp[ki], a.mask);
                s[j] = ok ? s[j] * a.scale : kNegInf;
              }
            }
            std::fill(s + n_valid, s + kKeyBlock, kNegInf);
            float& m = m_all[r0 + r];
            const float m_new = std::max(m, MaxOf(s, kKeyBlock));
            if (m_new == kNegInf) {  // nothing visible yet: contribute nothing
              std::fill(s, s + kKeyBlock, 0.0f);
              continue;
            }
            const float corr = std::exp(m - m_new);
            if (corr != 1.0f) Scale(o_rows[r], hd_pad, corr);
            l_all[r0 + r] = l_all[r0 + r] * corr + ExpShiftSum(s, kKeyBlock, m_new);
            m = m_new;
          }
          // O += P V for the block.
          for (int64_t r = 0; r < nr; r += kMR) {
            const size_t mr = std::min<int64_t>(kMR, nr - r);
            for (int64_t p = 0; p < hd_pad / NR; ++p) {
              float* c[kMR];
              for (size_t i = 0; i < mr; ++i) c[i] = o_rows[r + i] + p * NR;
              MicroKernelRows(mr, p_rows + r, kKeyBlock, vtb + p * kKeyBlock * NR, c, nullptr);
            }
          }
        }
        if (!last) return;
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t t = (r0 + r) / G, hh = (r0 + r) % G;
          float* out = a.out + (t * a.n_heads + kh * G + hh) * hd;
          const float l = l_all[r0 + r];
          const float inv = l > 0 ? 1.0f / l : 0.0f;
          for (int64_t d = 0; d < hd; ++d) out[d] = o_rows[r][d] * inv;
        }
      };
      // Last query blocks first: under a causal mask they see the most keys.
      parallel_blocks(n_qb, [&](int64_t b, int) { compute(n_qb - 1 - b); });
    }
  }
}

void AttentionImpl(const AttnArgs& a) {
  if (a.n_q * a.group >= 2 * kMR) return AttendMany(a);
  AttendFew(a);
}

}  // namespace gp::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace gp::cpu {

HWY_EXPORT(AttentionImpl);

void attention(const float* q, int64_t n_q, int n_heads, int n_kv_heads, int head_dim,
               const int32_t* q_pos, const int32_t* q_group, std::span<const ops::KvSegment> kv,
               ops::AttentionMask mask, float scale, float* out) {
  if (n_q <= 0) return;
  AttnArgs a{q,    n_q,   n_heads, n_kv_heads, head_dim, n_heads / n_kv_heads, q_pos, q_group, kv,
             mask, scale, out,     {},         0};
  a.seg_start.resize(kv.size() + 1, 0);
  for (size_t s = 0; s < kv.size(); ++s) a.seg_start[s + 1] = a.seg_start[s] + kv[s].n;
  a.n_keys = a.seg_start.back();
  if (a.n_keys == 0) {
    std::fill(out, out + n_q * n_heads * head_dim, 0.0f);
    return;
  }
  HWY_DYNAMIC_DISPATCH(AttentionImpl)(a);
}

}  // namespace gp::cpu
#endif  // HWY_ONCE
