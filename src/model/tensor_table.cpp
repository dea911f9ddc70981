#include "model/tensor_table.h"

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

bool is_vision(const std::string& name) {
  const std::string v = vision(""), p = projector("");
  return name.compare(0, v.size(), v) == 0 || name.compare(0, p.size(), p) == 0;
}
}  // namespace names

int64_t embedding_rows(const ModelConfig& c, const TableLayout& layout) {
  return layout.token_map ? c.compact_vocab : c.text.n_vocab;
}

std::vector<TensorSpec> tensor_table(const ModelConfig& c, const TableLayout& layout) {
  std::vector<TensorSpec> t;
  auto linear = [&](std::string name, int64_t out, int64_t in, bool quantized = true,
                    bool has_bias = false, bool vision = false) {
    t.push_back({std::move(name), TensorRole::Linear, {out, in}, quantized, has_bias, vision});
  };
  auto vec = [&](std::string name, std::vector<int64_t> shape, bool vision = false) {
    t.push_back({std::move(name), TensorRole::Vector, std::move(shape), false, false, vision});
  };
  const TextConfig& x = c.text;
  const int64_t d = x.d_model, hd = x.head_dim;
  linear(names::text("model.embed_tokens"), embedding_rows(c, layout), d);
  if (layout.token_map)
    t.push_back(
        {names::text("model.embed_tokens.token_map"), TensorRole::TokenMap, {x.n_vocab}, false});
  if (layout.lm_head)
    linear(names::text("lm_head"), layout.head_rows ? layout.head_rows : x.n_vocab, d);
  for (int l = 0; l < x.n_layers; ++l) {
    const int64_t ff = x.layer_d_ff[l];
    linear(names::text_layer(l, "self_attn.q_proj"), x.n_heads * hd, d);
    linear(names::text_layer(l, "self_attn.k_proj"), x.n_kv_heads * hd, d);
    linear(names::text_layer(l, "self_attn.v_proj"), x.n_kv_heads * hd, d);
    linear(names::text_layer(l, "self_attn.o_proj"), d, x.n_heads * hd);
    vec(names::weight(names::text_layer(l, "self_attn.q_norm")), {hd});
    vec(names::weight(names::text_layer(l, "self_attn.k_norm")), {hd});
    linear(names::text_layer(l, "mlp.gate_proj"), ff, d);
    linear(names::text_layer(l, "mlp.up_proj"), ff, d);
    linear(names::text_layer(l, "mlp.down_proj"), d, ff);
    for (const char* n : {"input_layernorm", "post_attention_layernorm",
                          "pre_feedforward_layernorm", "post_feedforward_layernorm"})
      vec(names::weight(names::text_layer(l, n)), {d});
  }
  vec(names::weight(names::text("model.norm")), {d});
  if (!layout.vision) return t;

  const VisionConfig& v = c.vision;
  const int64_t vd = v.d_model, p = v.patch_size;
  vec(names::weight(names::vision("embeddings.patch_embedding")), {vd, p, p, 3}, true);
  vec(names::bias(names::vision("embeddings.patch_embedding")), {vd}, true);
  linear(names::vision("embeddings.position_embedding"), v.n_patches(), vd, true, false, true);
  for (int l = 0; l < v.n_layers; ++l) {
    for (const char* n :
         {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"})
      linear(names::vision_layer(l, n), vd, vd, true, true, true);
    for (const char* n : {"layer_norm1", "layer_norm2"}) {
      vec(names::weight(names::vision_layer(l, n)), {vd}, true);
      vec(names::bias(names::vision_layer(l, n)), {vd}, true);
    }
    linear(names::vision_layer(l, "mlp.fc1"), v.d_ff, vd, true, true, true);
    linear(names::vision_layer(l, "mlp.fc2"), vd, v.d_ff, layout.fc2_quantized, true, true);
  }
  vec(names::weight(names::vision("post_layernorm")), {vd}, true);
  vec(names::bias(names::vision("post_layernorm")), {vd}, true);
  vec(names::projector("mm_input_projection_weight"), {vd, d}, true);
  vec(names::weight(names::projector("mm_soft_emb_norm")), {vd}, true);
  return t;
}

TableLayout detect_layout(const ModelDir& dir) {
  TableLayout l;
  const std::string head = names::text("lm_head");
  l.lm_head = dir.has(names::weight(head));
  l.head_rows = l.lm_head ? dir.tensor(names::weight(head)).shape.at(0) : 0;
  l.token_map = dir.has(names::text("model.embed_tokens.token_map"));
  l.fc2_quantized = dir.has(names::scales(names::vision_layer(0, "mlp.fc2")));
  l.vision = dir.has(names::weight(names::vision("embeddings.patch_embedding")));
  return l;
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
void expect_shape(const ModelDir& dir, const TensorInfo& t, const std::vector<int64_t>& shape,
                  const std::string& why) {
  check(t.shape == shape, dir.path() + "/" + dir.file_of(t.name) + ": tensor '" + t.name +
                              "' has shape " + t.shape_str() + ", expected " +
                              shape_to_string(shape) + why);
}
void expect_float(const ModelDir& dir, const TensorInfo& t) {
  check(t.dtype == DType::BF16 || t.dtype == DType::F16 || t.dtype == DType::F32,
        dir.path() + "/" + dir.file_of(t.name) + ": tensor '" + t.name + "' has dtype " +
            dtype_name(t.dtype) + ", expected BF16, F16 or F32");
}
}  // namespace

Weight load_linear(const ModelDir& dir, const TensorSpec& spec, QuantFormat fmt) {
  const int64_t out = spec.shape[0], in = spec.shape[1];
  const std::string why = " (from config.json; a config that does not match the weights?)";
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
    expect_shape(dir, wt, {out, in * fmt.bits / 32}, why);
    const TensorInfo& s = dir.tensor(names::scales(spec.name));
    const TensorInfo& b = dir.tensor(names::biases(spec.name));
    expect_float(dir, s);
    expect_shape(dir, s, {out, in / fmt.group_size}, why);
    expect_shape(dir, b, {out, in / fmt.group_size}, why);
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
    expect_shape(dir, wt, {out, in}, why);
    w.data = wt.data;
    w.dtype = wt.dtype;
  }
  return w;
}

std::vector<float> load_floats(const ModelDir& dir, const std::string& name,
                               const std::vector<int64_t>& shape) {
  const TensorInfo& t = dir.tensor(name);
  expect_float(dir, t);
  expect_shape(dir, t, shape, " (from config.json; a config that does not match the weights?)");
  return to_f32(t);
}

}  // namespace gp
