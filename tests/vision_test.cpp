// The vision tower and projector against the fixtures' float64 reference (and llama.cpp's
// embeddings), through the image decoder and preprocessing of io/image.h.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "io/image.h"
#include "io/model_dir.h"
#include "model/config.h"
#include "model/model_files.h"
#include "model/tensor_table.h"
#include "model/vision_model.h"
#include "test_util.h"

namespace gp {
namespace {

namespace fs = std::filesystem;

double max_abs_diff(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
  return m;
}

double max_abs(const float* a, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(static_cast<double>(a[i])));
  return m;
}

class FixtureImage : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureImage, MatchesReferenceEmbeddingsAndIntermediates) {
  const std::string model_name = GetParam();
  const ModelFiles files(test::data_path(model_name));
  const ModelConfig& c = files.config();
  // f32 activations: the reference's arithmetic
  VisionModel model(c, load_vision_weights(files.dir(), c, files.layout()), ops::Activations::kF32);
  const std::string ref = test::data_path(model_name + "/ref/");

  const float mean[3] = {0.5f, 0.5f, 0.5f}, std_[3] = {0.5f, 0.5f, 0.5f};
  const Image img = load_image(ref + "image.png");
  ASSERT_EQ(img.width, c.vision.image_size);  // the fixture needs no resize
  ASSERT_EQ(img.height, c.vision.image_size);
  const std::vector<float> pixels = preprocess_image(img, c.vision.image_size, mean, std_);

  // The debug reference holds the first 16 patches of each of 4 stages: [4, 16, d_model].
  const int64_t d = c.vision.d_model, n_debug = 16;
  const auto hidden_ref = test::read_f32(ref + "debug/image.vision_hidden_exact.f32");
  ASSERT_EQ(c.vision.n_layers, 2);
  ASSERT_EQ(hidden_ref.size(), static_cast<size_t>(4 * n_debug * d));
  std::vector<int> stages;
  std::vector<double> stage_rel;
  model.set_observer([&](int stage, const float* x, int64_t n) {
    EXPECT_EQ(n, c.vision.n_patches());
    stages.push_back(stage);
    const float* r = hidden_ref.data() + (stage + 1) * n_debug * d;
    stage_rel.push_back(max_abs_diff(x, r, n_debug * d) / max_abs(r, n_debug * d));
  });

  const auto exact = test::read_f32(ref + "image.embd_exact.f32");
  const auto llama = test::read_f32(ref + "image.embd.f32");
  const size_t n_out = static_cast<size_t>(c.mm_tokens_per_image) * c.text.d_model;
  ASSERT_EQ(exact.size(), n_out);
  ASSERT_EQ(llama.size(), n_out);
  std::vector<float> out(n_out);  // [mm_tokens_per_image, text d_model]
  model.encode(pixels.data(), out.data());

  EXPECT_EQ(stages, (std::vector<int>{-1, 0, 1, 2}));
  for (size_t s = 0; s < stage_rel.size(); ++s) {
    std::printf("%s vision stage %d: max |diff| / max |ref| %.3g (first 16 patches)\n",
                model_name.c_str(), stages[s], stage_rel[s]);
    EXPECT_LT(stage_rel[s], 1e-5) << "stage " << stages[s];
  }
  const double d_exact = max_abs_diff(out.data(), exact.data(), n_out);
  const double d_llama = max_abs_diff(out.data(), llama.data(), n_out);
  std::printf("%s image embeddings: max |diff| vs exact %.3g, vs llama.cpp %.3g (max |ref| %.3g)\n",
              model_name.c_str(), d_exact, d_llama, max_abs(exact.data(), n_out));
  EXPECT_LT(d_exact, 1e-4);
  EXPECT_LT(d_llama, 2e-3);
}

// With int8 activations (the default) the 4-bit linears round their inputs to 8 bits per group
// of 64: the embeddings move by a small fraction of their spread (a wrong scale or layout would
// give unrelated ones).
TEST_P(FixtureImage, Int8ActivationsStayCloseToExact) {
  const std::string model_name = GetParam();
  const ModelFiles files(test::data_path(model_name));
  const ModelConfig& c = files.config();
  VisionModel model(c, load_vision_weights(files.dir(), c, files.layout()));
  const std::string ref = test::data_path(model_name + "/ref/");
  const float mean[3] = {0.5f, 0.5f, 0.5f}, std_[3] = {0.5f, 0.5f, 0.5f};
  const std::vector<float> pixels =
      preprocess_image(load_image(ref + "image.png"), c.vision.image_size, mean, std_);
  const auto exact = test::read_f32(ref + "image.embd_exact.f32");
  std::vector<float> out(exact.size());
  model.encode(pixels.data(), out.data());
  double sum_diff = 0, sum_sq = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    sum_diff += std::fabs(static_cast<double>(out[i]) - exact[i]);
    sum_sq += static_cast<double>(exact[i]) * exact[i];
  }
  const double n = static_cast<double>(out.size()), rms = std::sqrt(sum_sq / n);
  const double d_max = max_abs_diff(out.data(), exact.data(), out.size());
  std::printf("%s int8 image embeddings: mean |diff| %.3g, max %.3g (rms of ref %.3g)\n",
              model_name.c_str(), sum_diff / n, d_max, rms);
  EXPECT_LT(sum_diff / n, 0.02 * rms);
  EXPECT_LT(d_max, 0.2 * rms);
}

INSTANTIATE_TEST_SUITE_P(All, FixtureImage, ::testing::Values("tiny-original", "tiny-mobile"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// An encoding in steps, interleaved step by step with another image's encoding on the same model
// (as the server interleaves it with other work), gives each image's whole encode bitwise, in both
// activation modes: the steps share no state but the weights.
TEST(VisionModel, InterleavedSteppedEncodingsEqualWholeEncodesBitwise) {
  const ModelFiles files(test::data_path("tiny-original"));
  const ModelConfig& c = files.config();
  const float mean[3] = {0.5f, 0.5f, 0.5f}, std_[3] = {0.5f, 0.5f, 0.5f};
  const std::vector<float> a = preprocess_image(
      load_image(test::data_path("tiny-original/ref/image.png")), c.vision.image_size, mean, std_);
  const std::vector<float> b(a.rbegin(), a.rend());  // the picture turned half a turn
  const size_t n_out = static_cast<size_t>(c.mm_tokens_per_image) * c.text.d_model;
  for (const auto act : {ops::Activations::kInt8, ops::Activations::kF32}) {
    VisionModel model(c, load_vision_weights(files.dir(), c, files.layout()), act);
    std::vector<float> whole_a(n_out), whole_b(n_out);
    model.encode(a.data(), whole_a.data());
    model.encode(b.data(), whole_b.data());
    ASSERT_NE(whole_a, whole_b);

    std::vector<int> stages;
    model.set_observer([&](int stage, const float*, int64_t) { stages.push_back(stage); });
    VisionEncoding ea(model, a.data()), eb(model, b.data());
    EXPECT_EQ(ea.n_steps(), c.vision.n_layers + 2);  // embedding, each layer, projection
    while (!ea.done()) {
      ea.step();
      eb.step();
      EXPECT_EQ(ea.steps_done(), eb.steps_done());
    }
    EXPECT_TRUE(eb.done());
    // Each step of one is followed by the same step of the other; post_layernorm (stage
    // n_layers) ends with the projection in the last step.
    EXPECT_EQ(stages, (std::vector<int>{-1, -1, 0, 0, 1, 1, 2, 2}));
    EXPECT_EQ(ea.output(), whole_a);
    EXPECT_EQ(eb.output(), whole_b);
    EXPECT_THROW(ea.step(), Error);
  }
}

// The projector's mm_soft_emb_norm takes the vision config's epsilon (transformers' and
// mlx-vlm's Gemma3MultiModalProjector: vision_config.layer_norm_eps), never the text decoder's.
TEST(VisionModel, ProjectorNormIgnoresTheTextEpsilon) {
  const ModelFiles files(test::data_path("tiny-original"));
  const ModelConfig& c = files.config();
  const float mean[3] = {0.5f, 0.5f, 0.5f}, std_[3] = {0.5f, 0.5f, 0.5f};
  const std::vector<float> pixels = preprocess_image(
      load_image(test::data_path("tiny-original/ref/image.png")), c.vision.image_size, mean, std_);
  auto embeddings = [&](const ModelConfig& config) {
    VisionModel model(config, load_vision_weights(files.dir(), config, files.layout()),
                      ops::Activations::kF32);
    std::vector<float> out(static_cast<size_t>(config.mm_tokens_per_image) * config.text.d_model);
    model.encode(pixels.data(), out.data());
    return out;
  };
  const std::vector<float> base = embeddings(c);
  ModelConfig text_eps = c;
  text_eps.text.rms_norm_eps = 0.25f;  // comparable to the pooled rows' mean square
  EXPECT_EQ(embeddings(text_eps), base);
  ModelConfig vision_eps = c;
  vision_eps.vision.layer_norm_eps = 0.25f;
  EXPECT_NE(embeddings(vision_eps), base);
}

// A config whose image_size does not match the stored position grid (e.g. the original's config
// over the mobile weights) fails with both sizes named.
TEST(VisionWeights, PositionGridMismatchNamesBothSizes) {
  const std::string src = test::data_path("tiny-original");
  const std::string tmp = test::temp_dir("vision-grid");
  nlohmann::json config = read_json_file(src + "/config.json");
  config["vision_config"]["image_size"] = 448;  // 32x32 patches, still a multiple of 4x4 tokens
  test::write_text(tmp + "/config.json", config.dump(2));
  fs::create_symlink(src + "/model.safetensors", tmp + "/model.safetensors");

  const ModelFiles files(tmp);
  try {
    load_vision_weights(files.dir(), files.config(), files.layout());
    FAIL() << "expected gp::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    std::printf("message: %s\n", msg.c_str());
    EXPECT_NE(msg.find("position_embedding has 256 rows (a 16x16 grid)"), std::string::npos);
    EXPECT_NE(msg.find("image_size 448"), std::string::npos);
    EXPECT_NE(msg.find("32x32 = 1024"), std::string::npos);
  }
}

TEST(VisionWeights, TextOnlyCheckpointIsRefused) {
  const ModelFiles files(test::data_path("tiny-original"));
  TableLayout layout = files.layout();
  layout.vision = false;
  EXPECT_THROW(load_vision_weights(files.dir(), files.config(), layout), Error);
}

}  // namespace
}  // namespace gp
