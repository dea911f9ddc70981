#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <tuple>

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

// An integer key within [lo, hi]: every real Gemma 3 checkpoint lies far inside these bounds, and
// they keep every size computed from them (products, rings, tables) far from overflow.
int64_t get_int(const nlohmann::json& j, const char* key, int64_t fallback, int64_t lo, int64_t hi,
                const std::string& ctx) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return fallback;
  const auto& v = j[key];
  const bool in_range = (v.is_number_unsigned() && v.get<uint64_t>() <= static_cast<uint64_t>(hi) &&
                         static_cast<int64_t>(v.get<uint64_t>()) >= lo) ||
                        (v.is_number_integer() && !v.is_number_unsigned() &&
                         v.get<int64_t>() >= lo && v.get<int64_t>() <= hi);
  check(in_range, ctx + ": " + key + " is " + v.dump() + ", expected an integer from " +
                      std::to_string(lo) + " to " + std::to_string(hi));
  return v.get<int64_t>();
}

// A finite float key within [lo, hi] (or (lo, hi] when lo_open): 0 or NaN here gives all-NaN
// logits.
float get_float(const nlohmann::json& j, const char* key, float fallback, double lo, double hi,
                bool lo_open, const std::string& ctx) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return fallback;
  const auto& v = j[key];
  const double x = v.is_number() ? v.get<double>() : std::nan("");
  const bool ok = std::isfinite(x) && (lo_open ? x > lo : x >= lo) && x <= hi;
  char range[96];
  std::snprintf(range, sizeof(range), "%s%g, %g]", lo_open ? "(" : "[", lo, hi);
  check(ok, ctx + ": " + key + " is " + v.dump() + ", expected a finite number in " + range);
  return static_cast<float>(x);
}

std::vector<int32_t> id_list(const nlohmann::json& v, const std::string& ctx) {
  std::vector<int32_t> ids;
  if (v.is_number_integer()) {
    check(v.get<int64_t>() >= 0 && v.get<int64_t>() < (int64_t{1} << 24),
          ctx + ": expected a token id from 0 to 2^24, found " + v.dump());
    ids.push_back(v.get<int32_t>());
  } else if (v.is_array()) {
    for (auto& x : v) {
      check(x.is_number_integer() && x.get<int64_t>() >= 0 && x.get<int64_t>() < (int64_t{1} << 24),
            ctx + ": expected token ids from 0 to 2^24, found " + x.dump());
      ids.push_back(x.get<int32_t>());
    }
  } else if (!v.is_null()) {
    throw Error(ctx + ": expected a token id or a list of ids, found " + v.dump());
  }
  return ids;
}

}  // namespace

ModelConfig parse_config(const nlohmann::json& j, const nlohmann::json& gen,
                         const std::string& path) {
  ModelConfig c;
  const std::string mt = get_or<std::string>(j, "model_type", "gemma3", path);
  check(mt == "gemma3",
        path + ": model_type is '" + mt + "', expected 'gemma3' (a Gemma 3 checkpoint)");
  const nlohmann::json tj = j.contains("text_config") ? j["text_config"] : nlohmann::json::object();
  const nlohmann::json vj =
      j.contains("vision_config") ? j["vision_config"] : nlohmann::json::object();
  const std::string tctx = path + ": text_config", vctx = path + ": vision_config";
  check(j.is_object(), path + ": expected a JSON object");
  check(tj.is_object(), tctx + ": expected an object, found " + tj.dump().substr(0, 80));
  check(vj.is_object(), vctx + ": expected an object, found " + vj.dump().substr(0, 80));

  TextConfig& t = c.text;
  constexpr int64_t kMaxWidth = 1 << 16, kMaxFf = 1 << 18, kMaxLayers = 256, kMaxHeads = 1024,
                    kMaxVocab = 1 << 24, kMaxContext = 1 << 22;
  t.d_model = get_int(tj, "hidden_size", t.d_model, 1, kMaxWidth, tctx);
  t.d_ff = get_int(tj, "intermediate_size", t.d_ff, 1, kMaxFf, tctx);
  t.n_layers = get_int(tj, "num_hidden_layers", t.n_layers, 1, kMaxLayers, tctx);
  t.n_heads = get_int(tj, "num_attention_heads", t.n_heads, 1, kMaxHeads, tctx);
  t.n_kv_heads = get_int(tj, "num_key_value_heads", t.n_kv_heads, 1, t.n_heads, tctx);
  t.head_dim = get_int(tj, "head_dim", t.head_dim, 2, 1024, tctx);
  t.query_pre_attn_scalar =
      get_float(tj, "query_pre_attn_scalar", t.query_pre_attn_scalar, 0, 1e6, true, tctx);
  t.rms_norm_eps = get_float(tj, "rms_norm_eps", t.rms_norm_eps, 0, 0.1, true, tctx);
  t.rope_global_base = get_float(tj, "rope_theta", t.rope_global_base, 1, 1e12, false, tctx);
  t.rope_local_base =
      get_float(tj, "rope_local_base_freq", t.rope_local_base, 1, 1e12, false, tctx);
  t.sliding_window = get_int(tj, "sliding_window", t.sliding_window, 1, kMaxContext, tctx);
  t.n_vocab = get_int(tj, "vocab_size", t.n_vocab, 1, kMaxVocab, tctx);
  t.max_context = get_int(tj, "max_position_embeddings", t.max_context, 1, kMaxContext, tctx);
  check(t.n_heads % t.n_kv_heads == 0, tctx + ": num_attention_heads " + std::to_string(t.n_heads) +
                                           " is not a multiple of num_key_value_heads " +
                                           std::to_string(t.n_kv_heads));
  check(t.head_dim % 2 == 0, tctx + ": head_dim must be even for RoPE");

  if (tj.is_object() && tj.contains("rope_scaling") && tj["rope_scaling"].is_object()) {
    const auto& rs = tj["rope_scaling"];
    const std::string type =
        get_or<std::string>(rs, "rope_type", get_or<std::string>(rs, "type", "linear", tctx), tctx);
    check(type == "linear",
          tctx + ": rope_scaling type '" + type + "' is not supported (expected 'linear')");
    const float factor = get_float(rs, "factor", 8.0f, 0, 1e6, true, tctx + ".rope_scaling");
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
    const int pattern = get_int(tj, "sliding_window_pattern", 6, 1, kMaxLayers, tctx);
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
      check(pl[i].is_number_integer() && pl[i].get<int64_t>() > 0 && pl[i].get<int64_t>() <= kMaxFf,
            tctx + ": per_layer_intermediate_sizes[" + std::to_string(i) + "] is " + pl[i].dump() +
                ", expected an integer from 1 to " + std::to_string(kMaxFf));
      t.layer_d_ff[i] = pl[i].get<int>();
    }
  }

  VisionConfig& v = c.vision;
  v.d_model = get_int(vj, "hidden_size", v.d_model, 1, kMaxWidth, vctx);
  v.d_ff = get_int(vj, "intermediate_size", v.d_ff, 1, kMaxFf, vctx);
  v.n_layers = get_int(vj, "num_hidden_layers", v.n_layers, 1, kMaxLayers, vctx);
  v.n_heads = get_int(vj, "num_attention_heads", v.n_heads, 1, kMaxHeads, vctx);
  v.patch_size = get_int(vj, "patch_size", v.patch_size, 1, 1024, vctx);
  v.image_size = get_int(vj, "image_size", v.image_size, 1, 8192, vctx);
  v.layer_norm_eps = get_float(vj, "layer_norm_eps", v.layer_norm_eps, 0, 0.1, true, vctx);
  check(v.patch_size > 0 && v.image_size % v.patch_size == 0,
        vctx + ": image_size " + std::to_string(v.image_size) +
            " is not a multiple of patch_size " + std::to_string(v.patch_size));
  check(v.patches_per_side() <= 256, vctx + ": image_size / patch_size is " +
                                         std::to_string(v.patches_per_side()) +
                                         ", expected at most 256 patches per side");
  check(v.d_model % v.n_heads == 0,
        vctx + ": hidden_size is not a multiple of num_attention_heads");

  if (j.contains("quantization") && j["quantization"].is_object()) {
    c.quant.bits = get_int(j["quantization"], "bits", 4, 1, 32, path + ": quantization");
    c.quant.group_size =
        get_int(j["quantization"], "group_size", 64, 8, 1024, path + ": quantization");
  }
  check(c.quant.bits == 4, path + ": quantization.bits is " + std::to_string(c.quant.bits) +
                               ", only 4-bit checkpoints are supported");
  check(c.quant.group_size > 0 && c.quant.group_size % 8 == 0,
        path + ": quantization.group_size must be a positive multiple of 8");

  c.mm_tokens_per_image = get_int(j, "mm_tokens_per_image", c.mm_tokens_per_image, 1, 65536, path);
  const int64_t last_id = t.n_vocab - 1;
  c.boi_token = get_int(j, "boi_token_index", c.boi_token, 0, last_id, path);
  c.eoi_token = get_int(j, "eoi_token_index", c.eoi_token, 0, last_id, path);
  c.image_token = get_int(j, "image_token_index", c.image_token, 0, last_id, path);
  c.bos_token =
      get_int(j, "bos_token_id", get_int(tj, "bos_token_id", c.bos_token, 0, last_id, tctx), 0,
              last_id, path);
  c.eos_tokens = id_list(j.contains("eos_token_id") ? j["eos_token_id"] : nlohmann::json(),
                         path + ": eos_token_id");
  if (gen.is_object() && gen.contains("eos_token_id") && !gen["eos_token_id"].is_null())
    c.eos_tokens = id_list(gen["eos_token_id"], "generation_config.json: eos_token_id");
  if (c.eos_tokens.empty()) c.eos_tokens = {1, 106};
  if (gen.is_object()) {
    if (gen.contains("temperature") && gen["temperature"].is_number())
      c.sampling.temperature = gen["temperature"].get<float>();
    if (gen.contains("top_k") && gen["top_k"].is_number_integer())
      c.sampling.top_k = gen["top_k"].get<int>();
    if (gen.contains("top_p") && gen["top_p"].is_number())
      c.sampling.top_p = gen["top_p"].get<float>();
  }

  const int side = v.patches_per_side();
  const int tok_side = static_cast<int>(std::lround(std::sqrt(c.mm_tokens_per_image)));
  check(tok_side * tok_side == c.mm_tokens_per_image && side % tok_side == 0,
        path + ": mm_tokens_per_image " + std::to_string(c.mm_tokens_per_image) +
            " must be a square whose side divides the patch grid side " + std::to_string(side));

  for (const nlohmann::json* src : {&j, &tj}) {
    if (src->is_object() && src->contains("vocab_pruning") && (*src)["vocab_pruning"].is_object())
      c.compact_vocab = get_int((*src)["vocab_pruning"], "compact_vocab_size", 0, 0, t.n_vocab,
                                path + ": vocab_pruning");
  }
  return c;
}

void parse_image_normalization(const nlohmann::json& pre, const std::string& path, float mean[3],
                               float std_[3]) {
  for (int c = 0; c < 3; ++c) mean[c] = std_[c] = 0.5f;
  if (!pre.is_object()) return;
  // (x - mean) / std per channel: a std of 0 or a NaN would turn every image into NaNs.
  const std::string where = path + ": ";
  for (auto [key, out, lo] :
       {std::tuple{"image_mean", mean, -1e3}, std::tuple{"image_std", std_, 1e-6}}) {
    if (!pre.contains(key) || pre[key].is_null()) continue;
    const auto& v = pre[key];
    check(v.is_array() && v.size() == 3,
          where + key + " is " + v.dump().substr(0, 80) + ", expected 3 numbers (one per channel)");
    for (int c = 0; c < 3; ++c) {
      const double x = v[c].is_number() ? v[c].get<double>() : std::nan("");
      check(std::isfinite(x) && x >= lo && x <= 1e3,
            where + key + "[" + std::to_string(c) + "] is " + v[c].dump() +
                ", expected a finite number from " + (lo > 0 ? "1e-06" : "-1000") + " to 1000");
      out[c] = static_cast<float>(x);
    }
  }
}

}  // namespace gp
