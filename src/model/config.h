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

struct ModelConfig {
  TextConfig text;
  VisionConfig vision;
  QuantFormat quant;
  int mm_tokens_per_image = 256;
  int32_t boi_token = 255999, eoi_token = 256000, image_token = 262144;
  int32_t bos_token = 2;
  std::vector<int32_t> eos_tokens;  // config's list, replaced by generation_config's when present
  int64_t compact_vocab = 0;        // vocab_pruning.compact_vocab_size; 0 when not pruned
};

// Parses config.json (and generation_config.json's eos list, may be null). `path` names the file
// in error messages. Throws Error on inconsistent values.
ModelConfig parse_config(const nlohmann::json& config, const nlohmann::json& generation_config,
                         const std::string& path);

}  // namespace gp
