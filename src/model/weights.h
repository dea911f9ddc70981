// The weights of the model as plain structs: quantized and BF16 tensors are views into the mapped
// checkpoint (the ModelDir must outlive them), norms and biases are converted to f32 and owned.
// The tensor table (tensor_table.h) binds every stored tensor to one field here.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "tensor/weight.h"

namespace gp {

struct TextLayer {
  Weight q_proj, k_proj, v_proj;  // [n_heads*head_dim, d_model], [n_kv_heads*head_dim, d_model] x2
  Weight o_proj;                  // [d_model, n_heads*head_dim]
  std::vector<float> q_norm, k_norm;  // [head_dim]
  Weight gate_proj, up_proj;          // [d_ff(layer), d_model]
  Weight down_proj;                   // [d_model, d_ff(layer)]
  std::vector<float> input_norm, post_attn_norm, pre_ffw_norm, post_ffw_norm;  // [d_model]
  bool is_global = false;
  int d_ff = 0;

  std::array<const Weight*, 7> linears() const {
    return {&q_proj, &k_proj, &v_proj, &o_proj, &gate_proj, &up_proj, &down_proj};
  }
  std::array<Weight*, 7> linears() {
    return {&q_proj, &k_proj, &v_proj, &o_proj, &gate_proj, &up_proj, &down_proj};
  }
};

struct TextWeights {
  Weight embed;                        // [embedding rows, d_model]: n_vocab, or compact rows
  const int32_t* token_map = nullptr;  // [n_vocab] -> embedding row (0: pruned id), or null
  Weight lm_head;                      // [n_vocab or compact rows, d_model]; empty: tied to embed
  std::vector<TextLayer> layers;
  std::vector<float> final_norm;  // [d_model]
  // Whether the quantized weights view read-only file mappings (load_text_weights), whose pages
  // can be dropped and read again: then an int8 model asked to (--repack) repacks the layers'
  // linears that gain (TextModel), and `repacked` owns their copies (Weight::vq).
  bool mapped = false;
  std::shared_ptr<const uint8_t> repacked;
};

struct VisionLayer {
  Weight q_proj, k_proj, v_proj;                        // [d_model, d_model] (vision d_model)
  Weight out_proj;                                      // [d_model, d_model]
  std::vector<float> q_bias, k_bias, v_bias, out_bias;  // [d_model]
  std::vector<float> ln1_w, ln1_b, ln2_w, ln2_b;        // [d_model]
  Weight fc1;                   // [d_ff, d_model]; may carry zero rows beyond the useful width
  Weight fc2;                   // [d_model, d_ff]; BF16 float (original) or quantized (compressed)
  std::vector<float> fc1_bias;  // [d_ff]
  std::vector<float> fc2_bias;  // [d_model]
};

// The patch kernel and the projection are converted to f32 and owned here, `patch_embed` and
// `projection` viewing them. Move-only, so those views never point at a copy's freed storage.
struct VisionWeights {
  VisionWeights() = default;
  VisionWeights(VisionWeights&&) = default;
  VisionWeights& operator=(VisionWeights&&) = default;
  VisionWeights(const VisionWeights&) = delete;
  VisionWeights& operator=(const VisionWeights&) = delete;

  // The conv kernel O,H,W,I read as [d_model, (h, w, c)]: a row dots a patch flattened (h, w, c).
  Weight patch_embed;             // f32 [d_model, patch_size*patch_size*3], views patch_f32
  std::vector<float> patch_bias;  // [d_model]
  Weight position_embed;          // quantized [n_patches, d_model]: one row per patch index
  std::vector<VisionLayer> layers;
  std::vector<float> post_ln_w, post_ln_b;  // [d_model]
  std::vector<float> soft_emb_norm;         // [d_model] mm_soft_emb_norm, applied as (1 + w)
  // mm_input_projection_weight [d_model, text d_model] transposed, so linear(x) computes x · W.
  Weight projection;  // f32 [text d_model, d_model], views projection_f32

  std::vector<float> patch_f32;       // [d_model, patch_size*patch_size*3]
  std::vector<float> projection_f32;  // [text d_model, d_model]
};

}  // namespace gp
