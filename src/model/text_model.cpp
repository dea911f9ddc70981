#include "model/text_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "base/error.h"
#include "base/mapped_file.h"
#include "kernels/ops.h"
#include "tensor/dtype.h"

namespace gp {

TextWeights load_text_weights(const ModelDir& dir, const ModelConfig& c,
                              const TableLayout& layout) {
  const TextConfig& x = c.text;
  TextWeights w;
  w.layers.resize(x.n_layers);
  for (int l = 0; l < x.n_layers; ++l) {
    w.layers[l].is_global = x.is_global[l];
    w.layers[l].d_ff = x.layer_d_ff[l];
  }
  TableLayout text_only = layout;
  text_only.vision = false;
  for_each_tensor(c, text_only,
                  [&](const TensorSpec& s) { load_tensor(dir, s, c.quant, &w, nullptr); });
  if (layout.lm_head)
    check(w.lm_head.out == x.n_vocab || (layout.token_map && w.lm_head.out == w.embed.out),
          dir.path() + ": lm_head has " + std::to_string(w.lm_head.out) + " rows, expected " +
              std::to_string(x.n_vocab) + " (vocab_size) or the compact vocabulary");
  w.mapped = true;
  return w;
}

namespace {

// The layers' linears that this CPU's int8 kernels can read from a repacked copy
// (ops::repack_bytes), copied into one anonymous mapping in that layout, weight by weight; each
// weight's mapped nibble pages are dropped once its copy is written, so that the process holds one
// copy of the weights (the dropped pages come back from the file if anything reads them again,
// e.g. the f32 path). For the 4B model on a warm page cache: 0.3-0.4 s more load.
void repack_layers(TextWeights& w) {
  constexpr size_t kAlign = 64;
  std::vector<std::pair<Weight*, size_t>> todo;  // weight, offset
  size_t total = 0;
  for (TextLayer& L : w.layers) {
    for (Weight* lw : L.linears()) {
      const size_t bytes = ops::repack_bytes(*lw);
      if (bytes == 0) continue;
      todo.emplace_back(lw, total);
      total += (bytes + kAlign - 1) / kAlign * kAlign;
    }
  }
  if (todo.empty()) return;
  std::shared_ptr<uint8_t> copy = map_anonymous(total, "the repacked weights");
  for (const auto& [lw, offset] : todo) {
    ops::repack(*lw, copy.get() + offset);
    lw->vq = copy.get() + offset;
    release_pages(lw->q, static_cast<size_t>(lw->out * lw->in * lw->fmt.bits / 8));
  }
  w.repacked = std::move(copy);
}

}  // namespace

TextModel::TextModel(const ModelConfig& c, TextWeights w, ops::Activations act, bool repack)
    : c_(c), w_(std::move(w)), act_(act) {
  embed_scale_ = bf16_to_f32(f32_to_bf16(std::sqrt(static_cast<float>(c_.text.d_model))));
  if (repack && act_ == ops::Activations::kInt8 && w_.mapped && !w_.repacked) repack_layers(w_);
}

void TextModel::embed(int32_t id, float* out) const {
  const int64_t row = w_.token_map ? w_.token_map[id] : id;
  weight_row(w_.embed, row, out);
  for (int i = 0; i < c_.text.d_model; ++i) out[i] *= embed_scale_;
}

size_t TextModel::weight_bytes_per_token() const {
  size_t b = w_.embed.bytes() / w_.embed.out + (w_.lm_head.empty() ? w_.embed : w_.lm_head).bytes();
  for (const auto& L : w_.layers) {
    for (const Weight* w : L.linears()) b += w->bytes();
    b += 4 * (L.q_norm.size() + L.k_norm.size() + 4 * L.input_norm.size());
  }
  return b;
}

size_t TextModel::repacked_bytes() const {
  size_t b = 0;
  for (const auto& L : w_.layers)
    for (const Weight* w : L.linears()) b += w->vq ? w->bytes() : 0;
  return b;
}

std::vector<std::span<const uint8_t>> TextModel::weight_ranges_per_token() const {
  std::vector<std::span<const uint8_t>> out;
  auto add = [&](const Weight& w) {
    auto range = [&](const void* p, size_t n) {
      if (p && n) out.emplace_back(static_cast<const uint8_t*>(p), n);
    };
    if (!w.quantized) return range(w.data, w.bytes());
    const size_t groups = static_cast<size_t>(w.out * w.groups_per_row());
    if (w.vq) {
      range(w.vq, ops::repack_bytes(w));
    } else {
      range(w.q, static_cast<size_t>(w.out * w.in * w.fmt.bits / 8));
    }
    range(w.scales, groups * dtype_size(w.scale_dtype));
    range(w.biases, groups * dtype_size(w.scale_dtype));
  };
  for (const auto& L : w_.layers)
    for (const Weight* w : L.linears()) add(*w);
  add(w_.lm_head.empty() ? w_.embed : w_.lm_head);
  return out;
}

void TextModel::logits(const float* x, int64_t n, float* out) const {
  const int64_t n_vocab = c_.text.n_vocab;
  const Weight& head = w_.lm_head.empty() ? w_.embed : w_.lm_head;
  if (head.out == n_vocab && !(w_.token_map && w_.lm_head.empty())) {
    ops::linear_many({{&head, out}}, x, n, act_);
    return;
  }
  // A head over the compact vocabulary: logit[t] = compact[token_map[t]], pruned ids -inf.
  std::vector<float> compact(static_cast<size_t>(n) * head.out);  // [n, compact rows]
  ops::linear_many({{&head, compact.data()}}, x, n, act_);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t t = 0; t < n_vocab; ++t) {
      const int32_t row = w_.token_map[t];
      out[r * n_vocab + t] =
          row == 0 ? -std::numeric_limits<float>::infinity() : compact[r * head.out + row];
    }
}

void TextModel::attention_block(const TextLayer& L, int layer, const float* xn, int64_t n,
                                std::span<const SequenceRows> seqs, const int32_t* pos,
                                const int32_t* group, const float* rope, float* out) const {
  const TextConfig& x = c_.text;
  const int hd = x.head_dim, nh = x.n_heads, nkv = x.n_kv_heads;
  std::vector<float> q(n * nh * hd), k(n * nkv * hd), v(n * nkv * hd);  // [n, heads, head_dim]
  ops::linear_many({{&L.q_proj, q.data()}, {&L.k_proj, k.data()}, {&L.v_proj, v.data()}}, xn, n,
                   act_);
  ops::rms_norm(q.data(), L.q_norm.data(), n * nh, hd, x.rms_norm_eps, q.data());
  ops::rms_norm(k.data(), L.k_norm.data(), n * nkv, hd, x.rms_norm_eps, k.data());
  ops::rope(q.data(), n, nh, hd, rope);
  ops::rope(k.data(), n, nkv, hd, rope);

  // Each sequence attends to its cache and to its own new rows, then appends them.
  std::vector<float> att(n * nh * hd);  // [n, n_heads, head_dim]
  const ops::AttentionMask mask{true, L.is_global ? 0 : x.sliding_window};
  int64_t t0 = 0;
  for (const SequenceRows& s : seqs) {
    const int m = static_cast<int>(s.rows->ids.size());
    float *ks = &k[t0 * nkv * hd], *vs = &v[t0 * nkv * hd];
    const int32_t* g = group ? group + t0 : nullptr;
    ops::KvSegment segs[2] = {s.cache->cached(layer),
                              {ks, vs, m, nkv * hd, hd, pos + t0, g, DType::F32}};
    // The new rows as the cache will hold them: a query then reads the same keys and values
    // whether they are new in its batch or cached by an earlier step (batch invariance).
    if (segs[0].dtype == DType::F16) {
      std::vector<uint16_t> half(m * nkv * hd);
      for (float* x : {ks, vs}) {
        ops::f32_to_f16(x, m * nkv * hd, half.data());
        ops::f16_to_f32(half.data(), m * nkv * hd, x);
      }
    }
    const int first = segs[0].n > 0 ? 0 : 1;
    ops::attention(&q[t0 * nh * hd], m, nh, nkv, hd, pos + t0, g,
                   std::span(segs + first, 2 - first), mask,
                   1.0f / std::sqrt(x.query_pre_attn_scalar), &att[t0 * nh * hd]);
    s.cache->append(layer, ks, vs, m);
    t0 += m;
  }
  ops::linear_many({{&L.o_proj, out}}, att.data(), n, act_);
}

void TextModel::forward(std::span<const SequenceRows> seqs) const {
  const TextConfig& x = c_.text;
  const int64_t d = x.d_model;
  // Rows of every sequence in order: positions continue each cache, image groups stay per sequence.
  std::vector<int32_t> ids, pos, group;  // [n]
  std::vector<const float*> embeddings;  // [n]
  bool any_image = false;
  for (const SequenceRows& s : seqs) {
    const TextBatch& b = *s.rows;
    const int m = static_cast<int>(b.ids.size()), n_past = s.cache->n_past();
    check(n_past + m <= s.cache->max_context(), "prompt too long: " + std::to_string(n_past + m) +
                                                    " tokens exceed the context size of " +
                                                    std::to_string(s.cache->max_context()));
    for (int t = 0; t < m; ++t) {
      ids.push_back(b.ids[t]);
      pos.push_back(n_past + t);
      group.push_back(b.group.empty() ? -1 : b.group[t]);
      embeddings.push_back(b.embeddings.empty() ? nullptr : b.embeddings[t]);
      any_image |= group.back() >= 0;
    }
  }
  const int64_t n = static_cast<int64_t>(ids.size());
  std::vector<float> rope_local(n * x.head_dim), rope_global(n * x.head_dim);
  ops::rope_angles(pos.data(), n, x.head_dim, x.rope_local_base, 1.0f, rope_local.data());
  ops::rope_angles(pos.data(), n, x.head_dim, x.rope_global_base, x.rope_global_scale,
                   rope_global.data());

  std::vector<float> h(n * d), xn(n * d), tmp(n * d);  // [n, d_model]
  for (int64_t t = 0; t < n; ++t) {
    if (embeddings[t]) {
      std::memcpy(&h[t * d], embeddings[t], d * 4);  // image soft tokens are not scaled
    } else {
      check(ids[t] >= 0 && ids[t] < x.n_vocab, "token id " + std::to_string(ids[t]) +
                                                   " is outside the vocabulary of " +
                                                   std::to_string(x.n_vocab));
      embed(ids[t], &h[t * d]);
    }
  }
  if (observer_) observer_(-1, h.data(), n);

  int max_ff = 0;
  for (const auto& L : w_.layers) max_ff = std::max(max_ff, L.d_ff);
  std::vector<float> gate(n * max_ff), up(n * max_ff);  // [n, d_ff]
  for (size_t l = 0; l < w_.layers.size(); ++l) {
    const TextLayer& L = w_.layers[l];
    // h = h + post_attention_norm(attn(input_norm(h)))
    ops::rms_norm(h.data(), L.input_norm.data(), n, d, x.rms_norm_eps, xn.data());
    attention_block(L, static_cast<int>(l), xn.data(), n, seqs, pos.data(),
                    any_image ? group.data() : nullptr,
                    (L.is_global ? rope_global : rope_local).data(), tmp.data());
    ops::rms_norm(tmp.data(), L.post_attn_norm.data(), n, d, x.rms_norm_eps, tmp.data());
    ops::add(h.data(), tmp.data(), n * d);
    // h = h + post_feedforward_norm(down(gelu_tanh(gate(y)) * up(y))), y = pre_feedforward_norm(h)
    ops::rms_norm(h.data(), L.pre_ffw_norm.data(), n, d, x.rms_norm_eps, xn.data());
    ops::linear_many({{&L.gate_proj, gate.data()}, {&L.up_proj, up.data()}}, xn.data(), n, act_);
    if (mlp_observer_) {
      std::vector<float> act(gate.begin(), gate.begin() + n * L.d_ff);
      ops::gelu_tanh(act.data(), n * L.d_ff);
      mlp_observer_(static_cast<int>(l), act.data(), n, L.d_ff);
    }
    ops::gelu_tanh_mul(gate.data(), up.data(), n * L.d_ff, gate.data());
    ops::linear_many({{&L.down_proj, tmp.data()}}, gate.data(), n, act_);
    ops::rms_norm(tmp.data(), L.post_ffw_norm.data(), n, d, x.rms_norm_eps, tmp.data());
    ops::add(h.data(), tmp.data(), n * d);
    if (observer_) observer_(static_cast<int>(l), h.data(), n);
  }

  // Logits: the wanted rows of every sequence through the head at once, then back to each.
  std::vector<int64_t> rows;  // batch row of each logits row
  int64_t t0 = 0;
  for (const SequenceRows& s : seqs) {
    const int64_t m = static_cast<int64_t>(s.rows->ids.size());
    s.cache->commit(static_cast<int>(m));
    const int64_t k = s.logits ? std::min<int64_t>(s.n_logit_rows, m) : 0;
    for (int64_t r = m - k; r < m; ++r) rows.push_back(t0 + r);
    t0 += m;
  }
  if (rows.empty()) return;
  const int64_t n_out = static_cast<int64_t>(rows.size());
  for (int64_t r = 0; r < n_out; ++r)  // final norm of the wanted rows, packed
    ops::rms_norm(&h[rows[r] * d], w_.final_norm.data(), 1, d, x.rms_norm_eps, &xn[r * d]);
  const bool one = seqs.size() == 1;
  std::vector<float> all(one ? 0 : static_cast<size_t>(n_out) * x.n_vocab);  // [n_out, n_vocab]
  logits(xn.data(), n_out, one ? seqs[0].logits : all.data());
  if (one) return;
  int64_t r = 0;
  for (const SequenceRows& s : seqs) {
    const int64_t k = s.logits ? std::min<int64_t>(s.n_logit_rows, s.rows->ids.size()) : 0;
    std::copy(all.begin() + r * x.n_vocab, all.begin() + (r + k) * x.n_vocab, s.logits);
    r += k;
  }
}

}  // namespace gp
