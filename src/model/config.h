// The model configuration: config.json with the defaults of SPEC §2 for the keys the 4B config
// omits.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tensor/weight.h"

namespace gp {

struct TextConfig {
  int d_model = 2560;
  int d_ff = 10240;             // intermediate_size (the largest layer width)
  std::vector<int> layer_d_ff;  // per layer; all d_ff unless per_layer_intermediate_sizes
  int n_layers = 34;
  int n_heads = 8;
  int n_kv_heads = 4;
  int head_dim = 256;
  float query_pre_attn_scalar = 256;
  float rms_norm_eps = 1e-6f;
  float rope_global_base = 1e6f;
  float rope_local_base = 1e4f;
  float rope_global_scale = 1.0f / 8;  // 1 / rope_scaling.factor (linear), global layers only
  int sliding_window = 1024;
  std::vector<bool> is_global;  // per layer
  int64_t n_vocab = 262208;     // rows of the logical embedding and of the logits
  int max_context = 131072;     // max_position_embeddings
};

struct VisionConfig {
  int d_model = 1152;
  int d_ff = 4304;
  int n_layers = 27;
  int n_heads = 16;
  int patch_size = 14;
  int image_size = 896;
  float layer_norm_eps = 1e-6f;
  int patches_per_side() const { return image_size / patch_size; }
  int n_patches() const { return patches_per_side() * patches_per_side(); }
};

// Sampling for what a request leaves unsaid: generation_config.json's numbers where it has them,
// else Gemma 3's published settings.
struct SamplingDefaults {
  float temperature = 1.0f;
  int top_k = 64;
  float top_p = 0.95f;
};

struct ModelConfig {
  TextConfig text;
  VisionConfig vision;
  QuantFormat quant;
  int mm_tokens_per_image = 256;
  int32_t boi_token = 255999, eoi_token = 256000, image_token = 262144;
  int32_t bos_token = 2;
  std::vector<int32_t> eos_tokens;  // config's list, replaced by generation_config's when present
  int64_t compact_vocab = 0;        // vocab_pruning.compact_vocab_size; 0 when not pruned
  SamplingDefaults sampling;        // from generation_config.json
};

// Parses config.json (and generation_config.json's eos list and sampling, may be null). `path`
// names the file in error messages. Throws Error on inconsistent values.
ModelConfig parse_config(const nlohmann::json& config, const nlohmann::json& generation_config,
                         const std::string& path);

// The per-channel normalization of image pixels in [0, 1]: (x - mean) / std.
struct ImageNormalization {
  float mean[3] = {0.5f, 0.5f, 0.5f};
  float std[3] = {0.5f, 0.5f, 0.5f};
};

// The per-channel image_mean and image_std of preprocessor_config.json (`pre`, null when the file
// is absent: 0.5 each). Throws Error naming `path` and the key when a value is not 3 finite
// numbers in range (a std above 0).
void parse_image_normalization(const nlohmann::json& pre, const std::string& path, float mean[3],
                               float std_[3]);

}  // namespace gp
