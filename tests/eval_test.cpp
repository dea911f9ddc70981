// gemma-eval's measures: log-softmax, KL divergence, top-k agreement on hand-computed cases;
// perplexity against the fixture's float64 reference logits; comparisons of fixture checkpoints.
#include "prune/eval.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "base/error.h"
#include "io/tokenizer.h"
#include "prune/steps.h"
#include "test_util.h"

namespace gp {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

const char* kText =
    "This program is free software: you can redistribute it and/or modify it under the terms of "
    "the GNU General Public License as published by the Free Software Foundation, either version 3 "
    "of the License, or (at your option) any later version.";

TEST(EvalMeasures, KlDivergenceOfKnownDistributions) {
  // p = (1/2, 1/2), q = (1/4, 3/4): KL(p||q) = 1/2 ln 2 + 1/2 ln(2/3).
  const float a[2] = {0.0f, 0.0f};
  const float b[2] = {0.0f, static_cast<float>(std::log(3.0))};
  double excluded = -1;
  EXPECT_NEAR(prune::kl_divergence(a, b, 2, &excluded),
              0.5 * std::log(2.0) + 0.5 * std::log(2.0 / 3.0), 1e-7);
  EXPECT_EQ(excluded, 0.0);
  EXPECT_NEAR(prune::kl_divergence(a, a, 2, nullptr), 0.0, 1e-12);
  // B excludes an id A gives 1/3: A restricted to B's support is (1/2, 1/2) = B.
  const float c[3] = {1.0f, 1.0f, 1.0f}, d[3] = {5.0f, 5.0f, -kInf};
  EXPECT_NEAR(prune::kl_divergence(c, d, 3, &excluded), 0.0, 1e-12);
  EXPECT_NEAR(excluded, 1.0 / 3, 1e-12);
  const auto ls = prune::log_softmax(d, 3);
  EXPECT_NEAR(ls[0], std::log(0.5), 1e-12);
  EXPECT_TRUE(std::isinf(ls[2]) && ls[2] < 0);
}

TEST(EvalMeasures, TopKAgreement) {
  const float a[6] = {0, 0, 9, 0, 0, 0};
  const float b[6] = {6, 5, 3, 4, 7, 1};  // a's top-1 (id 2) is b's 5th
  EXPECT_EQ(prune::argmax(a, 6), 2);
  EXPECT_TRUE(prune::top1_in_topk(a, b, 6, 5));
  EXPECT_FALSE(prune::top1_in_topk(a, b, 6, 4));
  EXPECT_TRUE(prune::top1_in_topk(b, b, 6, 1));
}

TEST(Perplexity, MatchesTheFloat64ReferenceLogits) {
  // seq40's perplexity from the numpy float64 logits of the fixture.
  const std::string ref = test::data_path("tiny-original/ref/");
  const auto ids = test::read_ids(ref + "seq40.tokens.txt");
  const auto logits = test::read_f32(ref + "seq40.logits_exact.f32");
  const int64_t V = 512;
  double nll = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t)
    nll -= prune::log_softmax(&logits[t * V], V)[ids[t + 1]];
  const double expect = std::exp(nll / static_cast<double>(ids.size() - 1));
  const auto r = prune::perplexity_of_ids(test::data_path("tiny-original"), {ids});
  EXPECT_EQ(r.n_predicted, static_cast<int64_t>(ids.size()) - 1);
  EXPECT_NEAR(r.perplexity, expect, 1e-3 * expect);
  // Chunking changes only the float rounding of the batched products.
  prune::EvalOptions small;
  small.chunk = 3;
  EXPECT_NEAR(prune::perplexity_of_ids(test::data_path("tiny-original"), {ids}, small).perplexity,
              r.perplexity, 1e-5 * expect);
}

TEST(Perplexity, TextIsSplitIntoWindows) {
  const Tokenizer tok = Tokenizer::load(test::data_path("tiny-original"));
  const int64_t n_text = static_cast<int64_t>(tok.encode(kText).size());
  prune::EvalOptions o;
  o.window = 8;  // BOS + 7 text tokens per window: every text token is predicted once
  const auto r = prune::perplexity(test::data_path("tiny-original"), kText, o);
  EXPECT_EQ(r.n_predicted, n_text);
  EXPECT_TRUE(std::isfinite(r.perplexity));
  EXPECT_GT(r.perplexity, 1.0);
  EXPECT_THROW(prune::perplexity(test::data_path("tiny-original"), "", o), Error);
}

TEST(Compare, ACheckpointAgreesWithItself) {
  const auto r = prune::compare_models(test::data_path("tiny-original"),
                                       test::data_path("tiny-original"), kText);
  EXPECT_GT(r.n_positions, 10);
  EXPECT_EQ(r.mean_kl, 0.0);
  EXPECT_EQ(r.top1, 1.0);
  EXPECT_EQ(r.top5, 1.0);
  EXPECT_EQ(r.excluded_mass, 0.0);
}

// KL(p || q) in nats, top-1 and top-5 agreement of two logit rows, by hand (no shared code).
struct Agreement {
  double kl = 0;
  int top1 = 0, top5 = 0;
};
Agreement agreement(const float* a, const float* b, int64_t n) {
  auto probs = [n](const float* x) {
    double m = x[0], z = 0;
    for (int64_t i = 1; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
    std::vector<double> p(n);
    for (int64_t i = 0; i < n; ++i) z += p[i] = std::exp(x[i] - m);
    for (double& v : p) v /= z;
    return p;
  };
  const auto p = probs(a), q = probs(b);
  Agreement r;
  int64_t top_a = 0, top_b = 0;
  for (int64_t i = 0; i < n; ++i) {
    r.kl += p[i] * std::log(p[i] / q[i]);
    if (a[i] > a[top_a]) top_a = i;
    if (b[i] > b[top_b]) top_b = i;
  }
  int64_t above = 0;  // ids B ranks strictly above A's favourite
  for (int64_t i = 0; i < n; ++i) above += b[i] > b[top_a];
  r.top1 = top_a == top_b;
  r.top5 = above < 5;
  return r;
}

TEST(Compare, PrunedVariantsAreMeasured) {
  // tiny-mobile keeps 448 of 512 neurons in layers 3-6 and zeroes the pruned ids' embeddings.
  // Over seq40 (kept ids only), the mean KL and top-k agreement of the fixtures' float64
  // reference logits, computed here, are what the comparison must report (f32 vs float64 noise
  // aside).
  const std::string a = test::data_path("tiny-original"), b = test::data_path("tiny-mobile");
  const auto ids = test::read_ids(a + "/ref/seq40.tokens.txt");
  const auto la = test::read_f32(a + "/ref/seq40.logits_exact.f32");
  const auto lb = test::read_f32(b + "/ref/seq40.logits_exact.f32");
  const int64_t V = 512;
  Agreement sum;
  double max_kl = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    const Agreement g = agreement(&la[t * V], &lb[t * V], V);
    sum.kl += g.kl;
    max_kl = std::max(max_kl, g.kl);
    sum.top1 += g.top1;
    sum.top5 += g.top5;
  }
  const double n = static_cast<double>(ids.size());
  std::printf("reference: mean KL %.6g, max %.6g, top-1 %d/%zu, top-5 %d/%zu\n", sum.kl / n, max_kl,
              sum.top1, ids.size(), sum.top5, ids.size());
  const auto r = prune::compare_models_of_ids(a, b, {ids});
  EXPECT_EQ(r.n_positions, static_cast<int64_t>(ids.size()));
  EXPECT_NEAR(r.mean_kl, sum.kl / n, 1e-3 * sum.kl / n);
  EXPECT_NEAR(r.max_kl, max_kl, 1e-3 * max_kl);
  EXPECT_DOUBLE_EQ(r.top1, sum.top1 / n);
  EXPECT_DOUBLE_EQ(r.top5, sum.top5 / n);
  EXPECT_EQ(r.excluded_mass, 0.0);
  // A head pruned to the kept ids gives the others -inf: A's mass there is reported, the KL is
  // taken over the kept ids.
  prune::PruneOptions o;
  o.prune_lm_head = true;
  const std::string out = test::temp_dir("eval-head") + "/out";
  prune::run_step(prune::Step::Vocab, test::data_path("tiny-original"), out, o);
  const auto h = prune::compare_models(test::data_path("tiny-original"), out, kText);
  EXPECT_GT(h.excluded_mass, 0.0);  // ids 500..511 (vocabulary padding) are pruned
  EXPECT_LT(h.mean_kl, 1e-6);       // elsewhere the distributions are the same
  // Where A's favourite is a padding id (random weights), B cannot agree; elsewhere it does.
  EXPECT_GT(h.top1, 0.9);
  // B is A with the pruned ids at -inf: A's favourite is B's too when kept, else in none of B's
  // top 5 (every kept id ranks above it), so top-5 agreement is top-1 agreement.
  EXPECT_EQ(h.top5, h.top1);
}

TEST(Compare, WithAnImageMeasuresTheVisionSteps) {
  const std::string image = test::data_path("tiny-original/ref/image.png");
  const std::string text = "Describe this image.";
  const auto same = prune::compare_models_with_image(test::data_path("tiny-original"),
                                                     test::data_path("tiny-original"), image, text);
  EXPECT_GT(same.n_positions, 3);
  EXPECT_EQ(same.mean_kl, 0.0);
  EXPECT_EQ(same.top1, 1.0);
  // The fc2 step changes the vision tower only by fc2's 4-bit error, which reaches the text
  // through the image embeddings.
  const std::string root = test::temp_dir("eval-image");
  prune::run_step(prune::Step::Fc2, test::data_path("tiny-original"), root + "/fc2", {});
  const auto fc2 = prune::compare_models_with_image(test::data_path("tiny-original"), root + "/fc2",
                                                    image, text);
  EXPECT_EQ(fc2.n_positions, same.n_positions);
  EXPECT_GT(fc2.mean_kl, 0.0);  // fc2's 4-bit error reaches the text through the image
  EXPECT_LT(fc2.mean_kl, 0.05);
  // Another resolution: 9 image tokens instead of 16, the text after the image still lines up.
  prune::PruneOptions o;
  o.image_size = 168;
  prune::run_step(prune::Step::Resolution, test::data_path("tiny-original"), root + "/res", o);
  const auto res = prune::compare_models_with_image(test::data_path("tiny-original"), root + "/res",
                                                    image, text);
  EXPECT_EQ(res.n_positions, same.n_positions);
  EXPECT_GT(res.mean_kl, 0.0);
  EXPECT_TRUE(std::isfinite(res.mean_kl));
}

TEST(Compare, AMissingCheckpointIsAnError) {
  const std::string dir = test::temp_dir("eval-missing");
  EXPECT_THROW(prune::compare_models(test::data_path("tiny-original"), dir + "/none", kText),
               Error);
  EXPECT_THROW(prune::perplexity(dir, kText), Error);
}

}  // namespace
}  // namespace gp
