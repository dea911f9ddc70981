// Quality measurements of a compressed checkpoint: perplexity on a text, and the agreement of two
// checkpoints' next-token distributions over the same text (gemma-eval).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gp::prune {

struct EvalOptions {
  int window = 1024;  // tokens per independent window (BOS + window-1 text tokens)
  int chunk = 32;     // positions evaluated per forward call
  bool progress = false;
};

struct PerplexityResult {
  int64_t n_predicted = 0;  // text tokens predicted
  double mean_nll = 0;      // nats per token
  double perplexity = 0;    // exp(mean_nll)
};

// Tokenizes `text` with the model's tokenizer and scores every text token given the ones before
// it (within its window). Throws Error on a bad model or an empty text.
PerplexityResult perplexity(const std::string& model_dir, const std::string& text,
                            const EvalOptions& options = {});

// The same over given windows of ids (each scored from an empty cache; its first id is context).
PerplexityResult perplexity_of_ids(const std::string& model_dir,
                                   const std::vector<std::vector<int32_t>>& windows,
                                   const EvalOptions& options = {});

struct CompareResult {
  int64_t n_positions = 0;
  // Mean KL(A || B) in nats. Where B gives an id -inf (a pruned vocabulary) that A does not, the
  // divergence is infinite; it is then taken over B's support, A renormalized there, and the
  // probability A puts outside is reported as excluded_mass.
  double mean_kl = 0;
  double max_kl = 0;
  double top1 = 0;           // fraction of positions where argmax A == argmax B
  double top5 = 0;           // fraction where argmax A is among B's 5 highest logits
  double excluded_mass = 0;  // mean probability A gives to ids B excludes
};

// Runs A and B over the same tokens (A's tokenizer; the vocabularies must agree) and compares
// their next-token distributions at every position.
CompareResult compare_models(const std::string& a_dir, const std::string& b_dir,
                             const std::string& text, const EvalOptions& options = {});

// The same over given windows of ids (each run from an empty cache; every position compared).
CompareResult compare_models_of_ids(const std::string& a_dir, const std::string& b_dir,
                                    const std::vector<std::vector<int32_t>>& windows,
                                    const EvalOptions& options = {});

// The same over a chat prompt holding one image followed by `text`: only the positions from
// <end_of_image> on are compared (they depend on the image), so checkpoints with different image
// token counts (the resolution step) line up. Measures the vision steps' cost.
CompareResult compare_models_with_image(const std::string& a_dir, const std::string& b_dir,
                                        const std::string& image_path, const std::string& text);

// ---- The per-position measures (double precision).

// log-softmax of logits[n] (entries may be -inf).
std::vector<double> log_softmax(const float* logits, int64_t n);
// KL(A || B) of two logit rows, over B's support with A renormalized there; *excluded receives A's
// probability outside B's support.
double kl_divergence(const float* a, const float* b, int64_t n, double* excluded);
// True when argmax(a) is among the k highest entries of b (ties count in favour).
bool top1_in_topk(const float* a, const float* b, int64_t n, int k);
int64_t argmax(const float* x, int64_t n);

}  // namespace gp::prune
