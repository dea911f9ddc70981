// Checkpoint rewriting, the machinery under every compression step: an input checkpoint opened and
// checked against the tensor table, and a streaming writer that produces a complete output
// checkpoint one tensor at a time (read, transform, write, drop the input pages) into a temporary
// directory that is renamed into place only when everything is written and checked.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/sys.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/model_files.h"
#include "model/tensor_table.h"
#include "tensor/weight.h"

namespace gp::prune {

// A checkpoint opened for rewriting. Tensors stay memory-mapped and are read on demand.
class Checkpoint {
 public:
  // Opens the directory (ModelFiles) and checks every tensor of the table (names, dtypes, shapes)
  // against its config.
  // Throws Error when the directory is not a Gemma 3 checkpoint or its files disagree.
  explicit Checkpoint(const std::string& dir);

  const ModelFiles& files() const { return files_; }
  const std::string& path() const { return files_.path(); }
  const ModelDir& dir() const { return files_.dir(); }
  const nlohmann::ordered_json& config_json() const { return files_.config_json(); }
  const ModelConfig& config() const { return files_.config(); }
  const TableLayout& layout() const { return files_.layout(); }
  const std::vector<TensorSpec>& table() const { return table_; }
  const TensorSpec& spec(const std::string& name) const;  // a table entry; asserts it exists
  bool has_spec(const std::string& name) const { return spec_index_.count(name) != 0; }
  bool quantized(const TensorSpec& spec) const;  // stored with scales (whatever the table default)
  Weight linear(const TensorSpec& spec) const;   // view of a linear's stored tensors
  std::vector<std::string> stored(const TensorSpec& spec) const;  // its stored tensor names
  DType scale_dtype() const;  // float dtype of the quantization scales (embed_tokens')
  bool has_index() const { return has_index_; }
  uint64_t file_bytes() const;  // total size of the safetensors files
  // Stored tensors that belong to no table entry (copied through unchanged unless a step says).
  const std::vector<std::string>& extra_tensors() const { return extras_; }

 private:
  ModelFiles files_;
  std::vector<TensorSpec> table_;
  std::map<std::string, size_t> spec_index_;
  std::vector<std::string> extras_;
  bool has_index_ = false;
};

// Drops the pages of a mapped input tensor from this process's resident set (release_pages):
// keeps a streaming pass's memory flat.
using gp::release_pages;
inline void release_pages(const TensorInfo& t) { release_pages(t.data, t.nbytes); }

// Asks running rewrites to stop (from a signal handler): the next write throws Error, which
// removes the temporary output like any other failure.
void request_cancel();
bool cancel_requested();

// Receives the bytes of one output group, in the order of its entries.
class TensorSink {
 public:
  TensorSink(SafeTensorsWriter& writer, Progress& progress, uint64_t& done, std::string label)
      : writer_(writer), progress_(progress), done_(done), label_(std::move(label)) {}
  void write(const void* data, size_t nbytes);
  // Streams an input tensor's bytes unchanged, dropping its pages as it goes.
  void copy(const TensorInfo& t);
  uint64_t written() const { return written_; }

 private:
  SafeTensorsWriter& writer_;
  Progress& progress_;
  uint64_t& done_;
  std::string label_;
  uint64_t written_ = 0;
};

// One tensor of the output model (a linear's weight/scales/biases/bias, or one plain tensor):
// `write` produces the bytes of `entries`, in order.
struct OutGroup {
  std::string file;  // output shard, relative to the checkpoint directory
  std::vector<SafeTensorsWriter::Entry> entries;
  std::function<void(TensorSink&)> write;
  uint64_t bytes() const;
};

// Everything a step writes.
struct OutputPlan {
  nlohmann::ordered_json config;
  // Side files written from JSON instead of copied (preprocessor_config.json, ...).
  std::map<std::string, nlohmann::ordered_json> side_json;
  std::vector<OutGroup> groups;  // shards are written in order of first appearance
  bool index = false;            // write model.safetensors.index.json
};

struct WriteOptions {
  bool progress = false;
  std::string label = "write";
  bool replace = false;  // replace an existing out_dir (only once the new one is complete)
};

// Writes the plan as a checkpoint directory: tensors, config.json, the index, and every other
// file of the input (tokenizer, chat template, generation and preprocessor configs) copied or
// replaced by `side_json`. Everything goes to out_dir.tmp-XXXXXX, which is opened as a Checkpoint
// to check it, then renamed to out_dir. Throws Error (out_dir exists without `replace`, a write
// fails, ...), leaving no temporary files behind.
void write_checkpoint(const Checkpoint& in, const OutputPlan& plan, const std::string& out_dir,
                      const WriteOptions& options);

// ---- Output groups built from input tensors (`file` is the output shard).

// The shard an input tensor lives in.
std::string source_file(const Checkpoint& in, const std::string& stored_name);

// A table entry's stored tensors copied unchanged under a new name (`out_name` replaces the spec's
// name as the prefix of every stored tensor).
OutGroup copy_spec(const Checkpoint& in, const TensorSpec& spec, const std::string& out_name,
                   const std::string& file);
// One stored tensor copied unchanged under a new name.
OutGroup copy_tensor(const Checkpoint& in, const std::string& name, const std::string& out_name,
                     const std::string& file);
// A linear made of the given rows of `spec` (-1: an all-zero row, quantized as q = 0, scale = 0,
// bias = 0) with its bias rows (0 for zero rows). Rows are copied exactly, never re-quantized.
OutGroup gather_rows(const Checkpoint& in, const TensorSpec& spec, std::vector<int64_t> rows,
                     const std::string& out_name, const std::string& file);
// A linear made of the given input columns of `spec` (-1: a zero column), stored MLX-quantized
// (cols.size() a multiple of the group size): a group of 64 columns that is exactly one input group
// is copied as is, the others are dequantized, gathered and re-quantized with MLX's algorithm.
// Its bias (per output row) is copied.
OutGroup gather_columns_quantized(const Checkpoint& in, const TensorSpec& spec,
                                  std::vector<int64_t> cols, const std::string& out_name,
                                  const std::string& file);
// A quantized linear from f32 values [rows, in], MLX's algorithm, scales in `scale_dtype`.
OutGroup quantized_from_floats(std::shared_ptr<const std::vector<float>> values, int64_t rows,
                               int64_t in, QuantFormat fmt, DType scale_dtype,
                               const std::string& out_name, const std::string& file);
// An I32 vector.
OutGroup int32_tensor(std::shared_ptr<const std::vector<int32_t>> values, const std::string& name,
                      const std::string& file);

// The output groups of a model whose table is `out_table`: `custom` returns the group of an entry
// it changes (or false to copy the input entry of the same name unchanged), then every extra input
// tensor, renamed by `extra_name` ("" drops it; null keeps the name).
using CustomGroup = std::function<bool(const TensorSpec& out_spec, OutGroup* group)>;
std::vector<OutGroup> build_groups(
    const Checkpoint& in, const std::vector<TensorSpec>& out_table, const CustomGroup& custom,
    const std::function<std::string(const std::string&)>& extra_name = nullptr);

// Writes a JSON file (read with read_json_file, key order kept: config.json is rewritten field by
// field).
void write_json(const std::string& path, const nlohmann::ordered_json& j);

// The tensor table a rewritten config describes: parses `config` (checking it like a loaded one).
ModelConfig parse_out_config(const nlohmann::ordered_json& config,
                             const nlohmann::json& generation);

}  // namespace gp::prune
