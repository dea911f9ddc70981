#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_set>

namespace gp {
namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Sampler::Sampler(const SamplingParams& p) : p_(p) {
  uint64_t x = p.seed;
  for (auto& s : s_) s = splitmix64(x);
}

double Sampler::uniform() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return static_cast<double>(result >> 11) * 0x1.0p-53;
}

namespace {
// Index of the largest value, the first of ties; NaN never wins (0 when nothing compares).
// Eight running maxima, then a search for the first equal value: eight independent maxima fit one
// vector, where max_element compares one value at a time (docs/BENCHMARKS.md).
int32_t argmax(const float* x, int64_t n) {
  float m[8];
  std::fill(m, m + 8, -std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) m[j] = std::max(m[j], x[i + j]);
  float best = *std::max_element(m, m + 8);
  for (; i < n; ++i) best = std::max(best, x[i]);
  const int64_t at = std::find(x, x + n, best) - x;
  return static_cast<int32_t>(at < n ? at : 0);
}
}  // namespace

int32_t Sampler::sample(float* logits, int64_t n_vocab, const std::vector<int32_t>& history) {
  if (p_.repetition_penalty != 1.0f) {
    std::unordered_set<int32_t> seen(history.begin(), history.end());
    for (int32_t id : seen) {
      if (id < 0 || id >= n_vocab) continue;
      float& l = logits[id];
      l = l > 0 ? l / p_.repetition_penalty : l * p_.repetition_penalty;
    }
  }
  if (p_.temperature <= 0.0f) return argmax(logits, n_vocab);

  // Candidates (finite logits: pruned ids are -inf) with weights exp((logit - max) / T).
  std::vector<int32_t>& idx = idx_;
  idx.clear();
  for (int64_t i = 0; i < n_vocab; ++i)
    if (std::isfinite(logits[i])) idx.push_back(static_cast<int32_t>(i));
  if (idx.empty()) return 0;
  std::vector<float>& w = w_;  // by id, for the ids passed to set_weights
  w.resize(n_vocab);
  // The largest logit: the first candidate once top-k has sorted them, else a pass of its own.
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  size_t sorted = idx.size();
  if (p_.top_k > 0) {
    sorted = std::min<size_t>(p_.top_k, idx.size());
    std::partial_sort(idx.begin(), idx.begin() + sorted, idx.end(), by_logit);
  }
  float max_l = p_.top_k > 0 ? logits[idx[0]] : logits[argmax(logits, n_vocab)];
  if (!std::isfinite(max_l))  // a +inf logit is no candidate: the largest finite one
    max_l = logits[*std::max_element(idx.begin(), idx.end(),
                                     [&](int32_t a, int32_t b) { return logits[a] < logits[b]; })];
  auto set_weights = [&](auto begin, auto end) {
    for (auto it = begin; it != end; ++it)
      w[*it] = std::exp((logits[*it] - max_l) / p_.temperature);
  };
  double mass = 0;  // of all candidates, when there is no top-k
  if (p_.top_k > 0) {
    set_weights(idx.begin(), idx.begin() + sorted);
  } else {
    set_weights(idx.begin(), idx.end());
    for (int32_t i : idx) mass += w[i];
  }
  if (p_.top_k <= 0 && p_.top_p >= 1.0f && p_.min_p <= 0.0f) {  // every candidate: no order
    double r = uniform() * mass;
    for (int32_t i : idx) {
      r -= w[i];
      if (r < 0) return i;
    }
    return idx.back();
  }

  // The others cut a prefix of the candidates in order of logit. Sort only that far: the top k,
  // or (no top-k) the candidates above min-p's cut and in the logit buckets down to the one
  // where top-p's mass is reached (one more, for rounding).
  if (p_.top_k <= 0) {
    constexpr int kBuckets = 1024;
    float lo = max_l;
    for (int32_t i : idx) lo = std::min(lo, logits[i]);
    const float per_logit = max_l > lo ? kBuckets / (max_l - lo) : 0.0f;
    auto bucket = [&](int32_t i) {
      return std::min(kBuckets - 1, static_cast<int>((max_l - logits[i]) * per_logit));
    };
    int last = kBuckets - 1;  // the last bucket sorted
    if (p_.top_p < 1.0f) {
      std::vector<double> in_bucket(kBuckets);
      for (int32_t i : idx) in_bucket[bucket(i)] += w[i];
      double cum = 0;
      for (last = 0; last < kBuckets - 1 && (cum += in_bucket[last]) < p_.top_p * mass;) ++last;
      last = std::min(kBuckets - 1, last + 1);
    }
    const float min_w = p_.min_p > 0.0f ? p_.min_p : 0.0f;
    const auto end = std::partition(idx.begin(), idx.end(), [&](int32_t i) {
      return bucket(i) <= last && w[i] >= min_w;  // the top logit always: bucket 0, weight 1
    });
    sorted = end - idx.begin();
    std::sort(idx.begin(), idx.begin() + sorted, by_logit);
  }
  idx.resize(sorted);

  std::vector<double> prob(sorted);
  double sum = 0;
  for (size_t i = 0; i < sorted; ++i) sum += prob[i] = w[idx[i]];
  if (p_.top_k <= 0) sum = mass;  // probabilities of the whole vocabulary
  for (auto& q : prob) q /= sum;

  size_t keep = sorted;
  if (p_.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < sorted; ++i) {
      cum += prob[i];
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (p_.min_p > 0.0f) {
    size_t n = 0;
    while (n < keep && prob[n] >= p_.min_p * prob[0]) ++n;
    keep = std::max<size_t>(n, 1);
  }
  const double total = std::accumulate(prob.begin(), prob.begin() + keep, 0.0);
  double r = uniform() * total;
  for (size_t i = 0; i < keep; ++i) {
    r -= prob[i];
    if (r < 0) return idx[i];
  }
  return idx[keep - 1];
}

}  // namespace gp
