// gemma-prune's pipeline: the chosen steps of SPEC §5 run in order, each one's complete checkpoint
// feeding the next, inside one temporary directory that becomes OUT_DIR only at the end.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "prune/checkpoint.h"
#include "prune/steps.h"

namespace gp::prune {

struct PipelineOptions {
  std::vector<Step> steps = all_steps();
  PruneOptions prune;
  bool keep_intermediate = false;  // every step's checkpoint kept under OUT_DIR/steps/NN-name
  bool force = false;              // replace an existing OUT_DIR (once the new one is complete)
};

// Checks the options against the input before any work: layers to drop exist, the image size
// fits the patch grid and the pool, the neuron range exists once layers are dropped, the steps
// apply (a vision tower for fc2/resolution/split, fc2 not yet quantized). Throws Error.
void validate_pipeline(const Checkpoint& in, const PipelineOptions& options);

// Called when step `index` (0-based, of `count`) is about to start, and after it with its report.
struct PipelineCallbacks {
  std::function<void(int index, int count, Step step)> on_start;
  std::function<void(int index, int count, const StepReport& report)> on_done;
};

// Runs the steps from in_dir to out_dir. Throws Error when out_dir exists (without force), is the
// input or holds it, or any step fails; then nothing is left at out_dir and no temporary files
// remain.
std::vector<StepReport> run_pipeline(const std::string& in_dir, const std::string& out_dir,
                                     const PipelineOptions& options,
                                     const PipelineCallbacks& callbacks = {});

}  // namespace gp::prune
