// The Gemma 3 vision tower (SigLIP) and the multimodal projector of SPEC §3 "Vision": normalized
// pixels in, one soft token per pooled patch block out, in the text model's embedding space.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "io/model_dir.h"
#include "kernels/ops.h"
#include "model/config.h"
#include "model/tensor_table.h"
#include "tensor/weight.h"

namespace gp {

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

// Quantized and BF16 tensors are views into the mapped checkpoint (the ModelDir must outlive them);
// the patch kernel and the projection are converted to f32 and owned here, `patch_embed` and
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

// Loads and checks every vision and projector tensor against the config. Throws Error when the
// checkpoint has no vision tower, or when the position embedding's grid does not match
// vision_config.image_size / patch_size.
VisionWeights load_vision_weights(const ModelDir& dir, const ModelConfig& c,
                                  const TableLayout& layout);

class VisionModel {
 public:
  // act: activations of the 4-bit linears, as TextModel's.
  VisionModel(const ModelConfig& c, VisionWeights w,
              ops::Activations act = ops::Activations::kInt8);
  const ModelConfig& config() const { return c_; }
  const VisionWeights& weights() const { return w_; }

  // pixels [image_size, image_size, 3] (H, W, C), normalized; out [mm_tokens_per_image, text
  // d_model], tokens row-major over the pooled grid.
  void encode(const float* pixels, float* out) const;

  // Called with (stage, hidden states [n_patches, d_model]): stage -1 after the patch and position
  // embeddings, 0..n_layers-1 after each layer, n_layers after post_layernorm.
  using Observer = std::function<void(int stage, const float* x, int64_t n)>;
  void set_observer(Observer obs) { observer_ = std::move(obs); }

 private:
  void attention_block(const VisionLayer& L, const float* xn, float* out) const;

  ModelConfig c_;
  VisionWeights w_;
  Observer observer_;
  ops::Activations act_ = ops::Activations::kInt8;
};

}  // namespace gp
