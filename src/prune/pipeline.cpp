#include "prune/pipeline.h"

#include <stdlib.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "base/atomic_file.h"
#include "base/error.h"

namespace gp::prune {
namespace fs = std::filesystem;

void validate_pipeline(const Checkpoint& in, const PipelineOptions& options) {
  check(!options.steps.empty(), "no step to run");
  const PruneOptions& o = options.prune;
  check(std::isfinite(o.neuron_threshold) && o.neuron_threshold >= 0,
        "--neuron-threshold is " + std::to_string(o.neuron_threshold) +
            ", expected a finite number >= 0");
  check(o.neuron_max_reduction >= 0 && o.neuron_max_reduction <= 1,
        "--neuron-max-reduction is " + std::to_string(o.neuron_max_reduction) +
            ", expected a number from 0 to 1");
  nlohmann::ordered_json config = in.config_json();
  ModelConfig c = in.config();
  bool fc2_quantized = in.layout().fc2_quantized;
  const nlohmann::json generation = in.files().generation_json();
  auto needs_vision = [&](Step s) {
    check(in.layout().vision, in.path() + ": step " + step_name(s) +
                                  " does not apply: the checkpoint has no vision tower");
  };
  for (Step s : options.steps) {
    switch (s) {
      case Step::Vocab:
        break;
      case Step::Fc2:
        needs_vision(s);
        check(
            !fc2_quantized,
            in.path() + ": step fc2 does not apply: the vision fc2 weights are already quantized");
        fc2_quantized = true;
        break;
      case Step::Layers:
        config = layers_config(config, c, o.drop_layers);
        c = parse_out_config(config, generation);
        break;
      case Step::Resolution:
        needs_vision(s);
        config = resolution_config(config, check_resolution(c, o.image_size));
        c = parse_out_config(config, generation);
        break;
      case Step::Neurons:
        neuron_range(o, c.text.n_layers);
        break;
      case Step::Split:
        needs_vision(s);
        break;
    }
  }
}

std::vector<StepReport> run_pipeline(const std::string& in_dir, const std::string& out_dir,
                                     const PipelineOptions& options,
                                     const PipelineCallbacks& callbacks) {
  check(!out_dir.empty(), "output directory: empty path");
  fs::path out = fs::path(out_dir).lexically_normal();  // "x/.." is "."
  if (!out.has_filename()) out = out.parent_path();
  const Checkpoint in(in_dir);
  std::error_code ec;
  {
    const fs::path a = fs::weakly_canonical(in_dir, ec), b = fs::weakly_canonical(out, ec);
    auto ia = a.begin(), ib = b.begin();
    for (; ib != b.end() && ia != a.end() && *ia == *ib; ++ia, ++ib) {
    }
    check(ib != b.end(), out.string() + ": is (or contains) the input checkpoint " + in_dir +
                             "; the input is never modified (choose another output directory)");
  }
  check(!fs::exists(out, ec) || options.force,
        out.string() + ": already exists (refusing to replace it; pass --force to overwrite)");
  validate_pipeline(in, options);  // before anything is created

  AtomicDir dir(out.string(), options.force);
  const fs::path work = dir.tmp(), steps_dir = work / "steps";
  std::vector<StepReport> reports;
  try {
    fs::create_directories(steps_dir);
    std::string current = in_dir, previous_output;
    const int count = static_cast<int>(options.steps.size());
    for (int i = 0; i < count; ++i) {
      const Step s = options.steps[i];
      if (callbacks.on_start) callbacks.on_start(i, count, s);
      char name[64];
      std::snprintf(name, sizeof(name), "%02d-%s", i + 1, step_name(s));
      const std::string next = (steps_dir / name).string();
      reports.push_back(run_step(s, current, next, options.prune));
      if (!options.keep_intermediate && !previous_output.empty()) fs::remove_all(previous_output);
      previous_output = current = next;
      if (callbacks.on_done) callbacks.on_done(i, count, reports.back());
    }
    // The last step's checkpoint becomes the output's top level.
    for (const auto& e : fs::directory_iterator(current)) {
      const fs::path dst = work / e.path().filename();
      if (!options.keep_intermediate) {
        fs::rename(e.path(), dst);
      } else {
        fs::create_hard_link(e.path(), dst, ec);
        if (ec) fs::copy_file(e.path(), dst);
      }
    }
    if (!options.keep_intermediate) fs::remove_all(steps_dir);
  } catch (const fs::filesystem_error& e) {
    throw Error(out.string() + ": " + e.what() + " (disk full?)");
  }
  dir.commit();
  return reports;
}

}  // namespace gp::prune
