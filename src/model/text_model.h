// The Gemma 3 text decoder of SPEC §3: weights as views into the mapped checkpoint, and the forward
// pass over a batch of tokens (prefill as matrix-matrix products, decode one token at a time).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "io/model_dir.h"
#include "kernels/ops.h"
#include "model/config.h"
#include "model/kv_store.h"
#include "model/tensor_table.h"
#include "model/weights.h"
#include "tensor/weight.h"

namespace gp {

// Loads and checks every text tensor against the config (shapes, dtypes, per-layer widths,
// token_map range). Maps only the files holding language tensors.
TextWeights load_text_weights(const ModelDir& dir, const ModelConfig& c, const TableLayout& layout);

// Rows of one sequence for the forward pass: token ids in the original vocabulary at positions
// n_past .. n_past+n-1 of its cache; rows with an image embedding use it instead of the token's.
struct TextBatch {
  std::vector<int32_t> ids;    // [n]
  std::vector<int32_t> group;  // [n] image id of each soft token, -1 otherwise; empty: none
  std::vector<const float*> embeddings;  // [n] per row: [d_model] to use, or null; empty: none
};

// One sequence's part of a forward over several: its rows, the cache they extend, and where the
// logits of its last n_logit_rows rows go ([n_logit_rows, n_vocab]; null: none wanted).
struct SequenceRows {
  const TextBatch* rows = nullptr;
  KvStore* cache = nullptr;
  float* logits = nullptr;
  int n_logit_rows = 0;
};

class TextModel {
 public:
  // act: how the linears treat activations. kInt8 (the default, as llama.cpp's 4-bit formats
  // do): each row is quantized to int8 per group of 64 and multiplied by the nibbles with integer
  // multiply-adds, faster prefill and decode; kF32: exact f32 products, which the float reference
  // matches to 1e-3. repack (int8 only): copy the layers' linears whose kernels read another
  // layout faster on this CPU into that layout (ops::repack_bytes), one copy in memory.
  TextModel(const ModelConfig& c, TextWeights w, ops::Activations act = ops::Activations::kInt8,
            bool repack = false);
  const ModelConfig& config() const { return c_; }
  const TextWeights& weights() const { return w_; }
  ops::Activations activations() const { return act_; }

  // Runs the rows of several sequences as one batch: the linears once over all rows (the weights
  // read once), attention of each sequence over its own cache, to which its keys and values are
  // appended. Each sequence appears once; its caches are distinct.
  void forward(std::span<const SequenceRows> seqs) const;
  // One sequence. When logits is non-null it receives [n_logit_rows, n_vocab] for the last
  // n_logit_rows rows of the batch.
  void forward(const TextBatch& batch, KvStore& cache, float* logits, int n_logit_rows = 1) const {
    const SequenceRows s{&batch, &cache, logits, logits ? n_logit_rows : 0};
    forward(std::span(&s, 1));
  }

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

  // Weight bytes one decode step reads: every layer, the output head and one embedding row.
  size_t weight_bytes_per_token() const;
  // The bytes of the layers' linears that the load repacked (Weight::vq), 0 without --repack.
  size_t repacked_bytes() const;
  // Where those bytes lie (the linears' nibbles, scales and biases, or float data, as mapped), for
  // a bandwidth probe over the same pages.
  std::vector<std::span<const uint8_t>> weight_ranges_per_token() const;

 private:
  // xn [n, d_model] holds the rows of every sequence, seqs in order; pos, group [n] (group null:
  // no images); rope: the RoPE table (ops::rope_angles) of this layer's kind, local or global.
  void attention_block(const TextLayer& L, int layer, const float* xn, int64_t n,
                       std::span<const SequenceRows> seqs, const int32_t* pos, const int32_t* group,
                       const float* rope, float* out) const;

  ModelConfig c_;
  TextWeights w_;
  float embed_scale_;
  ops::Activations act_ = ops::Activations::kInt8;
  Observer observer_;
  MlpObserver mlp_observer_;
};

}  // namespace gp
