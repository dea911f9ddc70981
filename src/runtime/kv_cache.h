// Keys and values of every layer of one sequence: global layers keep every position, local layers
// a ring of sliding_window (+ a little slack) slots. The cache converts rows to its dtype on
// append, computes slots, and counts positions; the forward pass sees it as a KvStore.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "model/config.h"
#include "model/kv_store.h"
#include "tensor/dtype.h"

namespace gp {

class KvCache final : public KvStore {
 public:
  // dtype: how keys and values are stored, F32 or F16 (half the memory, and half the bytes a
  // long-context decode step reads for attention).
  KvCache(const TextConfig& c, int max_context, DType dtype = DType::F32);
  // Bytes a cache of these settings allocates (what bytes() of it returns).
  static size_t bytes_for(const TextConfig& c, int max_context, DType dtype);

  int max_context() const override { return max_context_; }
  int n_past() const override { return n_past_; }
  DType dtype() const { return dtype_; }
  void clear() { truncate(0); }
  // Forgets positions >= n. Local layers keep a few slots beyond the window, so the cache can step
  // back a little; when a ring no longer holds the window before n, everything is dropped.
  // Returns the positions kept (n or 0).
  int truncate(int n);
  size_t bytes() const;
  // Bytes of keys and values the next decode step reads (every cached position it attends to).
  size_t bytes_attended() const;

  ops::KvSegment cached(int layer) const override;
  void append(int layer, const float* k, const float* v, int n) override;
  void commit(int n) override;
  // Keys and values of position `pos` in `layer` as f32, k and v [n_kv_heads, head_dim]; false
  // when the layer no longer (or not yet) holds that position.
  bool read(int layer, int pos, float* k, float* v) const;

 private:
  struct Layer {
    int capacity = 0;  // max_context (global) or a ring of fewer slots (local)
    // [n_kv_heads, capacity, head_dim] values of dtype_, untouched until written
    std::unique_ptr<std::byte[]> k, v;
    std::vector<int32_t> pos;  // [capacity] position in each slot, -1: empty
  };
  // Position p sits in slot p (global) or p % capacity (a ring).
  static int slot(const Layer& L, int pos) { return pos % L.capacity; }
  // True when every ring still holds the window of keys that position n attends to: a ring of
  // capacity C holds positions [n_past - C, n_past).
  bool ring_holds_window_before(int n) const;
  // Bytes of one position's keys and values in one layer.
  size_t position_bytes() const { return 2 * dtype_size(dtype_) * n_kv_heads_ * head_dim_; }
  // One head's head_dim values, f32 to dtype_ at `at` and back.
  void store(const float* x, std::byte* at) const;
  void load(const std::byte* at, float* x) const;
  size_t head_stride_bytes(const Layer& L) const {
    return static_cast<size_t>(L.capacity) * head_dim_ * dtype_size(dtype_);
  }

  std::vector<Layer> layers_;
  int max_context_ = 0, n_past_ = 0, n_kv_heads_ = 0, head_dim_ = 0, window_ = 0;
  DType dtype_ = DType::F32;
};

}  // namespace gp
