// KvCache: rows appended and read back through a sliding ring and a global layer, truncation
// inside and beyond the ring, and the f16 storage's rounding against hand-computed halves.
#include "runtime/kv_cache.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "base/error.h"

namespace gp {
namespace {

constexpr int kHeads = 2, kDim = 4;

// Layer 0 local (a window of 4: a ring of 4 + 64 slack slots), layer 1 global.
TextConfig two_layers() {
  TextConfig c;
  c.n_layers = 2;
  c.is_global = {false, true};
  c.n_kv_heads = kHeads;
  c.head_dim = kDim;
  c.sliding_window = 4;
  return c;
}

// Keys [kHeads, kDim] of position p (values: the negatives), all exact in f16 up to position
// 255; salt 1 (rows written again) flips their sign.
std::vector<float> key_row(int p, int salt = 0) {
  std::vector<float> k(kHeads * kDim);
  for (int h = 0; h < kHeads; ++h)
    for (int i = 0; i < kDim; ++i) k[h * kDim + i] = (salt ? -0.25f : 0.25f) * (p * 8 + h * 4 + i);
  return k;
}
std::vector<float> value_row(int p, int salt = 0) {
  auto v = key_row(p, salt);
  for (float& x : v) x = -x;
  return v;
}

// Appends positions n_past .. end-1 in chunks of `chunk`, as the forward pass does: every layer,
// then commit.
void append_until(KvCache& cache, int end, int chunk, int salt = 0) {
  while (cache.n_past() < end) {
    const int n = std::min(chunk, end - cache.n_past());
    std::vector<float> k, v;
    for (int t = 0; t < n; ++t) {
      const auto kr = key_row(cache.n_past() + t, salt), vr = value_row(cache.n_past() + t, salt);
      k.insert(k.end(), kr.begin(), kr.end());
      v.insert(v.end(), vr.begin(), vr.end());
    }
    for (int l = 0; l < 2; ++l) cache.append(l, k.data(), v.data(), n);
    cache.commit(n);
  }
}

// True when `layer` holds position p with the row written with `salt`.
bool holds(const KvCache& cache, int layer, int p, int salt = 0) {
  std::vector<float> k(kHeads * kDim), v(kHeads * kDim);
  if (!cache.read(layer, p, k.data(), v.data())) return false;
  EXPECT_EQ(k, key_row(p, salt)) << "layer " << layer << " position " << p;
  EXPECT_EQ(v, value_row(p, salt)) << "layer " << layer << " position " << p;
  return true;
}

TEST(KvCache, RingWrapsAroundAndTheGlobalLayerKeepsEveryPosition) {
  for (DType dtype : {DType::F32, DType::F16}) {
    KvCache cache(two_layers(), 200, dtype);
    const size_t per_position = 2 * dtype_size(dtype) * kHeads * kDim;
    EXPECT_EQ(cache.bytes(), per_position * (68 + 200));
    EXPECT_EQ(KvCache::bytes_for(two_layers(), 200, dtype), cache.bytes());
    append_until(cache, 150, 7);  // 150 positions: the ring of 68 slots went round twice
    EXPECT_EQ(cache.n_past(), 150);
    for (int p = 0; p < 150; ++p) {
      EXPECT_EQ(holds(cache, 0, p), p >= 150 - 68) << p;
      EXPECT_TRUE(holds(cache, 1, p)) << p;
    }
    EXPECT_FALSE(holds(cache, 1, 150));
    // What attention reads: the whole ring, each slot p % 68 labelled with its position.
    const ops::KvSegment ring = cache.cached(0), global = cache.cached(1);
    EXPECT_EQ(ring.n, 68);
    EXPECT_EQ(global.n, 150);
    for (int p = 150 - 68; p < 150; ++p) EXPECT_EQ(ring.pos[p % 68], p);
    EXPECT_EQ(ring.dtype, dtype);
    EXPECT_EQ(cache.bytes_attended(), per_position * (68 + 150));
  }
}

TEST(KvCache, TruncateInsideTheRingKeepsItsWindowAndBeyondItDropsAll) {
  KvCache cache(two_layers(), 200, DType::F16);
  append_until(cache, 150, 150);  // one chunk larger than the ring
  // Position 140 attends to 137..139, still in the ring (it holds 82..149).
  EXPECT_EQ(cache.truncate(140), 140);
  EXPECT_EQ(cache.n_past(), 140);
  EXPECT_TRUE(holds(cache, 0, 139));
  EXPECT_FALSE(holds(cache, 0, 140));
  EXPECT_FALSE(holds(cache, 1, 145));
  EXPECT_EQ(cache.cached(0).pos[140 % 68], -1);  // an emptied slot is masked out
  // Rewritten positions read back as written the second time.
  append_until(cache, 160, 3, 1);
  for (int p = 140; p < 160; ++p) EXPECT_TRUE(holds(cache, 0, p, 1)) << p;
  EXPECT_TRUE(holds(cache, 1, 100));
  // Position 70 would need 67..69, overwritten long ago: everything goes.
  EXPECT_EQ(cache.truncate(70), 0);
  EXPECT_EQ(cache.n_past(), 0);
  EXPECT_FALSE(holds(cache, 1, 0));
  EXPECT_EQ(cache.cached(1).n, 0);
  // Truncating forward keeps what there is.
  append_until(cache, 10, 4);
  EXPECT_EQ(cache.truncate(50), 10);
}

TEST(KvCache, F16StorageRoundsEachValueToTheNearestHalf) {
  KvCache f16(two_layers(), 8, DType::F16), f32(two_layers(), 8, DType::F32);
  // Inputs and their nearest IEEE halves, worked out by hand: 0.1 = 0x2E66, 1/3 = 0x3555, 1000.7
  // lies between 1000.5 and 1001 (steps of 0.5), 2049 is a tie between 2048 and 2050 (to even),
  // 70000 is beyond the largest half (65504): infinity.
  const std::vector<float> in = {0.1f, 1.0f / 3, 1000.7f, 2049.0f, -3.0f, 70000.0f, 0.0f, -0.1f};
  const std::vector<float> half = {
      0.0999755859375f, 0.333251953125f, 1000.5f, 2048.0f, -3.0f, INFINITY, 0.0f,
      -0.0999755859375f};
  std::vector<float> v(in.size());
  for (size_t i = 0; i < in.size(); ++i) v[i] = 2 * in[i];
  for (KvCache* c : {&f16, &f32}) {
    for (int l = 0; l < 2; ++l) c->append(l, in.data(), v.data(), 1);
    c->commit(1);
  }
  std::vector<float> k(in.size()), vv(in.size());
  for (int l = 0; l < 2; ++l) {
    ASSERT_TRUE(f16.read(l, 0, k.data(), vv.data()));
    EXPECT_EQ(k, half) << "layer " << l;
    ASSERT_TRUE(f32.read(l, 0, k.data(), vv.data()));
    EXPECT_EQ(k, in) << "layer " << l;
    EXPECT_EQ(vv, v) << "layer " << l;
  }
}

TEST(KvCache, CommitPastTheContextAndBadSettingsAreRefused) {
  KvCache cache(two_layers(), 8);
  append_until(cache, 8, 8);
  try {
    cache.commit(1);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "context full: 8 tokens (see --ctx-size)");
  }
  EXPECT_THROW(KvCache(two_layers(), 0), Error);
  EXPECT_THROW(KvCache(two_layers(), 8, DType::BF16), Error);
}

}  // namespace
}  // namespace gp
