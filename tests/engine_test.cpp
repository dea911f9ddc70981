// The engine end to end on the fixtures: greedy continuations, image prompts, the attention mask of
// images, prefix reuse, lazy vision mapping, and the CLI's verification outputs and errors.
#include "runtime/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "base/error.h"
#include "base/mapped_file.h"
#include "kernels/ops.h"
#include "test_util.h"

namespace gp {
namespace {
namespace fs = std::filesystem;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::Not;

double max_abs_diff(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) {
    if (std::isinf(a[i]) && std::isinf(b[i]) && (a[i] > 0) == (b[i] > 0)) continue;
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    m = std::isnan(d) ? INFINITY : std::max(m, d);
    if (std::isnan(d)) break;
  }
  return m;
}

std::vector<int32_t> greedy_ref(const std::string& model, std::vector<int32_t>* prompt) {
  const std::string text = test::read_text(test::data_path(model + "/ref/greedy.txt"));
  const size_t semi = text.find(';');
  const std::string p = test::temp_dir("g") + "/p.txt";
  test::write_text(p, text.substr(0, semi));
  *prompt = test::read_ids(p);
  test::write_text(p, text.substr(semi + 1));
  return test::read_ids(p);
}

class Fixture : public ::testing::TestWithParam<std::string> {};

// With exact activations, as the reference computed them: int8 ones move these logits by ~0.1,
// enough to swap a near tie (tiny-mobile, token 11: 186 over 172 by 0.16 in the reference).
TEST_P(Fixture, GreedyContinuationMatchesReference) {
  Engine engine(test::data_path(GetParam()), {0, false, true});
  std::vector<int32_t> prompt;
  const auto expected = greedy_ref(GetParam(), &prompt);
  Session session(engine, 128);
  GenerateOptions opt;
  opt.max_tokens = static_cast<int>(expected.size());
  const GenerateResult r = generate(session, prompt, {}, opt);
  EXPECT_EQ(r.ids, expected);
  EXPECT_EQ(r.finish_reason, FinishReason::kLength);
}

// The default path (int8 activations, f16 cache) on the same continuation: int8 moves these
// logits by up to ~0.4 (text_model_test), so its greedy ids must equal the float64 reference's
// for every step up to the first whose reference top1-top2 margin is below 0.35 (then a swap is
// allowed, and everything after it may differ).
TEST_P(Fixture, Int8GreedyFollowsTheReferenceWhileMarginsAllow) {
  Engine engine(test::data_path(GetParam()), {0, false});
  std::vector<int32_t> prompt;
  const auto expected = greedy_ref(GetParam(), &prompt);
  std::vector<double> margins;
  {
    std::string m = test::read_text(test::data_path(GetParam() + "/ref/greedy.margins.txt"));
    std::replace(m.begin(), m.end(), ',', ' ');
    std::istringstream in(m);
    for (double v; in >> v;) margins.push_back(v);
  }
  ASSERT_EQ(margins.size(), expected.size());
  size_t safe = 0;
  while (safe < margins.size() && margins[safe] >= 0.35) ++safe;
  Session session(engine, 128);
  GenerateOptions opt;
  opt.max_tokens = static_cast<int>(expected.size());
  const GenerateResult r = generate(session, prompt, {}, opt);
  ASSERT_EQ(r.ids.size(), expected.size());
  size_t same = 0;
  while (same < r.ids.size() && r.ids[same] == expected[same]) ++same;
  std::printf("%s int8 greedy: first %zu of %zu ids equal the reference (margins allow %zu)\n",
              GetParam().c_str(), same, expected.size(), safe);
  ASSERT_GE(safe, 4u);  // the check below covers a real prefix
  EXPECT_EQ(std::vector<int32_t>(r.ids.begin(), r.ids.begin() + safe),
            std::vector<int32_t>(expected.begin(), expected.begin() + safe));
}

TEST_P(Fixture, ImagePromptLogitsMatchReference) {
  Engine engine(test::data_path(GetParam()), {0, false, true});  // exact: the reference's f32
  const std::string ref = test::data_path(GetParam() + "/ref/");
  const auto ids = test::read_ids(ref + "image-prompt.ids.txt");
  const auto exact = test::read_f32(ref + "image-prompt.logits_exact.f32");
  const Image img = load_image(ref + "image.png");
  Session session(engine, 128);
  std::vector<float> got;
  session.prefill(ids, {&img}, [&](const float* rows, int64_t n) {
    got.insert(got.end(), rows, rows + n * engine.config().text.n_vocab);
  });
  ASSERT_EQ(got.size(), exact.size());
  const double d = max_abs_diff(got.data(), exact.data(), got.size());
  std::printf("%s image prompt: max |diff| vs exact %.3g\n", GetParam().c_str(), d);
  EXPECT_LT(d, 1e-3);
}

INSTANTIATE_TEST_SUITE_P(All, Fixture, ::testing::Values("tiny-original", "tiny-mobile"),
                         [](const auto& info) {
                           return info.param == "tiny-original" ? "original" : "mobile";
                         });

// A prompt with `n_images` images (all the fixture image, or `other` for the second).
struct ImagePrompt {
  std::vector<int32_t> ids;
  std::vector<int> soft_start;  // first soft token of each image
};
ImagePrompt image_prompt(const Engine& e, int n_images) {
  const ModelConfig& c = e.config();
  ImagePrompt p;
  p.ids = {c.bos_token, 300, 301};
  for (int i = 0; i < n_images; ++i) {
    p.ids.push_back(c.boi_token);
    p.soft_start.push_back(static_cast<int>(p.ids.size()));
    p.ids.insert(p.ids.end(), c.mm_tokens_per_image, c.image_token);
    p.ids.push_back(c.eoi_token);
    p.ids.push_back(310 + i);
  }
  p.ids.push_back(320);
  return p;
}

std::vector<float> all_logits(Engine& e, const std::vector<int32_t>& ids,
                              const std::vector<const Image*>& imgs) {
  Session s(e, 256);
  std::vector<float> out;
  s.prefill(ids, imgs, [&](const float* rows, int64_t n) {
    out.insert(out.end(), rows, rows + n * e.config().text.n_vocab);
  });
  return out;
}

Image noise_image(int w, int h, uint32_t seed) {
  Image img{w, h, std::vector<uint8_t>(static_cast<size_t>(w) * h * 3)};
  for (auto& b : img.rgb) b = static_cast<uint8_t>((seed = seed * 1664525u + 1013904223u) >> 24);
  return img;
}

TEST(ImageMask, SoftTokensOfOneImageSeeEachOtherButNeverALaterImage) {
  Engine e(test::data_path("tiny-original"), {0, false});
  const int64_t V = e.config().text.n_vocab;
  const Image a = load_image(test::data_path("tiny-original/ref/image.png"));
  const Image b = noise_image(224, 224, 1), c = noise_image(300, 200, 2);
  const ImagePrompt p = image_prompt(e, 2);
  const auto ab = all_logits(e, p.ids, {&a, &b});
  const auto ac = all_logits(e, p.ids, {&a, &c});
  const auto cb = all_logits(e, p.ids, {&c, &b});
  const int first_end = p.soft_start[0] + e.config().mm_tokens_per_image;  // eoi of image 1
  // Changing the second image leaves every position before it unchanged (it is never seen)...
  EXPECT_EQ(max_abs_diff(ab.data(), ac.data(), static_cast<size_t>(p.soft_start[1]) * V), 0.0);
  // ...and changes what comes after it.
  EXPECT_GT(max_abs_diff(ab.data() + (p.ids.size() - 1) * V, ac.data() + (p.ids.size() - 1) * V, V),
            1e-3);
  // Changing the first image changes its own first soft token's output: the first soft token sees
  // the later soft tokens of its image (bidirectional), which a causal mask would forbid.
  const size_t s0 = static_cast<size_t>(p.soft_start[0]) * V;
  EXPECT_GT(max_abs_diff(ab.data() + s0, cb.data() + s0, V), 1e-3);
  // Text before the first image is unaffected by any image.
  EXPECT_EQ(max_abs_diff(ab.data(), cb.data(), static_cast<size_t>(p.soft_start[0]) * V), 0.0);
  (void)first_end;
}

TEST(ImageMask, FirstSoftTokenDependsOnLaterSoftTokensOfItsImage) {
  // Direct check of the rule: perturb only the embedding of the LAST soft token of an image; the
  // first soft token's output must change (same image, bidirectional), while <start_of_image>,
  // which stays causal, must not.
  Engine e(test::data_path("tiny-original"), {0, false});
  const ModelConfig& c = e.config();
  const int64_t d = c.text.d_model, V = c.text.n_vocab;
  const ImagePrompt p = image_prompt(e, 1);
  const Image a = load_image(test::data_path("tiny-original/ref/image.png"));
  auto emb = e.encode_image(a);
  auto run = [&](const std::vector<float>& embeddings) {
    KvCache cache(c.text, 128);
    TextBatch b;
    b.ids = p.ids;
    b.group.assign(p.ids.size(), -1);
    b.embeddings.assign(p.ids.size(), nullptr);
    for (int i = 0; i < c.mm_tokens_per_image; ++i) {
      b.group[p.soft_start[0] + i] = 0;
      b.embeddings[p.soft_start[0] + i] = embeddings.data() + i * d;
    }
    std::vector<float> logits(p.ids.size() * V);
    e.text().forward(b, cache, logits.data(), static_cast<int>(p.ids.size()));
    return logits;
  };
  const auto base = run(emb);
  auto changed_emb = emb;
  for (int64_t i = 0; i < d; ++i) changed_emb[(c.mm_tokens_per_image - 1) * d + i] += 1.0f;
  const auto changed = run(changed_emb);
  const size_t boi = static_cast<size_t>(p.soft_start[0] - 1) * V, s0 = boi + V;
  EXPECT_EQ(max_abs_diff(base.data() + boi, changed.data() + boi, V), 0.0);
  EXPECT_GT(max_abs_diff(base.data() + s0, changed.data() + s0, V), 1e-4);
}

TEST(Engine, TwoImagePromptRunsEndToEnd) {
  Engine e(test::data_path("tiny-mobile"), {0, false});
  const Image a = load_image(test::data_path("tiny-mobile/ref/image.png"));
  const Image b = noise_image(640, 480, 3);
  Session s(e, 512);
  GenerateOptions opt;
  opt.max_tokens = 5;
  const auto prompt = e.chat_prompt({{"user", "Compare these.", 2}});
  int soft = 0;
  for (int32_t id : prompt) soft += id == e.config().image_token;
  EXPECT_EQ(soft, 2 * e.config().mm_tokens_per_image);
  const GenerateResult r = generate(s, prompt, {&a, &b}, opt);
  EXPECT_EQ(r.prefill.n_images, 2);
  EXPECT_EQ(r.ids.size(), 5u);
  EXPECT_THROW(generate(s, prompt, {&a}, opt), Error);  // two image runs, one image
}

// A prompt's images encoded one step at a time (as gemma-server interleaves them with other
// streams) give prefill()'s logits bitwise; an image the session encoded before is taken from its
// cache; a cancelled prompt drops its paused encoding.
TEST(Engine, ImageEncodedInStepsGivesThePrefillLogits) {
  Engine e(test::data_path("tiny-mobile"), {0, false});
  const Image a = load_image(test::data_path("tiny-mobile/ref/image.png"));
  const Image b = noise_image(640, 480, 3);
  const auto prompt = e.chat_prompt({{"user", "Compare these.", 2}});
  Session whole(e, 512);
  const PrefillResult rw = whole.prefill(prompt, {&a, &b});
  EXPECT_EQ(rw.n_images, 2);

  Session stepped(e, 512);
  stepped.begin_prompt(prompt, {&a, &b});
  int steps = 0;
  while (stepped.prompt_pending()) {
    while (stepped.image_pending()) {
      stepped.image_step();
      ++steps;
    }
    EXPECT_FALSE(stepped.image_encoding());
    const SequenceRows rows = stepped.prompt_rows();
    e.text().forward(std::span(&rows, 1));
    stepped.rows_ran();
  }
  EXPECT_EQ(steps, 2 * (e.config().vision.n_layers + 2));  // embedding, layers, projection each
  EXPECT_EQ(stepped.prompt_result().n_images, 2);
  EXPECT_GT(stepped.prompt_result().image_s, 0);
  EXPECT_EQ(stepped.last_logits(), whole.last_logits());

  // The same images in a new prompt: both cached, nothing to encode.
  const auto again = e.chat_prompt({{"user", "And now?", 2}});
  stepped.begin_prompt(again, {&a, &b});
  EXPECT_FALSE(stepped.image_pending());
  EXPECT_THROW(stepped.image_step(), Error);

  // A new image: one step, then the client leaves.
  const Image c = noise_image(300, 200, 4);
  const auto third = e.chat_prompt({{"user", "This one?", 1}});
  stepped.begin_prompt(third, {&c});
  ASSERT_TRUE(stepped.image_pending());
  stepped.image_step();
  EXPECT_TRUE(stepped.image_encoding());
  EXPECT_EQ(stepped.prompt_result().n_images, 0);
  stepped.cancel_prompt();
  EXPECT_FALSE(stepped.image_encoding());
  EXPECT_FALSE(stepped.prompt_pending());
}

// With exact activations; int8 ones round batches of other sizes differently (gemma-server
// --exact).
TEST(Engine, PrefixReuseGivesTheSameLogits) {
  Engine e(test::data_path("tiny-original"), {0, false, true});
  const auto ids = test::read_ids(test::data_path("tiny-original/ref/seq40.tokens.txt"));
  const int64_t V = e.config().text.n_vocab;
  Session fresh(e, 128), reused(e, 128);
  fresh.prefill(ids, {});
  const std::vector<int32_t> head(ids.begin(), ids.begin() + 30);
  reused.prefill(head, {});
  const PrefillResult r = reused.prefill(ids, {});
  EXPECT_EQ(r.n_reused, 30);
  EXPECT_LT(max_abs_diff(fresh.last_logits().data(), reused.last_logits().data(), V), 1e-5);
  // A prompt that diverges early beyond the ring's reach recomputes from scratch, still exactly.
  std::vector<int32_t> other = ids;
  other[5] = 300;
  Session fresh2(e, 128);
  fresh2.prefill(other, {});
  const PrefillResult r2 = reused.prefill(other, {});
  EXPECT_LE(r2.n_reused, 5);
  EXPECT_LT(max_abs_diff(fresh2.last_logits().data(), reused.last_logits().data(), V), 1e-5);
}

// Decoding one token at a time reads the cache (a ring of sliding_window + 64 slots on local
// layers: 72 on tiny-mobile) while it fills and after it wraps; a fresh prefill of the same ids
// computes every key anew. Exact activations, as above.
TEST(Engine, DecodeStepByStepMatchesOnePrefill) {
  Engine e(test::data_path("tiny-mobile"), {0, false, true});
  const int64_t V = e.config().text.n_vocab;
  std::vector<int32_t> ids = test::read_ids(test::data_path("tiny-mobile/ref/seq40.tokens.txt"));
  ids.resize(10);
  Session stepwise(e, 128);
  stepwise.prefill(ids, {});
  while (ids.size() < 100) {
    const auto& l = stepwise.last_logits();
    ids.push_back(static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin()));
    stepwise.decode(ids.back());
  }
  Session fresh(e, 128);
  fresh.prefill(ids, {});
  EXPECT_LT(max_abs_diff(fresh.last_logits().data(), stepwise.last_logits().data(), V), 1e-4);
}

// Sequences run together -- a prompt chunk of one beside decode steps of the others, over several
// caches -- give each the logits it gets alone. `batched`: one forward per step over the rows of
// every sequence, else one forward per sequence (the same steps, interleaved). `tolerance` 0:
// bitwise. `exact`: f32 activations, else the default int8 ones.
void expect_batched_equals_alone(bool exact, bool batched, double tolerance) {
  Engine e(test::data_path("tiny-mobile"), {0, false, exact});
  const int64_t V = e.config().text.n_vocab;
  const auto seq40 = test::read_ids(test::data_path("tiny-mobile/ref/seq40.tokens.txt"));
  const std::vector<std::vector<int32_t>> prompts = {{seq40.begin(), seq40.begin() + 12},
                                                     {seq40.begin() + 5, seq40.end()},
                                                     {seq40.begin(), seq40.begin() + 3}};
  constexpr int kChunk = 8, kSteps = 20;
  auto greedy = [&](const std::vector<float>& l) {
    return static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
  };
  // Alone: the logits after the prompt, then after each greedy token.
  std::vector<std::vector<std::vector<float>>> alone(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    Session s(e, 128, kChunk);
    s.prefill(prompts[i], {});
    alone[i].push_back(s.last_logits());
    for (int t = 1; t < kSteps; ++t) {
      s.decode(greedy(s.last_logits()));
      alone[i].push_back(s.last_logits());
    }
  }
  // Together: sequence i joins at step 2i.
  std::vector<std::unique_ptr<Session>> sessions;
  std::vector<std::vector<std::vector<float>>> together(prompts.size());
  for (int step = 0; step < 2 * static_cast<int>(prompts.size()) + kSteps + 8; ++step) {
    if (step % 2 == 0 && sessions.size() < prompts.size()) {
      sessions.push_back(std::make_unique<Session>(e, 128, kChunk));
      sessions.back()->begin_prompt(prompts[sessions.size() - 1], {});
    }
    std::vector<SequenceRows> rows;
    std::vector<size_t> who;
    for (size_t i = 0; i < sessions.size(); ++i) {
      Session& s = *sessions[i];
      if (s.prompt_pending())
        rows.push_back(s.prompt_rows());
      else if (static_cast<int>(together[i].size()) < kSteps)
        rows.push_back(s.decode_rows(greedy(together[i].back())));
      else
        continue;
      who.push_back(i);
    }
    if (rows.empty()) break;
    if (batched)
      e.text().forward(rows);
    else
      for (const SequenceRows& r : rows) e.text().forward(std::span(&r, 1));
    for (size_t r = 0; r < rows.size(); ++r) {
      Session& s = *sessions[who[r]];
      s.rows_ran();
      if (rows[r].logits) together[who[r]].push_back(s.last_logits());
    }
  }
  double worst = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_EQ(together[i].size(), alone[i].size()) << i;
    for (int t = 0; t < kSteps; ++t) {
      const double d = max_abs_diff(together[i][t].data(), alone[i][t].data(), V);
      worst = std::max(worst, d);
      if (tolerance == 0)
        EXPECT_EQ(std::memcmp(together[i][t].data(), alone[i][t].data(), V * sizeof(float)), 0)
            << "sequence " << i << " step " << t << ": max |diff| " << d;
      else
        EXPECT_LE(d, tolerance) << "sequence " << i << " step " << t;
    }
  }
  std::printf("%s, %s: max |diff| from each run alone %.3g\n", exact ? "exact" : "int8",
              batched ? "one forward per step" : "one forward per sequence", worst);
}

// The session's steps (prompt chunks, decode rows, several caches) add nothing of their own.
TEST(Engine, InterleavedSequencesMatchEachRunAloneBitwise) {
  expect_batched_equals_alone(true, false, 0);
  expect_batched_equals_alone(false, false, 0);
}

// One forward over several sequences, exact activations: each row's logits as alone to float
// rounding (a linear over n rows sums in another order than over 1 today). Int8 ones differ by
// ~0.3 (the n = 1 and n > 1 paths round differently) and greedy picks then part ways.
TEST(Engine, BatchedSequencesMatchEachRunAloneClosely) {
  expect_batched_equals_alone(true, true, 1e-4);
}

// A sequence's logits in one forward over several sequences do not depend on which others share
// it, bitwise, in both modes: A's decode steps with B, with C, with B and C, with five others (6
// rows: the panel kernel where the few-row one stops) and with a whole 8-token prompt. (Against A
// run alone they differ in the last bits: one row takes the decode kernels, with another order.)
void expect_rows_independent_of_batch(bool exact) {
  SCOPED_TRACE(exact ? "exact" : "int8");
  Engine e(test::data_path("tiny-mobile"), {0, false, exact});
  const int64_t V = e.config().text.n_vocab;
  const auto seq40 = test::read_ids(test::data_path("tiny-mobile/ref/seq40.tokens.txt"));
  auto slice = [&](int from, int len) {
    return std::vector<int32_t>(seq40.begin() + from, seq40.begin() + from + len);
  };
  const std::vector<int32_t> prompt_a = slice(0, 10), steps_a = slice(10, 4);
  constexpr int kChunk = 8;
  // companions: prompts prefilled before the steps (they then decode a fixed token per step);
  // `joining`: a prompt evaluated in the first step, beside A's first decode row, then decoding.
  auto run = [&](const std::vector<std::vector<int32_t>>& companions,
                 const std::vector<int32_t>& joining) {
    Session a(e, 128, kChunk);
    a.prefill(prompt_a, {});
    std::vector<std::unique_ptr<Session>> others;
    for (const auto& p : companions) {
      others.push_back(std::make_unique<Session>(e, 128, kChunk));
      others.back()->prefill(p, {});
    }
    std::unique_ptr<Session> join;
    if (!joining.empty()) {
      join = std::make_unique<Session>(e, 128, kChunk);
      join->begin_prompt(joining, {});
    }
    std::vector<std::vector<float>> logits;
    for (size_t t = 0; t < steps_a.size(); ++t) {
      std::vector<SequenceRows> rows{a.decode_rows(steps_a[t])};
      std::vector<Session*> ran{&a};
      for (size_t i = 0; i < others.size(); ++i) {
        rows.push_back(others[i]->decode_rows(seq40[20 + i + t]));
        ran.push_back(others[i].get());
      }
      if (join) {  // its prompt, then a fixed token per step
        rows.push_back(join->prompt_pending() ? join->prompt_rows() : join->decode_rows(seq40[t]));
        ran.push_back(join.get());
      }
      EXPECT_GE(rows.size(), 2u);
      e.text().forward(rows);
      for (Session* s : ran) s->rows_ran();
      logits.push_back(a.last_logits());
    }
    return logits;
  };
  const auto b = slice(3, 7), c = slice(15, 12), d = slice(1, 2), f = slice(25, 9), g = slice(8, 5);
  const auto with_b = run({b}, {});
  ASSERT_EQ(with_b.size(), steps_a.size());
  const std::vector<std::pair<std::string, std::vector<std::vector<float>>>> cases = {
      {"C", run({c}, {})},
      {"B and C", run({b, c}, {})},
      {"B, C, D, F, G", run({b, c, d, f, g}, {})},
      {"an 8-token prompt", run({}, slice(30, 8))}};
  for (const auto& [name, logits] : cases) {
    ASSERT_EQ(logits.size(), with_b.size()) << name;
    for (size_t t = 0; t < logits.size(); ++t) {
      EXPECT_EQ(std::memcmp(logits[t].data(), with_b[t].data(), V * sizeof(float)), 0)
          << "step " << t << ": A with " << name << " against A with B, max |diff| "
          << max_abs_diff(logits[t].data(), with_b[t].data(), V);
    }
  }
}

TEST(Engine, BatchedRowsDoNotDependOnTheirCompanionsBitwise) {
  expect_rows_independent_of_batch(false);
  expect_rows_independent_of_batch(true);
}

TEST(Engine, TextOnlyRunNeverMapsVisionFileAndFirstImageDoes) {
  const std::string dir = test::temp_dir("lazy");
  fs::copy(test::data_path("tiny-mobile"), dir, fs::copy_options::recursive);
  Engine e(dir, {0, false});
  Session s(e, 128);
  GenerateOptions opt;
  opt.max_tokens = 3;
  generate(s, e.chat_prompt({{"user", "Hello", 0}}), {}, opt);
  EXPECT_EQ(times_mapped(dir + "/vision_model.safetensors"), 0);
  EXPECT_FALSE(e.vision_loaded());
  const Image a = load_image(test::data_path("tiny-mobile/ref/image.png"));
  generate(s, e.chat_prompt({{"user", "Hello", 0}, {"assistant", "Hi", 0}, {"user", "Look", 1}}),
           {&a}, opt);
  EXPECT_EQ(times_mapped(dir + "/vision_model.safetensors"), 1);
}

TEST(Engine, PromptLongerThanContextIsRefused) {
  Engine e(test::data_path("tiny-original"), {0, false});
  Session s(e, 16);
  std::vector<int32_t> ids(17, 300);
  try {
    s.prefill(ids, {});
    FAIL() << "no error";
  } catch (const Error& err) {
    EXPECT_THAT(err.what(), HasSubstr("17 tokens exceed the context size of 16"));
  }
}

TEST(Engine, MissingTokenizerIsNamed) {
  const std::string dir = test::temp_dir("notok");
  fs::copy(test::data_path("tiny-original"), dir, fs::copy_options::recursive);
  fs::remove(dir + "/tokenizer.model");
  try {
    Engine e(dir, {0, false});
    FAIL() << "no error";
  } catch (const Error& err) {
    EXPECT_THAT(err.what(), HasSubstr(dir));
    EXPECT_THAT(err.what(), HasSubstr("tokenizer"));
  }
}

TEST(Engine, StopTokensComeFromConfigAndTokenizer) {
  Engine e(test::data_path("tiny-original"), {0, false});
  EXPECT_EQ(e.stop_tokens(), (std::vector<int32_t>{1, 5}));
  EXPECT_EQ(e.chat_pieces().image_soft_token, "<image_soft_token>");
  const auto p = e.chat_prompt({{"user", "Hi", 0}});
  ASSERT_GE(p.size(), 3u);
  EXPECT_EQ(p[0], 2);  // bos, exactly once
  EXPECT_EQ(p[1], 4);  // <start_of_turn>
  EXPECT_EQ(std::count(p.begin(), p.end(), 2), 1);
}

TEST(Engine, ImageNormalizationIsReadOrNamedWhenMalformed) {
  float mean[3], std_[3];
  parse_image_normalization(nullptr, "p.json", mean, std_);
  EXPECT_EQ(std::vector<float>(mean, mean + 3), (std::vector<float>{0.5f, 0.5f, 0.5f}));
  parse_image_normalization({{"image_mean", {0.25, 0.5, 1}}, {"image_std", {2, 3, 4}}}, "p.json",
                            mean, std_);
  EXPECT_EQ(std::vector<float>(mean, mean + 3), (std::vector<float>{0.25f, 0.5f, 1.0f}));
  EXPECT_EQ(std::vector<float>(std_, std_ + 3), (std::vector<float>{2.0f, 3.0f, 4.0f}));
  // A string in the list used to escape as a raw JSON type_error, naming no file.
  const std::vector<std::pair<nlohmann::json, std::string>> bad = {
      {{{"image_std", {0.5, "x", 0.5}}},
       "image_std[1] is \"x\", expected a finite number from 1e-06 to 1000"},
      {{{"image_std", {0.5, 0, 0.5}}}, "image_std[1] is 0, expected a finite number from 1e-06"},
      {{{"image_mean", {0.5, 0.5}}},
       "image_mean is [0.5,0.5], expected 3 numbers (one per channel)"},
      {{{"image_mean", 0.5}}, "image_mean is 0.5, expected 3 numbers"}};
  for (const auto& [json, message] : bad) {
    try {
      parse_image_normalization(json, "dir/preprocessor_config.json", mean, std_);
      FAIL() << "no error for " << json.dump();
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr("dir/preprocessor_config.json: " + message));
    }
  }
}

// The CLI.
std::string cli(const std::string& args, int* rc) {
  std::string out;
  *rc = test::run_command(test::bin_path("gemma-cli") + " " + args, &out);
  return out;
}

TEST(Cli, LogitsOutMatchesReference) {
  const std::string ref = test::data_path("tiny-mobile/ref/");
  const std::string out = test::temp_dir("cli") + "/l.f32";
  std::string ids = test::read_text(ref + "seq40.tokens.txt");
  ids.erase(std::remove(ids.begin(), ids.end(), '\n'), ids.end());
  int rc;
  const std::string log = cli(test::data_path("tiny-mobile") + " --tokens " + ids +
                                  " --logits-out " + out + " --max-tokens 0 --exact",
                              &rc);
  ASSERT_EQ(rc, 0) << log;
  const auto got = test::read_f32(out), exact = test::read_f32(ref + "seq40.logits_exact.f32");
  ASSERT_EQ(got.size(), exact.size());
  EXPECT_LT(max_abs_diff(got.data(), exact.data(), got.size()), 1e-3);
}

// --kv is the cache's own choice: with --exact activations an f16 cache moves the logits, a
// little (keys and values rounded to 11 bits), away from the f32 cache's.
TEST(Cli, KvOptionSetsTheCacheTypeBesideExact) {
  const std::string ref = test::data_path("tiny-mobile/ref/");
  const std::string dir = test::temp_dir("kv");
  std::string ids = test::read_text(ref + "seq40.tokens.txt");
  ids.erase(std::remove(ids.begin(), ids.end(), '\n'), ids.end());
  int rc;
  for (const char* kv : {"f32", "f16"}) {
    const std::string log =
        cli(test::data_path("tiny-mobile") + " --tokens " + ids + " --logits-out " + dir + "/" +
                kv + ".f32 --max-tokens 0 " + "--exact --kv " + kv,
            &rc);
    ASSERT_EQ(rc, 0) << log;
  }
  const auto exact = test::read_f32(ref + "seq40.logits_exact.f32");
  const auto f32 = test::read_f32(dir + "/f32.f32"), f16 = test::read_f32(dir + "/f16.f32");
  ASSERT_EQ(f32.size(), exact.size());
  ASSERT_EQ(f16.size(), exact.size());
  EXPECT_LT(max_abs_diff(f32.data(), exact.data(), exact.size()), 1e-3);
  const double d16 = max_abs_diff(f16.data(), f32.data(), exact.size());
  EXPECT_GT(d16, 0);
  EXPECT_LT(d16, 2e-2);
}

// --repack copies the int8 weights into another layout (where this CPU's kernels have one) and
// says so on the load line; a prompt's logits keep their bits (every row count of 2 or more takes
// the panel kernel's sums from either layout).
TEST(Cli, RepackKeepsThePromptLogitsAndSaysWhatItDid) {
  const std::string ref = test::data_path("tiny-mobile/ref/");
  const std::string dir = test::temp_dir("repack");
  std::string ids = test::read_text(ref + "seq40.tokens.txt");
  ids.erase(std::remove(ids.begin(), ids.end(), '\n'), ids.end());
  std::string logs[2];
  for (int repack : {0, 1}) {
    int rc;
    logs[repack] =
        cli(test::data_path("tiny-mobile") + " --tokens " + ids + " --logits-out " + dir + "/" +
                std::to_string(repack) + ".f32 --max-tokens 0" + (repack ? " --repack" : ""),
            &rc);
    ASSERT_EQ(rc, 0) << logs[repack];
  }
  EXPECT_THAT(logs[0], Not(HasSubstr("--repack")));
  EXPECT_THAT(logs[1], AnyOf(HasSubstr("MB of int8 weights repacked)"),
                             HasSubstr("this CPU's int8 kernels have no faster layout)")))
      << logs[1];
  if (const size_t at = logs[1].find("(--repack"); at != std::string::npos)
    std::printf("%s: %s", ops::simd_target(),
                logs[1].substr(at, logs[1].find('\n', at) - at + 1).c_str());
  const auto a = test::read_f32(dir + "/0.f32"), b = test::read_f32(dir + "/1.f32");
  ASSERT_EQ(a.size(), b.size());
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

TEST(Engine, KvTypeIsF16UnlessExactOrAsked) {
  EXPECT_EQ(parse_kv_dtype("f16"), DType::F16);
  EXPECT_EQ(parse_kv_dtype("f32"), DType::F32);
  for (const char* bad : {"F16", "f8", "bf16", ""}) {
    try {
      parse_kv_dtype(bad);
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()),
                "'" + std::string(bad) + "' is not a KV cache type (expected f16 or f32)");
    }
  }
  struct Case {
    bool exact;
    std::optional<DType> kv;
    DType expect;
  };
  for (const Case& c : {Case{false, std::nullopt, DType::F16}, Case{true, std::nullopt, DType::F32},
                        Case{false, DType::F32, DType::F32}, Case{true, DType::F16, DType::F16}}) {
    Engine e(test::data_path("tiny-original"), {0, false, c.exact, c.kv});
    Session s(e, 64);
    EXPECT_EQ(s.cache().dtype(), c.expect) << c.exact;
    EXPECT_EQ(s.cache().bytes(), KvCache::bytes_for(e.config().text, 64, c.expect));
  }
}

// Each tool refuses a bad --kv before loading anything, with one line naming it.
TEST(Cli, BadKvValueIsRefusedByEveryTool) {
  for (const char* tool : {"gemma-cli", "gemma-bench", "gemma-server"}) {
    std::string out;
    const int rc = test::run_command(
        test::bin_path(tool) + " " + test::data_path("tiny-original") + " --kv f8", &out);
    EXPECT_NE(rc, 0) << tool;
    EXPECT_THAT(out, HasSubstr("--kv: 'f8' is not a KV cache type (expected f16 or f32)"))
        << tool << "\n"
        << out;
  }
}

TEST(Cli, ImageTokensAndEmbeddingsOut) {
  const std::string ref = test::data_path("tiny-original/ref/");
  const std::string dir = test::temp_dir("cli");
  std::string ids = test::read_text(ref + "image-prompt.ids.txt");
  ids.erase(std::remove(ids.begin(), ids.end(), '\n'), ids.end());
  int rc;
  const std::string log =
      cli(test::data_path("tiny-original") + " --tokens " + ids + " --image " + ref +
              "image.png --logits-out " + dir + "/l.f32 --embeddings-out " + dir +
              "/e.f32 --max-tokens 0 --exact",
          &rc);
  ASSERT_EQ(rc, 0) << log;
  const auto l = test::read_f32(dir + "/l.f32"),
             le = test::read_f32(ref + "image-prompt.logits_exact.f32");
  const auto e = test::read_f32(dir + "/e.f32"), ee = test::read_f32(ref + "image.embd_exact.f32");
  ASSERT_EQ(l.size(), le.size());
  ASSERT_EQ(e.size(), ee.size());
  EXPECT_LT(max_abs_diff(l.data(), le.data(), l.size()), 1e-3);
  EXPECT_LT(max_abs_diff(e.data(), ee.data(), e.size()), 1e-4);
}

TEST(Cli, JsonReportsStatistics) {
  int rc;
  const std::string out =
      cli(test::data_path("tiny-original") + " -p Hello -m 4 --json 2>/dev/null", &rc);
  ASSERT_EQ(rc, 0) << out;
  const auto j = nlohmann::json::parse(out);
  for (const char* k :
       {"prompt_tokens", "generated_ids", "text", "prompt_tps", "gen_tps", "peak_rss_mb", "load_s"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["generated_ids"].size(), 4u);
  EXPECT_GT(j["peak_rss_mb"].get<double>(), 0);
}

// --chat --image X: the image goes with the first message, so the first reply is the one-shot
// --prompt --image reply (greedy, exact), and it differs from the reply without the image.
TEST(Cli, ChatTakesTheCommandLineImageIntoTheFirstMessage) {
  const std::string dir = test::temp_dir("cli-chat");
  test::write_text(dir + "/in.txt", "Describe this image.\n/quit\n");
  const std::string model = test::data_path("tiny-original") + " -m 6 --exact";
  const std::string image = " --image " + test::data_path("tiny-original/ref/image.png");
  int rc;
  // The subshell keeps stderr (the statistics) apart from the reply on stdout.
  std::string chat;
  rc = test::run_command("(" + test::bin_path("gemma-cli") + " " + model + image + " --chat < " +
                             dir + "/in.txt 2>" + dir + "/err)",
                         &chat);
  ASSERT_EQ(rc, 0) << chat << test::read_text(dir + "/err");
  const std::string log = test::read_text(dir + "/err");
  EXPECT_THAT(log, HasSubstr("image:      1 encoded"));
  const std::string once =
      cli(model + image + " -p 'Describe this image.' --json 2>/dev/null", &rc);
  ASSERT_EQ(rc, 0) << once;
  const auto j = nlohmann::json::parse(once);
  EXPECT_EQ(chat, j["text"].get<std::string>());
  EXPECT_THAT(
      log, HasSubstr("prompt:     " + std::to_string(j["prompt_tokens"].get<int>()) + " tokens"));
  const std::string text_only = cli(model + " --chat < " + dir + "/in.txt 2>/dev/null", &rc);
  ASSERT_EQ(rc, 0) << text_only;
  EXPECT_NE(text_only, chat);
}

// gemma-bench's JSON: every figure of the table, from child processes that ran the full counts.
TEST(Bench, JsonHasEveryFigureOfTheTable) {
  std::string out;
  const int rc =
      test::run_command(test::bin_path("gemma-bench") + " " + test::data_path("tiny-mobile") +
                            " --reps 2 --pp 16 --tg 8 --text-tokens 6 --image-tokens 5 "
                            "--batch 1 3 --json 2>/dev/null",
                        &out);
  ASSERT_EQ(rc, 0) << out;
  const auto j = nlohmann::json::parse(out);
  EXPECT_NEAR(j["disk_vision_mb"].get<double>(),
              fs::file_size(test::data_path("tiny-mobile/vision_model.safetensors")) / 1e6, 0.01);
  for (const char* part : {"text", "image"})
    for (const char* k : {"prompt_tps", "gen_tps", "peak_rss_mb"}) {
      const auto& f = j[part][k];
      EXPECT_GT(f["min"].get<double>(), 0) << part << " " << k;
      EXPECT_LE(f["min"].get<double>(), f["median"].get<double>()) << part << " " << k;
      EXPECT_LE(f["median"].get<double>(), f["max"].get<double>()) << part << " " << k;
    }
  EXPECT_GT(j["image"]["image_s"]["median"].get<double>(), 0);
  for (const char* k :
       {"pp_tps", "pp_exact_tps", "tg_tps", "tg_exact_tps", "batch1_tps", "batch3_tps"})
    EXPECT_GT(j["bench"][k]["min"].get<double>(), 0) << k;
  EXPECT_FALSE(j["bench"].contains("batch2_tps"));
  const auto& r = j["roofline"];
  EXPECT_GT(r["bandwidth_gbs"]["min"].get<double>(), 0.1);
  // The roofline is bandwidth / bytes read per token: decode cannot beat it by much.
  EXPECT_GT(r["tg_fraction"]["median"].get<double>(), 0);
  EXPECT_LT(r["tg_fraction"]["max"].get<double>(), 2.0);
  // tg / weight-page read: the median of one ratio per round (--roofline-rounds 8, at most one
  // round per tg step), which lies within the rounds' spread.
  EXPECT_EQ(r["rounds"].get<int>(), 8);
  const auto& rounds = r["tg_weights_fraction_rounds"];
  EXPECT_GT(rounds["min"].get<double>(), 0);
  EXPECT_LE(rounds["min"].get<double>(), r["tg_weights_fraction"]["min"].get<double>());
  EXPECT_GE(rounds["max"].get<double>(), r["tg_weights_fraction"]["max"].get<double>());
  EXPECT_GT(r["weights_bandwidth_gbs"]["min"].get<double>(), 0.1);
}

// --depth N: pp and tg run after N tokens of context, and the roofline counts the f16 keys and
// values each decode step then reads (N more positions per step than without).
TEST(Bench, DepthAddsTheKeysAndValuesReadToTheRoofline) {
  auto bytes_per_token = [](int depth) {
    std::string out;
    const int rc =
        test::run_command(test::bin_path("gemma-bench") + " " + test::data_path("tiny-mobile") +
                              " --reps 1 --pp 8 --tg 8 --text-tokens 2 --skip-image "
                              "--json --depth " +
                              std::to_string(depth) + " 2>/dev/null",
                          &out);
    EXPECT_EQ(rc, 0) << out;
    const auto j = nlohmann::json::parse(out);
    EXPECT_EQ(j["depth"].get<int>(), depth);
    EXPECT_GT(j["bench"]["tg_tps"]["min"].get<double>(), 0);
    return j["roofline"]["bytes_per_token_mb"].get<double>() * 1e6;
  };
  const auto t = nlohmann::json::parse(
      test::read_text(test::data_path("tiny-mobile/config.json")))["text_config"];
  const double per_position = 2.0 * 2 /* f16 */ * t["num_key_value_heads"].get<int>() *
                              t["head_dim"].get<int>() * t["num_hidden_layers"].get<int>();
  // Both runs stay within the local layers' rings (window 8 + 64 slots of slack).
  EXPECT_NEAR(bytes_per_token(40) - bytes_per_token(0), 40 * per_position, 1.0);
}

TEST(Cli, BadInputGivesOneClearErrorAndNonZeroExit) {
  const std::string dir = test::temp_dir("bad");
  test::write_text(dir + "/not-an-image.png", "hello");
  struct Case {
    std::string args, expect;
  };
  const std::vector<Case> cases = {
      {dir + "/nope -p hi", "not a directory"},
      {test::data_path("tiny-original") + " -p hi --image " + dir + "/not-an-image.png",
       "not-an-image.png"},
      {test::data_path("tiny-original") + " -p hi --image " + dir + "/missing.png", "missing.png"},
      {test::data_path("tiny-original") + " --tokens 2,x,3", "'x' is not a token id"},
      {test::data_path("tiny-original") + " --tokens 2,99999", "outside the vocabulary"},
      {test::data_path("tiny-original") + " -p hi --ctx-size 4", "exceed the context size of 4"},
  };
  for (const auto& c : cases) {
    int rc;
    const std::string out = cli(c.args, &rc);
    EXPECT_EQ(rc, 1) << c.args << "\n" << out;
    EXPECT_THAT(out, HasSubstr("error: ")) << c.args;
    EXPECT_THAT(out, HasSubstr(c.expect)) << c.args;
  }
  EXPECT_FALSE(fs::exists(dir + "/l.f32"));
}

}  // namespace
}  // namespace gp
