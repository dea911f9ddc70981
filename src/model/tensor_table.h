// The one tensor table: every tensor of a Gemma 3 checkpoint with its name, expected logical
// shape, dtype rule and the field of the weight structs (weights.h) it binds to. Loading,
// gemma-synth, the compressor and any inspector walk this list (for_each_tensor) and refer to a
// tensor by its field; nothing else spells tensor names. Adding a tensor is one entry here (plus
// the field it fills in weights.h, and its use in the forward pass).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <variant>
#include <vector>

#include "io/model_dir.h"
#include "model/config.h"
#include "model/weights.h"
#include "tensor/weight.h"

namespace gp {

// The stored tensors of an entry and their dtype rule.
enum class TensorRole {
  Linear,    // NAME.weight (+ NAME.scales, NAME.biases when quantized) (+ NAME.bias when has_bias):
             // U32 [out, in*bits/32] with float scales/biases of one dtype, or a float [out, in]
  Vector,    // NAME: a float vector or matrix (BF16, F16 or F32) stored as is
  TokenMap,  // NAME: I32 [n_vocab]
};

// How the forward pass applies a Vector (and so which values gemma-synth draws for it).
enum class VectorUse {
  RmsNorm,     // Gemma's RMSNorm weight, scales by (1 + w)
  LayerNorm,   // SigLIP's LayerNorm weight, scales by w
  Bias,        // added
  Kernel,      // a conv kernel [out, ...]: each output sums over the other dimensions
  Projection,  // a matrix [in, out] used as x · W: each output sums over the first dimension
};

// The field an entry binds to: a member of TextWeights, of a TextLayer, of VisionWeights or of a
// VisionLayer (the layer is TensorSpec::layer).
using TensorField = std::variant<std::monostate, Weight TextWeights::*,
                                 std::vector<float> TextWeights::*, const int32_t * TextWeights::*,
                                 Weight TextLayer::*, std::vector<float> TextLayer::*,
                                 Weight VisionWeights::*, std::vector<float> VisionWeights::*,
                                 Weight VisionLayer::*, std::vector<float> VisionLayer::*>;

struct TensorSpec {
  std::string name;  // e.g. "language_model.model.layers.3.mlp.down_proj"
  TensorRole role = TensorRole::Linear;
  std::vector<int64_t> shape;  // Linear: logical [out, in]; others: the stored shape
  bool quantized = true;  // Linear: how the original 4B checkpoint stores it (synth writes it so)
  bool must_quantize = false;          // Linear: a float matrix is refused
  bool has_bias = false;               // Linear with a NAME.bias vector [out]
  bool vision = false;                 // part of the vision tower or projector
  VectorUse use = VectorUse::RmsNorm;  // Vector only
  int64_t index_limit = 0;             // TokenMap: every value lies in [0, index_limit)
  int layer = -1;                      // text or vision layer of a per-layer field; -1: none
  TensorField field;                   // where the tensor loads to
  TensorField bias_field;              // has_bias: where NAME.bias loads to

  // True when the entry binds to `member` (of any layer).
  template <class Member>
  bool is(Member member) const {
    return field == TensorField(member);
  }
};

// What a particular checkpoint holds beyond the config (read from the files, or chosen by a
// writer).
struct TableLayout {
  bool lm_head = true;         // false: tied to the embedding
  int64_t head_rows = 0;       // rows of lm_head (n_vocab, or the compact vocabulary)
  bool token_map = false;      // compact embedding + token_map
  bool fc2_quantized = false;  // vision fc2 quantized (the compressed variants)
  bool vision = true;          // include the vision tower and projector
  int64_t embed_rows = 0;      // rows of the stored embedding (0 when absent)
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
// The file of a split checkpoint (SPEC §5 step 6) holding the vision or the language tensors.
std::string split_file(bool vision);
}  // namespace names

// Rows of the embedding: the compact vocabulary when there is a token_map, else n_vocab.
int64_t embedding_rows(const ModelConfig& c, const TableLayout& layout);

// Calls visit(entry) for every tensor of the model, in checkpoint order: the embedding, token map,
// lm_head, the text layers, the final norm, then (layout.vision) the vision tower and projector.
void for_each_tensor(const ModelConfig& c, const TableLayout& layout,
                     const std::function<void(const TensorSpec&)>& visit);
// The entries of for_each_tensor, in order.
std::vector<TensorSpec> tensor_table(const ModelConfig& c, const TableLayout& layout);
// The entry of `table` bound to `field` (in `layer` for a per-layer field), or null.
const TensorSpec* find_spec(const std::vector<TensorSpec>& table, const TensorField& field,
                            int layer = -1);

// Reads the layout of an existing checkpoint (lm_head present, token_map present, fc2 quantized).
TableLayout detect_layout(const ModelDir& dir);

// Checks a Linear spec's tensors in `dir` (dtype, shapes of weight/scales/biases against the
// logical [out, in] and the config's group size) and returns a view of them. Throws Error naming
// the tensor, the expected and the found shape.
Weight load_linear(const ModelDir& dir, const TensorSpec& spec, QuantFormat fmt);
// A float vector/matrix tensor with the expected shape, converted to f32.
std::vector<float> load_floats(const ModelDir& dir, const std::string& name,
                               const std::vector<int64_t>& shape);
// A TokenMap spec's I32 values, checked to lie in [0, spec.index_limit) (reads all of them).
const int32_t* load_token_map(const ModelDir& dir, const TensorSpec& spec);
// The checks of loading that read only the headers (dtypes, shapes), for every stored tensor of
// a spec. Throws Error.
void check_tensor(const ModelDir& dir, const TensorSpec& spec, QuantFormat fmt);
// Loads a spec's stored tensors, checked, into its fields: in `text` for a text entry, in `vision`
// for a vision one (which must be non-null; layers already sized).
void load_tensor(const ModelDir& dir, const TensorSpec& spec, QuantFormat fmt, TextWeights* text,
                 VisionWeights* vision);
// The storage tensor names of a spec (weight/scales/biases/bias for linears), as present in `dir`.
std::vector<std::string> stored_names(const TensorSpec& spec, bool quantized);
// The stored tensors of an MLX-quantized linear NAME with logical shape [out, in] (SPEC §2):
// NAME.weight U32 [out, in*bits/32], NAME.scales and NAME.biases [out, in/group_size] in
// `scale_dtype`.
std::vector<SafeTensorsWriter::Entry> quantized_entries(const std::string& name, int64_t out,
                                                        int64_t in, QuantFormat fmt,
                                                        DType scale_dtype);

}  // namespace gp
