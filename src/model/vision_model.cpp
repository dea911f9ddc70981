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
  VisionEncoding e(*this, pixels);
  while (!e.done()) e.step();
  std::copy(e.output().begin(), e.output().end(), out);
}

VisionEncoding::VisionEncoding(const VisionModel& model, const float* pixels) : model_(model) {
  const VisionConfig& v = model.c_.vision;
  const int64_t p = v.patch_size, side = v.patches_per_side();
  const int64_t n = v.n_patches(), size = v.image_size, patch_len = p * p * 3;
  // Conv p x p stride p as a matrix product: patches [n_patches, p*p*3] row-major over the grid,
  // each flattened (h, w, c) like the O,H,W,I kernel's rows.
  patches_.resize(n * patch_len);
  for (int64_t pr = 0; pr < side; ++pr)
    for (int64_t pc = 0; pc < side; ++pc)
      for (int64_t h = 0; h < p; ++h)
        std::memcpy(&patches_[(pr * side + pc) * patch_len + h * p * 3],
                    pixels + ((pr * p + h) * size + pc * p) * 3, p * 3 * sizeof(float));
}

void VisionEncoding::step() {
  check(!done(), "the image encoding has ended");
  const int n_layers = static_cast<int>(model_.w_.layers.size());
  if (next_ == 0)
    embed();
  else if (next_ <= n_layers)
    layer(next_ - 1);
  else
    project();
  ++next_;
}

void VisionEncoding::embed() {
  const VisionModel& m = model_;
  const int64_t d = m.c_.vision.d_model, n = m.c_.vision.n_patches();
  x_.resize(n * d);
  xn_.resize(n * d);
  tmp_.resize(n * d);
  ops::linear_many({{&m.w_.patch_embed, x_.data(), m.w_.patch_bias.data()}}, patches_.data(), n,
                   ops::Activations::kF32);
  std::vector<float>().swap(patches_);
  for (int64_t t = 0; t < n; ++t) weight_row(m.w_.position_embed, t, &tmp_[t * d]);
  ops::add(x_.data(), tmp_.data(), n * d);
  if (m.observer_) m.observer_(-1, x_.data(), n);
  int64_t max_ff = 0;
  for (const auto& L : m.w_.layers) max_ff = std::max(max_ff, L.fc1.out);
  ff_.resize(n * max_ff);
}

void VisionEncoding::layer(size_t l) {
  const VisionModel& m = model_;
  const int64_t d = m.c_.vision.d_model, n = m.c_.vision.n_patches();
  const float eps = m.c_.vision.layer_norm_eps;
  const VisionLayer& L = m.w_.layers[l];
  float *x = x_.data(), *xn = xn_.data(), *tmp = tmp_.data(), *ff = ff_.data();
  // h = x + out(attn(LN1(x)))
  ops::layer_norm(x, L.ln1_w.data(), L.ln1_b.data(), n, d, eps, xn);
  m.attention_block(L, xn, tmp);
  ops::add(x, tmp, n * d);
  // x = h + fc2(gelu_tanh(fc1(LN2(h))))
  ops::layer_norm(x, L.ln2_w.data(), L.ln2_b.data(), n, d, eps, xn);
  ops::linear_many({{&L.fc1, ff, L.fc1_bias.data()}}, xn, n, m.act_);
  ops::gelu_tanh(ff, n * L.fc1.out);
  ops::linear_many({{&L.fc2, tmp, L.fc2_bias.data()}}, ff, n, m.act_);
  ops::add(x, tmp, n * d);
  if (m.observer_) m.observer_(static_cast<int>(l), x, n);
}

void VisionEncoding::project() {
  const VisionModel& m = model_;
  const VisionConfig& v = m.c_.vision;
  const int64_t d = v.d_model, side = v.patches_per_side(), n = v.n_patches();
  std::vector<float>().swap(xn_);
  std::vector<float>().swap(tmp_);
  std::vector<float>().swap(ff_);
  float* x = x_.data();
  ops::layer_norm(x, m.w_.post_ln_w.data(), m.w_.post_ln_b.data(), n, d, v.layer_norm_eps, x);
  if (m.observer_) m.observer_(v.n_layers, x, n);

  // Projector: average-pool k x k blocks of the patch grid (avg_pool2d), tokens row-major.
  const int64_t tok_side = token_side(m.c_), k = side / tok_side, n_tok = tok_side * tok_side;
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
  std::vector<float>().swap(x_);
  // mm_soft_emb_norm takes the vision config's epsilon (as transformers'
  // Gemma3MultiModalProjector).
  ops::rms_norm(pooled.data(), m.w_.soft_emb_norm.data(), n_tok, d, v.layer_norm_eps,
                pooled.data());
  out_.resize(n_tok * m.c_.text.d_model);
  ops::linear_many({{&m.w_.projection, out_.data()}}, pooled.data(), n_tok, ops::Activations::kF32);
}

}  // namespace gp
