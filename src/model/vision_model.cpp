#include "model/vision_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "base/error.h"
#include "kernels/ops.h"

namespace gp {

namespace {

Weight f32_view(const std::vector<float>& data, int64_t out, int64_t in) {
  Weight w;
  w.out = out;
  w.in = in;
  w.data = data.data();
  w.dtype = DType::F32;
  return w;
}

// The side of the pooled token grid: mm_tokens_per_image is a square (parse_config checks it).
int token_side(const ModelConfig& c) {
  int s = 1;
  while (s * s < c.mm_tokens_per_image) ++s;
  return s;
}

// A clear message for the usual mismatch (a config from another variant: the 896 original has a
// 64x64 position grid, the 672 mobile one 48x48) instead of a bare shape difference.
void check_position_grid(const ModelDir& dir, const VisionConfig& v, const TensorSpec& spec) {
  const std::string name = names::weight(spec.name);
  const TensorInfo& t = dir.tensor(name);
  const int64_t rows = t.shape.empty() ? 0 : t.shape[0];
  if (rows == v.n_patches()) return;
  const int64_t s = std::llround(std::sqrt(static_cast<double>(rows)));
  const std::string grid = s * s == rows
                               ? "a " + std::to_string(s) + "x" + std::to_string(s) + " grid"
                               : "not a square grid";
  const std::string side = std::to_string(v.patches_per_side());
  throw Error(dir.path() + "/" + dir.file_of(name) + ": position_embedding has " +
              std::to_string(rows) + " rows (" + grid + ") but vision_config.image_size " +
              std::to_string(v.image_size) + " with patch_size " + std::to_string(v.patch_size) +
              " needs " + side + "x" + side + " = " + std::to_string(v.n_patches()) +
              " (config.json from another checkpoint?)");
}

}  // namespace

VisionWeights load_vision_weights(const ModelDir& dir, const ModelConfig& c,
                                  const TableLayout& layout) {
  if (!layout.vision) {
    TableLayout with_vision = layout;
    with_vision.vision = true;
    const auto table = tensor_table(c, with_vision);  // patch points into it
    const TensorSpec* patch = find_spec(table, &VisionWeights::patch_f32);
    throw Error(dir.path() + ": no vision tower (tensor '" + patch->name +
                "' is absent): a text-only checkpoint cannot encode images");
  }
  const VisionConfig& v = c.vision;
  VisionWeights w;
  w.layers.resize(v.n_layers);
  for_each_tensor(c, layout, [&](const TensorSpec& s) {
    if (!s.vision) return;
    if (s.is(&VisionWeights::position_embed)) check_position_grid(dir, v, s);
    load_tensor(dir, s, c.quant, nullptr, &w);
  });
  const int64_t d = v.d_model, p = v.patch_size, dt = c.text.d_model;
  // O,H,W,I is already [d_model, (h, w, c)]: the conv kernel is a plain matrix.
  w.patch_embed = f32_view(w.patch_f32, d, p * p * 3);
  // mm_input_projection_weight [d_model, text d_model] is used as x · W: store Wᵀ for linear.
  const std::vector<float> proj = std::move(w.projection_f32);
  w.projection_f32.resize(proj.size());
  for (int64_t i = 0; i < d; ++i)
    for (int64_t o = 0; o < dt; ++o) w.projection_f32[o * d + i] = proj[i * dt + o];
  w.projection = f32_view(w.projection_f32, dt, d);
  return w;
}

VisionModel::VisionModel(const ModelConfig& c, VisionWeights w, ops::Activations act)
    : c_(c), w_(std::move(w)), act_(act) {
  check(static_cast<int>(w_.layers.size()) == c_.vision.n_layers,
        "vision weights hold " + std::to_string(w_.layers.size()) + " layers, the config " +
            std::to_string(c_.vision.n_layers));
  check(w_.position_embed.out == c_.vision.n_patches(),
        "vision position embedding has " + std::to_string(w_.position_embed.out) +
            " rows, the config's image_size gives " + std::to_string(c_.vision.n_patches()) +
            " patches");
}

void VisionModel::attention_block(const VisionLayer& L, const float* xn, float* out) const {
  const VisionConfig& v = c_.vision;
  const int64_t n = v.n_patches(), d = v.d_model;
  const int hd = v.d_model / v.n_heads;
  std::vector<float> q(n * d), k(n * d), val(n * d), att(n * d);  // [n_patches, n_heads, head_dim]
  ops::linear_many({{&L.q_proj, q.data(), L.q_bias.data()},
                    {&L.k_proj, k.data(), L.k_bias.data()},
                    {&L.v_proj, val.data(), L.v_bias.data()}},
                   xn, n, act_);
  // Bidirectional: every patch sees every patch (no positions, no mask).
  const ops::KvSegment seg{k.data(), val.data(), n, d, hd, nullptr, nullptr};
  ops::attention(q.data(), n, v.n_heads, v.n_heads, hd, nullptr, nullptr, std::span(&seg, 1),
                 ops::AttentionMask{false, 0}, 1.0f / std::sqrt(static_cast<float>(hd)),
                 att.data());
  ops::linear_many({{&L.out_proj, out, L.out_bias.data()}}, att.data(), n, act_);
}

void VisionModel::encode(const float* pixels, float* out) const {
  const VisionConfig& v = c_.vision;
  const int64_t d = v.d_model, p = v.patch_size, side = v.patches_per_side();
  const int64_t n = v.n_patches(), size = v.image_size, patch_len = p * p * 3;
  const float eps = v.layer_norm_eps;

  // Conv p x p stride p as a matrix product: patches [n_patches, p*p*3] row-major over the grid,
  // each flattened (h, w, c) like the O,H,W,I kernel's rows.
  std::vector<float> patches(n * patch_len);
  for (int64_t pr = 0; pr < side; ++pr)
    for (int64_t pc = 0; pc < side; ++pc)
      for (int64_t h = 0; h < p; ++h)
        std::memcpy(&patches[(pr * side + pc) * patch_len + h * p * 3],
                    pixels + ((pr * p + h) * size + pc * p) * 3, p * 3 * sizeof(float));
  std::vector<float> x(n * d), xn(n * d), tmp(n * d);  // [n_patches, d_model]
  ops::linear_many({{&w_.patch_embed, x.data(), w_.patch_bias.data()}}, patches.data(), n,
                   ops::Activations::kF32);
  for (int64_t t = 0; t < n; ++t) weight_row(w_.position_embed, t, &tmp[t * d]);
  ops::add(x.data(), tmp.data(), n * d);
  if (observer_) observer_(-1, x.data(), n);

  int64_t max_ff = 0;
  for (const auto& L : w_.layers) max_ff = std::max(max_ff, L.fc1.out);
  std::vector<float> ff(n * max_ff);  // [n_patches, d_ff]
  for (size_t l = 0; l < w_.layers.size(); ++l) {
    const VisionLayer& L = w_.layers[l];
    // h = x + out(attn(LN1(x)))
    ops::layer_norm(x.data(), L.ln1_w.data(), L.ln1_b.data(), n, d, eps, xn.data());
    attention_block(L, xn.data(), tmp.data());
    ops::add(x.data(), tmp.data(), n * d);
    // x = h + fc2(gelu_tanh(fc1(LN2(h))))
    ops::layer_norm(x.data(), L.ln2_w.data(), L.ln2_b.data(), n, d, eps, xn.data());
    ops::linear_many({{&L.fc1, ff.data(), L.fc1_bias.data()}}, xn.data(), n, act_);
    ops::gelu_tanh(ff.data(), n * L.fc1.out);
    ops::linear_many({{&L.fc2, tmp.data(), L.fc2_bias.data()}}, ff.data(), n, act_);
    ops::add(x.data(), tmp.data(), n * d);
    if (observer_) observer_(static_cast<int>(l), x.data(), n);
  }
  ops::layer_norm(x.data(), w_.post_ln_w.data(), w_.post_ln_b.data(), n, d, eps, x.data());
  if (observer_) observer_(v.n_layers, x.data(), n);

  // Projector: average-pool k x k blocks of the patch grid (avg_pool2d), tokens row-major.
  const int64_t tok_side = token_side(c_), k = side / tok_side, n_tok = tok_side * tok_side;
  std::vector<float> pooled(n_tok * d, 0.0f);  // [mm_tokens_per_image, d_model]
  for (int64_t tr = 0; tr < tok_side; ++tr)
    for (int64_t tc = 0; tc < tok_side; ++tc) {
      float* o = &pooled[(tr * tok_side + tc) * d];
      for (int64_t a = 0; a < k; ++a)
        for (int64_t b = 0; b < k; ++b) {
          const float* src = &x[((tr * k + a) * side + tc * k + b) * d];
          for (int64_t i = 0; i < d; ++i) o[i] += src[i];
        }
      for (int64_t i = 0; i < d; ++i) o[i] /= static_cast<float>(k * k);
    }
  // mm_soft_emb_norm takes the vision config's epsilon (as transformers'
  // Gemma3MultiModalProjector).
  ops::rms_norm(pooled.data(), w_.soft_emb_norm.data(), n_tok, d, c_.vision.layer_norm_eps,
                pooled.data());
  ops::linear_many({{&w_.projection, out}}, pooled.data(), n_tok, ops::Activations::kF32);
}

}  // namespace gp
