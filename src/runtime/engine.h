// The engine: one loaded checkpoint (config, tokenizer, text decoder; the vision tower mapped on
// the first image), and sessions that evaluate prompts over a KV cache and generate tokens.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/image.h"
#include "io/tokenizer.h"
#include "model/config.h"
#include "model/model_files.h"
#include "model/tensor_table.h"
#include "model/text_model.h"
#include "model/vision_model.h"
#include "runtime/chat.h"
#include "runtime/kv_cache.h"
#include "runtime/sampler.h"

namespace gp {

// Fixed when the engine is built: no caller changes the precision of a live engine.
struct EngineOptions {
  int threads = 0;       // 0: all cores
  bool progress = true;  // progress display while loading
  // f32 activations in every linear (slower; the float reference to 1e-3) instead of int8.
  bool exact = false;
  // How sessions' KV caches store keys and values, F16 or F32 (--kv); unset: F16, or F32 with
  // exact (the reference's arithmetic end to end).
  std::optional<DType> kv = std::nullopt;
  // --repack: with int8 activations, copy the layers' linears into the layout that this CPU's
  // int8 kernels read faster where it has one (AVX3_DL; TextModel), at about 0.4 s of load.
  // Faster short prompts and batched decode; off by default because one-stream decode from
  // memory measured 0.71-1.08x the mapped rows on the shared host we have (docs/BENCHMARKS.md).
  bool repack = false;

  ops::Activations activations() const {
    return exact ? ops::Activations::kF32 : ops::Activations::kInt8;
  }
  DType kv_dtype() const { return kv.value_or(exact ? DType::F32 : DType::F16); }
};

// The value of --kv: "f16" or "f32". Throws Error naming the value otherwise.
DType parse_kv_dtype(const std::string& s);

class Engine {
 public:
  Engine(const std::string& dir, const EngineOptions& options = {});
  ~Engine();

  const ModelFiles& files() const { return files_; }
  const ModelDir& dir() const { return files_.dir(); }
  const ModelConfig& config() const { return files_.config(); }
  const TableLayout& layout() const { return files_.layout(); }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const EngineOptions& options() const { return options_; }
  const TextModel& text() const { return *text_; }
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
  // The same in steps (VisionEncoding): encode_image runs them all.
  std::unique_ptr<VisionEncoding> begin_image(const Image& image);
  bool vision_loaded() const { return vision_ != nullptr; }
  // Called after each stage of every image encoding (VisionModel::Observer), on the thread that
  // runs it: for dumps and for tests that follow an encoding's progress.
  void set_vision_observer(VisionModel::Observer obs);

 private:
  ModelFiles files_;
  EngineOptions options_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<TextModel> text_;
  std::unique_ptr<VisionModel> vision_;
  VisionModel::Observer vision_observer_;
  ChatPieces pieces_;
  std::vector<int32_t> stop_tokens_;
  std::vector<int32_t> template_ids_;
  double load_s_ = 0;
};

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
  // Positions per forward while evaluating a prompt: bounds the activations' memory and, in the
  // server, how long one prompt holds up the other streams' next tokens. Image runs are not split.
  static constexpr int kPrefillChunk = 256;
  // The same when every position's logits are wanted: [chunk, n_vocab] floats (33 MB at 32).
  static constexpr int kLogitsChunk = 32;

  // The cache stores keys and values as engine.options().kv_dtype().
  Session(Engine& engine, int max_context, int prefill_chunk = kPrefillChunk);
  Engine& engine() { return engine_; }
  int max_context() const { return cache_.max_context(); }
  int n_cached() const { return static_cast<int>(ids_.size()); }
  // What the cache holds, as prompt ids (the server routes a conversation to the session holding
  // the longest prefix of it).
  const std::vector<int32_t>& cached_ids() const { return ids_; }
  // Bytes of cached keys and values the next decode step reads.
  size_t kv_bytes_per_step() const { return cache_.bytes_attended(); }
  const KvCache& cache() const { return cache_; }

  // Makes the cache hold `ids`: each run of image_token_index ids takes the next image. Leaves the
  // logits of the last position in last_logits() (recomputing it when the whole prompt was cached).
  // With a sink, every position is run and its logits are passed on (no reuse).
  PrefillResult prefill(const std::vector<int32_t>& ids, const std::vector<const Image*>& images,
                        const LogitsSink& sink = nullptr);
  // Appends one token; its logits replace last_logits().
  void decode(int32_t id);
  std::vector<float>& last_logits() { return logits_; }

  // prefill and decode in steps, so that a caller can run the rows of several sessions in one
  // forward (TextModel::forward over SequenceRows): begin_prompt, then while prompt_pending(),
  // run prompt_rows() and call rows_ran(); a decode step is decode_rows(id), run, rows_ran().
  // The images must outlive the prompt's evaluation.
  void begin_prompt(const std::vector<int32_t>& ids, const std::vector<const Image*>& images,
                    bool every_logit = false);
  bool prompt_pending() const { return prompt_.next < static_cast<int>(prompt_.ids.size()); }
  // The next chunk of the pending prompt (its images encoded): logits of its last position go to
  // last_logits() when it ends the prompt; with every_logit, of each position to chunk_logits().
  SequenceRows prompt_rows();
  SequenceRows decode_rows(int32_t id);
  // Records the rows of the last prompt_rows() or decode_rows() as run by a forward.
  void rows_ran();
  // The counts of the prompt begun last (timings are the caller's).
  PrefillResult& prompt_result() { return prompt_.result; }
  const std::vector<float>& chunk_logits() const { return chunk_logits_; }

  // Image encoding in steps, so that the server runs the other streams' steps in between:
  // image_pending() says whether the next chunk of the pending prompt needs an image that is
  // neither encoded nor in the image cache; image_step() then runs one step of its encoding, the
  // last of which puts it in the cache. prompt_rows() encodes at once whatever is still missing.
  bool image_pending() const;
  void image_step();
  // An encoding is under way (begun, not ended): it holds one image's activations.
  bool image_encoding() const { return encoding_ != nullptr; }
  // Of the encoding under way: steps run and steps in all (0 and 0 when none).
  int image_steps_done() const { return encoding_ ? encoding_->steps_done() : 0; }
  int image_steps() const { return encoding_ ? encoding_->n_steps() : 0; }
  // Of the prompt begun last: positions run (those from the cache included) and in all.
  int prompt_done() const { return prompt_.next; }
  int prompt_size() const { return static_cast<int>(prompt_.ids.size()); }
  // Drops the rest of the pending prompt and a paused image encoding (its memory is freed); the
  // cache keeps the positions already run.
  void cancel_prompt();

 private:
  // Per prompt position, the image run it belongs to (ImageRuns::of).
  struct ImageRuns {
    std::vector<uint64_t> keys;  // [n] content hash of the image of a soft token, 0 otherwise
    std::vector<int> start;      // [n] first position of its run, -1 for text
    std::vector<int> image;      // [n] index into the prompt's images, -1 for text
    // Checks that the runs of image_token ids match the images (count, mm_tokens_per_image each)
    // and hashes each image.
    static ImageRuns of(const ModelConfig& c, const std::vector<int32_t>& ids,
                        const std::vector<const Image*>& images);
  };
  struct Prompt {
    std::vector<int32_t> ids;
    std::vector<const Image*> images;
    ImageRuns runs;
    int next = 0;  // first position not yet run
    bool every_logit = false;
    PrefillResult result;
  };

  void check_prompt_ids(const std::vector<int32_t>& ids) const;
  // Truncates the cache to the longest prefix of the prompt it holds (never ending inside an
  // image, always leaving one position to run); returns its length.
  int reuse_prefix(const std::vector<int32_t>& ids, const std::vector<uint64_t>& keys);
  // End of the chunk that starts at `start`: chunk_ positions, moved so no image run is split.
  int chunk_end(int start, int chunk) const;
  int next_chunk_end() const;  // of the pending prompt's next chunk
  // The first prompt position in [start, end) whose image the image cache lacks, or -1.
  int uncached_image(int start, int end) const;
  // Runs the next step of the encoding of the image at prompt position `at`.
  void encode_step(int at);
  // The rows of positions [start, end) of the prompt, with their images' embeddings.
  TextBatch assemble(int start, int end);

  Engine& engine_;
  KvCache cache_;
  const int prefill_chunk_;
  std::vector<int32_t> ids_;          // what the cache holds
  std::vector<uint64_t> image_keys_;  // per position: hash of a soft token's image, 0 otherwise
  std::vector<float> logits_;         // [n_vocab]
  std::map<uint64_t, std::vector<float>> image_cache_;  // recent image embeddings by content hash
  std::unique_ptr<VisionEncoding> encoding_;            // the image being encoded in steps
  uint64_t encoding_key_ = 0;                           // its content hash
  Prompt prompt_;                                       // the prompt being evaluated
  TextBatch rows_;                                      // the rows handed out last
  std::vector<uint64_t> rows_keys_;                     // [rows] their image keys
  std::vector<float> chunk_logits_;                     // [rows, n_vocab] with every_logit
};

// Why a generation ended.
enum class FinishReason { kStop, kLength, kCancelled };
// "stop", "length", "cancelled": the names OpenAI's API and the tools print.
const char* finish_reason_name(FinishReason r);

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
  FinishReason finish_reason = FinishReason::kLength;
  double gen_s = 0;   // time from the first sample to the end
  int n_decoded = 0;  // tokens run through the model after the prompt (generated - 1, or fewer)
  // New prompt positions (image tokens included) per second, image encoding counted.
  double prompt_tps() const;
  double gen_tps() const;  // decode steps per second
};

// Streamed text held back while it could still become the start of a stop string.
class StopStringFilter {
 public:
  explicit StopStringFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Takes the next text; returns what can be released: everything before a stop string once one
  // appears (stopped() is then true and later text is dropped), else all that cannot start one.
  std::string push(const std::string& text);
  // The text still held (at the end of a generation that did not stop on a string).
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

// One generation after its prompt: sampling, stop tokens and strings, and the text as it comes.
// generate() drives one; the server drives several, a decode step of each per batched forward.
class Generation {
 public:
  Generation(const Engine& engine, const std::vector<int32_t>& prompt,
             const GenerateOptions& options);
  // Samples a token from the logits of the last position; returns the text it completes (held
  // back near stop strings). After it, done() or next_id() is the token to run next.
  std::string step(float* logits);
  bool done() const { return done_; }
  int32_t next_id() const { return result_.ids.back(); }
  // Ends the generation as cancelled (the client went away); the held text is dropped.
  void cancel();
  GenerateResult& result() { return result_; }

 private:
  const Engine& engine_;
  const GenerateOptions options_;
  Sampler sampler_;
  TokenStreamer streamer_;
  StopStringFilter stops_;
  std::vector<int32_t> history_;  // prompt and generated ids (repetition penalty)
  GenerateResult result_;
  bool done_ = false;
};

// Evaluates the prompt, then samples up to max_tokens tokens, calling on_text with each newly
// completed piece of UTF-8 text; on_text returns false to cancel.
GenerateResult generate(Session& session, const std::vector<int32_t>& prompt,
                        const std::vector<const Image*>& images, const GenerateOptions& options,
                        const std::function<bool(const std::string&)>& on_text = nullptr);

}  // namespace gp
