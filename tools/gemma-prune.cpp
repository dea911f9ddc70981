// gemma-prune: compresses a Gemma 3 checkpoint with the steps of SPEC §5, each step a complete
// checkpoint, and reports what each step saved; `gemma-prune analyze` measures the per-layer data
// (MLP neuron activity, Block Influence) that decides what to cut.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/sys.h"
#include "base/thread_pool.h"
#include "prune/checkpoint.h"
#include "prune/pipeline.h"
#include "prune/profile.h"
#include "prune/vocab.h"
#include "tool_util.h"

namespace {

using namespace gp;
using namespace gp::prune;

std::vector<int> parse_int_list(const std::string& s, const char* option) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.find_first_not_of(" ") == std::string::npos) continue;
    try {
      size_t used = 0;
      v.push_back(std::stoi(item, &used));
      check(item.find_first_not_of(" ", used) == std::string::npos, "");
    } catch (const std::exception&) {
      throw Error(std::string(option) + ": '" + item +
                  "' is not a layer index (expected comma-separated integers)");
    }
  }
  return v;
}

// "14-30", "14-" (to the last layer) or "7" (one layer).
void parse_range(const std::string& s, int* first, int* last) {
  const std::string err =
      "--neuron-layers: '" + s + "' is not a layer range (expected A-B, e.g. 14-30)";
  try {
    const size_t dash = s.find('-');
    size_t used = 0;
    if (dash == std::string::npos) {
      *first = *last = std::stoi(s, &used);
      check(used == s.size(), err);
      return;
    }
    *first = std::stoi(s.substr(0, dash), &used);
    check(used == dash, err);
    const std::string rest = s.substr(dash + 1);
    *last = rest.empty() ? -1 : std::stoi(rest, &used);
    check(rest.empty() || used == rest.size(), err);
  } catch (const std::logic_error&) {
    throw Error(err);
  }
}

std::string mb(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f MB", static_cast<double>(bytes) / 1e6);
  return buf;
}

void print_table(const std::vector<StepReport>& reports, double seconds) {
  std::printf("\n%-11s %11s %11s %11s %8s  %s\n", "step", "before", "after", "saved", "time",
              "what changed");
  for (const auto& r : reports) {
    const double saved =
        (static_cast<double>(r.bytes_before) - static_cast<double>(r.bytes_after)) / 1e6;
    std::printf("%-11s %11s %11s %8.1f MB %7.1fs  %s\n", step_name(r.step),
                mb(r.bytes_before).c_str(), mb(r.bytes_after).c_str(), saved, r.seconds,
                r.changes.c_str());
  }
  if (!reports.empty()) {
    const double saved = (static_cast<double>(reports.front().bytes_before) -
                          static_cast<double>(reports.back().bytes_after)) /
                         1e6;
    std::printf("%-11s %11s %11s %8.1f MB %7.1fs  peak RSS %.0f MB\n", "total",
                mb(reports.front().bytes_before).c_str(), mb(reports.back().bytes_after).c_str(),
                saved, seconds, peak_rss_mb());
  }
}

void on_signal(int) { request_cancel(); }

void install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESETHAND;  // a second Ctrl-C kills at once
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  // A file-size limit then shows up as a failed write, cleaned up like a full disk.
  std::signal(SIGXFSZ, SIG_IGN);
}

int analyze_main(int argc, char** argv) {
  CLI::App app{
      "gemma-prune analyze: per-layer MLP neuron activity and Block Influence of a "
      "checkpoint over calibration text"};
  std::string model, calibration;
  double threshold = 0.5, max_reduction = 0.25;
  int threads = 0, max_tokens = 512;
  bool quiet = false;
  app.add_option("MODEL_DIR", model, "checkpoint directory")->required();
  app.add_option(
      "--calibration", calibration,
      "calibration text (paragraphs separated by blank lines; default: built-in prompts)");
  app.add_option("--neuron-threshold", threshold, "activation below which a neuron counts as dead")
      ->check(kFinite)
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--neuron-max-reduction", max_reduction,
                 "largest fraction of a layer's neurons the rule removes (for the keep column)")
      ->check(kFinite)
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--max-tokens", max_tokens, "tokens per calibration paragraph")
      ->capture_default_str();
  add_threads_option(app, threads);
  app.add_flag("--quiet", quiet, "no progress display");
  return run_tool("gemma-prune", app, argc, argv, [&] {
    if (threads > 0) ThreadPool::set_global_threads(threads);
    Timer timer;
    const Checkpoint in(model);
    const auto texts =
        calibration.empty() ? default_calibration_texts() : read_calibration_file(calibration);
    ProfileOptions po;
    po.max_tokens = max_tokens;
    po.progress = show_progress(quiet);
    const ModelProfile prof = profile_model(in, texts, po);
    const TextConfig& t = in.config().text;
    std::printf("%s: %zu calibration texts, %lld tokens, %.1f s\n\n", model.c_str(), texts.size(),
                static_cast<long long>(prof.n_tokens), timer.seconds());
    std::printf("%5s %6s %6s %11s %9s %9s %11s %9s\n", "layer", "attn", "d_ff", "mean |act|",
                "< thresh", "keep(rule)", "block infl.", "rank(BI)");
    std::vector<int> rank(t.n_layers);
    {
      std::vector<int> order(t.n_layers);
      for (int l = 0; l < t.n_layers; ++l) order[l] = l;
      std::sort(order.begin(), order.end(), [&](int a, int b) {
        return prof.layers[a].block_influence < prof.layers[b].block_influence;
      });
      for (int i = 0; i < t.n_layers; ++i) rank[order[i]] = i + 1;
    }
    for (int l = 0; l < t.n_layers; ++l) {
      const auto& L = prof.layers[l];
      double mean = 0;
      int64_t below = 0;
      for (float s : L.neuron_score) {
        mean += s;
        below += s < threshold;
      }
      const int64_t d = static_cast<int64_t>(L.neuron_score.size());
      const int64_t keep =
          select_neurons(L.neuron_score, threshold, max_reduction, in.config().quant.group_size)
              .size();
      std::printf("%5d %6s %6lld %11.4f %8.1f%% %9lld %11.5f %9d\n", l,
                  t.is_global[l] ? "global" : "local", static_cast<long long>(d),
                  mean / std::max<int64_t>(d, 1),
                  100.0 * static_cast<double>(below) / std::max<int64_t>(d, 1),
                  static_cast<long long>(keep), L.block_influence, rank[l]);
    }
    std::printf(
        "\nkeep(rule): neurons SPEC §5's rule keeps at this threshold and max reduction.\n"
        "block infl.: 1 - cos(layer input, layer output), mean over tokens; rank 1 = least "
        "influential.\npeak RSS %.0f MB\n",
        peak_rss_mb());
    return 0;
  });
}

int prune_main(int argc, char** argv) {
  CLI::App app{
      "gemma-prune: compress a Gemma 3 checkpoint (MLX 4-bit) step by step; every step "
      "writes a complete, loadable checkpoint.\n  gemma-prune IN_DIR OUT_DIR [options]\n"
      "  gemma-prune analyze MODEL_DIR [options]"};
  std::string in_dir, out_dir, steps, preset, drop = "31,32,33", neuron_layers = "14-", calibration,
                                              word_list;
  PipelineOptions o;
  int threads = 0;
  bool quiet = false;
  app.add_option("IN_DIR", in_dir, "input checkpoint directory (never modified)")->required();
  app.add_option("OUT_DIR", out_dir, "output checkpoint directory")->required();
  auto* steps_opt =
      app.add_option("--steps", steps,
                     "comma-separated subset of vocab,fc2,layers,resolution,neurons,split "
                     "(always run in that order; default: all)");
  app.add_option("--preset", preset, "mobile (all six steps) or lite (vocab,fc2,layers,resolution)")
      ->excludes(steps_opt);
  app.add_option("--drop-layers", drop, "text layers removed by the layers step")
      ->capture_default_str();
  app.add_option("--image-size", o.prune.image_size, "input resolution of the resolution step")
      ->capture_default_str();
  app.add_option("--neuron-layers", neuron_layers, "layer range the neurons step may prune, A-B")
      ->capture_default_str();
  app.add_option("--neuron-threshold", o.prune.neuron_threshold,
                 "mean |gelu(gate)| at or above which a neuron is active")
      ->check(kFinite)
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--neuron-max-reduction", o.prune.neuron_max_reduction,
                 "largest fraction of a layer's neurons removed")
      ->check(kFinite)
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--calibration", calibration,
                 "calibration text for profiling (paragraphs separated by blank lines; default: "
                 "built-in prompts)");
  app.add_option("--word-list", word_list,
                 "words (one per line) whose tokens the vocab step keeps, "
                 "with 26 suffixed forms each");
  app.add_flag("--prune-lm-head", o.prune.prune_lm_head,
               "also shrink lm_head to the kept ids (pruned ids get -inf logits)");
  app.add_flag("--keep-intermediate", o.keep_intermediate,
               "keep every step's checkpoint under OUT_DIR/steps/NN-name");
  app.add_flag("--force", o.force, "replace OUT_DIR if it exists (once the new one is complete)");
  add_threads_option(app, threads);
  app.add_flag("--quiet", quiet, "no progress display");
  return run_tool("gemma-prune", app, argc, argv, [&] {
    if (threads > 0) ThreadPool::set_global_threads(threads);
    install_signal_handlers();
    o.steps = !preset.empty()  ? preset_steps(preset)
              : !steps.empty() ? parse_steps(steps)
                               : all_steps();
    o.prune.drop_layers = parse_int_list(drop, "--drop-layers");
    parse_range(neuron_layers, &o.prune.neuron_first, &o.prune.neuron_last);
    if (!calibration.empty()) o.prune.calibration = read_calibration_file(calibration);
    if (!word_list.empty()) o.prune.words = read_word_list(word_list);
    o.prune.progress = show_progress(quiet);
    Timer timer;
    PipelineCallbacks cb;
    cb.on_start = [&](int i, int n, Step s) {
      if (!quiet) std::fprintf(stderr, "[%d/%d] %s\n", i + 1, n, step_name(s));
    };
    cb.on_done = [&](int, int, const StepReport& r) {
      if (!quiet)
        std::fprintf(stderr, "      %s -> %s in %.1f s: %s\n", mb(r.bytes_before).c_str(),
                     mb(r.bytes_after).c_str(), r.seconds, r.changes.c_str());
    };
    const auto reports = run_pipeline(in_dir, out_dir, o, cb);
    print_table(reports, timer.seconds());
    std::printf("wrote %s\n", out_dir.c_str());
    return 0;
  });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "analyze") return analyze_main(argc - 1, argv + 1);
  return prune_main(argc, argv);
}
