#include "model/config.h"

#include <algorithm>

#include "base/error.h"

namespace gp {
namespace {

template <typename T>
T get_or(const nlohmann::json& j, const char* key, T fallback, const std::string& ctx) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return fallback;
  try {
    return j[key].get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(ctx + ": field '" + key + "' has the wrong type (found " + j[key].dump() + ")");
  }
}

std::vector<int32_t> id_list(const nlohmann::json& v, const std::string& ctx) {
  std::vector<int32_t> ids;
  if (v.is_number_integer()) {
    ids.push_back(v.get<int32_t>());
  } else if (v.is_array()) {
    for (auto& x : v) {
      check(x.is_number_integer(), ctx + ": expected integer token ids, found " + x.dump());
      ids.push_back(x.get<int32_t>());
    }
  } else if (!v.is_null()) {
    throw Error(ctx + ": expected a token id or a list of ids, found " + v.dump());
  }
  return ids;
}

}  // namespace

ModelConfig parse_config(const nlohmann::json& j, const nlohmann::json& gen, const std::string& path) {
  ModelConfig c;
  const std::string mt = get_or<std::string>(j, "model_type", "gemma3", path);
  check(mt == "gemma3", path + ": model_type is '" + mt + "', expected 'gemma3' (a Gemma 3 checkpoint)");
  const nlohmann::json tj = j.contains("text_config") ? j["text_config"] : nlohmann::json::object();
  const nlohmann::json vj = j.contains("vision_config") ? j["vision_config"] : nlohmann::json::object();
  const std::string tctx = path + ": text_config", vctx = path + ": vision_config";

  TextConfig& t = c.text;
  t.d_model = get_or(tj, "hidden_size", t.d_model, tctx);
  t.d_ff = get_or(tj, "intermediate_size", t.d_ff, tctx);
  t.n_layers = get_or(tj, "num_hidden_layers", t.n_layers, tctx);
  t.n_heads = get_or(tj, "num_attention_heads", t.n_heads, tctx);
  t.n_kv_heads = get_or(tj, "num_key_value_heads", t.n_kv_heads, tctx);
  t.head_dim = get_or(tj, "head_dim", t.head_dim, tctx);
  t.query_pre_attn_scalar = get_or(tj, "query_pre_attn_scalar", t.query_pre_attn_scalar, tctx);
  t.rms_norm_eps = get_or(tj, "rms_norm_eps", t.rms_norm_eps, tctx);
  t.rope_global_base = get_or(tj, "rope_theta", t.rope_global_base, tctx);
  t.rope_local_base = get_or(tj, "rope_local_base_freq", t.rope_local_base, tctx);
  t.sliding_window = get_or(tj, "sliding_window", t.sliding_window, tctx);
  t.n_vocab = get_or<int64_t>(tj, "vocab_size", t.n_vocab, tctx);
  t.max_context = get_or(tj, "max_position_embeddings", t.max_context, tctx);
  check(t.n_layers > 0 && t.n_heads > 0 && t.n_kv_heads > 0 && t.head_dim > 0 && t.d_model > 0,
        tctx + ": layer, head and width counts must be positive");
  check(t.n_heads % t.n_kv_heads == 0,
        tctx + ": num_attention_heads " + std::to_string(t.n_heads) +
            " is not a multiple of num_key_value_heads " + std::to_string(t.n_kv_heads));
  check(t.head_dim % 2 == 0, tctx + ": head_dim must be even for RoPE");
  check(t.sliding_window > 0, tctx + ": sliding_window must be positive");

  if (tj.is_object() && tj.contains("rope_scaling") && tj["rope_scaling"].is_object()) {
    const auto& rs = tj["rope_scaling"];
    const std::string type = get_or<std::string>(rs, "rope_type", get_or<std::string>(rs, "type", "linear", tctx), tctx);
    check(type == "linear", tctx + ": rope_scaling type '" + type + "' is not supported (expected 'linear')");
    const float factor = get_or(rs, "factor", 8.0f, tctx + ".rope_scaling");
    check(factor > 0, tctx + ": rope_scaling.factor must be positive");
    t.rope_global_scale = 1.0f / factor;
  } else if (tj.is_object() && tj.contains("rope_scaling") && tj["rope_scaling"].is_null()) {
    t.rope_global_scale = 1.0f;
  }

  t.is_global.assign(t.n_layers, false);
  if (tj.is_object() && tj.contains("layer_types") && tj["layer_types"].is_array()) {
    const auto& lt = tj["layer_types"];
    check(lt.size() == static_cast<size_t>(t.n_layers),
          tctx + ": layer_types has " + std::to_string(lt.size()) + " entries, expected " +
              std::to_string(t.n_layers) + " (num_hidden_layers)");
    for (int i = 0; i < t.n_layers; ++i) {
      const std::string s = lt[i].is_string() ? lt[i].get<std::string>() : "";
      check(s == "sliding_attention" || s == "full_attention",
            tctx + ": layer_types[" + std::to_string(i) + "] is " + lt[i].dump() +
                ", expected \"sliding_attention\" or \"full_attention\"");
      t.is_global[i] = s == "full_attention";
    }
  } else {
    const int pattern = get_or(tj, "sliding_window_pattern", 6, tctx);
    check(pattern > 0, tctx + ": sliding_window_pattern must be positive");
    for (int i = 0; i < t.n_layers; ++i) t.is_global[i] = (i + 1) % pattern == 0;
  }

  t.layer_d_ff.assign(t.n_layers, t.d_ff);
  if (tj.is_object() && tj.contains("per_layer_intermediate_sizes")) {
    const auto& pl = tj["per_layer_intermediate_sizes"];
    check(pl.is_array() && pl.size() == static_cast<size_t>(t.n_layers),
          tctx + ": per_layer_intermediate_sizes has " +
              std::to_string(pl.is_array() ? pl.size() : 0) + " entries, expected " +
              std::to_string(t.n_layers) + " (num_hidden_layers)");
    for (int i = 0; i < t.n_layers; ++i) {
      check(pl[i].is_number_integer() && pl[i].get<int>() > 0,
            tctx + ": per_layer_intermediate_sizes[" + std::to_string(i) + "] must be a positive integer");
      t.layer_d_ff[i] = pl[i].get<int>();
    }
  }

  VisionConfig& v = c.vision;
  v.d_model = get_or(vj, "hidden_size", v.d_model, vctx);
  v.d_ff = get_or(vj, "intermediate_size", v.d_ff, vctx);
  v.n_layers = get_or(vj, "num_hidden_layers", v.n_layers, vctx);
  v.n_heads = get_or(vj, "num_attention_heads", v.n_heads, vctx);
  v.patch_size = get_or(vj, "patch_size", v.patch_size, vctx);
  v.image_size = get_or(vj, "image_size", v.image_size, vctx);
  v.layer_norm_eps = get_or(vj, "layer_norm_eps", v.layer_norm_eps, vctx);
  check(v.patch_size > 0 && v.image_size % v.patch_size == 0,
        vctx + ": image_size " + std::to_string(v.image_size) + " is not a multiple of patch_size " +
            std::to_string(v.patch_size));
  check(v.n_heads > 0 && v.d_model % v.n_heads == 0,
        vctx + ": hidden_size is not a multiple of num_attention_heads");

  if (j.contains("quantization") && j["quantization"].is_object()) {
    c.quant.bits = get_or(j["quantization"], "bits", 4, path + ": quantization");
    c.quant.group_size = get_or(j["quantization"], "group_size", 64, path + ": quantization");
  }
  check(c.quant.bits == 4, path + ": quantization.bits is " + std::to_string(c.quant.bits) +
                               ", only 4-bit checkpoints are supported");
  check(c.quant.group_size > 0 && c.quant.group_size % 8 == 0,
        path + ": quantization.group_size must be a positive multiple of 8");

  c.mm_tokens_per_image = get_or(j, "mm_tokens_per_image", c.mm_tokens_per_image, path);
  c.boi_token = get_or(j, "boi_token_index", c.boi_token, path);
  c.eoi_token = get_or(j, "eoi_token_index", c.eoi_token, path);
  c.image_token = get_or(j, "image_token_index", c.image_token, path);
  c.bos_token = get_or(j, "bos_token_id", get_or(tj, "bos_token_id", c.bos_token, tctx), path);
  c.eos_tokens = id_list(j.contains("eos_token_id") ? j["eos_token_id"] : nlohmann::json(), path + ": eos_token_id");
  if (gen.is_object() && gen.contains("eos_token_id") && !gen["eos_token_id"].is_null())
    c.eos_tokens = id_list(gen["eos_token_id"], "generation_config.json: eos_token_id");
  if (c.eos_tokens.empty()) c.eos_tokens = {1, 106};

  const int side = v.patches_per_side();
  int tok_side = 1;
  while (tok_side * tok_side < c.mm_tokens_per_image) ++tok_side;
  check(c.mm_tokens_per_image > 0 && tok_side * tok_side == c.mm_tokens_per_image && side % tok_side == 0,
        path + ": mm_tokens_per_image " + std::to_string(c.mm_tokens_per_image) +
            " must be a square whose side divides the patch grid side " + std::to_string(side));

  for (const nlohmann::json* src : {&j, &tj}) {
    if (src->is_object() && src->contains("vocab_pruning") && (*src)["vocab_pruning"].is_object())
      c.compact_vocab = get_or<int64_t>((*src)["vocab_pruning"], "compact_vocab_size", 0, path + ": vocab_pruning");
  }
  return c;
}

}  // namespace gp
