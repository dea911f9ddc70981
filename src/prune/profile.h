// Calibration profiling of the text decoder: per-neuron MLP activation statistics (for the neurons
// step and `gemma-prune analyze`) and per-layer Block Influence, measured by running the model over
// calibration text with TextModel's observers. Also the neuron keep rule of SPEC §5 step 5.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "prune/checkpoint.h"

namespace gp::prune {

// The built-in calibration set: varied prompts (prose, dialogue, code, math, lists, instructions).
const std::vector<std::string>& default_calibration_texts();
// A calibration file: paragraphs separated by blank lines are separate sequences. Throws Error.
std::vector<std::string> read_calibration_file(const std::string& path);

struct LayerProfile {
  std::vector<float> neuron_score;  // [d_ff] mean |gelu_tanh(gate(x))| over the calibration tokens
  double block_influence = 0;       // mean over tokens of 1 - cos(layer input, layer output)
};

struct ModelProfile {
  int64_t n_tokens = 0;
  std::vector<LayerProfile> layers;  // one per text layer
};

struct ProfileOptions {
  int max_tokens = 512;  // per calibration sequence (BOS included)
  bool progress = false;
};

// Runs every text (BOS + its tokens) through the checkpoint's text decoder. Weight pages of each
// layer are dropped once the layer has run, so memory stays near one layer's size.
ModelProfile profile_model(const Checkpoint& in, const std::vector<std::string>& texts,
                           const ProfileOptions& options);

// Neurons a layer keeps (SPEC §5 step 5): max(align_down(n_active, group),
// ceil((1 - max_reduction) * d_ff / group) * group), at most d_ff. align_down as in the reference
// paper; the second term caps the cut at max_reduction.
int64_t neuron_keep_count(int64_t n_active, int64_t d_ff, double max_reduction, int group);
// The neurons kept: the neuron_keep_count() highest scores (ties: lower index first), in
// ascending order. n_active counts scores >= threshold.
std::vector<int64_t> select_neurons(const std::vector<float>& scores, double threshold,
                                    double max_reduction, int group);

}  // namespace gp::prune
