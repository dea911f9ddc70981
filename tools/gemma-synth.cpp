// gemma-synth: writes a Gemma 3 checkpoint with seeded random weights in the exact MLX layout.

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "base/error.h"
#include "base/sys.h"
#include "model/synth.h"
#include "tool_util.h"

int main(int argc, char** argv) {
  CLI::App app{
      "Writes a Gemma 3 checkpoint with seeded random weights in the MLX 4-bit layout "
      "(same seed, same bytes)."};
  std::string out_dir, preset_name = "tiny";
  uint64_t seed = 0;
  bool force = false, quiet = false;
  app.add_option("OUT_DIR", out_dir, "output checkpoint directory")->required();
  app.add_option("--preset", preset_name,
                 "tiny | tiny-mobile | original (the 4B shapes) | mobile (SPEC §5's variant)")
      ->capture_default_str();
  app.add_option("--seed", seed, "random seed")->required();
  app.add_flag("--force", force, "replace OUT_DIR if it exists");
  app.add_flag("--quiet", quiet, "no progress bar");
  return gp::run_tool("gemma-synth", app, argc, argv, [&] {
    gp::Timer timer;
    const gp::SynthPreset preset = gp::parse_synth_preset(preset_name);
    const gp::SynthPlan plan = gp::synth_plan(preset);
    gp::SynthOptions options;
    options.seed = seed;
    options.force = force;
    options.progress = gp::show_progress(quiet);
    gp::write_synth_checkpoint(plan, out_dir, options);
    size_t n_tensors = 0;
    for (const auto& f : plan.files) n_tensors += f.entries.size();
    std::printf(
        "%s: preset %s, seed %llu, %zu tensors in %zu file(s), %.1f MB of weights, %.1f s, "
        "peak RSS %.0f MB\n",
        out_dir.c_str(), gp::synth_preset_name(preset), static_cast<unsigned long long>(seed),
        n_tensors, plan.files.size(), plan.data_bytes() / 1e6, timer.seconds(), gp::peak_rss_mb());
    return 0;
  });
}
