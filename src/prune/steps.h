// The compression steps of SPEC §5. Each one reads a checkpoint directory and writes a complete,
// loadable checkpoint directory, streaming the tensors one at a time (see checkpoint.h). The
// config rewrites are separate pure functions, so a step's effect on the shapes can be checked
// without any tensor data.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"

namespace gp::prune {

enum class Step { Vocab, Fc2, Layers, Resolution, Neurons, Split };

const char* step_name(Step step);
// "vocab,fc2,..." in any order: the steps in pipeline order. Throws Error on an unknown or
// repeated name.
std::vector<Step> parse_steps(const std::string& list);
// "mobile" (all six steps) or "lite" (vocab, fc2, layers, resolution). Throws Error.
std::vector<Step> preset_steps(const std::string& preset);
std::vector<Step> all_steps();

struct PruneOptions {
  std::vector<int> drop_layers = {31, 32, 33};
  int image_size = 672;
  int neuron_first = 14, neuron_last = -1;  // layers profiled and pruned; -1: the last layer
  double neuron_threshold = 0.5;
  double neuron_max_reduction = 0.25;
  std::vector<std::string> calibration;  // empty: default_calibration_texts()
  std::vector<std::string> words;        // word list of the vocabulary step
  bool prune_lm_head = false;
  bool progress = false;
};

struct StepReport {
  Step step = Step::Vocab;
  uint64_t bytes_before = 0, bytes_after = 0;  // safetensors files
  double seconds = 0;
  std::string changes;  // what changed, one line
};

// Runs one step from in_dir to out_dir (which must not exist unless `replace`). Throws Error when
// the input is not a checkpoint or the step does not apply to it; the input is never modified and
// nothing is left at out_dir on failure.
StepReport run_step(Step step, const std::string& in_dir, const std::string& out_dir,
                    const PruneOptions& options, bool replace = false);

// ---- The config rewrites (config.json as read, key order kept).

// vocab_pruning.compact_vocab_size (top level, and in text_config when it has one there).
nlohmann::ordered_json vocab_config(const nlohmann::ordered_json& config, int64_t compact_rows);
// vision_config.intermediate_size padded to a multiple of the group size.
int fc2_padded_width(int d_ff, int group);
nlohmann::ordered_json fc2_config(const nlohmann::ordered_json& config, int d_ff);
// Removes text layers: num_hidden_layers, an explicit layer_types list (so every remaining layer
// keeps its attention type), per_layer_intermediate_sizes and per-module quantization entries.
// Throws Error naming a layer that does not exist, a repeated one, or dropping them all.
nlohmann::ordered_json layers_config(const nlohmann::ordered_json& config, const ModelConfig& c,
                                     const std::vector<int>& drop);
// A new input resolution: image_size a multiple of the patch size whose patch grid the projector's
// average pool (kernel patches_per_side / sqrt(mm_tokens_per_image), kept) divides evenly.
struct Resolution {
  int image_size = 0;
  int mm_tokens = 0;
};
Resolution check_resolution(const ModelConfig& c, int image_size);  // throws Error
nlohmann::ordered_json resolution_config(const nlohmann::ordered_json& config, Resolution r);
// preprocessor_config.json: size {height, width} and image_seq_length (processor_config.json:
// image_seq_length, when it has one).
nlohmann::ordered_json preprocessor_config(const nlohmann::ordered_json& pre, Resolution r);
// text_config.per_layer_intermediate_sizes and intermediate_size (their maximum).
nlohmann::ordered_json neurons_config(const nlohmann::ordered_json& config,
                                      const std::vector<int>& widths);
// The inclusive layer range of the neurons step; throws Error when out of bounds.
std::pair<int, int> neuron_range(const PruneOptions& options, int n_layers);

// Bilinear resize of a [side, side, channels] grid to [new_side, new_side, channels], as
// torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False): sample
// points at (i + 0.5) * side / new_side - 0.5, clamped to the grid.
std::vector<float> resize_grid_bilinear(const float* grid, int side, int new_side,
                                        int64_t channels);

}  // namespace gp::prune
