// gemma-synth: the written checkpoints load through the tensor table with the shapes SPEC §2 gives,
// are reproducible, and the mobile layout follows SPEC §5 (checked on the plan of the full-size
// presets, and on tiny checkpoints written by the tool).
#include "model/synth.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "base/error.h"
#include "io/model_dir.h"
#include "io/sp_model_proto.h"
#include "io/tokenizer.h"
#include "model/config.h"
#include "model/model_files.h"
#include "model/tensor_table.h"
#include "model/text_model.h"
#include "prune/vocab.h"
#include "runtime/kv_cache.h"
#include "tensor/dtype.h"
#include "tensor/weight.h"
#include "test_util.h"

namespace gp {
namespace {
namespace fs = std::filesystem;

// Runs the tool; returns its exit status and output.
int synth(const std::string& out, const std::string& preset, int seed, std::string* output,
          const std::string& extra = "") {
  return test::run_command(test::bin_path("gemma-synth") + " " + out + " --preset " + preset +
                               " --seed " + std::to_string(seed) + " --quiet " + extra,
                           output);
}

// Tiny checkpoints written once for the whole suite: tiny seed 1 (twice), seed 2, tiny-mobile
// seed 1.
class Written : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(test::temp_dir("synth"));
    for (const auto& [name, preset, seed] : {std::tuple{"a", "tiny", 1},
                                             {"b", "tiny", 1},
                                             {"c", "tiny", 2},
                                             {"m", "tiny-mobile", 1}}) {
      std::string out;
      ASSERT_EQ(synth(dir(name), preset, seed, &out), 0) << out;
    }
  }
  static void TearDownTestSuite() { delete root_; }
  static std::string dir(const std::string& name) { return *root_ + "/" + name; }
  static std::string* root_;
};
std::string* Written::root_ = nullptr;

struct Loaded {
  ModelFiles files;
  const ModelDir& dir = files.dir();
  const ModelConfig& config = files.config();
  const TableLayout& layout = files.layout();
  std::vector<TensorSpec> table = tensor_table(config, layout);
  explicit Loaded(const std::string& path) : files(path) {}
  const TensorSpec& spec(const std::string& name) const {
    auto it =
        std::find_if(table.begin(), table.end(), [&](const auto& t) { return t.name == name; });
    if (it == table.end()) throw Error("no tensor " + name + " in the table");
    return *it;
  }
};

// Every tensor of the table is there with the implied shapes and dtypes, and nothing else is.
void expect_table_matches(const Loaded& m, bool fc2_quantized) {
  size_t n_stored = 0;
  for (const TensorSpec& t : m.table) {
    SCOPED_TRACE(t.name);
    switch (t.role) {
      case TensorRole::Linear: {
        const Weight w = load_linear(m.dir, t, m.config.quant);
        EXPECT_EQ(w.quantized, t.quantized);
        if (w.quantized) {
          EXPECT_EQ(w.scale_dtype, DType::BF16);
        }
        if (t.has_bias) load_floats(m.dir, names::bias(t.name), {t.shape[0]});
        n_stored += stored_names(t, w.quantized).size();
        break;
      }
      case TensorRole::Vector:
        load_floats(m.dir, t.name, t.shape);
        ++n_stored;
        break;
      case TensorRole::TokenMap: {
        const TensorInfo& info = m.dir.tensor(t.name);
        EXPECT_EQ(info.dtype, DType::I32);
        EXPECT_EQ(info.shape, t.shape);
        ++n_stored;
        break;
      }
    }
  }
  EXPECT_EQ(m.dir.tensor_names().size(), n_stored);
  EXPECT_EQ(m.layout.fc2_quantized, fc2_quantized);
  EXPECT_TRUE(m.layout.lm_head);
  EXPECT_TRUE(m.layout.vision);
}

TEST_F(Written, TinyLoadsThroughTheTensorTable) {
  Loaded m(dir("a"));
  expect_table_matches(m, false);
  EXPECT_FALSE(m.layout.token_map);
  EXPECT_EQ(m.dir.shard_files(), std::vector<std::string>{"model.safetensors"});

  const TextConfig& t = m.config.text;
  EXPECT_EQ(t.d_model, 256);
  EXPECT_EQ(t.n_layers, 4);
  EXPECT_EQ(t.n_heads, 4);
  EXPECT_EQ(t.n_kv_heads, 2);
  EXPECT_EQ(t.head_dim, 64);
  EXPECT_EQ(t.layer_d_ff, std::vector<int>(4, 512));
  EXPECT_EQ(t.is_global, (std::vector<bool>{false, false, false, true}));
  EXPECT_EQ(m.config.vision.d_model, 128);
  EXPECT_EQ(m.config.vision.d_ff, 240);
  EXPECT_EQ(m.config.vision.n_layers, 2);
  EXPECT_EQ(m.config.vision.image_size, 224);
  EXPECT_EQ(m.config.mm_tokens_per_image, 16);
  EXPECT_EQ(m.config.compact_vocab, 0);
}

TEST_F(Written, TokenizerIdsMatchTheConfig) {
  Loaded m(dir("a"));
  const Tokenizer tok = Tokenizer::load(dir("a"));
  EXPECT_EQ(tok.vocab_size(), 1000);
  EXPECT_EQ(m.config.text.n_vocab, 1024);  // rounded up to 64
  EXPECT_EQ(tok.bos_id(), m.config.bos_token);
  EXPECT_EQ(m.config.eos_tokens,
            (std::vector<int32_t>{tok.piece_to_id("<eos>"), tok.piece_to_id("<end_of_turn>")}));
  EXPECT_EQ(tok.piece_to_id("<start_of_image>"), m.config.boi_token);
  EXPECT_EQ(tok.piece_to_id("<end_of_image>"), m.config.eoi_token);
  EXPECT_EQ(tok.piece_to_id("<image_soft_token>"), m.config.image_token);
  EXPECT_EQ(tok.pad_id(), 0);
  EXPECT_TRUE(tok.is_byte(9));
  EXPECT_EQ(tok.piece(9), "<0x00>");
  EXPECT_EQ(tok.piece(264), "<0xFF>");

  // Byte fallback, no dummy prefix, turn markers as single pieces, lossless round trip.
  const std::string text = "<start_of_turn>user\nHello, how are you? Déjà vu 123<end_of_turn>";
  const auto ids = tok.encode(text);
  EXPECT_EQ(ids.front(), tok.piece_to_id("<start_of_turn>"));
  EXPECT_EQ(ids.back(), tok.piece_to_id("<end_of_turn>"));
  EXPECT_EQ(tok.decode(ids), text);
  for (int32_t id : ids) EXPECT_FALSE(tok.is_unknown(id));
  EXPECT_EQ(tok.encode(" you").size(), 1u);  // "▁you" is a piece
}

TEST_F(Written, SameSeedSameBytesOtherSeedOtherWeights) {
  size_t n_files = 0;
  for (const auto& e : fs::directory_iterator(dir("a"))) {
    const std::string name = e.path().filename().string();
    SCOPED_TRACE(name);
    const std::string a = test::read_text(e.path().string());
    EXPECT_EQ(a, test::read_text(dir("b") + "/" + name));
    const std::string c = test::read_text(dir("c") + "/" + name);
    if (name == "model.safetensors") {
      ASSERT_EQ(a.size(), c.size());
      EXPECT_NE(a, c);
    } else {
      EXPECT_EQ(a, c);  // the tokenizer and the configs do not depend on the seed
    }
    ++n_files;
  }
  EXPECT_EQ(n_files, 7u);
}

TEST_F(Written, ExistingDirectoryIsRefusedUnlessForced) {
  std::string out;
  EXPECT_EQ(synth(dir("b"), "tiny", 3, &out), 1);
  EXPECT_NE(out.find("already exists"), std::string::npos) << out;
  EXPECT_NE(out.find("--force"), std::string::npos) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_EQ(test::read_text(dir("b") + "/model.safetensors"),
            test::read_text(dir("a") + "/model.safetensors"));

  EXPECT_EQ(synth(dir("b"), "tiny", 2, &out, "--force"), 0) << out;
  EXPECT_EQ(test::read_text(dir("b") + "/model.safetensors"),
            test::read_text(dir("c") + "/model.safetensors"));
  for (const auto& e : fs::directory_iterator(fs::path(dir("b")).parent_path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();

  EXPECT_EQ(synth("/dev/null/x", "tiny", 1, &out), 1);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_NE(out.find("/dev/null"), std::string::npos) << out;

  EXPECT_EQ(synth(dir("x"), "huge", 1, &out), 1);
  EXPECT_NE(out.find("preset 'huge' is unknown"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir("x")));
}

// Dequantized weights have mean ~0 and std ~1/sqrt(in); the text model gives finite, varied logits.
TEST_F(Written, ValuesAreSane) {
  Loaded m(dir("a"));
  const TensorSpec& q = m.spec(names::text_layer(0, "self_attn.q_proj"));
  const Weight w = load_linear(m.dir, q, m.config.quant);
  std::vector<float> row(w.in);
  double sum = 0, sum2 = 0;
  for (int64_t r = 0; r < w.out; ++r) {
    weight_row(w, r, row.data());
    for (float v : row) {
      sum += v;
      sum2 += v * v;
    }
  }
  const double n = static_cast<double>(w.out * w.in), mean = sum / n;
  const double std = std::sqrt(sum2 / n - mean * mean);
  EXPECT_NEAR(std * std::sqrt(static_cast<double>(w.in)), 1.0, 0.1);
  EXPECT_LT(std::fabs(mean), 0.1 * std);

  TextModel model(m.config, load_text_weights(m.dir, m.config, m.layout));
  const std::vector<int32_t> ids = {2, 300, 400, 500, 600, 700, 800, 900};
  const int64_t V = m.config.text.n_vocab;
  std::vector<float> logits(ids.size() * V);
  KvCache cache(m.config.text, 64);
  TextBatch batch;
  batch.ids = ids;
  model.forward(batch, cache, logits.data(), static_cast<int>(ids.size()));
  std::vector<int64_t> argmax;
  for (size_t p = 0; p < ids.size(); ++p) {
    const float* l = logits.data() + p * V;
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < V; ++i) {
      ASSERT_TRUE(std::isfinite(l[i]));
      s += l[i];
      s2 += l[i] * l[i];
    }
    const double sd = std::sqrt(s2 / V - (s / V) * (s / V));
    EXPECT_GT(sd, 0.3);
    EXPECT_LT(sd, 10.0);
    argmax.push_back(std::max_element(l, l + V) - l);
  }
  std::sort(argmax.begin(), argmax.end());
  EXPECT_GT(std::unique(argmax.begin(), argmax.end()) - argmax.begin(), 2);
}

// tiny-mobile is tiny compressed as SPEC §5 describes: the kept embedding rows, the first MLP
// neurons and fc1's rows hold tiny's values (same seed); padding is zero; fc2 is tiny's fc2
// quantized.
TEST_F(Written, TinyMobileIsTinyCompressed) {
  Loaded m(dir("m")), o(dir("a"));
  expect_table_matches(m, true);
  EXPECT_TRUE(m.layout.token_map);
  EXPECT_EQ(m.dir.shard_files(),
            (std::vector<std::string>{"language_model.safetensors", "vision_model.safetensors"}));
  for (const auto& n : m.dir.tensor_names())
    EXPECT_EQ(m.dir.file_of(n), n.rfind(names::text(""), 0) == 0 ? "language_model.safetensors"
                                                                 : "vision_model.safetensors");
  EXPECT_EQ(m.config.text.layer_d_ff, (std::vector<int>{512, 512, 384, 384}));
  EXPECT_EQ(m.config.vision.d_ff, 256);
  EXPECT_EQ(m.config.vision.image_size, 168);
  EXPECT_EQ(m.config.mm_tokens_per_image, 9);
  EXPECT_EQ(m.files.preprocessor_json()["image_seq_length"], 9);

  // token_map: specials and bytes kept, kept ids in order map to 1..N, the rest to 0.
  const Tokenizer tok = Tokenizer::load(dir("m"));
  const TensorInfo& map_info = m.dir.tensor(names::text("model.embed_tokens.token_map"));
  const auto* map = reinterpret_cast<const int32_t*>(map_info.data);
  std::vector<int32_t> kept;
  for (int64_t id = 0; id < m.config.text.n_vocab; ++id) {
    if (map[id] == 0) continue;
    EXPECT_EQ(map[id], static_cast<int32_t>(kept.size()) + 1);
    kept.push_back(static_cast<int32_t>(id));
  }
  ASSERT_EQ(static_cast<int64_t>(kept.size()) + 1, m.config.compact_vocab);
  for (int32_t id = 0; id < 265; ++id) EXPECT_NE(map[id], 0) << id;
  for (int32_t id = tok.vocab_size(); id < m.config.text.n_vocab; ++id) EXPECT_EQ(map[id], 0);
  for (int32_t id = 265; id < tok.vocab_size(); ++id) {
    std::string p = tok.piece(id);
    const bool ascii =
        std::all_of(p.begin(), p.end(), [](char c) { return c >= 32 && c <= 126; }) ||
        p.find("\xE2\x96\x81") != std::string::npos;
    if (map[id] != 0) {
      EXPECT_TRUE(ascii) << p;
    }
  }

  const QuantFormat fmt = m.config.quant;
  auto linear = [&](const Loaded& x, const std::string& name) {
    return load_linear(x.dir, x.spec(name), fmt);
  };
  auto rows_equal = [](const Weight& a, int64_t ra, const Weight& b, int64_t rb, int64_t groups) {
    const int64_t wa = a.in / 8, wb = b.in / 8, ga = a.groups_per_row(), gb = b.groups_per_row();
    return std::equal(a.q + ra * wa, a.q + ra * wa + groups * 8, b.q + rb * wb) &&
           std::memcmp(static_cast<const uint16_t*>(a.scales) + ra * ga,
                       static_cast<const uint16_t*>(b.scales) + rb * gb, groups * 2) == 0 &&
           std::memcmp(static_cast<const uint16_t*>(a.biases) + ra * ga,
                       static_cast<const uint16_t*>(b.biases) + rb * gb, groups * 2) == 0;
  };
  const Weight emb = linear(m, names::text("model.embed_tokens"));
  const Weight emb_o = linear(o, names::text("model.embed_tokens"));
  std::vector<float> row(emb.in);
  weight_row(emb, 0, row.data());
  EXPECT_TRUE(std::all_of(row.begin(), row.end(), [](float v) { return v == 0.0f; }));
  for (size_t k = 0; k < kept.size(); ++k)
    ASSERT_TRUE(rows_equal(emb, k + 1, emb_o, kept[k], emb.groups_per_row())) << k;
  const Weight head = linear(m, names::text("lm_head")), head_o = linear(o, names::text("lm_head"));
  EXPECT_EQ(head.out, m.config.text.n_vocab);
  EXPECT_TRUE(rows_equal(head, 1000, head_o, 1000, head.groups_per_row()));

  // Layer 2 keeps the first 384 of 512 neurons: gate rows and down_proj's first 6 groups.
  const Weight gate = linear(m, names::text_layer(2, "mlp.gate_proj"));
  const Weight gate_o = linear(o, names::text_layer(2, "mlp.gate_proj"));
  for (int64_t r = 0; r < 384; ++r) ASSERT_TRUE(rows_equal(gate, r, gate_o, r, 4));
  const Weight down = linear(m, names::text_layer(2, "mlp.down_proj"));
  const Weight down_o = linear(o, names::text_layer(2, "mlp.down_proj"));
  for (int64_t r = 0; r < 256; ++r) ASSERT_TRUE(rows_equal(down, r, down_o, r, 6));

  // Vision fc1: tiny's 240 rows then 16 zero rows with zero bias; fc2: tiny's floats, padded with
  // 16 zero columns, quantized with MLX's algorithm.
  const Weight fc1 = linear(m, names::vision_layer(1, "mlp.fc1"));
  const Weight fc1_o = linear(o, names::vision_layer(1, "mlp.fc1"));
  for (int64_t r = 0; r < 240; ++r) ASSERT_TRUE(rows_equal(fc1, r, fc1_o, r, 2));
  const auto fc1_bias = load_floats(m.dir, names::bias(names::vision_layer(1, "mlp.fc1")), {256});
  const auto fc1_bias_o = load_floats(o.dir, names::bias(names::vision_layer(1, "mlp.fc1")), {240});
  std::vector<float> v(fc1.in);
  for (int64_t r = 0; r < 256; ++r) {
    weight_row(fc1, r, v.data());
    if (r >= 240) {
      EXPECT_TRUE(std::all_of(v.begin(), v.end(), [](float x) { return x == 0.0f; })) << r;
      EXPECT_EQ(fc1_bias[r], 0.0f);
    } else {
      EXPECT_EQ(fc1_bias[r], fc1_bias_o[r]);
    }
  }
  const Weight fc2 = linear(m, names::vision_layer(1, "mlp.fc2"));
  const Weight fc2_o = linear(o, names::vision_layer(1, "mlp.fc2"));
  ASSERT_TRUE(fc2.quantized);
  ASSERT_FALSE(fc2_o.quantized);
  std::vector<float> padded(fc2.out * 256, 0.0f);
  for (int64_t r = 0; r < fc2.out; ++r) weight_row(fc2_o, r, padded.data() + r * 256);
  const QuantizedRows expected = quantize_rows(padded.data(), fc2.out, 256, fmt, DType::BF16);
  EXPECT_TRUE(std::equal(expected.q.begin(), expected.q.end(), fc2.q));
  EXPECT_EQ(std::memcmp(expected.scales.data(), fc2.scales, expected.scales.size()), 0);
  EXPECT_EQ(std::memcmp(expected.biases.data(), fc2.biases, expected.biases.size()), 0);
}

// The full-size presets, checked on their plans (no 2-3 GB written in a unit test).
TEST(SynthPlan, MobileFollowsSpec) {
  const SynthPlan p = synth_plan(SynthPreset::Mobile);
  const ModelConfig& c = p.model;
  EXPECT_EQ(c.text.n_layers, 31);
  for (int l = 0; l < 31; ++l) EXPECT_EQ(c.text.layer_d_ff[l], l < 14 ? 10240 : 7680) << l;
  EXPECT_EQ(c.text.n_vocab, 262208);
  EXPECT_EQ(c.compact_vocab, 144257);  // SPEC §5's published row count, which synth aims at
  EXPECT_EQ(c.vision.d_ff, 4352);
  EXPECT_EQ(c.vision.image_size, 672);
  EXPECT_EQ(c.mm_tokens_per_image, 144);
  EXPECT_EQ(p.preprocessor_config["image_seq_length"], 144);
  EXPECT_EQ(p.preprocessor_config["size"]["height"], 672);
  EXPECT_EQ(p.token_map.size(), 262208u);
  EXPECT_EQ(p.pieces.size(), 262144u);
  // The vocabulary step's own rule (prune/vocab.h), run over the tokenizer synth writes, keeps
  // exactly the ids synth's token_map keeps, in id order: rows 1..144256 after the zero row.
  SpModelOptions sp;
  sp.split_digits = true;  // as gemma-synth writes tokenizer.model
  const Tokenizer tok = Tokenizer::from_model_proto(build_sp_model_proto(p.pieces, sp), "synth");
  const std::vector<int32_t> kept = prune::vocab_keep_ids(tok, c, {});
  ASSERT_EQ(static_cast<int64_t>(kept.size()) + 1, c.compact_vocab);
  std::vector<int32_t> expect_map(p.token_map.size(), 0);
  for (size_t r = 0; r < kept.size(); ++r) expect_map[kept[r]] = static_cast<int32_t>(r + 1);
  EXPECT_TRUE(expect_map == p.token_map);

  std::map<std::string, std::pair<DType, std::vector<int64_t>>> e;
  std::map<std::string, std::string> file;
  for (const auto& f : p.files)
    for (const auto& x : f.entries) {
      e[x.name] = {x.dtype, x.shape};
      file[x.name] = f.name;
    }
  using S = std::vector<int64_t>;
  auto expect = [&](const std::string& n, DType t, S shape) {
    ASSERT_TRUE(e.count(n)) << n;
    EXPECT_EQ(e[n].first, t) << n;
    EXPECT_EQ(e[n].second, shape) << n;
  };
  const std::string emb = names::text("model.embed_tokens"), head = names::text("lm_head");
  expect(names::weight(emb), DType::U32, {144257, 320});
  expect(names::scales(emb), DType::BF16, {144257, 40});
  expect(names::text("model.embed_tokens.token_map"), DType::I32, {262208});
  expect(names::weight(head), DType::U32, {262208, 320});
  expect(names::weight(names::text_layer(13, "mlp.gate_proj")), DType::U32, {10240, 320});
  expect(names::weight(names::text_layer(14, "mlp.gate_proj")), DType::U32, {7680, 320});
  expect(names::weight(names::text_layer(30, "mlp.down_proj")), DType::U32, {2560, 960});
  expect(names::scales(names::text_layer(30, "mlp.down_proj")), DType::BF16, {2560, 120});
  EXPECT_FALSE(e.count(names::weight(names::text_layer(31, "mlp.gate_proj"))));
  expect(names::weight(names::vision("embeddings.position_embedding")), DType::U32, {2304, 144});
  expect(names::weight(names::vision_layer(26, "mlp.fc1")), DType::U32, {4352, 144});
  expect(names::bias(names::vision_layer(26, "mlp.fc1")), DType::BF16, {4352});
  expect(names::weight(names::vision_layer(26, "mlp.fc2")), DType::U32, {1152, 544});
  expect(names::scales(names::vision_layer(26, "mlp.fc2")), DType::BF16, {1152, 68});
  expect(names::projector("mm_input_projection_weight"), DType::BF16, {1152, 2560});
  for (const auto& [n, f] : file)
    EXPECT_EQ(f, n.rfind(names::text(""), 0) == 0 ? "language_model.safetensors"
                                                  : "vision_model.safetensors")
        << n;

  // SPEC §6: 2.1 GB = 1.9 GB of language model + 231 MB of vision (binary units).
  ASSERT_EQ(p.files.size(), 2u);
  const double gib = 1024.0 * 1024 * 1024;
  EXPECT_NEAR(p.files[0].data_bytes() / gib, 1.9, 0.02);
  EXPECT_NEAR(p.files[1].data_bytes() / (1024.0 * 1024), 231, 3);
  EXPECT_NEAR(p.data_bytes() / gib, 2.13, 0.02);
}

TEST(SynthPlan, OriginalFollowsSpec) {
  const SynthPlan p = synth_plan(SynthPreset::Original);
  EXPECT_EQ(p.model.text.n_layers, 34);
  EXPECT_EQ(p.model.text.layer_d_ff, std::vector<int>(34, 10240));
  EXPECT_EQ(p.model.vision.d_ff, 4304);
  EXPECT_EQ(p.model.vision.image_size, 896);
  EXPECT_EQ(p.model.mm_tokens_per_image, 256);
  EXPECT_EQ(p.model.compact_vocab, 0);
  EXPECT_TRUE(p.token_map.empty());
  EXPECT_FALSE(p.config["text_config"].contains("num_attention_heads"));  // as in the 4B config
  ASSERT_EQ(p.files.size(), 1u);
  EXPECT_EQ(p.files[0].name, "model.safetensors");
  std::map<std::string, SafeTensorsWriter::Entry> e;
  for (const auto& x : p.files[0].entries) e[x.name] = x;
  const auto& fc2 = e.at(names::weight(names::vision_layer(0, "mlp.fc2")));
  EXPECT_EQ(fc2.dtype, DType::BF16);
  EXPECT_EQ(fc2.shape, (std::vector<int64_t>{1152, 4304}));
  EXPECT_FALSE(e.count(names::scales(names::vision_layer(0, "mlp.fc2"))));
  EXPECT_EQ(e.at(names::weight(names::vision("embeddings.position_embedding"))).shape,
            (std::vector<int64_t>{4096, 144}));
  EXPECT_EQ(e.at(names::weight(names::text("lm_head"))).shape, (std::vector<int64_t>{262208, 320}));
  EXPECT_EQ(e.at(names::weight(names::text("model.embed_tokens"))).shape,
            (std::vector<int64_t>{262208, 320}));
  // SPEC §1/§6: about 2.8 GB.
  EXPECT_NEAR(p.data_bytes() / (1024.0 * 1024 * 1024), 2.79, 0.02);
}

TEST(SynthPlan, PresetNames) {
  for (auto p :
       {SynthPreset::Tiny, SynthPreset::TinyMobile, SynthPreset::Original, SynthPreset::Mobile})
    EXPECT_EQ(parse_synth_preset(synth_preset_name(p)), p);
  EXPECT_THROW(parse_synth_preset("large"), Error);
}

}  // namespace
}  // namespace gp
