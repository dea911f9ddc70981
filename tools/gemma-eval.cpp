// gemma-eval: the quality cost of a compressed checkpoint. `ppl` scores a text; `compare` measures
// how far checkpoint B's next-token distributions are from checkpoint A's over the same text.

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "base/error.h"
#include "base/sys.h"
#include "base/thread_pool.h"
#include "prune/eval.h"
#include "tool_util.h"

namespace {

std::string read_text_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  gp::check(f != nullptr, path + ": cannot open the evaluation text");
  std::string text;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
  std::fclose(f);
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "gemma-eval: perplexity of a checkpoint, or the divergence of a compressed "
      "checkpoint from its original"};
  app.require_subcommand(1);
  gp::prune::EvalOptions eo;
  int threads = 0;
  bool quiet = false, json = false;
  std::string model, a_dir, b_dir, text_file, image;

  auto* ppl = app.add_subcommand("ppl", "perplexity of MODEL on a text");
  ppl->add_option("MODEL", model, "checkpoint directory")->required();
  auto* cmp =
      app.add_subcommand("compare", "mean KL(A || B), top-1 and top-5 agreement of B against A");
  cmp->add_option("A", a_dir, "reference checkpoint (e.g. the original)")->required();
  cmp->add_option("B", b_dir, "compared checkpoint (e.g. a compressed one)")->required();
  cmp->add_option("--image", image,
                  "compare over a chat prompt holding this image then the text, at the positions "
                  "after the image (measures the vision steps)");
  for (CLI::App* sub : {ppl, cmp}) {
    sub->add_option("--text", text_file, "evaluation text file (UTF-8)")->required();
    sub->add_option("--window", eo.window, "tokens per independent window, BOS included")
        ->capture_default_str()
        ->check(CLI::Range(2, 1 << 20));
    gp::add_threads_option(*sub, threads);
    sub->add_flag("--quiet", quiet, "no progress display");
    sub->add_flag("--json", json, "print one JSON object");
  }
  return gp::run_tool("gemma-eval", app, argc, argv, [&] {
    if (threads > 0) gp::ThreadPool::set_global_threads(threads);
    eo.progress = gp::show_progress(quiet);
    const std::string text = read_text_file(text_file);
    gp::Timer timer;
    if (*ppl) {
      const auto r = gp::prune::perplexity(model, text, eo);
      if (json)
        std::printf("{\"tokens\": %lld, \"mean_nll\": %.6f, \"perplexity\": %.6f}\n",
                    static_cast<long long>(r.n_predicted), r.mean_nll, r.perplexity);
      else
        std::printf(
            "%s: %lld tokens, mean NLL %.4f nats, perplexity %.3f (%.1f s, peak RSS %.0f MB)\n",
            model.c_str(), static_cast<long long>(r.n_predicted), r.mean_nll, r.perplexity,
            timer.seconds(), gp::peak_rss_mb());
    } else {
      const auto r = image.empty()
                         ? gp::prune::compare_models(a_dir, b_dir, text, eo)
                         : gp::prune::compare_models_with_image(a_dir, b_dir, image, text);
      if (json)
        std::printf(
            "{\"positions\": %lld, \"mean_kl\": %.6g, \"max_kl\": %.6g, \"top1\": %.6f, "
            "\"top5\": %.6f, \"excluded_mass\": %.6g}\n",
            static_cast<long long>(r.n_positions), r.mean_kl, r.max_kl, r.top1, r.top5,
            r.excluded_mass);
      else
        std::printf(
            "%s vs %s: %lld positions, mean KL(A||B) %.5f nats (max %.4f), top-1 agreement "
            "%.2f%%, top-5 %.2f%%, A's mass on ids B excludes %.3g (%.1f s, peak RSS %.0f MB)\n",
            a_dir.c_str(), b_dir.c_str(), static_cast<long long>(r.n_positions), r.mean_kl,
            r.max_kl, 100 * r.top1, 100 * r.top5, r.excluded_mass, timer.seconds(),
            gp::peak_rss_mb());
    }
    return 0;
  });
}
