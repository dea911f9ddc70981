#include "runtime/engine.h"

#include <algorithm>

#include "base/error.h"
#include "base/sys.h"
#include "base/thread_pool.h"
#include "model/vision_model.h"

namespace gp {

DType parse_kv_dtype(const std::string& s) {
  if (s == "f16") return DType::F16;
  if (s == "f32") return DType::F32;
  throw Error("'" + s + "' is not a KV cache type (expected f16 or f32)");
}

Engine::Engine(const std::string& path, const EngineOptions& options)
    : files_(path), options_(options) {
  Timer timer;
  ThreadPool::set_global_threads(options.threads);
  tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::load(path));
  text_ = std::make_unique<TextModel>(config(), load_text_weights(dir(), config(), layout()),
                                      options.activations(), options.repack);

  // Chat pieces: the template's markers as the tokenizer spells the config's ids.
  pieces_.mm_tokens_per_image = config().mm_tokens_per_image;
  pieces_.start_of_image = tokenizer_->piece(config().boi_token);
  pieces_.end_of_image = tokenizer_->piece(config().eoi_token);
  pieces_.image_soft_token = tokenizer_->piece(config().image_token);
  for (const auto& [field, name] : {std::pair{&pieces_.start_of_turn, "<start_of_turn>"},
                                    std::pair{&pieces_.end_of_turn, "<end_of_turn>"}})
    check(tokenizer_->piece_to_id(name) >= 0, path + ": the tokenizer has no '" +
                                                  std::string(name) +
                                                  "' piece (not a Gemma 3 tokenizer?)");
  for (const auto& m : template_markers(pieces_))
    if (const int32_t id = tokenizer_->piece_to_id(m); id >= 0) template_ids_.push_back(id);
  stop_tokens_ = config().eos_tokens;
  for (int32_t id : {tokenizer_->eos_id(), tokenizer_->piece_to_id(pieces_.end_of_turn)})
    if (id >= 0 && std::find(stop_tokens_.begin(), stop_tokens_.end(), id) == stop_tokens_.end())
      stop_tokens_.push_back(id);
  load_s_ = timer.seconds();
}

Engine::~Engine() = default;

std::vector<int32_t> Engine::chat_prompt(const std::vector<ChatMessage>& messages) const {
  std::vector<std::pair<size_t, size_t>> content;
  const std::string text = format_chat(messages, pieces_, &content);
  // A marker spelled inside message content is encoded in two parts (its first byte, the rest),
  // so the tokenizer never sees it whole and it becomes ordinary text pieces.
  std::vector<size_t> cuts = {0, text.size()};
  for (const auto& [begin, end] : content)
    for (const auto& m : template_markers(pieces_))
      for (size_t at = m.empty() ? std::string::npos : text.find(m, begin);
           at != std::string::npos && at + m.size() <= end; at = text.find(m, at + 1)) {
        cuts.push_back(at);
        cuts.push_back(at + 1);
      }
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  std::vector<int32_t> ids = {config().bos_token};
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    const auto part = tokenizer_->encode(text.substr(cuts[i], cuts[i + 1] - cuts[i]));
    ids.insert(ids.end(), part.begin(), part.end());
  }
  return ids;
}

std::unique_ptr<VisionEncoding> Engine::begin_image(const Image& image) {
  if (!vision_) {
    check(layout().vision, dir().path() + ": this checkpoint has no vision tower (text-only)");
    vision_ = std::make_unique<VisionModel>(
        config(), load_vision_weights(dir(), config(), layout()), options_.activations());
    vision_->set_observer(vision_observer_);
  }
  const auto pixels =
      preprocess_image(image, config().vision.image_size, files_.image_normalization().mean,
                       files_.image_normalization().std);
  return std::make_unique<VisionEncoding>(*vision_, pixels.data());
}

std::vector<float> Engine::encode_image(const Image& image) {
  const auto e = begin_image(image);
  while (!e->done()) e->step();
  return std::move(e->output());
}

void Engine::set_vision_observer(VisionModel::Observer obs) {
  vision_observer_ = std::move(obs);
  if (vision_) vision_->set_observer(vision_observer_);
}

namespace {
uint64_t image_hash(const Image& img) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the size and the pixels
  auto mix = [&](const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  };
  const int dims[2] = {img.width, img.height};
  mix(reinterpret_cast<const uint8_t*>(dims), sizeof dims);
  mix(img.rgb.data(), img.rgb.size());
  return h | 1;  // never 0, which marks text positions
}
}  // namespace

Session::Session(Engine& engine, int max_context, int prefill_chunk)
    : engine_(engine),
      cache_(engine.config().text, max_context, engine.options().kv_dtype()),
      prefill_chunk_(prefill_chunk),
      logits_(engine.config().text.n_vocab) {
  check(prefill_chunk > 0, "the prefill chunk is " + std::to_string(prefill_chunk) +
                               " positions, expected at least 1");
}

int Session::uncached_image(int start, int end) const {
  for (int i = start; i < end; ++i)
    if (prompt_.runs.keys[i] != 0 && !image_cache_.count(prompt_.runs.keys[i])) return i;
  return -1;
}

void Session::encode_step(int at) {
  const uint64_t key = prompt_.runs.keys[at];
  Timer t;
  if (!encoding_ || encoding_key_ != key) {
    encoding_ = engine_.begin_image(*prompt_.images[prompt_.runs.image[at]]);
    encoding_key_ = key;
  }
  encoding_->step();
  if (encoding_->done()) {
    // Recent images stay (a returning conversation reuses them), those of this prompt always: a
    // chunk's rows point into their embeddings.
    const auto& keys = prompt_.runs.keys;
    if (image_cache_.size() >= 8)
      std::erase_if(image_cache_, [&](const auto& kv) {
        return std::find(keys.begin(), keys.end(), kv.first) == keys.end();
      });
    image_cache_[key] = std::move(encoding_->output());
    encoding_.reset();
    ++prompt_.result.n_images;
  }
  prompt_.result.image_s += t.seconds();
}

bool Session::image_pending() const {
  return prompt_pending() && uncached_image(prompt_.next, next_chunk_end()) >= 0;
}

void Session::image_step() {
  const int at = prompt_pending() ? uncached_image(prompt_.next, next_chunk_end()) : -1;
  check(at >= 0, "no image to encode");
  encode_step(at);
}

void Session::cancel_prompt() {
  encoding_.reset();
  prompt_.next = static_cast<int>(prompt_.ids.size());
}

void Session::check_prompt_ids(const std::vector<int32_t>& ids) const {
  const int n = static_cast<int>(ids.size()), n_vocab = engine_.config().text.n_vocab;
  check(n > 0, "empty prompt");
  check(n <= cache_.max_context(), "prompt too long: " + std::to_string(n) +
                                       " tokens exceed the context size of " +
                                       std::to_string(cache_.max_context()) + " (see --ctx-size)");
  for (int i = 0; i < n; ++i)
    check(ids[i] >= 0 && ids[i] < n_vocab,
          "token id " + std::to_string(ids[i]) + " at prompt position " + std::to_string(i) +
              " is outside the vocabulary (expected 0 to " + std::to_string(n_vocab - 1) + ")");
}

Session::ImageRuns Session::ImageRuns::of(const ModelConfig& c, const std::vector<int32_t>& ids,
                                          const std::vector<const Image*>& images) {
  const int n = static_cast<int>(ids.size());
  ImageRuns r;
  r.keys.assign(n, 0);
  r.start.assign(n, -1);
  r.image.assign(n, -1);
  size_t next_image = 0;
  for (int i = 0; i < n; ++i) {
    if (ids[i] != c.image_token) continue;
    if (i == 0 || ids[i - 1] != c.image_token) {
      check(next_image < images.size(), "the prompt has more runs of image tokens than the " +
                                            std::to_string(images.size()) + " image(s) given");
      ++next_image;
    }
    r.image[i] = static_cast<int>(next_image - 1);
    const bool continues = i > 0 && ids[i - 1] == c.image_token;
    r.keys[i] = continues ? r.keys[i - 1] : image_hash(*images[r.image[i]]);
    r.start[i] = continues ? r.start[i - 1] : i;
  }
  check(next_image == images.size(), std::to_string(images.size()) +
                                         " image(s) given but the prompt has " +
                                         std::to_string(next_image) + " run(s) of image tokens");
  for (int i = 0; i < n; ++i)
    if (r.start[i] >= 0 && (i + 1 == n || ids[i + 1] != c.image_token))
      check(i - r.start[i] + 1 == c.mm_tokens_per_image,
            "an image needs exactly " + std::to_string(c.mm_tokens_per_image) +
                " image tokens in a row, the prompt has " + std::to_string(i - r.start[i] + 1));
  return r;
}

int Session::reuse_prefix(const std::vector<int32_t>& ids, const std::vector<uint64_t>& keys) {
  const int n = static_cast<int>(ids.size());
  int keep = 0;
  while (keep < n && keep < static_cast<int>(ids_.size()) && ids_[keep] == ids[keep] &&
         image_keys_[keep] == keys[keep])
    ++keep;
  if (keep == n) --keep;
  if (keep > 0 && prompt_.runs.start[keep] >= 0) keep = prompt_.runs.start[keep];
  return keep;
}

int Session::chunk_end(int start, int chunk) const {
  const int n = static_cast<int>(prompt_.ids.size());
  const auto& image = prompt_.runs.image;
  int end = std::min(n, start + chunk);
  if (end < n && image[end] >= 0 && image[end] == image[end - 1]) {  // never split an image
    if (prompt_.runs.start[end] > start) {
      end = prompt_.runs.start[end];  // stop before it
    } else {
      while (end < n && image[end] == image[start]) ++end;  // it started the chunk: take it whole
    }
  }
  return end;
}

int Session::next_chunk_end() const {
  return chunk_end(prompt_.next,
                   prompt_.every_logit ? std::min(kLogitsChunk, prefill_chunk_) : prefill_chunk_);
}

TextBatch Session::assemble(int start, int end) {
  const ImageRuns& runs = prompt_.runs;
  TextBatch b;
  b.ids.assign(prompt_.ids.begin() + start, prompt_.ids.begin() + end);
  bool any_image = false;
  for (int i = start; i < end && !any_image; ++i) any_image = runs.start[i] >= 0;
  if (!any_image) return b;
  for (int at; (at = uncached_image(start, end)) >= 0;) encode_step(at);
  b.group.assign(end - start, -1);
  b.embeddings.assign(end - start, nullptr);
  const int64_t d = engine_.config().text.d_model;
  for (int i = start; i < end; ++i) {
    if (runs.start[i] < 0) continue;
    b.group[i - start] = runs.start[i];
    b.embeddings[i - start] = image_cache_.at(runs.keys[i]).data() + (i - runs.start[i]) * d;
  }
  return b;
}

void Session::begin_prompt(const std::vector<int32_t>& ids, const std::vector<const Image*>& images,
                           bool every_logit) {
  check_prompt_ids(ids);
  encoding_.reset();
  prompt_ = Prompt{};
  prompt_.runs = ImageRuns::of(engine_.config(), ids, images);
  prompt_.ids = ids;
  prompt_.images = images;
  prompt_.every_logit = every_logit;
  // With every logit wanted, every position runs: nothing is reused.
  const int keep = cache_.truncate(every_logit ? 0 : reuse_prefix(ids, prompt_.runs.keys));
  ids_.assign(ids.begin(), ids.begin() + keep);
  image_keys_.assign(prompt_.runs.keys.begin(), prompt_.runs.keys.begin() + keep);
  prompt_.next = keep;
  prompt_.result.n_tokens = static_cast<int>(ids.size());
  prompt_.result.n_reused = keep;
}

SequenceRows Session::prompt_rows() {
  check(prompt_pending(), "no prompt to evaluate");
  const int n = static_cast<int>(prompt_.ids.size()), start = prompt_.next;
  const int end = next_chunk_end();
  rows_ = assemble(start, end);
  rows_keys_.assign(prompt_.runs.keys.begin() + start, prompt_.runs.keys.begin() + end);
  prompt_.next = end;
  if (prompt_.every_logit) {
    chunk_logits_.resize(static_cast<size_t>(end - start) * engine_.config().text.n_vocab);
    return {&rows_, &cache_, chunk_logits_.data(), end - start};
  }
  return {&rows_, &cache_, end == n ? logits_.data() : nullptr, end == n ? 1 : 0};
}

SequenceRows Session::decode_rows(int32_t id) {
  check(!prompt_pending(), "a prompt is still being evaluated");
  check(cache_.n_past() + 1 <= cache_.max_context(),
        "context full: " + std::to_string(cache_.max_context()) + " tokens (see --ctx-size)");
  rows_ = TextBatch{};
  rows_.ids = {id};
  rows_keys_ = {0};
  return {&rows_, &cache_, logits_.data(), 1};
}

void Session::rows_ran() {
  ids_.insert(ids_.end(), rows_.ids.begin(), rows_.ids.end());
  image_keys_.insert(image_keys_.end(), rows_keys_.begin(), rows_keys_.end());
  if (prompt_.every_logit && !prompt_pending())
    std::copy(chunk_logits_.end() - logits_.size(), chunk_logits_.end(), logits_.begin());
}

PrefillResult Session::prefill(const std::vector<int32_t>& ids,
                               const std::vector<const Image*>& images, const LogitsSink& sink) {
  begin_prompt(ids, images, sink != nullptr);
  const int64_t n_vocab = engine_.config().text.n_vocab;
  while (prompt_pending()) {
    const SequenceRows rows = prompt_rows();
    Timer t;
    engine_.text().forward(std::span(&rows, 1));
    prompt_.result.prefill_s += t.seconds();
    rows_ran();
    if (sink) sink(chunk_logits_.data(), static_cast<int64_t>(chunk_logits_.size()) / n_vocab);
  }
  return prompt_.result;
}

void Session::decode(int32_t id) {
  const SequenceRows rows = decode_rows(id);
  engine_.text().forward(std::span(&rows, 1));
  rows_ran();
}

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "?";
}

double GenerateResult::prompt_tps() const {
  const int n = prefill.n_tokens - prefill.n_reused;
  const double s = prefill.prefill_s + prefill.image_s;
  return s > 0 ? n / s : 0;
}
double GenerateResult::gen_tps() const { return gen_s > 0 ? n_decoded / gen_s : 0; }

std::string StopStringFilter::push(const std::string& text) {
  if (stopped_) return "";
  held_ += text;
  // Cut at the first stop string.
  size_t cut = std::string::npos;
  for (const auto& s : stops_)
    if (!s.empty()) cut = std::min(cut, held_.find(s));
  if (cut != std::string::npos) {
    held_.resize(cut);
    stopped_ = true;
    return flush();
  }
  // Otherwise hold the longest end that begins a stop string.
  size_t hold = 0;
  for (const auto& s : stops_)
    for (size_t k = std::min(s.size() - 1, held_.size()); k > hold; --k)
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  std::string out = held_.substr(0, held_.size() - hold);
  held_.erase(0, out.size());
  return out;
}

std::string StopStringFilter::flush() {
  std::string out;
  out.swap(held_);
  return out;
}

Generation::Generation(const Engine& engine, const std::vector<int32_t>& prompt,
                       const GenerateOptions& options)
    : engine_(engine),
      options_(options),
      sampler_(options.sampling),
      streamer_(engine.tokenizer()),
      stops_(options.stop_strings),
      history_(prompt) {
  done_ = options.max_tokens <= 0;
}

std::string Generation::step(float* logits) {
  check(!done_, "the generation has ended");
  const auto& stop_ids = engine_.stop_tokens();
  const int32_t id = sampler_.sample(logits, engine_.config().text.n_vocab, history_);
  if (!options_.ignore_stop_tokens &&
      std::find(stop_ids.begin(), stop_ids.end(), id) != stop_ids.end()) {
    result_.finish_reason = FinishReason::kStop;
    done_ = true;
    return stops_.push(streamer_.flush()) + stops_.flush();
  }
  result_.ids.push_back(id);
  history_.push_back(id);
  // Ids past the tokenizer's pieces (the embedding's padding rows) have no text. Nor do the
  // template's markers: a sampled <start_of_image> is not part of the answer.
  std::string text;
  if (id < engine_.tokenizer().vocab_size() && !engine_.is_template_token(id))
    text = stops_.push(streamer_.push(id));
  if (stops_.stopped()) {
    result_.finish_reason = FinishReason::kStop;
    done_ = true;
  } else if (static_cast<int>(result_.ids.size()) >= options_.max_tokens) {
    result_.finish_reason = FinishReason::kLength;
    done_ = true;
    text += stops_.push(streamer_.flush()) + stops_.flush();
  }
  result_.text += text;
  return text;
}

void Generation::cancel() {
  result_.finish_reason = FinishReason::kCancelled;
  done_ = true;
}

GenerateResult generate(Session& session, const std::vector<int32_t>& prompt,
                        const std::vector<const Image*>& images, const GenerateOptions& options,
                        const std::function<bool(const std::string&)>& on_text) {
  const PrefillResult prefill = session.prefill(prompt, images);
  Generation gen(session.engine(), prompt, options);
  Timer t;
  while (!gen.done()) {
    const std::string text = gen.step(session.last_logits().data());
    if (gen.done()) {
      if (on_text && !text.empty()) on_text(text);
      break;
    }
    if (on_text && !text.empty() && !on_text(text)) {
      gen.cancel();
      break;
    }
    session.decode(gen.next_id());
    ++gen.result().n_decoded;
  }
  GenerateResult r = std::move(gen.result());
  r.prefill = prefill;
  r.gen_s = t.seconds();
  return r;
}

}  // namespace gp
