// The tensor table: walked for the fixture configs it names exactly the tensors of the fixture
// files (made outside this code base, tests/data/README.md), with their shapes and dtypes; loading
// binds every field of the weight structs to the tensor of the right name; gemma-synth writes
// exactly the table.
#include "model/tensor_table.h"

#include <gtest/gtest.h>

#include <map>
#include <ostream>
#include <string>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "io/model_dir.h"
#include "model/config.h"
#include "model/model_files.h"
#include "model/synth.h"
#include "model/text_model.h"
#include "model/vision_model.h"
#include "tensor/dtype.h"
#include "test_util.h"

namespace gp {
namespace {

struct Stored {
  std::vector<int64_t> shape;
  bool packed = false;  // U32 nibbles
  bool i32 = false;
  bool operator==(const Stored&) const = default;
};
void PrintTo(const Stored& s, std::ostream* os) {
  *os << (s.packed ? "U32 " : s.i32 ? "I32 " : "float ") << shape_to_string(s.shape);
}

// The stored tensors the table's entries imply, as SPEC §2 lays them out.
std::map<std::string, Stored> implied_tensors(const ModelConfig& c, const TableLayout& layout) {
  std::map<std::string, Stored> out;
  auto add = [&](const std::string& name, Stored s) {
    EXPECT_TRUE(out.emplace(name, std::move(s)).second) << name << " is named twice";
  };
  for_each_tensor(c, layout, [&](const TensorSpec& s) {
    switch (s.role) {
      case TensorRole::Linear: {
        const int64_t rows = s.shape[0], cols = s.shape[1];
        if (s.quantized) {
          add(s.name + ".weight", {{rows, cols / 8}, true});
          add(s.name + ".scales", {{rows, cols / 64}});
          add(s.name + ".biases", {{rows, cols / 64}});
        } else {
          add(s.name + ".weight", {{rows, cols}});
        }
        if (s.has_bias) add(s.name + ".bias", {{rows}});
        break;
      }
      case TensorRole::Vector:
        add(s.name, {s.shape});
        break;
      case TensorRole::TokenMap:
        add(s.name, {s.shape, false, true});
        break;
    }
  });
  return out;
}

std::map<std::string, Stored> file_tensors(const ModelDir& dir) {
  std::map<std::string, Stored> out;
  for (const auto& n : dir.tensor_names()) {
    const TensorInfo& t = dir.tensor(n);
    EXPECT_TRUE(t.dtype == DType::U32 || t.dtype == DType::I32 || t.dtype == DType::BF16) << n;
    out[n] = {t.shape, t.dtype == DType::U32, t.dtype == DType::I32};
  }
  return out;
}

// Every tensor of the files is an entry's, every entry's tensor is in the files, shapes and
// dtypes alike.
void expect_table_is_files(const std::string& path) {
  const ModelFiles model(path);
  const std::map<std::string, Stored> implied = implied_tensors(model.config(), model.layout());
  const std::map<std::string, Stored> files = file_tensors(model.dir());
  for (const auto& [name, s] : files) {
    auto it = implied.find(name);
    if (it == implied.end()) {
      ADD_FAILURE() << path << ": " << name << " is in the files but not in the table";
    } else {
      EXPECT_EQ(it->second.shape, s.shape) << name;
      EXPECT_EQ(it->second, s) << name;
    }
  }
  for (const auto& [name, s] : implied)
    EXPECT_TRUE(files.count(name)) << path << ": the table names " << name << ", absent";
}

TEST(TensorTable, NamesExactlyTheTensorsOfTheOriginalFixture) {
  expect_table_is_files(test::data_path("tiny-original"));
  // Counted from tests/data/README.md: embed and lm_head (weight, scales, biases), 7 layers of 7
  // quantized linears and 6 norms, the final norm; the patch kernel and bias, the position
  // embedding, 2 layers of 4 attention linears with bias, 2 LayerNorms, fc1 and a BF16 fc2 with
  // bias, the post LayerNorm, the projection and the projector's norm.
  const ModelDir dir(test::data_path("tiny-original"));
  EXPECT_EQ(dir.tensor_names().size(),
            3u + 3 + 7 * (21 + 6) + 1 + 2 + 3 + 2 * (16 + 4 + 4 + 2) + 2 + 2);
}

TEST(TensorTable, NamesExactlyTheTensorsOfTheMobileFixture) {
  expect_table_is_files(test::data_path("tiny-mobile"));
  const ModelDir dir(test::data_path("tiny-mobile"));
  // As the original, plus the token map and the fc2 scales and biases.
  EXPECT_EQ(dir.tensor_names().size(),
            3u + 1 + 3 + 7 * (21 + 6) + 1 + 2 + 3 + 2 * (16 + 4 + 4 + 4) + 2 + 2);
}

TEST(TensorTable, EveryEntryBindsItsOwnField) {
  const ModelFiles model(test::data_path("tiny-mobile"));
  const std::vector<TensorSpec> table = tensor_table(model.config(), model.layout());
  for (size_t i = 0; i < table.size(); ++i) {
    SCOPED_TRACE(table[i].name);
    EXPECT_FALSE(std::holds_alternative<std::monostate>(table[i].field));
    EXPECT_EQ(table[i].has_bias, !std::holds_alternative<std::monostate>(table[i].bias_field));
    for (size_t j = 0; j < i; ++j)
      EXPECT_FALSE(table[i].field == table[j].field && table[i].layer == table[j].layer)
          << "also bound by " << table[j].name;
  }
}

// Loading fills every field of the weight structs (listed here by hand) with the tensor of its
// name: views point at the file's bytes, f32 copies hold its values.
void expect_fields_bound(const std::string& path) {
  SCOPED_TRACE(path);
  const ModelFiles model(path);
  const ModelDir& dir = model.dir();
  const ModelConfig& c = model.config();
  const TableLayout& layout = model.layout();
  const TextWeights t = load_text_weights(dir, c, layout);
  const VisionWeights v = load_vision_weights(dir, c, layout);
  auto view_of = [&](const Weight& w, const std::string& name) {
    const TensorInfo& info = dir.tensor(name + ".weight");
    EXPECT_EQ(w.quantized ? static_cast<const void*>(w.q) : w.data, info.data) << name;
    if (w.quantized) {
      EXPECT_EQ(w.scales, dir.tensor(name + ".scales").data) << name;
      EXPECT_EQ(w.biases, dir.tensor(name + ".biases").data) << name;
    }
  };
  auto values_of = [&](const std::vector<float>& f, const std::string& name) {
    const TensorInfo& info = dir.tensor(name);
    EXPECT_EQ(f, load_floats(dir, name, info.shape)) << name;
  };
  const std::string tp = "language_model.model.";
  view_of(t.embed, tp + "embed_tokens");
  view_of(t.lm_head, "language_model.lm_head");
  EXPECT_EQ(static_cast<const void*>(t.token_map),
            layout.token_map ? dir.tensor(tp + "embed_tokens.token_map").data : nullptr);
  values_of(t.final_norm, tp + "norm.weight");
  ASSERT_EQ(t.layers.size(), 7u);
  for (int l = 0; l < 7; ++l) {
    const TextLayer& L = t.layers[l];
    const std::string p = tp + "layers." + std::to_string(l) + ".";
    for (const auto& [w, n] : {std::pair{&L.q_proj, "self_attn.q_proj"},
                               {&L.k_proj, "self_attn.k_proj"},
                               {&L.v_proj, "self_attn.v_proj"},
                               {&L.o_proj, "self_attn.o_proj"},
                               {&L.gate_proj, "mlp.gate_proj"},
                               {&L.up_proj, "mlp.up_proj"},
                               {&L.down_proj, "mlp.down_proj"}})
      view_of(*w, p + n);
    for (const auto& [f, n] : {std::pair{&L.q_norm, "self_attn.q_norm"},
                               {&L.k_norm, "self_attn.k_norm"},
                               {&L.input_norm, "input_layernorm"},
                               {&L.post_attn_norm, "post_attention_layernorm"},
                               {&L.pre_ffw_norm, "pre_feedforward_layernorm"},
                               {&L.post_ffw_norm, "post_feedforward_layernorm"}})
      values_of(*f, p + n + ".weight");
    EXPECT_EQ(L.d_ff, l < 3 || !layout.token_map ? 512 : 448);
  }

  const std::string vp = "vision_tower.vision_model.";
  values_of(v.patch_f32, vp + "embeddings.patch_embedding.weight");
  values_of(v.patch_bias, vp + "embeddings.patch_embedding.bias");
  view_of(v.position_embed, vp + "embeddings.position_embedding");
  values_of(v.post_ln_w, vp + "post_layernorm.weight");
  values_of(v.post_ln_b, vp + "post_layernorm.bias");
  values_of(v.soft_emb_norm, "multi_modal_projector.mm_soft_emb_norm.weight");
  // The projection is stored [D, hidden] and kept transposed.
  const std::string proj = "multi_modal_projector.mm_input_projection_weight";
  const std::vector<float> stored = load_floats(dir, proj, dir.tensor(proj).shape);
  ASSERT_EQ(v.projection_f32.size(), 128u * 256);
  for (int64_t i = 0; i < 128; ++i)
    for (int64_t o = 0; o < 256; ++o)
      ASSERT_EQ(v.projection_f32[o * 128 + i], stored[i * 256 + o]) << i << "," << o;
  ASSERT_EQ(v.layers.size(), 2u);
  for (int l = 0; l < 2; ++l) {
    const VisionLayer& L = v.layers[l];
    const std::string p = vp + "encoder.layers." + std::to_string(l) + ".";
    for (const auto& [w, b, n] : {std::tuple{&L.q_proj, &L.q_bias, "self_attn.q_proj"},
                                  {&L.k_proj, &L.k_bias, "self_attn.k_proj"},
                                  {&L.v_proj, &L.v_bias, "self_attn.v_proj"},
                                  {&L.out_proj, &L.out_bias, "self_attn.out_proj"},
                                  {&L.fc1, &L.fc1_bias, "mlp.fc1"},
                                  {&L.fc2, &L.fc2_bias, "mlp.fc2"}}) {
      view_of(*w, p + n);
      values_of(*b, p + n + ".bias");
    }
    for (const auto& [f, n] : {std::pair{&L.ln1_w, "layer_norm1.weight"},
                               {&L.ln1_b, "layer_norm1.bias"},
                               {&L.ln2_w, "layer_norm2.weight"},
                               {&L.ln2_b, "layer_norm2.bias"}})
      values_of(*f, p + n);
  }
}

TEST(TensorTable, LoadingBindsEveryFieldToItsTensor) {
  expect_fields_bound(test::data_path("tiny-original"));
  expect_fields_bound(test::data_path("tiny-mobile"));
}

// What gemma-synth writes (tiny presets) or plans (full-size ones) is the table of its config.
TEST(TensorTable, SynthWritesExactlyTheTable) {
  const std::string root = test::temp_dir("table");
  for (SynthPreset preset : {SynthPreset::Tiny, SynthPreset::TinyMobile}) {
    const std::string out = root + "/" + synth_preset_name(preset);
    write_synth_checkpoint(synth_plan(preset), out, {});
    expect_table_is_files(out);
  }
  for (SynthPreset preset : {SynthPreset::Original, SynthPreset::Mobile}) {
    SCOPED_TRACE(synth_preset_name(preset));
    const SynthPlan plan = synth_plan(preset);
    TableLayout layout;  // SPEC §2: the 4B checkpoint and the mobile variant
    layout.head_rows = 262208;
    layout.token_map = layout.fc2_quantized = preset == SynthPreset::Mobile;
    std::map<std::string, Stored> planned;
    for (const SynthFile& f : plan.files)
      for (const auto& e : f.entries)
        planned[e.name] = {e.shape, e.dtype == DType::U32, e.dtype == DType::I32};
    EXPECT_EQ(planned, implied_tensors(plan.model, layout));
  }
}

}  // namespace
}  // namespace gp
