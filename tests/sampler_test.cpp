#include "runtime/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>

namespace gp {
namespace {

TEST(Sampler, GreedyPicksArgmaxAndFirstOfTies) {
  Sampler s(SamplingParams{});
  std::vector<float> l = {0.1f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(s.sample(l.data(), 4, {}), 1);
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  Sampler s(p);
  std::vector<float> l = {4.0f, 3.0f, -1.0f};
  EXPECT_EQ(s.sample(l.data(), 3, {0, 0, 2}), 1);  // 4 -> 2 < 3
  EXPECT_FLOAT_EQ(l[0], 2.0f);
  EXPECT_FLOAT_EQ(l[2], -2.0f);  // applied once per distinct id
  EXPECT_FLOAT_EQ(l[1], 3.0f);
}

TEST(Sampler, SameSeedSameChoicesDifferentSeedDifferent) {
  SamplingParams p;
  p.temperature = 1.0f;
  auto draw = [&](uint64_t seed) {
    p.seed = seed;
    Sampler s(p);
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) {
      std::vector<float> l(50);
      for (int k = 0; k < 50; ++k) l[k] = std::sin(k * 1.3f);
      out.push_back(s.sample(l.data(), 50, {}));
    }
    return out;
  };
  EXPECT_EQ(draw(7), draw(7));
  EXPECT_NE(draw(7), draw(8));
}

TEST(Sampler, TopKOneIsGreedy) {
  SamplingParams p;
  p.temperature = 5.0f;
  p.top_k = 1;
  Sampler s(p);
  for (int i = 0; i < 20; ++i) {
    std::vector<float> l = {0.0f, 0.5f, 0.4f};
    EXPECT_EQ(s.sample(l.data(), 3, {}), 1);
  }
}

// Empirical frequencies follow softmax(l / T) restricted by top-p / min-p.
std::map<int, double> frequencies(SamplingParams p, const std::vector<float>& logits, int n) {
  Sampler s(p);
  std::map<int, double> f;
  for (int i = 0; i < n; ++i) {
    auto l = logits;
    f[s.sample(l.data(), static_cast<int64_t>(l.size()), {})] += 1.0 / n;
  }
  return f;
}

TEST(Sampler, TemperatureFollowsSoftmax) {
  SamplingParams p;
  p.temperature = 0.5f;
  const std::vector<float> l = {0.0f, std::log(2.0f) * 0.5f,
                                -std::numeric_limits<float>::infinity()};
  // softmax(l / 0.5) = [1, 2, 0] / 3
  auto f = frequencies(p, l, 20000);
  EXPECT_NEAR(f[0], 1.0 / 3, 0.015);
  EXPECT_NEAR(f[1], 2.0 / 3, 0.015);
  EXPECT_EQ(f.count(2), 0u);  // -inf (pruned ids) is never sampled
}

TEST(Sampler, TopPKeepsTheSmallestSetReachingP) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.6f;
  // probabilities 0.5, 0.3, 0.2: top-p 0.6 keeps {0, 1}, renormalized to 0.625 / 0.375
  const std::vector<float> l = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  auto f = frequencies(p, l, 20000);
  EXPECT_NEAR(f[0], 0.625, 0.015);
  EXPECT_NEAR(f[1], 0.375, 0.015);
  EXPECT_EQ(f.count(2), 0u);
}

TEST(Sampler, MinPDropsTokensBelowFractionOfTop) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.min_p = 0.5f;
  // probabilities 0.5, 0.3, 0.2: min-p 0.5 keeps p >= 0.25 -> {0, 1}
  const std::vector<float> l = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  auto f = frequencies(p, l, 20000);
  EXPECT_NEAR(f[0], 0.625, 0.015);
  EXPECT_EQ(f.count(2), 0u);
}

// Without top-k, top-p and min-p sort only the candidates down to their cut (top-p: logit buckets
// down to the one holding the mass): over large vocabularies no draw falls outside the kept set,
// and the draws reach close to its edge.
TEST(Sampler, TopPAndMinPDrawOnlyFromTheirKeptSetOverLargeVocabularies) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.4903f;
  // 5000 equal logits: top-p keeps the first 2452 ids (ties go to the lower id).
  auto f = frequencies(p, std::vector<float>(5000, 1.0f), 1000);
  EXPECT_LE(f.rbegin()->first, 2451);
  EXPECT_GT(f.rbegin()->first, 2300);
  // 3000 spread logits: the kept set is the top ids by logit up to 70 % of the mass.
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> l(3000);
  for (auto& v : l) v = normal(rng);
  std::vector<int> order(l.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
  double mass = 0, cum = 0;
  for (float v : l) mass += std::exp(v - l[order[0]]);
  size_t kept = 0;
  while (cum < 0.7 * mass) cum += std::exp(l[order[kept++]] - l[order[0]]);
  std::vector<size_t> rank(l.size());
  for (size_t r = 0; r < order.size(); ++r) rank[order[r]] = r;
  p.top_p = 0.7f;
  f = frequencies(p, l, 2000);
  size_t lowest = 0;
  for (const auto& [id, freq] : f) lowest = std::max(lowest, rank[id]);
  EXPECT_LT(lowest, kept);
  EXPECT_GT(lowest, kept * 8 / 10);
  // 3000 ids at logit 0 then 3000 at -10 (p / p_max = 4.5e-5): min-p 0.01 keeps the first 3000.
  p.top_p = 1.0f;
  p.min_p = 0.01f;
  l.assign(6000, 0.0f);
  std::fill(l.begin() + 3000, l.end(), -10.0f);
  f = frequencies(p, l, 1000);
  EXPECT_LT(f.rbegin()->first, 3000);
  EXPECT_GT(f.rbegin()->first, 2900);
}

// Plain temperature sampling draws from every finite logit without sorting them.
TEST(Sampler, TemperatureAloneReachesEveryId) {
  SamplingParams p;
  p.temperature = 1.0f;
  auto f = frequencies(p, std::vector<float>(3000, 0.0f), 10000);
  EXPECT_GT(f.size(), 2800u);  // 3000 equally likely ids: 2892 drawn on average
  EXPECT_GT(f.rbegin()->first, 2990);
}

}  // namespace
}  // namespace gp
