// Token sampling: greedy, or temperature with top-k, top-p and min-p, after a repetition penalty.
// Same seed, same choices: the random numbers come from our own generator, not the platform's.
#pragma once

#include <cstdint>
#include <vector>

namespace gp {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax)
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off; keeps tokens with p >= min_p * p_max
  float repetition_penalty = 1.0f;  // 1: off; divides positive, multiplies negative logits of seen ids
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  // Picks the next token from logits [n_vocab] (modified in place by the penalty); `history` holds
  // the ids the penalty applies to.
  int32_t sample(float* logits, int64_t n_vocab, const std::vector<int32_t>& history);
  // A uniform double in [0, 1) from the generator (xoshiro256**), exposed for tests.
  double uniform();

 private:
  SamplingParams p_;
  uint64_t s_[4];
  std::vector<int32_t> idx_;  // scratch of sample(), kept across calls (no fresh pages per token)
  std::vector<float> w_;
};

}  // namespace gp
