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
#include "model/weights.h"
#include "tensor/weight.h"

namespace gp {

// Loads and checks every vision and projector tensor against the config. Throws Error when the
// checkpoint has no vision tower, or when the position embedding's grid does not match
// vision_config.image_size / patch_size.
VisionWeights load_vision_weights(const ModelDir& dir, const ModelConfig& c,
                                  const TableLayout& layout);

class VisionEncoding;

class VisionModel {
 public:
  // act: activations of the 4-bit linears, as TextModel's.
  VisionModel(const ModelConfig& c, VisionWeights w,
              ops::Activations act = ops::Activations::kInt8);
  const ModelConfig& config() const { return c_; }
  const VisionWeights& weights() const { return w_; }

  // pixels [image_size, image_size, 3] (H, W, C), normalized; out [mm_tokens_per_image, text
  // d_model], tokens row-major over the pooled grid. Runs every step of a VisionEncoding.
  void encode(const float* pixels, float* out) const;

  // Called with (stage, hidden states [n_patches, d_model]): stage -1 after the patch and position
  // embeddings, 0..n_layers-1 after each layer, n_layers after post_layernorm.
  using Observer = std::function<void(int stage, const float* x, int64_t n)>;
  void set_observer(Observer obs) { observer_ = std::move(obs); }

 private:
  friend class VisionEncoding;
  void attention_block(const VisionLayer& L, const float* xn, float* out) const;

  ModelConfig c_;
  VisionWeights w_;
  Observer observer_;
  ops::Activations act_ = ops::Activations::kInt8;
};

// One image's encoding in steps, so that a caller (the server's generation loop) can run other
// work between them: the patch embedding, then one encoder layer per step, then post_layernorm,
// pooling and projection. The steps are VisionModel::encode's code in its order: the result is
// bitwise the same. Holds the activations of one image ([n_patches, d_model] x 3 and
// [n_patches, d_ff]), freed when the last step ends or the encoding is destroyed.
class VisionEncoding {
 public:
  // pixels as VisionModel::encode's (copied: the caller may free them); the model must outlive
  // the encoding.
  VisionEncoding(const VisionModel& model, const float* pixels);
  int n_steps() const { return static_cast<int>(model_.w_.layers.size()) + 2; }
  int steps_done() const { return next_; }
  bool done() const { return next_ == n_steps(); }
  // Runs the next step.
  void step();
  // When done: [mm_tokens_per_image, text d_model], as VisionModel::encode's out.
  std::vector<float>& output() { return out_; }

 private:
  void embed();
  void layer(size_t l);
  void project();

  const VisionModel& model_;
  int next_ = 0;                     // steps run
  std::vector<float> patches_;       // [n_patches, patch_size^2 * 3] until the embedding ran
  std::vector<float> x_, xn_, tmp_;  // [n_patches, d_model]
  std::vector<float> ff_;            // [n_patches, max d_ff]
  std::vector<float> out_;           // [mm_tokens_per_image, text d_model]
};

}  // namespace gp
