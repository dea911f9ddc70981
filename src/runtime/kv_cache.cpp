#include "runtime/kv_cache.h"

#include <algorithm>
#include <string>

#include "base/error.h"
#include "kernels/ops.h"

namespace gp {

namespace {
// Extra ring slots on local layers beyond the window, so a cache can step back this many tokens
// (a server request that rewrites the end of the previous one) without recomputing.
constexpr int kRewindSlack = 64;

int layer_capacity(const TextConfig& c, int layer, int max_context) {
  return c.is_global[layer] ? max_context : std::min(max_context, c.sliding_window + kRewindSlack);
}
}  // namespace

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
    L.capacity = layer_capacity(c, l, max_context);
    const size_t n = static_cast<size_t>(n_kv_heads_) * L.capacity * head_dim_ * dtype_size(dtype);
    L.k.reset(new std::byte[n]);  // not value-initialized: pages stay unmapped until used
    L.v.reset(new std::byte[n]);
    L.pos.assign(L.capacity, -1);
    layers_.push_back(std::move(L));
  }
}

size_t KvCache::bytes_for(const TextConfig& c, int max_context, DType dtype) {
  size_t b = 0;
  for (int l = 0; l < c.n_layers; ++l)
    b += 2 * dtype_size(dtype) * static_cast<size_t>(c.n_kv_heads) * c.head_dim *
         layer_capacity(c, l, max_context);
  return b;
}

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

ops::KvSegment KvCache::cached(int layer) const {
  const Layer& L = layers_[layer];
  // While a ring is not full, its slots from n_past on hold nothing and are not read.
  const int n = std::min(n_past_, L.capacity);
  const int64_t head_stride = static_cast<int64_t>(L.capacity) * head_dim_;
  return {L.k.get(), L.v.get(), n, head_dim_, head_stride, L.pos.data(), nullptr, dtype_};
}

void KvCache::store(const float* x, std::byte* at) const {
  if (dtype_ == DType::F16) return ops::f32_to_f16(x, head_dim_, at);
  from_f32(dtype_, x, head_dim_, at);
}

void KvCache::load(const std::byte* at, float* x) const {
  if (dtype_ == DType::F16) return ops::f16_to_f32(at, head_dim_, x);
  to_f32(dtype_, at, head_dim_, x);
}

void KvCache::append(int layer, const float* k, const float* v, int n) {
  Layer& L = layers_[layer];
  const size_t es = dtype_size(dtype_);
  for (int t = 0; t < n; ++t) {
    const int p = n_past_ + t, s = slot(L, p);
    for (int h = 0; h < n_kv_heads_; ++h) {
      const size_t at = h * head_stride_bytes(L) + static_cast<size_t>(s) * head_dim_ * es;
      const size_t row = (static_cast<size_t>(t) * n_kv_heads_ + h) * head_dim_;
      store(k + row, L.k.get() + at);
      store(v + row, L.v.get() + at);
    }
    L.pos[s] = p;
  }
}

void KvCache::commit(int n) {
  check(n >= 0 && n_past_ + n <= max_context_,
        "context full: " + std::to_string(max_context_) + " tokens (see --ctx-size)");
  n_past_ += n;
}

bool KvCache::read(int layer, int pos, float* k, float* v) const {
  const Layer& L = layers_[layer];
  if (pos < 0 || pos >= max_context_ || L.pos[slot(L, pos)] != pos) return false;
  const size_t es = dtype_size(dtype_);
  for (int h = 0; h < n_kv_heads_; ++h) {
    const size_t at = h * head_stride_bytes(L) + static_cast<size_t>(slot(L, pos)) * head_dim_ * es;
    load(L.k.get() + at, k + static_cast<size_t>(h) * head_dim_);
    load(L.v.get() + at, v + static_cast<size_t>(h) * head_dim_);
  }
  return true;
}

}  // namespace gp
