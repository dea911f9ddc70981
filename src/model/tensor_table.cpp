#include "model/tensor_table.h"

#include <cassert>
#include <cstring>
#include <type_traits>

#include "base/error.h"
#include "tensor/dtype.h"

namespace gp {

namespace names {
std::string text(const std::string& rest) { return "language_model." + rest; }
std::string text_layer(int layer, const std::string& rest) {
  return text("model.layers." + std::to_string(layer) + "." + rest);
}
std::string vision(const std::string& rest) { return "vision_tower.vision_model." + rest; }
std::string vision_layer(int layer, const std::string& rest) {
  return vision("encoder.layers." + std::to_string(layer) + "." + rest);
}
std::string projector(const std::string& rest) { return "multi_modal_projector." + rest; }

bool parse_text_layer(const std::string& name, int* layer, std::string* rest) {
  const std::string prefix = text("model.layers.");
  if (name.compare(0, prefix.size(), prefix) != 0) return false;
  size_t i = prefix.size(), j = i;
  while (j < name.size() && j - i < 9 && name[j] >= '0' && name[j] <= '9') ++j;
  if (j == i || j >= name.size() || name[j] != '.' || (name[i] == '0' && j - i > 1)) return false;
  *layer = std::stoi(name.substr(i, j - i));
  *rest = name.substr(j + 1);
  return true;
}

std::string split_file(bool vision) {
  return vision ? "vision_model.safetensors" : "language_model.safetensors";
}

bool is_vision(const std::string& name) {
  const std::string v = vision(""), p = projector("");
  return name.compare(0, v.size(), v) == 0 || name.compare(0, p.size(), p) == 0;
}
}  // namespace names

int64_t embedding_rows(const ModelConfig& c, const TableLayout& layout) {
  return layout.token_map ? c.compact_vocab : c.text.n_vocab;
}

namespace {

// The names detect_layout probes, shared with the table below.
constexpr const char *kEmbed = "model.embed_tokens", *kTokenMap = "model.embed_tokens.token_map",
                     *kLmHead = "lm_head", *kPatch = "embeddings.patch_embedding",
                     *kFc2 = "mlp.fc2";

TensorSpec entry(std::string name, TensorRole role, std::vector<int64_t> shape, TensorField field,
                 int layer) {
  TensorSpec s;
  s.name = std::move(name);
  s.role = role;
  s.shape = std::move(shape);
  s.quantized = role == TensorRole::Linear;
  s.layer = layer;
  s.field = field;
  return s;
}
// Typed by role, so that an entry's field always has the type its loader writes.
template <class Owner>
TensorSpec linear(std::string name, Weight Owner::*field, int64_t out, int64_t in, int layer = -1) {
  return entry(std::move(name), TensorRole::Linear, {out, in}, field, layer);
}
template <class Owner>
TensorSpec vec(std::string name, std::vector<float> Owner::*field, VectorUse use,
               std::vector<int64_t> shape, int layer = -1) {
  TensorSpec s = entry(std::move(name), TensorRole::Vector, std::move(shape), field, layer);
  s.use = use;
  return s;
}

void text_tensors(const ModelConfig& c, const TableLayout& layout,
                  const std::function<void(const TensorSpec&)>& visit) {
  const TextConfig& x = c.text;
  const int64_t d = x.d_model, hd = x.head_dim, rows = embedding_rows(c, layout);
  TensorSpec embed = linear(names::text(kEmbed), &TextWeights::embed, rows, d);
  embed.must_quantize = true;
  visit(embed);
  if (layout.token_map) {
    TensorSpec map = entry(names::text(kTokenMap), TensorRole::TokenMap, {x.n_vocab},
                           &TextWeights::token_map, -1);
    map.index_limit = rows;
    visit(map);
  }
  if (layout.lm_head)
    visit(linear(names::text(kLmHead), &TextWeights::lm_head,
                 layout.head_rows ? layout.head_rows : x.n_vocab, d));
  for (int l = 0; l < x.n_layers; ++l) {
    const int64_t ff = x.layer_d_ff[l];
    auto lin = [&](const char* rest, Weight TextLayer::*field, int64_t out, int64_t in) {
      visit(linear(names::text_layer(l, rest), field, out, in, l));
    };
    auto norm = [&](const char* rest, std::vector<float> TextLayer::*field, int64_t n) {
      visit(vec(names::weight(names::text_layer(l, rest)), field, VectorUse::RmsNorm, {n}, l));
    };
    lin("self_attn.q_proj", &TextLayer::q_proj, x.n_heads * hd, d);
    lin("self_attn.k_proj", &TextLayer::k_proj, x.n_kv_heads * hd, d);
    lin("self_attn.v_proj", &TextLayer::v_proj, x.n_kv_heads * hd, d);
    lin("self_attn.o_proj", &TextLayer::o_proj, d, x.n_heads * hd);
    norm("self_attn.q_norm", &TextLayer::q_norm, hd);
    norm("self_attn.k_norm", &TextLayer::k_norm, hd);
    lin("mlp.gate_proj", &TextLayer::gate_proj, ff, d);
    lin("mlp.up_proj", &TextLayer::up_proj, ff, d);
    lin("mlp.down_proj", &TextLayer::down_proj, d, ff);
    norm("input_layernorm", &TextLayer::input_norm, d);
    norm("post_attention_layernorm", &TextLayer::post_attn_norm, d);
    norm("pre_feedforward_layernorm", &TextLayer::pre_ffw_norm, d);
    norm("post_feedforward_layernorm", &TextLayer::post_ffw_norm, d);
  }
  visit(vec(names::weight(names::text("model.norm")), &TextWeights::final_norm, VectorUse::RmsNorm,
            {d}));
}

void vision_tensors(const ModelConfig& c, const TableLayout& layout,
                    const std::function<void(const TensorSpec&)>& visit) {
  const VisionConfig& v = c.vision;
  const int64_t vd = v.d_model, p = v.patch_size;
  auto vis = [&](TensorSpec s) {
    s.vision = true;
    visit(s);
  };
  vis(vec(names::weight(names::vision(kPatch)), &VisionWeights::patch_f32, VectorUse::Kernel,
          {vd, p, p, 3}));
  vis(vec(names::bias(names::vision(kPatch)), &VisionWeights::patch_bias, VectorUse::Bias, {vd}));
  vis(linear(names::vision("embeddings.position_embedding"), &VisionWeights::position_embed,
             v.n_patches(), vd));
  for (int l = 0; l < v.n_layers; ++l) {
    auto lin = [&](const std::string& rest, Weight VisionLayer::*field,
                   std::vector<float> VisionLayer::*bias, int64_t out, int64_t in,
                   bool quantized = true) {
      TensorSpec s = linear(names::vision_layer(l, rest), field, out, in, l);
      s.quantized = quantized;
      s.has_bias = true;
      s.bias_field = bias;
      vis(s);
    };
    auto norm = [&](const char* rest, std::vector<float> VisionLayer::*w,
                    std::vector<float> VisionLayer::*b) {
      vis(vec(names::weight(names::vision_layer(l, rest)), w, VectorUse::LayerNorm, {vd}, l));
      vis(vec(names::bias(names::vision_layer(l, rest)), b, VectorUse::Bias, {vd}, l));
    };
    lin("self_attn.q_proj", &VisionLayer::q_proj, &VisionLayer::q_bias, vd, vd);
    lin("self_attn.k_proj", &VisionLayer::k_proj, &VisionLayer::k_bias, vd, vd);
    lin("self_attn.v_proj", &VisionLayer::v_proj, &VisionLayer::v_bias, vd, vd);
    lin("self_attn.out_proj", &VisionLayer::out_proj, &VisionLayer::out_bias, vd, vd);
    norm("layer_norm1", &VisionLayer::ln1_w, &VisionLayer::ln1_b);
    norm("layer_norm2", &VisionLayer::ln2_w, &VisionLayer::ln2_b);
    lin("mlp.fc1", &VisionLayer::fc1, &VisionLayer::fc1_bias, v.d_ff, vd);
    lin(kFc2, &VisionLayer::fc2, &VisionLayer::fc2_bias, vd, v.d_ff, layout.fc2_quantized);
  }
  vis(vec(names::weight(names::vision("post_layernorm")), &VisionWeights::post_ln_w,
          VectorUse::LayerNorm, {vd}));
  vis(vec(names::bias(names::vision("post_layernorm")), &VisionWeights::post_ln_b, VectorUse::Bias,
          {vd}));
  // Loaded as stored, [d_model, text d_model]; the vision loader transposes it.
  vis(vec(names::projector("mm_input_projection_weight"), &VisionWeights::projection_f32,
          VectorUse::Projection, {vd, c.text.d_model}));
  vis(vec(names::weight(names::projector("mm_soft_emb_norm")), &VisionWeights::soft_emb_norm,
          VectorUse::RmsNorm, {vd}));
}

}  // namespace

void for_each_tensor(const ModelConfig& c, const TableLayout& layout,
                     const std::function<void(const TensorSpec&)>& visit) {
  text_tensors(c, layout, visit);
  if (layout.vision) vision_tensors(c, layout, visit);
}

std::vector<TensorSpec> tensor_table(const ModelConfig& c, const TableLayout& layout) {
  std::vector<TensorSpec> t;
  for_each_tensor(c, layout, [&](const TensorSpec& s) { t.push_back(s); });
  return t;
}

const TensorSpec* find_spec(const std::vector<TensorSpec>& table, const TensorField& field,
                            int layer) {
  for (const TensorSpec& s : table)
    if (s.field == field && s.layer == layer) return &s;
  return nullptr;
}

TableLayout detect_layout(const ModelDir& dir) {
  TableLayout l;
  const std::string head = names::weight(names::text(kLmHead)),
                    embed = names::weight(names::text(kEmbed));
  l.lm_head = dir.has(head);
  l.head_rows = l.lm_head ? dir.tensor(head).shape.at(0) : 0;
  l.token_map = dir.has(names::text(kTokenMap));
  l.fc2_quantized = dir.has(names::scales(names::vision_layer(0, kFc2)));
  l.vision = dir.has(names::weight(names::vision(kPatch)));
  l.embed_rows =
      dir.has(embed) && !dir.tensor(embed).shape.empty() ? dir.tensor(embed).shape[0] : 0;
  return l;
}

std::vector<SafeTensorsWriter::Entry> quantized_entries(const std::string& name, int64_t out,
                                                        int64_t in, QuantFormat fmt,
                                                        DType scale_dtype) {
  const int64_t groups = in / fmt.group_size;
  return {{names::weight(name), DType::U32, {out, in * fmt.bits / 32}},
          {names::scales(name), scale_dtype, {out, groups}},
          {names::biases(name), scale_dtype, {out, groups}}};
}

std::vector<std::string> stored_names(const TensorSpec& spec, bool quantized) {
  if (spec.role != TensorRole::Linear) return {spec.name};
  std::vector<std::string> n = {names::weight(spec.name)};
  if (quantized) {
    n.push_back(names::scales(spec.name));
    n.push_back(names::biases(spec.name));
  }
  if (spec.has_bias) n.push_back(names::bias(spec.name));
  return n;
}

namespace {

const std::string kWhy = " (from config.json; a config that does not match the weights?)";

std::string where(const ModelDir& dir, const TensorInfo& t) {
  return dir.path() + "/" + dir.file_of(t.name) + ": tensor '" + t.name + "'";
}
void expect_shape(const ModelDir& dir, const TensorInfo& t, const std::vector<int64_t>& shape) {
  check(t.shape == shape, where(dir, t) + " has shape " + t.shape_str() + ", expected " +
                              shape_to_string(shape) + kWhy);
}
void expect_float(const ModelDir& dir, const TensorInfo& t) {
  check(t.dtype == DType::BF16 || t.dtype == DType::F16 || t.dtype == DType::F32,
        where(dir, t) + " has dtype " + dtype_name(t.dtype) + ", expected BF16, F16 or F32");
}
const TensorInfo& checked_floats(const ModelDir& dir, const std::string& name,
                                 const std::vector<int64_t>& shape) {
  const TensorInfo& t = dir.tensor(name);
  expect_float(dir, t);
  expect_shape(dir, t, shape);
  return t;
}
const TensorInfo& checked_token_map(const ModelDir& dir, const TensorSpec& spec) {
  const TensorInfo& t = dir.tensor(spec.name);
  check(t.dtype == DType::I32 && t.shape == spec.shape,
        where(dir, t) + " is " + dtype_name(t.dtype) + " " + t.shape_str() + ", expected I32 " +
            shape_to_string(spec.shape) + " (text_config.vocab_size)");
  return t;
}

// The field of `text` or `vision` that `member` (of an entry of `layer`) names.
template <class T>
T* resolve(const TensorField& member, int layer, TextWeights* text, VisionWeights* vision) {
  T* out = nullptr;
  std::visit(
      [&](auto m) {
        using M = decltype(m);
        if constexpr (std::is_same_v<M, T TextWeights::*>) {
          out = &(text->*m);
        } else if constexpr (std::is_same_v<M, T TextLayer::*>) {
          out = &(text->layers.at(layer).*m);
        } else if constexpr (std::is_same_v<M, T VisionWeights::*>) {
          out = &(vision->*m);
        } else if constexpr (std::is_same_v<M, T VisionLayer::*>) {
          out = &(vision->layers.at(layer).*m);
        }
      },
      member);
  assert(out != nullptr && "a table entry's field does not match its role");
  return out;
}

}  // namespace

Weight load_linear(const ModelDir& dir, const TensorSpec& spec, QuantFormat fmt) {
  const int64_t out = spec.shape[0], in = spec.shape[1];
  Weight w;
  w.out = out;
  w.in = in;
  w.fmt = fmt;
  const TensorInfo& wt = dir.tensor(names::weight(spec.name));
  if (dir.has(names::scales(spec.name))) {
    check(wt.dtype == DType::U32, dir.path() + ": tensor '" + wt.name + "' has dtype " +
                                      dtype_name(wt.dtype) + ", expected U32 (MLX 4-bit packed)");
    check(in % fmt.group_size == 0,
          dir.path() + ": tensor '" + spec.name + "' has " + std::to_string(in) +
              " input columns, not a multiple of group_size " + std::to_string(fmt.group_size));
    const auto expected = quantized_entries(spec.name, out, in, fmt, DType::BF16);
    expect_shape(dir, wt, expected[0].shape);
    const TensorInfo& s = dir.tensor(expected[1].name);
    const TensorInfo& b = dir.tensor(expected[2].name);
    expect_float(dir, s);
    expect_shape(dir, s, expected[1].shape);
    expect_shape(dir, b, expected[2].shape);
    check(b.dtype == s.dtype, dir.path() + ": tensor '" + b.name + "' has dtype " +
                                  dtype_name(b.dtype) + ", expected " + dtype_name(s.dtype) +
                                  " like its scales");
    w.quantized = true;
    w.q = reinterpret_cast<const uint32_t*>(wt.data);
    w.scales = s.data;
    w.biases = b.data;
    w.scale_dtype = s.dtype;
  } else {
    expect_float(dir, wt);
    expect_shape(dir, wt, {out, in});
    check(!spec.must_quantize,
          dir.path() + ": tensor '" + spec.name + "' must be MLX-quantized (found a float tensor)");
    w.data = wt.data;
    w.dtype = wt.dtype;
  }
  return w;
}

std::vector<float> load_floats(const ModelDir& dir, const std::string& name,
                               const std::vector<int64_t>& shape) {
  return to_f32(checked_floats(dir, name, shape));
}

const int32_t* load_token_map(const ModelDir& dir, const TensorSpec& spec) {
  const TensorInfo& t = checked_token_map(dir, spec);
  for (int64_t i = 0; i < spec.shape[0]; ++i) {
    int32_t r;
    std::memcpy(&r, t.data + 4 * i, 4);
    check(r >= 0 && r < spec.index_limit,
          dir.path() + ": tensor '" + spec.name + "' maps id " + std::to_string(i) + " to row " +
              std::to_string(r) + ", outside the " + std::to_string(spec.index_limit) +
              " rows of embed_tokens (vocab_pruning.compact_vocab_size)");
  }
  return reinterpret_cast<const int32_t*>(t.data);
}

void check_tensor(const ModelDir& dir, const TensorSpec& spec, QuantFormat fmt) {
  switch (spec.role) {
    case TensorRole::Linear:
      load_linear(dir, spec, fmt);
      if (spec.has_bias) checked_floats(dir, names::bias(spec.name), {spec.shape[0]});
      break;
    case TensorRole::Vector:
      checked_floats(dir, spec.name, spec.shape);
      break;
    case TensorRole::TokenMap:
      checked_token_map(dir, spec);
      break;
  }
}

void load_tensor(const ModelDir& dir, const TensorSpec& spec, QuantFormat fmt, TextWeights* text,
                 VisionWeights* vision) {
  using Floats = std::vector<float>;
  switch (spec.role) {
    case TensorRole::Linear:
      *resolve<Weight>(spec.field, spec.layer, text, vision) = load_linear(dir, spec, fmt);
      if (spec.has_bias)
        *resolve<Floats>(spec.bias_field, spec.layer, text, vision) =
            load_floats(dir, names::bias(spec.name), {spec.shape[0]});
      break;
    case TensorRole::Vector:
      *resolve<Floats>(spec.field, spec.layer, text, vision) =
          load_floats(dir, spec.name, spec.shape);
      break;
    case TensorRole::TokenMap:
      *resolve<const int32_t*>(spec.field, spec.layer, text, vision) = load_token_map(dir, spec);
      break;
  }
}

}  // namespace gp
