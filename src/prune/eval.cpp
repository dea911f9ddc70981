#include "prune/eval.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "base/error.h"
#include "base/sys.h"
#include "io/image.h"
#include "io/tokenizer.h"
#include "model/model_files.h"
#include "model/text_model.h"
#include "prune/checkpoint.h"
#include "runtime/engine.h"
#include "runtime/kv_cache.h"

namespace gp::prune {

namespace {

// A checkpoint's text decoder, loaded from its directory.
struct TextRunner {
  ModelFiles files;
  const ModelConfig& config;
  std::unique_ptr<TextModel> model;

  explicit TextRunner(const std::string& path) : files(path), config(files.config()) {
    // Quality is measured with exact f32 activations: the weights' effect, without the int8
    // rounding of the fast path (which depends on how the text is split into batches).
    model = std::make_unique<TextModel>(
        config, load_text_weights(files.dir(), config, files.layout()), ops::Activations::kF32);
  }
};

// Windows of BOS + up to window-1 text tokens.
std::vector<std::vector<int32_t>> windows(const Tokenizer& tok, int32_t bos,
                                          const std::string& text, int window) {
  check(window >= 2, "evaluation window must hold at least 2 tokens");
  const std::vector<int32_t> ids = tok.encode(text);
  check(!ids.empty(), "the evaluation text is empty");
  std::vector<std::vector<int32_t>> out;
  for (size_t i = 0; i < ids.size(); i += window - 1) {
    std::vector<int32_t> w = {bos};
    w.insert(w.end(), ids.begin() + i, ids.begin() + std::min(ids.size(), i + window - 1));
    out.push_back(std::move(w));
  }
  return out;
}

// Calls fn(position, logits rows [n, n_vocab], n) chunk by chunk over one window.
template <typename Fn>
void run_window(TextRunner& r, const std::vector<int32_t>& w, int chunk, Fn fn) {
  KvCache cache(r.config.text, static_cast<int>(w.size()));
  std::vector<float> logits(static_cast<size_t>(chunk) * r.config.text.n_vocab);
  for (size_t p = 0; p < w.size(); p += chunk) {
    check(!cancel_requested(), "interrupted");
    TextBatch b;
    b.ids.assign(w.begin() + p, w.begin() + std::min(w.size(), p + chunk));
    const int n = static_cast<int>(b.ids.size());
    r.model->forward(b, cache, logits.data(), n);
    fn(p, logits.data(), n);
  }
}

// Sums the per-position measures of CompareResult.
class CompareSums {
 public:
  void add(const float* a, const float* b, int64_t n_vocab) {
    double excluded = 0;
    const double kl = kl_divergence(a, b, n_vocab, &excluded);
    kl_ += kl;
    r_.max_kl = std::max(r_.max_kl, kl);
    excluded_ += excluded;
    top1_ += argmax(a, n_vocab) == argmax(b, n_vocab);
    top5_ += top1_in_topk(a, b, n_vocab, 5);
    ++r_.n_positions;
  }
  CompareResult result() const {
    CompareResult r = r_;
    const double n = static_cast<double>(std::max<int64_t>(r.n_positions, 1));
    r.mean_kl = kl_ / n;
    r.excluded_mass = excluded_ / n;
    r.top1 = static_cast<double>(top1_) / n;
    r.top5 = static_cast<double>(top5_) / n;
    return r;
  }

 private:
  CompareResult r_;
  double kl_ = 0, excluded_ = 0;
  int64_t top1_ = 0, top5_ = 0;
};

}  // namespace

std::vector<double> log_softmax(const float* x, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - m);
  const double lse = m + std::log(sum);
  std::vector<double> out(n);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<double>(x[i]) - lse;
  return out;
}

double kl_divergence(const float* a, const float* b, int64_t n, double* excluded) {
  const std::vector<double> la = log_softmax(a, n), lb = log_softmax(b, n);
  double outside = 0;
  for (int64_t i = 0; i < n; ++i)
    if (std::isinf(lb[i])) outside += std::exp(la[i]);
  const double inside = 1.0 - outside;
  double kl = 0;
  if (inside > 0) {
    const double log_inside = std::log(inside);
    for (int64_t i = 0; i < n; ++i) {
      if (std::isinf(lb[i]) || std::isinf(la[i])) continue;
      const double pa = std::exp(la[i]) / inside;
      kl += pa * (la[i] - log_inside - lb[i]);
    }
  }
  if (excluded) *excluded = outside;
  return std::max(kl, 0.0);
}

int64_t argmax(const float* x, int64_t n) { return std::max_element(x, x + n) - x; }

bool top1_in_topk(const float* a, const float* b, int64_t n, int k) {
  const float v = b[argmax(a, n)];
  int64_t higher = 0;
  for (int64_t i = 0; i < n; ++i) higher += b[i] > v;
  return higher < k;
}

namespace {

PerplexityResult perplexity_of(TextRunner& r, const std::vector<std::vector<int32_t>>& ws,
                               const EvalOptions& options) {
  const int64_t V = r.config.text.n_vocab;
  size_t total = 0;
  for (const auto& w : ws) total += w.size();
  Progress progress("ppl", total, options.progress);
  size_t done = 0;
  PerplexityResult res;
  double nll = 0;
  for (const auto& w : ws) {
    run_window(r, w, options.chunk, [&](size_t p, const float* logits, int n) {
      for (int j = 0; j < n; ++j) {
        const size_t next = p + j + 1;
        if (next >= w.size()) continue;
        const std::vector<double> ls = log_softmax(logits + static_cast<int64_t>(j) * V, V);
        nll -= ls[w[next]];
        ++res.n_predicted;
      }
      done += n;
      progress.update(done);
    });
  }
  progress.finish();
  check(res.n_predicted > 0, "the evaluation text has no token to predict");
  res.mean_nll = nll / static_cast<double>(res.n_predicted);
  res.perplexity = std::exp(res.mean_nll);
  return res;
}

CompareResult compare_of(TextRunner& a, TextRunner& b, const std::vector<std::vector<int32_t>>& ws,
                         const EvalOptions& options) {
  const int64_t V = a.config.text.n_vocab;
  check(b.config.text.n_vocab == V,
        b.files.path() + ": vocabulary of " + std::to_string(b.config.text.n_vocab) + " ids, but " +
            a.files.path() + " has " + std::to_string(V) + " (not variants of the same model?)");
  size_t total = 0;
  for (const auto& w : ws) total += w.size();
  Progress progress("compare", total, options.progress);
  size_t done = 0;
  CompareSums sums;
  for (const auto& w : ws) {
    // B's logits of the current chunk, computed just before A's chunk of the same positions.
    KvCache cache_b(b.config.text, static_cast<int>(w.size()));
    std::vector<float> lb(static_cast<size_t>(options.chunk) * V);
    run_window(a, w, options.chunk, [&](size_t p, const float* la, int n) {
      TextBatch batch;
      batch.ids.assign(w.begin() + p, w.begin() + p + n);
      b.model->forward(batch, cache_b, lb.data(), n);
      for (int j = 0; j < n; ++j)
        sums.add(la + static_cast<int64_t>(j) * V, lb.data() + static_cast<int64_t>(j) * V, V);
      done += n;
      progress.update(done);
    });
  }
  progress.finish();
  return sums.result();
}

}  // namespace

PerplexityResult perplexity(const std::string& model_dir, const std::string& text,
                            const EvalOptions& options) {
  const Tokenizer tok = Tokenizer::load(model_dir);
  TextRunner r(model_dir);
  return perplexity_of(r, windows(tok, r.config.bos_token, text, options.window), options);
}

PerplexityResult perplexity_of_ids(const std::string& model_dir,
                                   const std::vector<std::vector<int32_t>>& ws,
                                   const EvalOptions& options) {
  TextRunner r(model_dir);
  return perplexity_of(r, ws, options);
}

CompareResult compare_models(const std::string& a_dir, const std::string& b_dir,
                             const std::string& text, const EvalOptions& options) {
  const Tokenizer tok = Tokenizer::load(a_dir);
  TextRunner a(a_dir), b(b_dir);
  return compare_of(a, b, windows(tok, a.config.bos_token, text, options.window), options);
}

CompareResult compare_models_of_ids(const std::string& a_dir, const std::string& b_dir,
                                    const std::vector<std::vector<int32_t>>& ws,
                                    const EvalOptions& options) {
  TextRunner a(a_dir), b(b_dir);
  return compare_of(a, b, ws, options);
}

CompareResult compare_models_with_image(const std::string& a_dir, const std::string& b_dir,
                                        const std::string& image_path, const std::string& text) {
  EngineOptions eo;
  eo.progress = false;
  eo.exact = true;  // as TextRunner: the weights' effect, without the int8 rounding
  Engine a(a_dir, eo), b(b_dir, eo);
  const int64_t V = a.config().text.n_vocab;
  check(b.config().text.n_vocab == V,
        b_dir + ": vocabulary of " + std::to_string(b.config().text.n_vocab) + " ids, but " +
            a_dir + " has " + std::to_string(V) + " (not variants of the same model?)");
  const Image image = load_image(image_path);
  // Logits rows [n, V] of every position from the prompt's <end_of_image> on.
  auto tail = [&](Engine& e, int64_t* n_rows) {
    const std::vector<int32_t> ids = e.chat_prompt({{"user", text, 1}});
    const auto eoi = std::find(ids.rbegin(), ids.rend(), e.config().eoi_token);
    check(eoi != ids.rend(), e.dir().path() + ": the image prompt has no <end_of_image> token");
    const int64_t first = static_cast<int64_t>(ids.rend() - eoi) - 1;
    *n_rows = static_cast<int64_t>(ids.size()) - first;
    std::vector<float> rows;
    rows.reserve(static_cast<size_t>(*n_rows) * V);
    int64_t pos = 0;
    Session s(e, static_cast<int>(ids.size()));
    s.prefill(ids, {&image}, [&](const float* r, int64_t n) {
      for (int64_t i = 0; i < n; ++i, ++pos)
        if (pos >= first) rows.insert(rows.end(), r + i * V, r + (i + 1) * V);
    });
    return rows;
  };
  int64_t na = 0, nb = 0;
  const std::vector<float> ra = tail(a, &na), rb = tail(b, &nb);
  check(na == nb, "the prompts of " + a_dir + " and " + b_dir +
                      " differ after the image (different tokenizers or chat templates?)");
  CompareSums sums;
  for (int64_t i = 0; i < na; ++i) sums.add(ra.data() + i * V, rb.data() + i * V, V);
  return sums.result();
}

}  // namespace gp::prune
