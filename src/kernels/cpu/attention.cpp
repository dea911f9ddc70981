// Multi-head attention with grouped-query sharing and the masks of ops::AttentionMask.
// With query positions, every query's result is computed in one fixed order (key_table, "one
// order for every path" below), so a row of a batch equals the same query run alone: few queries
// (decode) take the cached rows directly, one (query, kv head) per task; many queries (prefill)
// pack the keys as f32 rows and the values into panels, and blocks of query rows run the same
// dot products, softmax steps and value sums per key block. Without a mask (vision),
// AttendDense runs one query per vector lane and two small matrix products per key block.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "base/thread_pool.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/scratch.h"
#include "kernels/ref/ref.h"
#include "tensor/dtype.h"

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

// Keys per block of the online softmax: every path folds one block at a time into a query's
// running max, sum and output.
constexpr int64_t kKeyBlock = 64;

// One key of the block table: key j of segment seg, or an empty slot (seg null).
struct KeySlot {
  const ops::KvSegment* seg = nullptr;
  int64_t j = 0;
};

// The keys of a call laid out in blocks of kKeyBlock slots, in the one order every path (few
// queries or many) reduces them in: keys without a position first, by key number; then keys
// with a position >= 0 at slot `position - base` (base: the lowest position rounded down to a
// block), empty slots elsewhere. A query's softmax then sums the same keys in the same blocks
// whether they sit in the cache (a ring, in any slot) or among the batch's fresh keys, so its
// result does not depend on how the positions before it were batched. Without query positions,
// or with positions repeated or too sparse, keys go by key number (no such promise).
std::vector<KeySlot> key_table(const AttnArgs& a) {
  auto round_up = [](int64_t n) { return (n + kKeyBlock - 1) / kKeyBlock * kKeyBlock; };
  auto by_number = [&] {
    std::vector<KeySlot> t(round_up(a.n_keys));
    for_key_range(a, 0, a.n_keys,
                  [&](const ops::KvSegment& seg, int64_t j0, int64_t j1, int64_t k) {
                    for (int64_t j = j0; j < j1; ++j) t[k + j - j0] = {&seg, j};
                  });
    return t;
  };
  if (!a.q_pos) return by_number();
  int64_t n_free = 0, n_pos = 0;
  int32_t lo = std::numeric_limits<int32_t>::max(), hi = -1;
  for (const ops::KvSegment& seg : a.kv) {
    if (!seg.pos) {
      n_free += seg.n;
      continue;
    }
    for (int64_t j = 0; j < seg.n; ++j) {
      if (seg.pos[j] < 0) continue;
      ++n_pos;
      lo = std::min(lo, seg.pos[j]);
      hi = std::max(hi, seg.pos[j]);
    }
  }
  const int64_t base = n_pos ? lo / kKeyBlock * kKeyBlock : 0;
  const int64_t span = n_pos ? hi - base + 1 : 0;
  if (span > 4 * n_pos + kKeyBlock) return by_number();
  const int64_t first = round_up(n_free);
  std::vector<KeySlot> t(first + round_up(span));
  int64_t f = 0;
  for (const ops::KvSegment& seg : a.kv) {
    for (int64_t j = 0; j < seg.n; ++j) {
      if (!seg.pos) {
        t[f++] = {&seg, j};
      } else if (seg.pos[j] >= 0) {
        KeySlot& slot = t[first + seg.pos[j] - base];
        if (slot.seg) return by_number();  // a position given twice
        slot = {&seg, j};
      }
    }
  }
  return t;
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

// ---------------------------------------------------------------- one order for every path
//
// Each query's result is the same sequence of float operations whatever the number of queries
// in the call and the path it takes (batch invariance): over the blocks of key_table, in order,
//   s_j = DotHeads(q, k_j) * scale (-inf where hidden);  SoftmaxBlock (running max m, sum l,
//   output o rescaled by exp(m_old - m));  o = fma(p_j, v_j, o) key by key, in slot order;
// and out = o / l at the end. Blocks a query sees nothing of leave its state as it was.

// Cached keys and values are f32 or f16 (T): loaded as f32 vectors, or one f32 value.
template <class D>
HWY_INLINE hn::Vec<D> LoadRow(D d, const float* HWY_RESTRICT p) {
  return hn::LoadU(d, p);
}
template <class D>
HWY_INLINE hn::Vec<D> LoadRow(D d, const hwy::float16_t* HWY_RESTRICT p) {
  return hn::PromoteTo(d, hn::LoadU(hn::Rebind<hwy::float16_t, D>(), p));
}
HWY_INLINE float ToF32(float x) { return x; }
HWY_INLINE float ToF32(hwy::float16_t x) {
  uint16_t bits;
  std::memcpy(&bits, &x, 2);
  return gp::f16_to_f32(bits);
}

// Row `off` of a segment's keys or values (base: seg.k or seg.v) as f32: dst[0..n).
HWY_INLINE void RowToF32(const ops::KvSegment& seg, const void* base, int64_t off, int64_t n,
                         float* HWY_RESTRICT dst) {
  if (seg.dtype != DType::F16) {
    const float* src = static_cast<const float*>(base) + off;
    std::copy(src, src + n, dst);
    return;
  }
  const hwy::float16_t* src = static_cast<const hwy::float16_t*>(base) + off;
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(LoadRow(df, src + i), df, dst + i);
  for (; i < n; ++i) dst[i] = ToF32(src[i]);
}

// Up to this many query heads go through a key or value row together.
constexpr int kMaxHeads = 4;

// out[h] = q[h] · k over n values, for H <= 4 query rows. Each row's value is the same whatever
// H and the rows beside it. The accumulators are named locals, not arrays: SVE vectors are
// sizeless and cannot be array elements.
template <int H, class T>
HWY_INLINE void DotHeads(const float* const* q, const T* HWY_RESTRICT k, int64_t n, float* out) {
  static_assert(H >= 1 && H <= kMaxHeads);
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const float* q0 = q[0];
  const float* q1 = H > 1 ? q[1] : q0;
  const float* q2 = H > 2 ? q[2] : q0;
  const float* q3 = H > 3 ? q[3] : q0;
  V a0 = hn::Zero(df), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  int64_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    const V k0 = LoadRow(df, k + i), k1 = LoadRow(df, k + i + N);
    a0 = hn::MulAdd(hn::LoadU(df, q0 + i), k0, a0);
    b0 = hn::MulAdd(hn::LoadU(df, q0 + i + N), k1, b0);
    if constexpr (H > 1) {
      a1 = hn::MulAdd(hn::LoadU(df, q1 + i), k0, a1);
      b1 = hn::MulAdd(hn::LoadU(df, q1 + i + N), k1, b1);
    }
    if constexpr (H > 2) {
      a2 = hn::MulAdd(hn::LoadU(df, q2 + i), k0, a2);
      b2 = hn::MulAdd(hn::LoadU(df, q2 + i + N), k1, b2);
    }
    if constexpr (H > 3) {
      a3 = hn::MulAdd(hn::LoadU(df, q3 + i), k0, a3);
      b3 = hn::MulAdd(hn::LoadU(df, q3 + i + N), k1, b3);
    }
  }
  for (; i + N <= n; i += N) {
    const V k0 = LoadRow(df, k + i);
    a0 = hn::MulAdd(hn::LoadU(df, q0 + i), k0, a0);
    if constexpr (H > 1) a1 = hn::MulAdd(hn::LoadU(df, q1 + i), k0, a1);
    if constexpr (H > 2) a2 = hn::MulAdd(hn::LoadU(df, q2 + i), k0, a2);
    if constexpr (H > 3) a3 = hn::MulAdd(hn::LoadU(df, q3 + i), k0, a3);
  }
  const hn::CappedTag<float, 1> d1;
  auto finish = [&](const float* qh, V a, V b) {
    auto s = hn::Set(d1, hn::GetLane(hn::SumOfLanes(df, hn::Add(a, b))));
    for (int64_t r = i; r < n; ++r) s = hn::MulAdd(hn::Set(d1, qh[r]), hn::Set(d1, ToF32(k[r])), s);
    return hn::GetLane(s);
  };
  out[0] = finish(q0, a0, b0);
  if constexpr (H > 1) out[1] = finish(q1, a1, b1);
  if constexpr (H > 2) out[2] = finish(q2, a2, b2);
  if constexpr (H > 3) out[3] = finish(q3, a3, b3);
}

// DotHeads for any 1 <= h <= 4 rows.
template <class T>
HWY_INLINE void DotRows(int h, const float* const* q, const T* HWY_RESTRICT k, int64_t n,
                        float* out) {
  switch (h) {
    case 1:
      return DotHeads<1>(q, k, n, out);
    case 2:
      return DotHeads<2>(q, k, n, out);
    case 3:
      return DotHeads<3>(q, k, n, out);
    default:
      return DotHeads<4>(q, k, n, out);
  }
}

// o[h][0..n) += p[h] * v over n values, for H <= 4 query heads (named locals, as in DotHeads):
// o = fma(p, v, o) per value, as MicroKernel computes P·V (the tail too, in one-lane vectors).
template <int H, class T>
HWY_INLINE void AddRowHeads(float* const* o, const float* p, const T* HWY_RESTRICT v, int64_t n) {
  static_assert(H >= 1 && H <= kMaxHeads);
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const V p0 = hn::Set(df, p[0]), p1 = hn::Set(df, p[H > 1 ? 1 : 0]),
          p2 = hn::Set(df, p[H > 2 ? 2 : 0]), p3 = hn::Set(df, p[H > 3 ? 3 : 0]);
  auto add = [&](float* oh, int64_t i, V ph, V x) {
    hn::StoreU(hn::MulAdd(ph, x, hn::LoadU(df, oh + i)), df, oh + i);
  };
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const V x = LoadRow(df, v + i);
    add(o[0], i, p0, x);
    if constexpr (H > 1) add(o[1], i, p1, x);
    if constexpr (H > 2) add(o[2], i, p2, x);
    if constexpr (H > 3) add(o[3], i, p3, x);
  }
  const hn::CappedTag<float, 1> d1;
  for (; i < n; ++i) {
    for (int h = 0; h < H; ++h) {
      o[h][i] = hn::GetLane(
          hn::MulAdd(hn::Set(d1, p[h]), hn::Set(d1, ToF32(v[i])), hn::Set(d1, o[h][i])));
    }
  }
}

// Folds one block of kKeyBlock scores s (scaled, -inf where hidden) into a query's softmax
// state: s becomes the block's probabilities exp(s - m), and o (n_o values) is rescaled to the
// new max. Returns false while the query has seen nothing (s is then all 0).
HWY_INLINE bool SoftmaxBlock(float* HWY_RESTRICT s, float& m, float& l, float* HWY_RESTRICT o,
                             int64_t n_o) {
  const float m_new = std::max(m, MaxOf(s, kKeyBlock));
  if (m_new == kNegInf) {
    std::fill(s, s + kKeyBlock, 0.0f);
    return false;
  }
  const float corr = std::exp(m - m_new);  // 0 while nothing was seen
  if (corr != 1.0f) Scale(o, n_o, corr);
  l = l * corr + ExpShiftSum(s, kKeyBlock, m_new);
  m = m_new;
  return true;
}

// ---------------------------------------------------------------- few queries
//
// Decode reads every cached key and value row once per kv head: the query heads that share a
// kv head (grouped-query attention) take each row together, and rows are read front to back,
// with the row `kRowsAhead` slots further prefetched. The keys are not split over threads: a
// split would merge partial softmaxes in an order that depends on the thread count.

constexpr int64_t kRowsAhead = 4;

// Softmax state of one query row over some keys: running max, sum of exp, unnormalized output.
struct Partial {
  float* m;  // [rows]
  float* l;  // [rows]
  float* o;  // [rows][head_dim]
};

// Prefetches `bytes` bytes at p. Prefetches never fault.
HWY_INLINE void PrefetchBytes(const void* p, int64_t bytes) {
  for (int64_t i = 0; i < bytes; i += 64) hwy::Prefetch(static_cast<const uint8_t*>(p) + i);
}

// Key or value row of slot `sl` for kv head kh.
HWY_INLINE const void* SlotRow(const KeySlot& sl, const void* base, int kh) {
  const int64_t off = sl.j * sl.seg->pos_stride + kh * sl.seg->head_stride;
  return static_cast<const uint8_t*>(base) + off * dtype_size(sl.seg->dtype);
}

// One block of the key table for the H query heads h0.. of kv head kh of query t.
template <int H>
void AttendBlock(const AttnArgs& a, int64_t t, int kh, int h0, const KeySlot* slots,
                 const bool* vis, float* scores, Partial p) {
  const int hd = a.head_dim;
  const float* q[H];
  float* o[H];
  for (int h = 0; h < H; ++h) {
    q[h] = a.q + (t * a.n_heads + kh * a.group + h0 + h) * hd;
    o[h] = p.o + (h0 + h) * hd;
  }
  for (int64_t j = 0; j < kKeyBlock; ++j) {  // scores [H][kKeyBlock]
    if (!vis[j]) {
      for (int h = 0; h < H; ++h) scores[h * kKeyBlock + j] = kNegInf;
      continue;
    }
    if (j + kRowsAhead < kKeyBlock && vis[j + kRowsAhead]) {
      const KeySlot& ahead = slots[j + kRowsAhead];
      PrefetchBytes(SlotRow(ahead, ahead.seg->k, kh), hd * dtype_size(ahead.seg->dtype));
    }
    float s[H];
    const void* k = SlotRow(slots[j], slots[j].seg->k, kh);
    if (slots[j].seg->dtype == DType::F16) {
      DotHeads<H>(q, static_cast<const hwy::float16_t*>(k), hd, s);
    } else {
      DotHeads<H>(q, static_cast<const float*>(k), hd, s);
    }
    for (int h = 0; h < H; ++h) scores[h * kKeyBlock + j] = s[h] * a.scale;
  }
  for (int h = 0; h < H; ++h) {
    const int hh = h0 + h;
    SoftmaxBlock(scores + h * kKeyBlock, p.m[hh], p.l[hh], o[h], hd);
  }
  for (int64_t j = 0; j < kKeyBlock; ++j) {
    if (!vis[j]) continue;
    if (j + kRowsAhead < kKeyBlock && vis[j + kRowsAhead]) {
      const KeySlot& ahead = slots[j + kRowsAhead];
      PrefetchBytes(SlotRow(ahead, ahead.seg->v, kh), hd * dtype_size(ahead.seg->dtype));
    }
    float pj[H];
    for (int h = 0; h < H; ++h) pj[h] = scores[h * kKeyBlock + j];
    const void* v = SlotRow(slots[j], slots[j].seg->v, kh);
    if (slots[j].seg->dtype == DType::F16) {
      AddRowHeads<H>(o, pj, static_cast<const hwy::float16_t*>(v), hd);
    } else {
      AddRowHeads<H>(o, pj, static_cast<const float*>(v), hd);
    }
  }
}

// Query t, kv head kh, every block of the key table: the `group` query heads of kh into p.
void AttendKeys(const AttnArgs& a, const std::vector<KeySlot>& table, int64_t t, int kh,
                Partial p) {
  const int hd = a.head_dim, G = a.group;
  float* scores = thread_scratch(kScratchA, kMaxHeads * kKeyBlock);
  for (int hh = 0; hh < G; ++hh) {
    p.m[hh] = kNegInf;
    p.l[hh] = 0;
    std::fill(p.o + hh * hd, p.o + (hh + 1) * hd, 0.0f);
  }
  bool vis[kKeyBlock];
  for (size_t b0 = 0; b0 < table.size(); b0 += kKeyBlock) {
    const KeySlot* slots = table.data() + b0;
    bool any = false;
    for (int64_t j = 0; j < kKeyBlock; ++j) {
      vis[j] = slots[j].seg && sees(a, t, *slots[j].seg, slots[j].j);
      any |= vis[j];
    }
    if (!any) continue;
    for (int h0 = 0; h0 < G; h0 += kMaxHeads) {
      switch (std::min(kMaxHeads, G - h0)) {
        case 1:
          AttendBlock<1>(a, t, kh, h0, slots, vis, scores, p);
          break;
        case 2:
          AttendBlock<2>(a, t, kh, h0, slots, vis, scores, p);
          break;
        case 3:
          AttendBlock<3>(a, t, kh, h0, slots, vis, scores, p);
          break;
        default:
          AttendBlock<4>(a, t, kh, h0, slots, vis, scores, p);
          break;
      }
    }
  }
}

void AttendFew(const AttnArgs& a, const std::vector<KeySlot>& table) {
  const int hd = a.head_dim, G = a.group;
  const int64_t units = a.n_q * a.n_kv_heads;
  std::vector<float> pm(units * G), pl(units * G);
  auto task = [&](int64_t unit) {
    const int64_t t = unit / a.n_kv_heads;
    const int kh = static_cast<int>(unit % a.n_kv_heads);
    Partial p{pm.data() + unit * G, pl.data() + unit * G, thread_scratch(kScratchB, G * hd)};
    AttendKeys(a, table, t, kh, p);
    for (int hh = 0; hh < G; ++hh) {
      float* out = a.out + (t * a.n_heads + kh * G + hh) * hd;
      const float inv = p.l[hh] > 0 ? 1.0f / p.l[hh] : 0.0f;
      for (int d = 0; d < hd; ++d) out[d] = p.o[hh * hd + d] * inv;
    }
  };
  if (units == 1 || units * a.n_keys * hd < 8192) {
    for (int64_t i = 0; i < units; ++i) task(i);
  } else {
    parallel_blocks(units, [&](int64_t i, int) { task(i); });
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

// Per kv head, the key table is packed chunk by chunk (keys as f32 rows, values transposed into
// panels, zero in empty slots); blocks of query rows then take each key block: the scores with
// DotHeads, four rows per key row, the softmax update, and P·V with the GEMM micro-kernel
// (one fma per key, in slot order, as AddRowHeads).
void AttendMany(const AttnArgs& a, const std::vector<KeySlot>& table) {
  const int64_t hd = a.head_dim, G = a.group;
  const int64_t NR = static_cast<int64_t>(PanelWidth());
  const int64_t hd_pad = (hd + NR - 1) / NR * NR;
  const int64_t R = a.n_q * G;  // query rows per kv head: (t, hh), t-major
  const int64_t n_qb = (R + kQueryBlock - 1) / kQueryBlock;
  const int64_t n_slots = static_cast<int64_t>(table.size());
  const int64_t chunk = std::min(kChunk, n_slots);
  const int64_t n_kb_max = chunk / kKeyBlock;
  // Shared by the threads: packed keys of one chunk and the softmax state of one kv head.
  float* kr = thread_scratch(kScratchC, chunk * hd);      // [key][hd]
  float* vt = thread_scratch(kScratchD, chunk * hd_pad);  // [block][hd panel][key][NR]
  float* state = thread_scratch(kScratchE, R * (hd_pad + 2));
  float* o_all = state;  // [R][hd_pad]
  float* m_all = state + R * hd_pad;
  float* l_all = m_all + R;
  std::vector<KeyBlockInfo> kinfo(n_kb_max);
  std::vector<int32_t> kpos(chunk), kgrp(chunk);
  std::vector<uint8_t> kunmasked(chunk);
  for (int kh = 0; kh < a.n_kv_heads; ++kh) {
    for (int64_t c0 = 0; c0 < n_slots; c0 += chunk) {
      const int64_t nck = std::min(chunk, n_slots - c0), n_kb = nck / kKeyBlock;
      const bool first = c0 == 0, last = c0 + nck == n_slots;
      auto pack = [&](int64_t b) {
        float* krb = kr + b * kKeyBlock * hd;
        float* vtb = vt + b * kKeyBlock * hd_pad;
        std::fill(krb, krb + kKeyBlock * hd, 0.0f);
        std::fill(vtb, vtb + kKeyBlock * hd_pad, 0.0f);
        KeyBlockInfo info;
        std::vector<float> vrow(hd);
        for (int64_t jk = 0; jk < kKeyBlock; ++jk) {
          const int64_t ki = b * kKeyBlock + jk;
          const KeySlot& sl = table[c0 + ki];
          kpos[ki] = -1;
          kgrp[ki] = -1;
          kunmasked[ki] = 0;
          if (!sl.seg) {
            info.any_empty = true;
            info.all_unmasked = false;
            continue;
          }
          const ops::KvSegment& seg = *sl.seg;
          const int64_t off = sl.j * seg.pos_stride + kh * seg.head_stride;
          kunmasked[ki] = seg.pos == nullptr;
          kpos[ki] = seg.pos ? seg.pos[sl.j] : 0;
          kgrp[ki] = seg.group ? seg.group[sl.j] : -1;
          // Empty slots stay zero: whatever they hold must not reach P·V.
          if (!a.q_pos || !seg.pos || kpos[ki] >= 0) {
            RowToF32(seg, seg.k, off, hd, krb + jk * hd);
            RowToF32(seg, seg.v, off, hd, vrow.data());
            for (int64_t d = 0; d < hd; ++d) {
              vtb[(d / NR) * kKeyBlock * NR + jk * NR + d % NR] = vrow[d];
            }
          }
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
        kinfo[b] = info;
      };
      if (nck * hd < 16384) {
        for (int64_t b = 0; b < n_kb; ++b) pack(b);
      } else {
        parallel_blocks(n_kb, [&](int64_t b, int) { pack(b); });
      }
      auto compute = [&](int64_t qb) {
        float* s_tile = thread_scratch(kScratchA, kQueryBlock * kKeyBlock);
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
          const float* krb = kr + b * kKeyBlock * hd;
          const float* vtb = vt + b * kKeyBlock * hd_pad;
          // Scores, four query rows per key row; hidden ones -inf.
          for (int64_t r = 0; r < nr; r += kMaxHeads) {
            const int h = static_cast<int>(std::min<int64_t>(kMaxHeads, nr - r));
            for (int64_t j = 0; j < kKeyBlock; ++j) {
              const int64_t ki = b * kKeyBlock + j;
              bool vis[kMaxHeads];
              bool any = false;
              for (int i = 0; i < h; ++i) {
                const int64_t t = (r0 + r + i) / G;
                vis[i] = table[c0 + ki].seg &&
                         (tm == TileMask::kAll || kunmasked[ki] ||
                          (kpos[ki] >= 0 && ref::visible(a.q_pos[t], a.q_group ? a.q_group[t] : -1,
                                                         kpos[ki], kgrp[ki], a.mask)));
                any |= vis[i];
              }
              float s[kMaxHeads];
              if (any) DotRows(h, q_rows + r, krb + j * hd, hd, s);
              for (int i = 0; i < h; ++i) s_rows[r + i][j] = vis[i] ? s[i] * a.scale : kNegInf;
            }
          }
          for (int64_t r = 0; r < nr; ++r) {
            SoftmaxBlock(s_rows[r], m_all[r0 + r], l_all[r0 + r], o_rows[r], hd_pad);
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

// ---------------------------------------------------------------- many queries, no mask

// Every query sees every key (the vision tower): one query per vector lane, so that the softmax
// needs no horizontal reductions and nothing is padded. Per kv head, the key and value rows are
// copied next to each other (no transposition); per block of query rows, panels of NR rows are
// packed transposed (Qᵀ, pre-scaled by scale·log2 e). Per key block, Sᵀ = K Qᵀ runs the GEMM
// micro-kernel with the keys as its rows (kMR keys x NR queries per register tile), P = 2^(Sᵀ - m)
// runs down the columns, and O = O·corr + P V broadcasts P over value rows (4 queries x 3 vectors
// of dims per tile, over value rows zero-padded to whole vectors).

constexpr int64_t kDenseKeyBlock = 16 * kMR;  // keys per block: whole score tiles
// Most panels of NR query rows per task: 4 reuse each key block as well as 8 did (4096 queries),
// and 2304 queries then make 18 tasks per kv head, not 9 (an uneven split over 2 threads).
constexpr int64_t kDensePanels = 4;

// 2^x for x <= 0, 0 below -127: a degree-6 fit of 2^f on [-1/2, 1/2] (relative error ~1e-7).
template <class D>
HWY_INLINE hn::Vec<D> Exp2NonPositive(D d, hn::Vec<D> x) {
  const hn::RebindToSigned<D> di;
  x = hn::Max(x, hn::Set(d, -127.0f));
  const auto xi = hn::Round(x);
  const auto f = hn::Sub(x, xi);
  auto p = hn::Set(d, 1.5461444854736328e-4f);
  p = hn::MulAdd(p, f, hn::Set(d, 1.3400427997112274e-3f));
  p = hn::MulAdd(p, f, hn::Set(d, 9.618056938052177e-3f));
  p = hn::MulAdd(p, f, hn::Set(d, 5.550327152013779e-2f));
  p = hn::MulAdd(p, f, hn::Set(d, 0.24022650718688965f));
  p = hn::MulAdd(p, f, hn::Set(d, 0.6931471824645996f));
  p = hn::MulAdd(p, f, hn::Set(d, 1.0f));
  // 2^xi from the exponent bits; xi = -127 gives the bits of 0.
  const auto e = hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, xi), hn::Set(di, 127)));
  return hn::Mul(p, hn::BitCast(d, e));
}

// o_r[0..NV·N) = o_r[0..NV·N) · corr[r] + sum_j pt[j][r] · v_j[0..NV·N) for RB <= 4 query rows
// r and NV <= 3 vectors, where pt is [nb][NR] (Pᵀ, one column per query) and v_j = v + j·hd.
// Named accumulators, not arrays, as in MicroKernel: the compiler keeps those in registers. The
// inner loop spells out each row: a lambda taking the accumulators by reference there is slower
// (docs/BENCHMARKS.md, Design measurements).
template <int RB, int NV, class D>
HWY_INLINE void ValueTile(D d, const float* HWY_RESTRICT pt, size_t NR, int64_t nb,
                          const float* HWY_RESTRICT v, size_t hd, size_t d0, float* const* o,
                          const float* corr) {
  using V = hn::Vec<D>;
  const size_t N = hn::Lanes(d);
  V c00 = hn::Zero(d), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00, c20 = c00, c21 = c00,
    c22 = c00, c30 = c00, c31 = c00, c32 = c00;
  auto start = [&](int r, V& x0, V& x1, V& x2) {
    const V cr = hn::Set(d, corr[r]);
    x0 = hn::Mul(hn::LoadU(d, o[r] + d0), cr);
    if constexpr (NV > 1) x1 = hn::Mul(hn::LoadU(d, o[r] + d0 + N), cr);
    if constexpr (NV > 2) x2 = hn::Mul(hn::LoadU(d, o[r] + d0 + 2 * N), cr);
  };
  start(0, c00, c01, c02);
  if constexpr (RB > 1) start(1, c10, c11, c12);
  if constexpr (RB > 2) start(2, c20, c21, c22);
  if constexpr (RB > 3) start(3, c30, c31, c32);
  for (int64_t j = 0; j < nb; ++j) {
    const float* vj = v + j * hd + d0;
    const float* pj = pt + j * NR;
    const V b0 = hn::LoadU(d, vj);
    const V b1 = NV > 1 ? hn::LoadU(d, vj + N) : b0;
    const V b2 = NV > 2 ? hn::LoadU(d, vj + 2 * N) : b0;
    V av = hn::Set(d, pj[0]);
    c00 = hn::MulAdd(av, b0, c00);
    if constexpr (NV > 1) c01 = hn::MulAdd(av, b1, c01);
    if constexpr (NV > 2) c02 = hn::MulAdd(av, b2, c02);
    if constexpr (RB > 1) {
      av = hn::Set(d, pj[1]);
      c10 = hn::MulAdd(av, b0, c10);
      if constexpr (NV > 1) c11 = hn::MulAdd(av, b1, c11);
      if constexpr (NV > 2) c12 = hn::MulAdd(av, b2, c12);
    }
    if constexpr (RB > 2) {
      av = hn::Set(d, pj[2]);
      c20 = hn::MulAdd(av, b0, c20);
      if constexpr (NV > 1) c21 = hn::MulAdd(av, b1, c21);
      if constexpr (NV > 2) c22 = hn::MulAdd(av, b2, c22);
    }
    if constexpr (RB > 3) {
      av = hn::Set(d, pj[3]);
      c30 = hn::MulAdd(av, b0, c30);
      if constexpr (NV > 1) c31 = hn::MulAdd(av, b1, c31);
      if constexpr (NV > 2) c32 = hn::MulAdd(av, b2, c32);
    }
  }
  auto put = [&](int r, V x0, V x1, V x2) {
    hn::StoreU(x0, d, o[r] + d0);
    if constexpr (NV > 1) hn::StoreU(x1, d, o[r] + d0 + N);
    if constexpr (NV > 2) hn::StoreU(x2, d, o[r] + d0 + 2 * N);
  };
  put(0, c00, c01, c02);
  if constexpr (RB > 1) put(1, c10, c11, c12);
  if constexpr (RB > 2) put(2, c20, c21, c22);
  if constexpr (RB > 3) put(3, c30, c31, c32);
}

// O += P V for RB query rows over hdp dims (value and output rows padded to whole vectors):
// 3-vector tiles, then one of 1 or 2 vectors.
template <int RB, class D>
HWY_INLINE void ValueRows(D d, const float* HWY_RESTRICT pt, size_t NR, int64_t nb,
                          const float* HWY_RESTRICT v, size_t hdp, float* const* o,
                          const float* corr) {
  const size_t N = hn::Lanes(d);
  size_t d0 = 0;
  for (; d0 + 3 * N <= hdp; d0 += 3 * N) ValueTile<RB, 3>(d, pt, NR, nb, v, hdp, d0, o, corr);
  if (d0 + 2 * N == hdp) ValueTile<RB, 2>(d, pt, NR, nb, v, hdp, d0, o, corr);
  if (d0 + N == hdp) ValueTile<RB, 1>(d, pt, NR, nb, v, hdp, d0, o, corr);
}

void AttendDense(const AttnArgs& a) {
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d)), NR = 2 * N;
  const int64_t hd = a.head_dim, G = a.group;
  // Value and output rows padded with zeros to whole vectors, so P V has no partial vectors.
  const int64_t hdp = (hd + N - 1) / N * N;
  const int64_t R = a.n_q * G;  // query rows per kv head: (t, hh), t-major
  // More panels per task reuse each key block over more queries (from L1/L2); fewer keep at
  // least 4 tasks per thread for the load balance.
  int64_t panels = kDensePanels;
  const int64_t min_tasks = 4 * static_cast<int64_t>(ThreadPool::global().size());
  while (panels > 1 && (R + panels * NR - 1) / (panels * NR) < min_tasks) panels /= 2;
  const int64_t QB = panels * NR;
  const int64_t n_qb = (R + QB - 1) / QB;
  const float q_scale = a.scale * 1.4426950408889634f;  // scores in log2 units
  // Shared by the threads: the keys and values of one kv head, rows of hd (hdp) in a row. Cache
  // rows (n_kv_heads·hd apart, 4.5 KB for the vision tower) would share a few L1 sets.
  float* kc = thread_scratch(kScratchC, a.n_keys * hd);
  float* vc = thread_scratch(kScratchD, a.n_keys * hdp);
  for (int kh = 0; kh < a.n_kv_heads; ++kh) {
    constexpr int64_t kPackBlock = 256;
    auto pack = [&](int64_t b) {
      const int64_t k0 = b * kPackBlock;
      for_key_range(a, k0, std::min(k0 + kPackBlock, a.n_keys),
                    [&](const ops::KvSegment& seg, int64_t j0, int64_t j1, int64_t key0) {
                      for (int64_t j = j0; j < j1; ++j) {
                        const int64_t off = j * seg.pos_stride + kh * seg.head_stride;
                        const int64_t key = key0 + j - j0;
                        RowToF32(seg, seg.k, off, hd, kc + key * hd);
                        float* vrow = vc + key * hdp;
                        RowToF32(seg, seg.v, off, hd, vrow);
                        std::fill(vrow + hd, vrow + hdp, 0.0f);
                      }
                    });
    };
    const int64_t n_pack = (a.n_keys + kPackBlock - 1) / kPackBlock;
    if (a.n_keys * hd < 16384) {
      for (int64_t b = 0; b < n_pack; ++b) pack(b);
    } else {
      parallel_blocks(n_pack, [&](int64_t b, int) { pack(b); });
    }
    parallel_blocks(n_qb, [&](int64_t qb, int) {
      const int64_t r0 = qb * QB, nr = std::min(QB, R - r0);
      const int64_t n_panels = (nr + NR - 1) / NR;
      float* qt =
          thread_scratch(kScratchA, QB * (hd + hdp) + kDenseKeyBlock * NR + 3 * QB + hd + NR);
      float* o = qt + QB * hd;              // [QB][hdp] unnormalized outputs
      float* st = o + QB * hdp;             // [key block][NR] Sᵀ, then Pᵀ
      float* m = st + kDenseKeyBlock * NR;  // [QB] running max (log2 units)
      float* l = m + QB;                    // [QB] running sum
      float* corr = l + QB;                 // [QB] rescale of o for the current block
      float* row = corr + QB;               // [hd] one scaled query row
      float* zeros = row + hd;              // [NR] the score tiles' initial value
      std::fill(zeros, zeros + NR, 0.0f);
      // Qᵀ panels [panel][hd][NR], zero beyond the last row. The query rows are far apart in
      // memory: fetch them all at once, then transpose each through a row buffer.
      auto q_row = [&](int64_t r) {
        const int64_t t = (r0 + r) / G, hh = (r0 + r) % G;
        return a.q + (t * a.n_heads + kh * G + hh) * hd;
      };
      for (int64_t r = 0; r < nr; ++r) {
        for (int64_t i = 0; i < hd; i += 64 / sizeof(float)) hwy::Prefetch(q_row(r) + i);
      }
      const V vs = hn::Set(d, q_scale);
      for (int64_t r = 0; r < n_panels * NR; ++r) {
        float* dst = qt + (r / NR) * hd * NR + r % NR;
        if (r < nr) {
          const float* qr = q_row(r);
          int64_t i = 0;
          for (; i + N <= hd; i += N) hn::StoreU(hn::Mul(hn::LoadU(d, qr + i), vs), d, row + i);
          for (; i < hd; ++i) row[i] = qr[i] * q_scale;
          for (i = 0; i < hd; ++i) dst[i * NR] = row[i];
        } else {
          for (int64_t i = 0; i < hd; ++i) dst[i * NR] = 0.0f;
        }
      }
      std::fill(o, o + n_panels * NR * hdp, 0.0f);
      std::fill(m, m + n_panels * NR, kNegInf);
      std::fill(l, l + n_panels * NR, 0.0f);
      for (int64_t k0 = 0; k0 < a.n_keys; k0 += kDenseKeyBlock) {
        const int64_t nb = std::min(kDenseKeyBlock, a.n_keys - k0);
        const float* kb = kc + k0 * hd;
        const float* vb = vc + k0 * hdp;
        for (int64_t p = 0; p < n_panels; ++p) {
          float* mp = m + p * NR;
          float* lp = l + p * NR;
          float* cp = corr + p * NR;
          // Sᵀ = K Qᵀ (the GEMM micro-kernel, keys as its rows), then the new column maxima.
          for (int64_t j = 0; j < nb; j += kMR) {
            const int64_t mr = std::min<int64_t>(kMR, nb - j);
            const float* k_rows[kMR];
            float* s_rows[kMR];
            for (int64_t i = 0; i < mr; ++i) {
              k_rows[i] = kb + (j + i) * hd;
              s_rows[i] = st + (j + i) * NR;
            }
            MicroKernelRows(mr, k_rows, hd, qt + p * hd * NR, s_rows, zeros);
          }
          const V m_old0 = hn::Load(d, mp), m_old1 = hn::Load(d, mp + N);
          V m0 = m_old0, m1 = m_old1;
          for (int64_t j = 0; j < nb; ++j) {
            m0 = hn::Max(m0, hn::Load(d, st + j * NR));
            m1 = hn::Max(m1, hn::Load(d, st + j * NR + N));
          }
          // P = 2^(S - m) down the columns; the old sum and outputs scale by 2^(m_old - m).
          const V c0 = Exp2NonPositive(d, hn::Sub(m_old0, m0));
          const V c1 = Exp2NonPositive(d, hn::Sub(m_old1, m1));
          V s0 = hn::Zero(d), s1 = hn::Zero(d);
          for (int64_t j = 0; j < nb; ++j) {
            const V e0 = Exp2NonPositive(d, hn::Sub(hn::Load(d, st + j * NR), m0));
            const V e1 = Exp2NonPositive(d, hn::Sub(hn::Load(d, st + j * NR + N), m1));
            hn::Store(e0, d, st + j * NR);
            hn::Store(e1, d, st + j * NR + N);
            s0 = hn::Add(s0, e0);
            s1 = hn::Add(s1, e1);
          }
          hn::Store(m0, d, mp);
          hn::Store(m1, d, mp + N);
          hn::Store(hn::MulAdd(hn::Load(d, lp), c0, s0), d, lp);
          hn::Store(hn::MulAdd(hn::Load(d, lp + N), c1, s1), d, lp + N);
          hn::Store(c0, d, cp);
          hn::Store(c1, d, cp + N);
          // O = O · corr + P V, a few query rows (lanes of Pᵀ) at a time. NR is a multiple of
          // 4 but on single-lane targets (NR = 2).
          const int64_t rb = NR % 4 == 0 ? 4 : 2;
          for (int64_t r = 0; r < NR; r += rb) {
            float* orow[4];
            for (int64_t i = 0; i < rb; ++i) orow[i] = o + (p * NR + r + i) * hdp;
            if (rb == 4) {
              ValueRows<4>(d, st + r, NR, nb, vb, hdp, orow, cp + r);
            } else {
              ValueRows<2>(d, st + r, NR, nb, vb, hdp, orow, cp + r);
            }
          }
        }
      }
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t t = (r0 + r) / G, hh = (r0 + r) % G;
        float* out = a.out + (t * a.n_heads + kh * G + hh) * hd;
        const float inv = 1.0f / l[r];  // l >= 1: the maximum contributes 2^0
        const V vinv = hn::Set(d, inv);
        int64_t i = 0;
        for (; i + N <= hd; i += N)
          hn::StoreU(hn::Mul(hn::LoadU(d, o + r * hdp + i), vinv), d, out + i);
        for (; i < hd; ++i) out[i] = o[r * hdp + i] * inv;
      }
    });
  }
}

void AttentionImpl(const AttnArgs& a) {
  // Some query may miss some key only with positions on both sides.
  bool masked = false;
  for (const ops::KvSegment& seg : a.kv) masked |= a.q_pos && seg.pos;
  // AttendDense holds the keys and values of a whole kv head: up to 2 x 16 MB.
  if (a.n_q * a.group >= 2 * kMR && !masked && a.n_keys * a.head_dim <= (int64_t{1} << 22)) {
    return AttendDense(a);
  }
  const std::vector<KeySlot> table = key_table(a);
  if (a.n_q * a.group >= 2 * kMR) return AttendMany(a, table);
  AttendFew(a, table);
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
