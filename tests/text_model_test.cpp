// The text decoder against the fixtures' independent float64 reference (and llama.cpp's logits).
#include "model/text_model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <utility>

#include "base/error.h"
#include "io/model_dir.h"
#include "kernels/ops.h"
#include "model/config.h"
#include "model/model_files.h"
#include "model/tensor_table.h"
#include "runtime/kv_cache.h"
#include "test_util.h"

namespace gp {
namespace {

// A fixture model with exact f32 activations (the float reference's arithmetic) unless asked.
struct Loaded {
  ModelFiles files;
  const ModelConfig& config = files.config();
  TextModel model;
  explicit Loaded(const std::string& path, ops::Activations act = ops::Activations::kF32,
                  bool repack = false)
      : files(path),
        model(config, load_text_weights(files.dir(), config, files.layout()), act, repack) {}
};

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (std::isinf(a[i]) && std::isinf(b[i]) && (a[i] > 0) == (b[i] > 0)) continue;
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

// The logits [ids, n_vocab] of running ids one token at a time through the cache.
std::vector<float> decode_one_by_one(const TextModel& model, const std::vector<int32_t>& ids,
                                     KvCache& cache) {
  const int64_t V = model.config().text.n_vocab;
  std::vector<float> logits(ids.size() * V);
  for (size_t t = 0; t < ids.size(); ++t) {
    TextBatch b;
    b.ids = {ids[t]};
    model.forward(b, cache, logits.data() + t * V);
  }
  return logits;
}

class FixtureLogits : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(FixtureLogits, MatchReferenceAtEveryPosition) {
  const auto& [model_name, seq] = GetParam();
  Loaded m(test::data_path(model_name));
  const std::string ref = test::data_path(model_name + "/ref/");
  const auto ids = test::read_ids(ref + seq + ".tokens.txt");
  const auto exact = test::read_f32(ref + seq + ".logits_exact.f32");
  const auto llama = test::read_f32(ref + seq + ".logits.f32");
  const int64_t V = m.config.text.n_vocab;
  ASSERT_EQ(exact.size(), ids.size() * V);

  KvCache cache(m.config.text, 256);
  std::vector<float> logits(ids.size() * V);
  TextBatch batch;
  batch.ids = ids;
  m.model.forward(batch, cache, logits.data(), static_cast<int>(ids.size()));
  const double d_exact = max_abs_diff(logits, exact), d_llama = max_abs_diff(logits, llama);
  std::printf("%s %s: max |diff| vs exact %.3g, vs llama.cpp %.3g\n", model_name.c_str(),
              seq.c_str(), d_exact, d_llama);
  EXPECT_LT(d_exact, 1e-3);
  EXPECT_LT(d_llama, 2e-2);

  // The same sequence one token at a time through the KV cache gives the same logits.
  KvCache cache2(m.config.text, 256);
  EXPECT_LT(max_abs_diff(decode_one_by_one(m.model, ids, cache2), exact), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(All, FixtureLogits,
                         ::testing::Combine(::testing::Values("tiny-original", "tiny-mobile"),
                                            ::testing::Values("bos", "seq7", "seq24", "seq40")),
                         [](const auto& info) {
                           std::string n = std::get<0>(info.param) + "_" + std::get<1>(info.param);
                           for (auto& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

// int8 activations (the default) are lossy: each linear's input is rounded to 8 bits per group of
// 64. On these random tiny models that moves logits by ~0.4 at most (std 2.1) and flips a few
// close argmaxes, so the exact tests above use f32 activations. Guard against gross errors (a
// wrong scale or layout gives unrelated logits), for prefill (the batched kernel) and for decode
// (the one-row kernel): the mean error stays a small fraction of the logits' spread, and the
// argmax holds at every position whose reference top-2 margin exceeds twice that position's
// largest error (where no error that small could flip it).
TEST_P(FixtureLogits, Int8ActivationsStayCloseToExact) {
  const auto& [model_name, seq] = GetParam();
  Loaded m(test::data_path(model_name), ops::Activations::kInt8);
  const std::string ref = test::data_path(model_name + "/ref/");
  const auto ids = test::read_ids(ref + seq + ".tokens.txt");
  const auto exact = test::read_f32(ref + seq + ".logits_exact.f32");
  const int64_t V = m.config.text.n_vocab;
  auto check_close = [&](const std::vector<float>& logits, const char* what) {
    double sum_diff = 0, sum_sq = 0, sum = 0;
    size_t same_top = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
      sum_diff += std::fabs(double(logits[i]) - exact[i]);
      sum += exact[i];
      sum_sq += double(exact[i]) * exact[i];
    }
    const double n = static_cast<double>(logits.size());
    const double std_dev = std::sqrt(sum_sq / n - (sum / n) * (sum / n));
    size_t clear = 0;  // positions whose margin no error of this size could flip
    for (size_t t = 0; t < ids.size(); ++t) {
      const float* got = &logits[t * V];
      const float* want = &exact[t * V];
      const int64_t top = std::max_element(want, want + V) - want;
      float second = -INFINITY, err = 0;
      for (int64_t v = 0; v < V; ++v) {
        if (v != top) second = std::max(second, want[v]);
        err = std::max(err, std::fabs(got[v] - want[v]));
      }
      const bool same = std::max_element(got, got + V) - got == top;
      same_top += same;
      if (want[top] - second > 2 * err) {
        ++clear;
        EXPECT_TRUE(same) << what << " position " << t;
      }
    }
    std::printf(
        "%s %s int8 %s: mean |diff| %.3g (logit std %.3g), max %.3g, argmax %zu/%zu (%zu beyond "
        "reach of the error)\n",
        model_name.c_str(), seq.c_str(), what, sum_diff / n, std_dev, max_abs_diff(logits, exact),
        same_top, ids.size(), clear);
    EXPECT_LT(sum_diff / n, 0.05 * std_dev) << what;
  };
  KvCache cache(m.config.text, 256);
  std::vector<float> logits(ids.size() * V);
  TextBatch batch;
  batch.ids = ids;
  m.model.forward(batch, cache, logits.data(), static_cast<int>(ids.size()));
  check_close(logits, "prefill");
  KvCache cache2(m.config.text, 256, DType::F16);  // as Session keeps it with int8 activations
  check_close(decode_one_by_one(m.model, ids, cache2), "decode");
  // Decode over the weights repacked at load (--repack; where this CPU has a repacked layout),
  // whose one row takes the kernels of the prompt's rows.
  Loaded r(test::data_path(model_name), ops::Activations::kInt8, /*repack=*/true);
  KvCache cache3(m.config.text, 256, DType::F16);
  check_close(decode_one_by_one(r.model, ids, cache3), "decode, repacked");
}

// An F16 KV cache takes half the memory; decoding through it, with exact activations, stays
// within the rounding of its keys and values (2^-11 relative) of the float reference.
TEST_P(FixtureLogits, F16CacheDecodeStaysCloseToExact) {
  const auto& [model_name, seq] = GetParam();
  Loaded m(test::data_path(model_name));
  const std::string ref = test::data_path(model_name + "/ref/");
  const auto ids = test::read_ids(ref + seq + ".tokens.txt");
  const auto exact = test::read_f32(ref + seq + ".logits_exact.f32");
  KvCache cache(m.config.text, 256, DType::F16);
  EXPECT_EQ(cache.bytes() * 2, KvCache(m.config.text, 256).bytes());
  const double d = max_abs_diff(decode_one_by_one(m.model, ids, cache), exact);
  std::printf("%s %s: f16 cache, max |diff| vs exact %.3g\n", model_name.c_str(), seq.c_str(), d);
  EXPECT_LT(d, 1e-2);
}

TEST(TextModel, HiddenStatesMatchReferenceLayerByLayer) {
  Loaded m(test::data_path("tiny-original"));
  const auto ids = test::read_ids(test::data_path("tiny-original/ref/seq7.tokens.txt"));
  const auto ref = test::read_f32(test::data_path("tiny-original/ref/debug/seq7.hidden_exact.f32"));
  const int64_t d = m.config.text.d_model, n = static_cast<int64_t>(ids.size());
  std::vector<float> got;
  m.model.set_observer(
      [&](int, const float* x, int64_t rows) { got.insert(got.end(), x, x + rows * d); });
  KvCache cache(m.config.text, 64);
  TextBatch b;
  b.ids = ids;
  m.model.forward(b, cache, nullptr);
  ASSERT_EQ(got.size(), ref.size());
  for (int layer = 0; layer < 8; ++layer) {
    double md = 0, scale = 0;
    for (int64_t i = 0; i < n * d; ++i) {
      md = std::max(md, std::fabs(double(got[layer * n * d + i]) - ref[layer * n * d + i]));
      scale = std::max(scale, std::fabs(double(ref[layer * n * d + i])));
    }
    EXPECT_LT(md, 1e-5 * (1 + scale)) << "stage " << layer;
  }
}

// The weight pages gemma-bench's roofline reads in place: every linear's nibbles, scales and
// biases and the output head, which are weight_bytes_per_token less one embedding row and the
// norms; each range inside the mapped checkpoint.
TEST(TextModel, WeightRangesCoverTheBytesADecodeStepReads) {
  for (const char* name : {"tiny-original", "tiny-mobile"}) {
    Loaded m(test::data_path(name), ops::Activations::kInt8);
    const TextWeights& w = m.model.weights();
    size_t norms = 0;
    for (const auto& L : w.layers)
      norms += 4 * (L.q_norm.size() + L.k_norm.size() + 4 * L.input_norm.size());
    size_t total = 0;
    for (const auto& r : m.model.weight_ranges_per_token()) {
      EXPECT_GT(r.size(), 0u) << name;
      total += r.size();
    }
    EXPECT_EQ(total + w.embed.bytes() / w.embed.out + norms, m.model.weight_bytes_per_token())
        << name;
  }
}

// Layers' linears repacked at load (int8 activations, a CPU whose int8 kernels read the repacked
// layout faster: AVX3_DL) give a prompt the same logits as the mapped rows, bitwise: every row
// count of 2 or more gives the panel kernel's bits either way. (Decode differs: the one-row
// kernel over the mapped rows sums in another order; Int8ActivationsStayCloseToExact holds the
// repacked decode to the reference, LastLogitsDoNotDependOnHowThePromptIsChunked to the prompt's
// bits.) Where the CPU does not repack, the test says so and checks only that nothing was.
TEST(TextModel, RepackedWeightsGiveTheMappedWeightsLogits) {
  for (const char* name : {"tiny-original", "tiny-mobile"}) {
    SCOPED_TRACE(name);
    Loaded mapped(test::data_path(name), ops::Activations::kInt8);
    Loaded repacked(test::data_path(name), ops::Activations::kInt8, /*repack=*/true);
    int n_repacked = 0, n_linears = 0;
    for (const auto& L : repacked.model.weights().layers) {
      for (const Weight* w : L.linears()) {
        n_linears += 1;
        n_repacked += w->vq != nullptr;
        EXPECT_EQ(w->vq != nullptr, ops::repack_bytes(*w) > 0);
      }
    }
    for (const auto& L : mapped.model.weights().layers)
      for (const Weight* w : L.linears()) EXPECT_EQ(w->vq, nullptr);
    std::printf("%s: %d of %d linears repacked on %s\n", name, n_repacked, n_linears,
                ops::simd_target());
    if (n_repacked == 0) continue;

    const auto ids = test::read_ids(test::data_path(std::string(name) + "/ref/seq40.tokens.txt"));
    const int64_t V = mapped.config.text.n_vocab, n = static_cast<int64_t>(ids.size());
    auto prefill = [&](const TextModel& model) {
      KvCache cache(model.config().text, 64);
      std::vector<float> logits(n * V, std::nanf(""));
      TextBatch b;
      b.ids = ids;
      model.forward(b, cache, logits.data(), static_cast<int>(n));
      return logits;
    };
    const std::vector<float> want = prefill(mapped.model), got = prefill(repacked.model);
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0)
        << "max |diff| " << max_abs_diff(got, want);
  }
}

// Same prompt, same answer: the logits of the last prompt position are bitwise the same whether
// the prompt runs as one batch, in chunks of 7 (they wrap the local layers' ring) or of 2, in both
// activation modes, with and without the int8 repack, and with both cache dtypes; and in chunks
// of one row (decode) where the load repacked every layer's linears (int8 on AVX3_DL with
// --repack: one row then takes the kernels of the others).
// (Elsewhere one row takes the one-row linears, which sum in another order: see kernels_test's
// BatchInvariance.)
TEST(TextModel, LastLogitsDoNotDependOnHowThePromptIsChunked) {
  for (const char* name : {"tiny-original", "tiny-mobile"}) {
    using Mode = std::pair<ops::Activations, bool>;  // activations, repack
    for (const auto& [act, repack] :
         {Mode{ops::Activations::kF32, false}, Mode{ops::Activations::kInt8, false},
          Mode{ops::Activations::kInt8, true}}) {
      Loaded m(test::data_path(name), act, repack);
      const auto ids = test::read_ids(test::data_path(std::string(name) + "/ref/seq40.tokens.txt"));
      const int64_t V = m.config.text.n_vocab, n = static_cast<int64_t>(ids.size());
      bool all_repacked = true;
      for (const auto& L : m.model.weights().layers)
        for (const Weight* w : L.linears()) all_repacked = all_repacked && w->vq;
      std::vector<int64_t> chunks = {n, 7, 2};
      if (all_repacked) chunks.push_back(1);
      for (DType dtype : {DType::F32, DType::F16}) {
        std::vector<float> first;
        for (int64_t chunk : chunks) {
          SCOPED_TRACE(
              std::string(name) + " int8=" + std::to_string(act == ops::Activations::kInt8) +
              " repack=" + std::to_string(repack) + " f16=" + std::to_string(dtype == DType::F16) +
              " chunk=" + std::to_string(chunk));
          KvCache cache(m.config.text, 64, dtype);
          std::vector<float> logits(V, std::nanf(""));
          for (int64_t t0 = 0; t0 < n; t0 += chunk) {
            TextBatch b;
            b.ids.assign(ids.begin() + t0, ids.begin() + std::min(n, t0 + chunk));
            m.model.forward(b, cache, logits.data());
          }
          if (first.empty()) {
            first = logits;
            continue;
          }
          EXPECT_EQ(std::memcmp(logits.data(), first.data(), V * sizeof(float)), 0)
              << "max |diff| " << max_abs_diff(logits, first);
        }
      }
    }
  }
}

}  // namespace
}  // namespace gp
