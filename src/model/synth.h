// Synthetic checkpoints: seeded random weights in the exact MLX layout of a Gemma 3 checkpoint
// (tensor names and shapes from the tensor table), with a matching config, tokenizer and side
// files. Used for tests, benchmarks and compressor runs without the real 2.8 GB download.
//
// Presets: `original` (the 4B checkpoint's shapes), `mobile` (SPEC §5's result: compact embedding
// + token_map, 31 layers, pruned MLPs, padded and quantized vision fc2, 672 px, split files), and
// `tiny` / `tiny-mobile`, the same two layouts at a size that writes in milliseconds.
//
// A mobile preset is derived from its original the way the compressor derives it: with the same
// seed, kept embedding rows, the first MLP neurons, fc1's first rows and fc2 (re-quantized) hold
// the original's values.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "io/sp_model_proto.h"
#include "model/config.h"
#include "model/tensor_table.h"

namespace gp {

enum class SynthPreset { Tiny, TinyMobile, Original, Mobile };

// "tiny", "tiny-mobile", "original", "mobile"; throws Error naming the accepted values.
SynthPreset parse_synth_preset(const std::string& name);
const char* synth_preset_name(SynthPreset preset);

// One safetensors file of the checkpoint and the tensors it stores, in write order.
struct SynthFile {
  std::string name;  // relative to the checkpoint directory
  std::vector<SafeTensorsWriter::Entry> entries;
  uint64_t data_bytes() const;  // tensor data only, without the header
};

// Everything a preset writes except the random values; independent of the seed.
struct SynthPlan {
  SynthPreset preset = SynthPreset::Tiny;
  nlohmann::ordered_json config, preprocessor_config, tokenizer_config, generation_config;
  ModelConfig model;  // parse_config(config)
  TableLayout layout;
  std::vector<TensorSpec> table;  // tensor_table(model, layout)
  std::vector<SpPiece> pieces;    // tokenizer.model, in id order
  // Mobile layouts: token_map [n_vocab] and, per compact row, the original id it holds (row 0,
  // the zero row, holds -1). Empty otherwise.
  std::vector<int32_t> token_map;
  std::vector<int32_t> compact_ids;
  // The tensors of the preset this one is derived from (its own for original layouts): rows and
  // columns beyond the base's are zero padding, and the base's row streams give the values.
  std::vector<TensorSpec> base_table;
  std::vector<SynthFile> files;

  uint64_t data_bytes() const;
};

SynthPlan synth_plan(SynthPreset preset);

struct SynthOptions {
  uint64_t seed = 0;
  bool force = false;     // replace an existing output directory
  bool progress = false;  // progress bar on stderr
};

// Writes the checkpoint into `out_dir`: everything goes to a fresh `out_dir.tmp-XXXXXX`, renamed
// to `out_dir` when complete (and removed on failure). Refuses an existing `out_dir` unless
// options.force. Tensors are generated and written a block of rows at a time, so memory stays
// small whatever the model size. Throws Error.
void write_synth_checkpoint(const SynthPlan& plan, const std::string& out_dir,
                            const SynthOptions& options);

}  // namespace gp
