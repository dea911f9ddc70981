#include "model/text_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "base/error.h"
#include "kernels/ops.h"
#include "tensor/dtype.h"

namespace gp {

namespace {
// Extra ring slots on local layers beyond the window, so a cache can step back this many tokens
// (a server request that rewrites the end of the previous one) without recomputing.
constexpr int kRewindSlack = 64;
}  // namespace

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
  return w;
}

KvCache::KvCache(const TextConfig& c, int max_context, DType dtype)
    : max_context_(max_context),
      n_kv_heads_(c.n_kv_heads),
      head_dim_(c.head_dim),
      window_(c.sliding_window),
      dtype_(dtype) {
  check(dtype == DType::F32 || dtype == DType::F16, "the KV cache holds F32 or F16 values");
  // 2^20 tokens is 8x Gemma 3's context; sizes below stay far from overflow with config bounds.
  check(max_context > 0 && max_context <= (1 << 20),
        "--ctx-size is " + std::to_string(max_context) + ", expected 1 to 1048576 tokens");
  for (int l = 0; l < c.n_layers; ++l) {
    Layer L;
    L.capacity =
        c.is_global[l] ? max_context : std::min(max_context, c.sliding_window + kRewindSlack);
    const size_t n = static_cast<size_t>(n_kv_heads_) * L.capacity * head_dim_ * dtype_size(dtype);
    L.k.reset(new std::byte[n]);  // not value-initialized: pages stay unmapped until used
    L.v.reset(new std::byte[n]);
    L.pos.assign(L.capacity, -1);
    layers_.push_back(std::move(L));
  }
}

void KvCache::clear() { truncate(0); }

int KvCache::truncate(int n) {
  n = std::clamp(n, 0, n_past_);
  if (!ring_holds_window_before(n)) n = 0;
  for (auto& L : layers_)
    for (auto& p : L.pos)
      if (p >= n) p = -1;
  n_past_ = n;
  return n;
}

bool KvCache::ring_holds_window_before(int n) const {
  const int oldest_needed = std::max(0, n - window_ + 1);
  for (const auto& L : layers_)
    if (L.capacity < max_context_ && oldest_needed < std::max(0, n_past_ - L.capacity))
      return false;
  return true;
}

size_t KvCache::bytes() const {
  size_t b = 0;
  for (const auto& L : layers_) b += position_bytes() * L.capacity;
  return b;
}

size_t KvCache::bytes_attended() const {
  size_t b = 0;
  for (const auto& L : layers_) b += position_bytes() * std::min(n_past_, L.capacity);
  return b;
}

TextModel::TextModel(const ModelConfig& c, TextWeights w) : c_(c), w_(std::move(w)) {
  embed_scale_ = bf16_to_f32(f32_to_bf16(std::sqrt(static_cast<float>(c_.text.d_model))));
}

void TextModel::embed(int32_t id, float* out) const {
  const int64_t row = w_.token_map ? w_.token_map[id] : id;
  weight_row(w_.embed, row, out);
  for (int i = 0; i < c_.text.d_model; ++i) out[i] *= embed_scale_;
}

size_t TextModel::weight_bytes_per_token() const {
  size_t b = w_.embed.bytes() / w_.embed.out + (w_.lm_head.empty() ? w_.embed : w_.lm_head).bytes();
  for (const auto& L : w_.layers) {
    for (const Weight* w :
         {&L.q_proj, &L.k_proj, &L.v_proj, &L.o_proj, &L.gate_proj, &L.up_proj, &L.down_proj})
      b += w->bytes();
    b += 4 * (L.q_norm.size() + L.k_norm.size() + 4 * L.input_norm.size());
  }
  return b;
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
                                int n_past, const int32_t* pos, const int32_t* group,
                                const float* rope, KvCache& cache, float* out) {
  const TextConfig& x = c_.text;
  const int hd = x.head_dim, nh = x.n_heads, nkv = x.n_kv_heads;
  std::vector<float> q(n * nh * hd), k(n * nkv * hd), v(n * nkv * hd);  // [n, heads, head_dim]
  ops::linear_many({{&L.q_proj, q.data()}, {&L.k_proj, k.data()}, {&L.v_proj, v.data()}}, xn, n,
                   act_);
  ops::rms_norm(q.data(), L.q_norm.data(), n * nh, hd, x.rms_norm_eps, q.data());
  ops::rms_norm(k.data(), L.k_norm.data(), n * nkv, hd, x.rms_norm_eps, k.data());
  ops::rope(q.data(), n, nh, hd, rope);
  ops::rope(k.data(), n, nkv, hd, rope);

  KvCache::Layer& C = cache.layers_[layer];
  const int64_t head_stride_c = static_cast<int64_t>(C.capacity) * hd;
  ops::KvSegment segs[2];
  int n_segs = 0;
  // Positions below n_past sit in slot pos (global) or pos % capacity (a ring): while the ring
  // is not full, its slots from n_past on hold nothing and are not read.
  const int n_cached = L.is_global ? n_past : std::min(n_past, C.capacity);
  if (n_cached > 0) {
    segs[n_segs++] = {C.k.get(),     C.v.get(),    n_cached, hd,
                      head_stride_c, C.pos.data(), nullptr,  cache.dtype_};
  }
  segs[n_segs++] = {k.data(), v.data(), n, nkv * hd, hd, pos, group, DType::F32};
  ops::AttentionMask mask{true, L.is_global ? 0 : x.sliding_window};
  std::vector<float> att(n * nh * hd);  // [n, n_heads, head_dim]
  ops::attention(q.data(), n, nh, nkv, hd, pos, group, std::span(segs, n_segs), mask,
                 1.0f / std::sqrt(x.query_pre_attn_scalar), att.data());
  // Append this batch's keys and values (positions are slots on global layers, a ring on local
  // ones).
  const size_t es = dtype_size(cache.dtype_);
  for (int64_t t = 0; t < n; ++t) {
    const int slot = L.is_global ? pos[t] : pos[t] % C.capacity;
    for (int h = 0; h < nkv; ++h) {
      const size_t at = (h * head_stride_c + slot * hd) * es;
      from_f32(cache.dtype_, k.data() + (t * nkv + h) * hd, hd, C.k.get() + at);
      from_f32(cache.dtype_, v.data() + (t * nkv + h) * hd, hd, C.v.get() + at);
    }
    C.pos[slot] = pos[t];
  }
  ops::linear_many({{&L.o_proj, out}}, att.data(), n, act_);
}

void TextModel::forward(const TextBatch& batch, KvCache& cache, float* logits_out,
                        int n_logit_rows) {
  const TextConfig& x = c_.text;
  const int64_t n = static_cast<int64_t>(batch.ids.size()), d = x.d_model;
  const int n_past = cache.n_past_;
  check(n_past + n <= cache.max_context(), "prompt too long: " + std::to_string(n_past + n) +
                                               " tokens exceed the context size of " +
                                               std::to_string(cache.max_context()));
  std::vector<int32_t> pos(n);
  for (int64_t t = 0; t < n; ++t) pos[t] = static_cast<int32_t>(n_past + t);
  const int32_t* group = batch.group.empty() ? nullptr : batch.group.data();
  std::vector<float> rope_local(n * x.head_dim), rope_global(n * x.head_dim);
  ops::rope_angles(pos.data(), n, x.head_dim, x.rope_local_base, 1.0f, rope_local.data());
  ops::rope_angles(pos.data(), n, x.head_dim, x.rope_global_base, x.rope_global_scale,
                   rope_global.data());

  std::vector<float> h(n * d), xn(n * d), tmp(n * d);  // [n, d_model]
  for (int64_t t = 0; t < n; ++t) {
    const float* e = batch.embeddings.empty() ? nullptr : batch.embeddings[t];
    if (e) {
      std::memcpy(&h[t * d], e, d * 4);  // image soft tokens are not scaled
    } else {
      check(batch.ids[t] >= 0 && batch.ids[t] < x.n_vocab,
            "token id " + std::to_string(batch.ids[t]) + " is outside the vocabulary of " +
                std::to_string(x.n_vocab));
      embed(batch.ids[t], &h[t * d]);
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
    attention_block(L, static_cast<int>(l), xn.data(), n, n_past, pos.data(), group,
                    (L.is_global ? rope_global : rope_local).data(), cache, tmp.data());
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
  cache.n_past_ = n_past + static_cast<int>(n);
  if (!logits_out) return;
  n_logit_rows = static_cast<int>(std::min<int64_t>(n_logit_rows, n));
  const float* last = h.data() + (n - n_logit_rows) * d;
  ops::rms_norm(last, w_.final_norm.data(), n_logit_rows, d, x.rms_norm_eps, xn.data());
  logits(xn.data(), n_logit_rows, logits_out);
}

}  // namespace gp
