// The engine: one loaded checkpoint (config, tokenizer, text decoder; the vision tower mapped on
// the first image), and sessions that evaluate prompts over a KV cache and generate tokens.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/image.h"
#include "io/model_dir.h"
#include "io/tokenizer.h"
#include "model/config.h"
#include "model/tensor_table.h"
#include "model/text_model.h"
#include "runtime/chat.h"
#include "runtime/sampler.h"

namespace gp {

class VisionModel;

struct EngineOptions {
  int threads = 0;       // 0: all cores
  bool progress = true;  // progress display while loading
  // f32 activations in every linear (slower; the float reference to 1e-3) instead of int8
  // (TextModel::set_activations).
  bool exact = false;
};

class Engine {
 public:
  Engine(const std::string& dir, const EngineOptions& options = {});
  ~Engine();

  const ModelDir& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  const TableLayout& layout() const { return layout_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  TextModel& text() { return *text_; }
  // The activations of the text and vision linears (EngineOptions::exact picks the first one).
  void set_activations(ops::Activations a);
  double load_seconds() const { return load_s_; }

  // The chat pieces and stop ids of this checkpoint, read from its tokenizer and config.
  const ChatPieces& chat_pieces() const { return pieces_; }
  const std::vector<int32_t>& stop_tokens() const { return stop_tokens_; }
  // True for the ids of the template's markers (template_markers): never printed as text.
  bool is_template_token(int32_t id) const {
    return std::find(template_ids_.begin(), template_ids_.end(), id) != template_ids_.end();
  }

  // Prompt ids of a chat: BOS + the formatted conversation. The template's markers are control
  // tokens; the same text inside a message's content is ordinary text.
  std::vector<int32_t> chat_prompt(const std::vector<ChatMessage>& messages) const;

  // Projected embeddings [mm_tokens_per_image, d_model] of an image; maps the vision weights on
  // first use. Throws Error when the checkpoint has no vision tower.
  std::vector<float> encode_image(const Image& image);
  bool vision_loaded() const { return vision_ != nullptr; }

 private:
  ModelDir dir_;
  ModelConfig config_;
  TableLayout layout_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<TextModel> text_;
  std::unique_ptr<VisionModel> vision_;
  ChatPieces pieces_;
  std::vector<int32_t> stop_tokens_;
  std::vector<int32_t> template_ids_;
  float image_mean_[3] = {0.5f, 0.5f, 0.5f}, image_std_[3] = {0.5f, 0.5f, 0.5f};
  double load_s_ = 0;
};

// The per-channel image_mean and image_std of preprocessor_config.json (`pre`, null when the file
// is absent: 0.5 each). Throws Error naming `path` and the key when a value is not 3 finite
// numbers in range (a std above 0).
void parse_image_normalization(const nlohmann::json& pre, const std::string& path, float mean[3],
                               float std_[3]);

// Receives logits rows [n, n_vocab] for consecutive prompt positions (for --logits-out).
using LogitsSink = std::function<void(const float* rows, int64_t n)>;

struct PrefillResult {
  int n_tokens = 0;      // prompt length
  int n_reused = 0;      // positions taken from the cache
  int n_images = 0;      // images encoded
  double image_s = 0;    // time spent encoding images
  double prefill_s = 0;  // time spent running new positions (images excluded)
};

// A conversation over one KV cache. It remembers what the cache holds (ids and the image at each
// soft token), so a prompt that extends an earlier one only runs its new positions.
class Session {
 public:
  // The KV cache holds f16 keys and values when the engine's text activations are int8 (the
  // default), f32 with exact ones.
  Session(Engine& engine, int max_context);
  Engine& engine() { return engine_; }
  int max_context() const { return cache_.max_context(); }
  int n_cached() const { return static_cast<int>(ids_.size()); }
  // Bytes of cached keys and values the next decode step reads.
  size_t kv_bytes_per_step() const { return cache_.bytes_attended(); }

  // Makes the cache hold `ids`: each run of image_token_index ids takes the next image. Leaves the
  // logits of the last position in last_logits() (recomputing it when the whole prompt was cached).
  // With a sink, every position is run and its logits are passed on (no reuse).
  PrefillResult prefill(const std::vector<int32_t>& ids, const std::vector<const Image*>& images,
                        const LogitsSink& sink = nullptr);
  // Appends one token; its logits replace last_logits().
  void decode(int32_t id);
  std::vector<float>& last_logits() { return logits_; }

  // Prefill chunk size (positions per forward call); image runs are never split.
  static constexpr int kChunk = 256;

 private:
  const std::vector<float>& image_embeddings(const Image& img, uint64_t hash, PrefillResult& r);

  Engine& engine_;
  KvCache cache_;
  std::vector<int32_t> ids_;  // what the cache holds
  std::vector<uint64_t>
      image_keys_;             // per position: hash of the image of a soft token, 0 otherwise
  std::vector<float> logits_;  // [n_vocab]
  std::map<uint64_t, std::vector<float>> image_cache_;  // recent image embeddings by content hash
};

struct GenerateOptions {
  SamplingParams sampling;
  int max_tokens = 256;
  std::vector<std::string> stop_strings;  // generation ends before any of these texts
  bool ignore_stop_tokens = false;        // run the full max_tokens (benchmarks)
};

struct GenerateResult {
  PrefillResult prefill;
  std::vector<int32_t> ids;  // generated ids (stop token excluded)
  std::string text;
  std::string finish_reason;  // "stop" or "length" (or "cancelled")
  double gen_s = 0;           // time from the first sample to the end
  int n_decoded = 0;  // tokens run through the model after the prompt (generated - 1, or fewer)
  double prompt_tps()
      const;  // new prompt positions (image tokens included) per second, image encoding counted
  double gen_tps() const;  // decode steps per second
};

// Evaluates the prompt, then samples up to max_tokens tokens, calling on_text with each newly
// completed piece of UTF-8 text; on_text returns false to cancel.
GenerateResult generate(Session& session, const std::vector<int32_t>& prompt,
                        const std::vector<const Image*>& images, const GenerateOptions& options,
                        const std::function<bool(const std::string&)>& on_text = nullptr);

}  // namespace gp
