// Loading checkpoints: bad safetensors files, missing tensors, configs that disagree with the
// tensors, and the lazy mapping of shards.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "base/error.h"
#include "base/mapped_file.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/model_files.h"
#include "model/tensor_table.h"
#include "model/text_model.h"
#include "test_util.h"

namespace gp {
namespace {
namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

// A safetensors file with the given JSON header and `data_bytes` bytes of data.
std::string write_st(const std::string& dir, const std::string& header, size_t data_bytes,
                     int64_t claimed_len = -1) {
  const std::string path = dir + "/t.safetensors";
  std::ofstream f(path, std::ios::binary);
  const uint64_t len = claimed_len >= 0 ? static_cast<uint64_t>(claimed_len) : header.size();
  f.write(reinterpret_cast<const char*>(&len), 8);
  f << header << std::string(data_bytes, '\0');
  return path;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(SafeTensors, ReadsShapesDtypesAndData) {
  const std::string dir = test::temp_dir("st");
  {
    SafeTensorsWriter w(
        dir + "/a.safetensors",
        {{"x", DType::F32, {2, 3}}, {"y", DType::BF16, {4}}, {"z", DType::I32, {}}});
    const float x[6] = {1, 2, 3, 4, 5, 6};
    const uint16_t y[4] = {0x3f80, 0x4000, 0, 0xbf80};
    const int32_t z = -7;
    w.write(x, sizeof x);
    w.write(y, sizeof y);
    w.write(&z, 4);
    w.close();
  }
  SafeTensorsFile f(dir + "/a.safetensors");
  ASSERT_EQ(f.tensors().size(), 3u);
  const TensorInfo* x = f.find("x");
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(x->dtype, DType::F32);
  float v;
  std::memcpy(&v, x->data + 5 * 4, 4);
  EXPECT_EQ(v, 6.0f);
  EXPECT_EQ(f.find("y")->nbytes, 8u);
  EXPECT_EQ(f.find("z")->numel(), 1);
  EXPECT_EQ(f.metadata().at("format"), "mlx");
}

TEST(SafeTensors, WriterRefusesShortTensor) {
  const std::string dir = test::temp_dir("st");
  SafeTensorsWriter w(dir + "/a.safetensors", {{"x", DType::F32, {4}}});
  const float x[2] = {1, 2};
  w.write(x, sizeof x);
  EXPECT_THAT(error_of([&] { w.close(); }), HasSubstr("'x' was not written in full"));
}

TEST(SafeTensors, CorruptFilesGiveOneClearError) {
  const std::string dir = test::temp_dir("st");
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  struct Case {
    std::string header;
    size_t data;
    int64_t claimed;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {ok, 8, 1 << 20, {"header length 1048576 exceeds the file size", "corrupt"}},
      {"{not json", 0, -1, {"header is not valid JSON"}},
      {ok, 4, -1, {"tensor 'a'", "data_offsets [0, 8] lie outside the data section of 4 bytes"}},
      {R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})",
       8,
       -1,
       {"tensor 'a'", "unsupported dtype 'Q4'"}},
      {R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
       8,
       -1,
       {"tensor 'a'", "shape [3] of F32 needs 12 bytes, data_offsets give 8"}},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       12,
       -1,
       {"tensors overlap at data offset 4"}},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})",
       8,
       -1,
       {"tensor 'a'", "data_offsets"}},
      {R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
       8,
       -1,
       {"shape entries must be non-negative"}},
      {R"({"a":{"shape":[2],"data_offsets":[0,8]}})",
       8,
       -1,
       {"expected an object with dtype, shape and data_offsets"}},
  };
  for (const auto& c : cases) {
    const std::string path = write_st(dir, c.header, c.data, c.claimed);
    const std::string msg = error_of([&] { SafeTensorsFile f(path); });
    EXPECT_THAT(msg, HasSubstr(path)) << c.header;
    for (const auto& e : c.expect) EXPECT_THAT(msg, HasSubstr(e)) << c.header;
  }
  // Shorter than the 8-byte length.
  {
    std::ofstream f(dir + "/short.safetensors", std::ios::binary);
    f << "abc";
  }
  EXPECT_THAT(error_of([&] { SafeTensorsFile f(dir + "/short.safetensors"); }),
              HasSubstr("too short for a safetensors header"));
  EXPECT_THAT(error_of([&] { SafeTensorsFile f(dir + "/missing.safetensors"); }),
              HasSubstr("cannot open"));
}

TEST(SafeTensors, TruncatedFixtureIsDetected) {
  const std::string dir = test::temp_dir("trunc");
  fs::copy(test::data_path("tiny-original"), dir, fs::copy_options::recursive);
  fs::resize_file(dir + "/model.safetensors", fs::file_size(dir + "/model.safetensors") - 100);
  EXPECT_THAT(error_of([&] { ModelDir d(dir); }),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("lie outside the data section"),
                    HasSubstr("incomplete download")));
}

struct Loaded {
  ModelFiles files;
  explicit Loaded(const std::string& path) : files(path) {}
  TextWeights load() { return load_text_weights(files.dir(), files.config(), files.layout()); }
};

// A copy of a fixture whose config.json is edited by `edit`.
std::string edited_copy(const std::string& fixture,
                        const std::function<void(nlohmann::json&)>& edit) {
  const std::string dir = test::temp_dir("cfg");
  fs::copy(test::data_path(fixture), dir, fs::copy_options::recursive);
  nlohmann::json j = read_json_file(dir + "/config.json");
  edit(j);
  test::write_text(dir + "/config.json", j.dump(2));
  return dir;
}

TEST(Loader, TextOnlyLoadOfSplitCheckpointNeverOpensVisionFile) {
  const std::string dir = edited_copy("tiny-mobile", [](nlohmann::json&) {});
  Loaded m(dir);
  TextWeights w = m.load();
  EXPECT_EQ(times_mapped(dir + "/language_model.safetensors"), 1);
  EXPECT_EQ(times_mapped(dir + "/vision_model.safetensors"), 0);
  EXPECT_EQ(w.layers.size(), 7u);
  EXPECT_EQ(w.layers[3].d_ff, 448);
  EXPECT_EQ(w.embed.out, 326);
}

TEST(Loader, MissingTensorIsNamed) {
  const std::string dir = test::temp_dir("missing");
  fs::copy(test::data_path("tiny-mobile"), dir, fs::copy_options::recursive);
  auto idx = read_json_file(dir + "/model.safetensors.index.json");
  idx["weight_map"].erase("language_model.model.layers.2.mlp.up_proj.scales");
  test::write_text(dir + "/model.safetensors.index.json", idx.dump());
  Loaded m(dir);
  EXPECT_THAT(error_of([&] { m.load(); }),
              HasSubstr("tensor 'language_model.model.layers.2.mlp.up_proj"));
}

TEST(Loader, MissingShardIsNamed) {
  const std::string dir = test::temp_dir("noshard");
  fs::copy(test::data_path("tiny-mobile"), dir, fs::copy_options::recursive);
  fs::remove(dir + "/vision_model.safetensors");
  EXPECT_THAT(error_of([&] { ModelDir d(dir); }),
              AllOf(HasSubstr("vision_model.safetensors"), HasSubstr("missing")));
}

TEST(Loader, PerLayerListOfWrongLengthIsRejected) {
  const std::string dir = edited_copy("tiny-mobile", [](nlohmann::json& j) {
    j["text_config"]["per_layer_intermediate_sizes"] = {512, 512, 448};
  });
  EXPECT_THAT(error_of([&] { Loaded m(dir); }),
              AllOf(HasSubstr("per_layer_intermediate_sizes has 3 entries, expected 7")));
}

TEST(Loader, PerLayerWidthThatDisagreesWithTensorsIsRejected) {
  const std::string dir = edited_copy("tiny-mobile", [](nlohmann::json& j) {
    j["text_config"]["per_layer_intermediate_sizes"] = {512, 512, 512, 512, 448, 448, 448};
  });
  Loaded m(dir);
  EXPECT_THAT(error_of([&] { m.load(); }),
              AllOf(HasSubstr("layers.3.mlp.gate_proj.weight"), HasSubstr("has shape [448, 32]"),
                    HasSubstr("expected [512, 32]")));
}

TEST(Loader, LayerCountThatDisagreesWithTensorsIsRejected) {
  const std::string dir = edited_copy(
      "tiny-original", [](nlohmann::json& j) { j["text_config"]["num_hidden_layers"] = 8; });
  Loaded m(dir);
  EXPECT_THAT(
      error_of([&] { m.load(); }),
      HasSubstr("tensor 'language_model.model.layers.7.self_attn.q_proj.weight' is missing"));
}

TEST(Loader, TokenMapOutOfRangeIsRejected) {
  const std::string dir = test::temp_dir("tokmap");
  fs::copy(test::data_path("tiny-mobile"), dir, fs::copy_options::recursive);
  // Rewrite language_model.safetensors with token_map[10] = 999.
  {
    SafeTensorsFile in(dir + "/language_model.safetensors");
    std::vector<SafeTensorsWriter::Entry> entries;
    for (const auto& [name, t] : in.tensors()) entries.push_back({name, t.dtype, t.shape});
    SafeTensorsWriter out(dir + "/lm.tmp", entries);
    for (const auto& [name, t] : in.tensors()) {
      std::vector<uint8_t> bytes(t.data, t.data + t.nbytes);
      if (name == "language_model.model.embed_tokens.token_map") {
        const int32_t bad = 999;
        std::memcpy(bytes.data() + 40, &bad, 4);
      }
      out.write(bytes.data(), bytes.size());
    }
    out.close();
  }
  fs::rename(dir + "/lm.tmp", dir + "/language_model.safetensors");
  Loaded m(dir);
  EXPECT_THAT(error_of([&] { m.load(); }),
              AllOf(HasSubstr("token_map"), HasSubstr("maps id 10 to row 999"),
                    HasSubstr("outside the 326 rows")));
}

TEST(Loader, ConfigDefaultsFollowTheSpec) {
  const ModelConfig c = parse_config(nlohmann::json::object(), nullptr, "config.json");
  EXPECT_EQ(c.text.d_model, 2560);
  EXPECT_EQ(c.text.n_layers, 34);
  EXPECT_EQ(c.text.n_vocab, 262208);
  EXPECT_FLOAT_EQ(c.text.rope_global_scale, 0.125f);
  std::vector<int> globals;
  for (int i = 0; i < c.text.n_layers; ++i)
    if (c.text.is_global[i]) globals.push_back(i);
  EXPECT_EQ(globals, (std::vector<int>{5, 11, 17, 23, 29}));
  EXPECT_EQ(c.vision.n_patches(), 4096);
  EXPECT_EQ(c.mm_tokens_per_image, 256);
  EXPECT_EQ(c.eos_tokens, (std::vector<int32_t>{1, 106}));
}

TEST(Loader, GenerationConfigEosWins) {
  nlohmann::json cfg = {{"eos_token_id", {1, 5}}};
  nlohmann::json gen = {{"eos_token_id", {1, 106, 7}}};
  EXPECT_EQ(parse_config(cfg, gen, "c").eos_tokens, (std::vector<int32_t>{1, 106, 7}));
}

// Sampling defaults: generation_config.json's numbers, Gemma 3's published settings for the rest.
TEST(Loader, GenerationConfigSamplingDefaults) {
  const ModelConfig plain = parse_config(nlohmann::json::object(), nullptr, "c");
  EXPECT_EQ(plain.sampling.temperature, 1.0f);
  EXPECT_EQ(plain.sampling.top_k, 64);
  EXPECT_EQ(plain.sampling.top_p, 0.95f);
  const ModelConfig c = parse_config(nlohmann::json::object(),
                                     {{"temperature", 0.5}, {"top_k", 7}, {"top_p", "x"}}, "c");
  EXPECT_EQ(c.sampling.temperature, 0.5f);
  EXPECT_EQ(c.sampling.top_k, 7);
  EXPECT_EQ(c.sampling.top_p, 0.95f);
}

TEST(Loader, BadConfigValuesAreNamed) {
  EXPECT_THAT(error_of([] {
                parse_config({{"model_type", "llama"}}, nullptr, "c.json");
              }),
              HasSubstr("model_type is 'llama', expected 'gemma3'"));
  EXPECT_THAT(error_of([] {
                parse_config(
                    {{"text_config", {{"num_attention_heads", 6}, {"num_key_value_heads", 4}}}},
                    nullptr, "c.json");
              }),
              HasSubstr("not a multiple of num_key_value_heads"));
  EXPECT_THAT(error_of([] {
                parse_config({{"vision_config", {{"image_size", 701}}}}, nullptr, "c.json");
              }),
              HasSubstr("image_size 701 is not a multiple of patch_size 14"));
  EXPECT_THAT(
      error_of([] {
        parse_config({{"text_config", {{"hidden_size", "big"}}}}, nullptr, "c.json");
      }),
      HasSubstr(
          "c.json: text_config: hidden_size is \"big\", expected an integer from 1 to 65536"));
  EXPECT_THAT(error_of([] {
                parse_config({{"mm_tokens_per_image", 200}}, nullptr, "c.json");
              }),
              HasSubstr("mm_tokens_per_image 200 must be a square"));
}

TEST(Loader, NotACheckpointDirectory) {
  const std::string dir = test::temp_dir("empty");
  EXPECT_THAT(error_of([&] { ModelFiles f(dir); }), HasSubstr("config.json: missing"));
  EXPECT_THAT(error_of([&] { ModelFiles f(dir + "/nope"); }), HasSubstr("not a directory"));
  // The config is read before the shards: another model's directory is named by its model_type.
  test::write_text(dir + "/config.json", "{\"model_type\": \"llama\"}");
  EXPECT_THAT(error_of([&] { ModelFiles f(dir); }), HasSubstr("model_type is 'llama'"));
}

}  // namespace
}  // namespace gp
