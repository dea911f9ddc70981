// The one tensor table: every tensor name of a Gemma 3 checkpoint with its expected logical shape.
// The loader, the compressor, gemma-synth and any inspector read this list; nothing else spells
// tensor names.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/model_dir.h"
#include "model/config.h"
#include "tensor/weight.h"

namespace gp {

enum class TensorRole {
  Linear,    // NAME.weight (+ NAME.scales, NAME.biases when quantized) (+ NAME.bias when has_bias)
  Vector,    // NAME (a float vector or matrix stored as is)
  TokenMap,  // NAME, I32 [n_vocab]
};

struct TensorSpec {
  std::string name;  // e.g. "language_model.model.layers.3.mlp.down_proj"
  TensorRole role = TensorRole::Linear;
  std::vector<int64_t> shape;  // Linear: logical [out, in]; others: the stored shape
  bool quantized = true;       // how the original 4B checkpoint stores it (Linear only)
  bool has_bias = false;       // Linear with a NAME.bias vector
  bool vision = false;         // part of the vision tower or projector
};

// What a particular checkpoint holds beyond the config (read from the files, or chosen by a
// writer).
struct TableLayout {
  bool lm_head = true;         // false: tied to the embedding
  int64_t head_rows = 0;       // rows of lm_head (n_vocab, or the compact vocabulary)
  bool token_map = false;      // compact embedding + token_map
  bool fc2_quantized = false;  // vision fc2 quantized (the compressed variants)
  bool vision = true;          // include the vision tower and projector
};

// Names, shared by every user of the table.
namespace names {
std::string text(const std::string& rest);  // "language_model.<rest>"
std::string text_layer(int layer, const std::string& rest);
std::string vision(const std::string& rest);  // "vision_tower.vision_model.<rest>"
std::string vision_layer(int layer, const std::string& rest);
std::string projector(const std::string& rest);  // "multi_modal_projector.<rest>"
inline std::string weight(const std::string& n) { return n + ".weight"; }
inline std::string scales(const std::string& n) { return n + ".scales"; }
inline std::string biases(const std::string& n) { return n + ".biases"; }
inline std::string bias(const std::string& n) { return n + ".bias"; }
// The inverse of text_layer: true when `name` is "language_model.model.layers.<layer>.<rest>".
bool parse_text_layer(const std::string& name, int* layer, std::string* rest);
// True for tensors of the vision tower and the projector (the vision file of a split checkpoint).
bool is_vision(const std::string& name);
}  // namespace names

// Rows of the embedding: the compact vocabulary when there is a token_map, else n_vocab.
int64_t embedding_rows(const ModelConfig& c, const TableLayout& layout);

std::vector<TensorSpec> tensor_table(const ModelConfig& c, const TableLayout& layout);

// Reads the layout of an existing checkpoint (lm_head present, token_map present, fc2 quantized).
TableLayout detect_layout(const ModelDir& dir);

// Checks a Linear spec's tensors in `dir` (dtype, shapes of weight/scales/biases against the
// logical [out, in] and the config's group size) and returns a view of them. Throws Error naming
// the tensor, the expected and the found shape.
Weight load_linear(const ModelDir& dir, const TensorSpec& spec, QuantFormat fmt);
// A float vector/matrix tensor with the expected shape, converted to f32.
std::vector<float> load_floats(const ModelDir& dir, const std::string& name,
                               const std::vector<int64_t>& shape);
// The storage tensor names of a spec (weight/scales/biases/bias for linears), as present in `dir`.
std::vector<std::string> stored_names(const TensorSpec& spec, bool quantized);

}  // namespace gp
