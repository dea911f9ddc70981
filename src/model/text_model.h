// The Gemma 3 text decoder of SPEC §3: weights as views into the mapped checkpoint, and the forward
// pass over a batch of tokens (prefill as matrix-matrix products, decode one token at a time).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "io/model_dir.h"
#include "kernels/ops.h"
#include "model/config.h"
#include "model/tensor_table.h"
#include "model/weights.h"
#include "tensor/weight.h"

namespace gp {

// Loads and checks every text tensor against the config (shapes, dtypes, per-layer widths,
// token_map range). Maps only the files holding language tensors.
TextWeights load_text_weights(const ModelDir& dir, const ModelConfig& c, const TableLayout& layout);

// Keys and values of every layer: global layers keep every position, local layers a ring of
// sliding_window slots. K and V are [n_kv_heads][capacity][head_dim]; pos[slot] < 0 marks empty.
class KvCache {
 public:
  // dtype: how keys and values are stored, F32 or F16 (half the memory, and half the bytes a
  // long-context decode step reads for attention).
  KvCache(const TextConfig& c, int max_context, DType dtype = DType::F32);
  int max_context() const { return max_context_; }
  int n_past() const { return n_past_; }
  void clear();
  // Forgets positions >= n. Local layers keep a few slots beyond the window, so the cache can step
  // back a little; when a ring no longer holds the window before n, everything is dropped.
  // Returns the positions kept (n or 0).
  int truncate(int n);
  size_t bytes() const;
  // Bytes of keys and values the next decode step reads (every cached position it attends to).
  size_t bytes_attended() const;

 private:
  friend class TextModel;
  struct Layer {
    int capacity = 0;
    // [n_kv_heads, capacity, head_dim] values of dtype_, untouched until written
    std::unique_ptr<std::byte[]> k, v;
    std::vector<int32_t> pos;  // [capacity]
  };
  // True when every ring still holds the window of keys that position n attends to: a ring of
  // capacity C holds positions [n_past - C, n_past).
  bool ring_holds_window_before(int n) const;
  // Bytes of one position's keys and values in one layer.
  size_t position_bytes() const { return 2 * dtype_size(dtype_) * n_kv_heads_ * head_dim_; }

  std::vector<Layer> layers_;
  int max_context_ = 0, n_past_ = 0, n_kv_heads_ = 0, head_dim_ = 0, window_ = 0;
  DType dtype_ = DType::F32;
};

// One batch for the forward pass: token ids in the original vocabulary at positions
// n_past .. n_past+n-1; rows with an image embedding use it instead of the token's embedding.
struct TextBatch {
  std::vector<int32_t> ids;    // [n]
  std::vector<int32_t> group;  // [n] image id of each soft token, -1 otherwise; empty: none
  std::vector<const float*> embeddings;  // [n] per row: [d_model] to use, or null; empty: none
};

class TextModel {
 public:
  TextModel(const ModelConfig& c, TextWeights w);
  const ModelConfig& config() const { return c_; }
  const TextWeights& weights() const { return w_; }

  // Runs the batch, appending its keys and values to the cache. When logits is non-null it
  // receives [n_logit_rows, n_vocab] for the last n_logit_rows rows of the batch.
  void forward(const TextBatch& batch, KvCache& cache, float* logits, int n_logit_rows = 1);

  // Called with (layer, residual stream [n, d_model]) after each layer, and with layer -1 for the
  // scaled embeddings: lets tests and the profiler observe intermediates.
  using Observer = std::function<void(int layer, const float* x, int64_t n)>;
  void set_observer(Observer obs) { observer_ = std::move(obs); }
  // Called with (layer, gelu(gate) activations [n, d_ff]) in every MLP; used by neuron profiling.
  using MlpObserver = std::function<void(int layer, const float* act, int64_t n, int d_ff)>;
  void set_mlp_observer(MlpObserver obs) { mlp_observer_ = std::move(obs); }

  // Embedding of one token id (original vocabulary), scaled by sqrt(d_model) rounded to bf16.
  void embed(int32_t id, float* out) const;
  // Logits over the full vocabulary from final hidden states x [n, d_model].
  void logits(const float* x, int64_t n, float* out) const;
  // How the linears treat activations. kInt8 (the default, as llama.cpp's 4-bit formats do):
  // each row is quantized to int8 per group of 64 and multiplied by the nibbles with integer
  // multiply-adds, about 1.6x faster prefill and 1.3x faster decode; kF32: exact f32 products,
  // which the float reference matches to 1e-3.
  void set_activations(ops::Activations a) { act_ = a; }
  ops::Activations activations() const { return act_; }

  // Weight bytes one decode step reads: every layer, the output head and one embedding row.
  size_t weight_bytes_per_token() const;

 private:
  // rope: the RoPE table (ops::rope_angles) of this layer's kind, local or global.
  void attention_block(const TextLayer& L, int layer, const float* xn, int64_t n, int n_past,
                       const int32_t* pos, const int32_t* group, const float* rope, KvCache& cache,
                       float* out);

  ModelConfig c_;
  TextWeights w_;
  float embed_scale_;
  ops::Activations act_ = ops::Activations::kInt8;
  Observer observer_;
  MlpObserver mlp_observer_;
};

}  // namespace gp
