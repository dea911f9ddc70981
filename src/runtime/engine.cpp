#include "runtime/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>

#include "base/error.h"
#include "base/sys.h"
#include "base/thread_pool.h"
#include "model/vision_model.h"

namespace gp {

Engine::Engine(const std::string& path, const EngineOptions& options) : dir_(path) {
  Timer timer;
  ThreadPool::set_global_threads(options.threads);
  config_ = parse_config(dir_.config(), dir_.optional_json("generation_config.json"),
                         path + "/config.json");
  layout_ = detect_layout(dir_);
  if (layout_.token_map && config_.compact_vocab == 0) config_.compact_vocab = layout_.embed_rows;
  tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::load(path));
  text_ = std::make_unique<TextModel>(config_, load_text_weights(dir_, config_, layout_));
  set_activations(options.exact ? ops::Activations::kF32 : ops::Activations::kInt8);

  // Chat pieces: the template's markers as the tokenizer spells the config's ids.
  pieces_.mm_tokens_per_image = config_.mm_tokens_per_image;
  pieces_.start_of_image = tokenizer_->piece(config_.boi_token);
  pieces_.end_of_image = tokenizer_->piece(config_.eoi_token);
  pieces_.image_soft_token = tokenizer_->piece(config_.image_token);
  for (const auto& [field, name] : {std::pair{&pieces_.start_of_turn, "<start_of_turn>"},
                                    std::pair{&pieces_.end_of_turn, "<end_of_turn>"}})
    check(tokenizer_->piece_to_id(name) >= 0, path + ": the tokenizer has no '" +
                                                  std::string(name) +
                                                  "' piece (not a Gemma 3 tokenizer?)");
  for (const auto& m : template_markers(pieces_))
    if (const int32_t id = tokenizer_->piece_to_id(m); id >= 0) template_ids_.push_back(id);
  stop_tokens_ = config_.eos_tokens;
  for (int32_t id : {tokenizer_->eos_id(), tokenizer_->piece_to_id(pieces_.end_of_turn)})
    if (id >= 0 && std::find(stop_tokens_.begin(), stop_tokens_.end(), id) == stop_tokens_.end())
      stop_tokens_.push_back(id);

  parse_image_normalization(dir_.optional_json("preprocessor_config.json"),
                            dir_.path() + "/preprocessor_config.json", image_mean_, image_std_);
  load_s_ = timer.seconds();
}

void parse_image_normalization(const nlohmann::json& pre, const std::string& path, float mean[3],
                               float std_[3]) {
  for (int c = 0; c < 3; ++c) mean[c] = std_[c] = 0.5f;
  if (!pre.is_object()) return;
  // (x - mean) / std per channel: a std of 0 or a NaN would turn every image into NaNs.
  const std::string where = path + ": ";
  for (auto [key, out, lo] :
       {std::tuple{"image_mean", mean, -1e3}, std::tuple{"image_std", std_, 1e-6}}) {
    if (!pre.contains(key) || pre[key].is_null()) continue;
    const auto& v = pre[key];
    check(v.is_array() && v.size() == 3,
          where + key + " is " + v.dump().substr(0, 80) + ", expected 3 numbers (one per channel)");
    for (int c = 0; c < 3; ++c) {
      const double x = v[c].is_number() ? v[c].get<double>() : std::nan("");
      check(std::isfinite(x) && x >= lo && x <= 1e3,
            where + key + "[" + std::to_string(c) + "] is " + v[c].dump() +
                ", expected a finite number from " + (lo > 0 ? "1e-06" : "-1000") + " to 1000");
      out[c] = static_cast<float>(x);
    }
  }
}

Engine::~Engine() = default;

void Engine::set_activations(ops::Activations a) {
  text_->set_activations(a);
  if (vision_) vision_->set_activations(a);
}

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
  std::vector<int32_t> ids = {config_.bos_token};
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    const auto part = tokenizer_->encode(text.substr(cuts[i], cuts[i + 1] - cuts[i]));
    ids.insert(ids.end(), part.begin(), part.end());
  }
  return ids;
}

std::vector<float> Engine::encode_image(const Image& image) {
  if (!vision_) {
    check(layout_.vision, dir_.path() + ": this checkpoint has no vision tower (text-only)");
    vision_ = std::make_unique<VisionModel>(config_, load_vision_weights(dir_, config_, layout_));
    vision_->set_activations(text_->activations());
  }
  const auto pixels = preprocess_image(image, config_.vision.image_size, image_mean_, image_std_);
  std::vector<float> out(static_cast<size_t>(config_.mm_tokens_per_image) * config_.text.d_model);
  vision_->encode(pixels.data(), out.data());
  return out;
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

Session::Session(Engine& engine, int max_context)
    : engine_(engine),
      cache_(engine.config().text, max_context,
             engine.text().activations() == ops::Activations::kInt8 ? DType::F16 : DType::F32),
      logits_(engine.config().text.n_vocab) {}

const std::vector<float>& Session::image_embeddings(const Image& img, uint64_t hash,
                                                    PrefillResult& r) {
  auto it = image_cache_.find(hash);
  if (it != image_cache_.end()) return it->second;
  if (image_cache_.size() >= 8) image_cache_.clear();
  Timer t;
  auto& e = image_cache_[hash] = engine_.encode_image(img);
  r.image_s += t.seconds();
  ++r.n_images;
  return e;
}

PrefillResult Session::prefill(const std::vector<int32_t>& ids,
                               const std::vector<const Image*>& images, const LogitsSink& sink) {
  const ModelConfig& c = engine_.config();
  const int n = static_cast<int>(ids.size());
  check(n > 0, "empty prompt");
  check(n <= cache_.max_context(), "prompt too long: " + std::to_string(n) +
                                       " tokens exceed the context size of " +
                                       std::to_string(cache_.max_context()) + " (see --ctx-size)");
  for (int i = 0; i < n; ++i)
    check(ids[i] >= 0 && ids[i] < c.text.n_vocab, "token id " + std::to_string(ids[i]) +
                                                      " at prompt position " + std::to_string(i) +
                                                      " is outside the vocabulary (expected 0 to " +
                                                      std::to_string(c.text.n_vocab - 1) + ")");
  // Which image fills each soft-token run.
  std::vector<uint64_t> keys(n, 0);
  std::vector<int> run_start(n, -1), image_of(n, -1);  // per soft token: its run's start, its image
  size_t next_image = 0;
  for (int i = 0; i < n; ++i) {
    if (ids[i] != c.image_token) continue;
    if (i == 0 || ids[i - 1] != c.image_token) {
      check(next_image < images.size(), "the prompt has more runs of image tokens than the " +
                                            std::to_string(images.size()) + " image(s) given");
      ++next_image;
    }
    image_of[i] = static_cast<int>(next_image - 1);
    keys[i] =
        (i > 0 && image_of[i - 1] == image_of[i]) ? keys[i - 1] : image_hash(*images[image_of[i]]);
    run_start[i] = (i > 0 && ids[i - 1] == c.image_token) ? run_start[i - 1] : i;
  }
  check(next_image == images.size(), std::to_string(images.size()) +
                                         " image(s) given but the prompt has " +
                                         std::to_string(next_image) + " run(s) of image tokens");
  for (int i = 0; i < n; ++i)
    if (run_start[i] >= 0 && (i + 1 == n || ids[i + 1] != c.image_token))
      check(i - run_start[i] + 1 == c.mm_tokens_per_image,
            "an image needs exactly " + std::to_string(c.mm_tokens_per_image) +
                " image tokens in a row, the prompt has " + std::to_string(i - run_start[i] + 1));

  // Longest cached prefix, never ending inside an image, always leaving one position to run.
  int keep = 0;
  if (!sink)
    while (keep < n && keep < static_cast<int>(ids_.size()) && ids_[keep] == ids[keep] &&
           image_keys_[keep] == keys[keep])
      ++keep;
  if (keep == n) --keep;
  if (keep > 0 && keep < n && run_start[keep] >= 0) keep = run_start[keep];
  keep = cache_.truncate(keep);
  ids_.assign(ids.begin(), ids.begin() + keep);
  image_keys_.assign(keys.begin(), keys.begin() + keep);

  PrefillResult r;
  r.n_tokens = n;
  r.n_reused = keep;
  const int64_t n_vocab = c.text.n_vocab;
  const int chunk = sink ? 32 : kChunk;
  std::vector<float> rows;
  for (int start = keep; start < n;) {
    int end = std::min(n, start + chunk);
    if (end < n && image_of[end] >= 0 &&
        image_of[end] == image_of[end - 1]) {  // never split an image
      if (run_start[end] > start) {
        end = run_start[end];  // stop before it
      } else {
        while (end < n && image_of[end] == image_of[start])
          ++end;  // it started the chunk: take it whole
      }
    }
    TextBatch b;
    b.ids.assign(ids.begin() + start, ids.begin() + end);
    b.group.assign(end - start, -1);
    b.embeddings.assign(end - start, nullptr);
    bool any_image = false;
    for (int i = start; i < end; ++i) {
      if (run_start[i] < 0) continue;
      any_image = true;
      const auto& e = image_embeddings(*images[image_of[i]], keys[i], r);
      b.group[i - start] = run_start[i];
      b.embeddings[i - start] = e.data() + static_cast<size_t>(i - run_start[i]) * c.text.d_model;
    }
    if (!any_image) {
      b.group.clear();
      b.embeddings.clear();
    }
    Timer t;
    const int n_rows = sink ? end - start : (end == n ? 1 : 0);
    rows.resize(static_cast<size_t>(n_rows) * n_vocab);
    engine_.text().forward(b, cache_, n_rows ? rows.data() : nullptr, n_rows);
    r.prefill_s += t.seconds();
    if (sink) sink(rows.data(), n_rows);
    if (end == n) std::copy(rows.end() - n_vocab, rows.end(), logits_.begin());
    ids_.insert(ids_.end(), ids.begin() + start, ids.begin() + end);
    image_keys_.insert(image_keys_.end(), keys.begin() + start, keys.begin() + end);
    start = end;
  }
  return r;
}

void Session::decode(int32_t id) {
  check(cache_.n_past() + 1 <= cache_.max_context(),
        "context full: " + std::to_string(cache_.max_context()) + " tokens (see --ctx-size)");
  TextBatch b;
  b.ids = {id};
  engine_.text().forward(b, cache_, logits_.data(), 1);
  ids_.push_back(id);
  image_keys_.push_back(0);
}

double GenerateResult::prompt_tps() const {
  const int n = prefill.n_tokens - prefill.n_reused;
  const double s = prefill.prefill_s + prefill.image_s;
  return s > 0 ? n / s : 0;
}
double GenerateResult::gen_tps() const { return gen_s > 0 ? n_decoded / gen_s : 0; }

GenerateResult generate(Session& session, const std::vector<int32_t>& prompt,
                        const std::vector<const Image*>& images, const GenerateOptions& options,
                        const std::function<bool(const std::string&)>& on_text) {
  Engine& engine = session.engine();
  GenerateResult r;
  r.prefill = session.prefill(prompt, images);
  Sampler sampler(options.sampling);
  TokenStreamer streamer(engine.tokenizer());
  const auto& stops = engine.stop_tokens();
  std::vector<int32_t> history = prompt;
  std::string pending;  // text held back while it could still become a stop string
  r.finish_reason = "length";
  Timer t;
  auto emit = [&](const std::string& s) { return !on_text || s.empty() || on_text(s); };
  for (int i = 0; i < options.max_tokens; ++i) {
    if (i > 0) {
      session.decode(r.ids.back());
      ++r.n_decoded;
    }
    const int32_t id =
        sampler.sample(session.last_logits().data(), engine.config().text.n_vocab, history);
    if (!options.ignore_stop_tokens && std::find(stops.begin(), stops.end(), id) != stops.end()) {
      r.finish_reason = "stop";
      break;
    }
    r.ids.push_back(id);
    history.push_back(id);
    // Ids past the tokenizer's pieces (the embedding's padding rows) have no text.
    // Nor do the template's markers: a sampled <start_of_image> is not part of the answer.
    if (id < engine.tokenizer().vocab_size() && !engine.is_template_token(id))
      pending += streamer.push(id);
    // Stop strings: cut at the first match; otherwise release the text that cannot start one.
    size_t cut = std::string::npos;
    for (const auto& s : options.stop_strings)
      if (!s.empty()) cut = std::min(cut, pending.find(s));
    if (cut != std::string::npos) {
      pending.resize(cut);
      r.text += pending;
      emit(pending);
      pending.clear();
      r.finish_reason = "stop";
      break;
    }
    size_t hold = 0;
    for (const auto& s : options.stop_strings)
      for (size_t k = std::min(s.size() - 1, pending.size()); k > hold; --k)
        if (pending.compare(pending.size() - k, k, s, 0, k) == 0) {
          hold = k;
          break;
        }
    const std::string out = pending.substr(0, pending.size() - hold);
    pending.erase(0, out.size());
    r.text += out;
    if (!emit(out)) {
      r.finish_reason = "cancelled";
      break;
    }
  }
  if (r.finish_reason != "cancelled") {
    pending += streamer.flush();
    r.text += pending;
    emit(pending);
  }
  r.gen_s = t.seconds();
  return r;
}

}  // namespace gp
