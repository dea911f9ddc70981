#include "model/synth.h"

#include <stdlib.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <unordered_set>

#include "base/atomic_file.h"
#include "base/error.h"
#include "base/sys.h"
#include "base/thread_pool.h"
#include "tensor/dtype.h"
#include "tensor/weight.h"

namespace gp {
namespace fs = std::filesystem;

namespace {

// ---- Random numbers: splitmix64 streams, one per (seed, tensor, row), so any split of the rows
// over threads gives the same bytes, and a row of a derived (pruned) tensor can replay the
// original's row. Uniform floats are built from the bits by hand: std distributions differ between
// standard libraries.

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

class Rng {
 public:
  explicit Rng(uint64_t state) : state_(state) {}
  uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ull;
    return mix64(state_);
  }
  // Uniform in [0, 1) with 24 random bits: exact in float.
  float unit() { return static_cast<float>(next() >> 40) * 0x1p-24f; }
  float symmetric() { return 2.0f * unit() - 1.0f; }  // uniform in [-1, 1)
  uint64_t below(uint64_t n) { return next() % n; }   // bias of n/2^64 is irrelevant here

 private:
  uint64_t state_;
};

uint64_t tensor_key(uint64_t seed, const std::string& name) {
  return mix64(mix64(seed) ^ fnv1a(name));
}
Rng row_rng(uint64_t key, int64_t row) {
  return Rng(mix64(key + static_cast<uint64_t>(row + 1) * 0xd1b54a32d192ed03ull));
}

// ---- The tokenizer: a SentencePiece BPE vocabulary with Gemma's kinds of pieces (control,
// unknown, user-defined turn and image markers, 256 byte pieces, then normal pieces). Normal pieces
// are single characters or merges of two earlier pieces, so BPE can form every one of them; a
// given share of them is printable ASCII (what SPEC §5 step 1 keeps), the rest holds other scripts.

const std::string kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's escaped space

struct Special {
  const char* piece;
  int type;
};
constexpr Special kSpecials[] = {
    {"<pad>", SpPiece::kControl},
    {"<eos>", SpPiece::kControl},
    {"<bos>", SpPiece::kControl},
    {"<unk>", SpPiece::kUnknown},
    {"<start_of_turn>", SpPiece::kUserDefined},
    {"<end_of_turn>", SpPiece::kUserDefined},
    {"<start_of_image>", SpPiece::kUserDefined},
    {"<end_of_image>", SpPiece::kUserDefined},
    {"<image_soft_token>", SpPiece::kUserDefined},
};

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// The first n letters of Latin-1, Greek, Cyrillic, kana and CJK, in that order.
std::vector<std::string> foreign_alphabet(int n) {
  const std::pair<uint32_t, uint32_t> ranges[] = {
      {0xC0, 0xFF},   {0x3B1, 0x3C9},   {0x391, 0x3A9},   {0x430, 0x44F},
      {0x410, 0x42F}, {0x3041, 0x3096}, {0x30A1, 0x30FA}, {0x4E00, 0x9FFF}};
  std::vector<std::string> out;
  for (auto [lo, hi] : ranges)
    for (uint32_t cp = lo; cp <= hi && static_cast<int>(out.size()) < n; ++cp)
      if (cp != 0xD7 && cp != 0xF7 && cp != 0x3A2) out.push_back(utf8(cp));
  return out;
}

// Printable ASCII once the escaped space is read as a space: the pieces SPEC §5 step 1 keeps.
bool is_ascii_piece(const std::string& p) {
  for (size_t i = 0; i < p.size();) {
    if (p.compare(i, kSpace.size(), kSpace) == 0) {
      i += kSpace.size();
    } else if (p[i] >= 32 && p[i] <= 126) {
      ++i;
    } else {
      return false;
    }
  }
  return !p.empty();
}

// Common English words, most frequent first: with their prefix chains as pieces, everyday text
// tokenizes into about as many pieces as with a trained vocabulary.
constexpr const char* kWords[] = {
    "the",   "of",       "and",    "to",       "in",     "is",     "you",   "that",  "it",
    "he",    "was",      "for",    "on",       "are",    "as",     "with",  "his",   "they",
    "at",    "be",       "this",   "have",     "from",   "or",     "one",   "had",   "by",
    "word",  "but",      "not",    "what",     "all",    "were",   "we",    "when",  "your",
    "can",   "said",     "there",  "use",      "an",     "each",   "which", "she",   "do",
    "how",   "their",    "if",     "will",     "up",     "other",  "about", "out",   "many",
    "then",  "them",     "these",  "so",       "some",   "her",    "would", "make",  "like",
    "him",   "into",     "time",   "has",      "look",   "two",    "more",  "write", "go",
    "see",   "number",   "no",     "way",      "could",  "people", "my",    "than",  "first",
    "water", "been",     "call",   "who",      "oil",    "its",    "now",   "find",  "long",
    "down",  "day",      "did",    "get",      "come",   "made",   "may",   "part",  "hello",
    "image", "describe", "detail", "question", "answer", "model",  "user",  "text",  "help",
    "thank", "please"};

// `count` pieces: the `letters` (and `extra` single characters) first, then the `words` with
// their prefix chains (up to half of the pieces), then merges left + right where left is "▁" or
// an earlier piece and right an earlier piece without "▁", so the space only ever starts a piece,
// as with whitespace splitting. Earlier pieces are drawn more often, which keeps most pieces short.
std::vector<std::string> grow_pieces(const std::vector<std::string>& letters,
                                     const std::vector<std::string>& extra,
                                     const std::vector<std::string>& words, size_t count,
                                     size_t max_bytes, Rng& rng,
                                     std::unordered_set<std::string>& seen) {
  std::vector<std::string> out = extra, left_pool, right_pool;
  for (const auto& l : letters) {
    out.push_back(l);
    left_pool.push_back(l);
    right_pool.push_back(l);
  }
  for (const auto& p : out) seen.insert(p);
  for (const auto& w : words) {
    const std::string capitalized = char(w[0] - 'a' + 'A') + w.substr(1);
    for (const std::string& form : {kSpace + w, kSpace + capitalized}) {
      for (size_t n = kSpace.size() + 1; n <= form.size() && out.size() < count / 2; ++n) {
        const std::string prefix = form.substr(0, n);
        if (!seen.insert(prefix).second) continue;
        out.push_back(prefix);
        left_pool.push_back(prefix);
      }
    }
  }
  auto pick = [&](const std::vector<std::string>& pool) -> const std::string& {
    const float u = rng.unit();
    return pool[static_cast<size_t>(u * u * static_cast<float>(pool.size()))];
  };
  while (out.size() < count) {
    const std::string piece = (rng.below(4) == 0 ? kSpace : pick(left_pool)) + pick(right_pool);
    if (piece.size() > max_bytes || !seen.insert(piece).second) continue;
    out.push_back(piece);
    left_pool.push_back(piece);
    if (piece.compare(0, kSpace.size(), kSpace) != 0) right_pool.push_back(piece);
  }
  out.resize(count);
  return out;
}

struct VocabShape {
  int n_pieces;   // pieces in tokenizer.model
  int n_ascii;    // normal pieces that are printable ASCII
  int n_foreign;  // distinct non-ASCII characters the other normal pieces are made of
  uint64_t seed;  // the tokenizer does not depend on the weights' seed
};

std::vector<SpPiece> synth_pieces(const VocabShape& v) {
  std::vector<SpPiece> pieces;
  for (const Special& s : kSpecials) pieces.push_back({s.piece, 0.0f, s.type});
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    pieces.push_back({name, 0.0f, SpPiece::kByte});
  }
  const size_t n_normal = v.n_pieces - pieces.size();
  const size_t n_ascii = v.n_ascii, n_other = n_normal - n_ascii;
  Rng rng(mix64(v.seed));
  std::unordered_set<std::string> seen;
  seen.reserve(2 * v.n_pieces);
  std::vector<std::string> letters, symbols = {kSpace};
  for (char c = 33; c <= 126; ++c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
      letters.push_back(std::string(1, c));
    else
      symbols.push_back(std::string(1, c));  // digits stay single pieces (Gemma splits digits)
  }
  // ASCII pieces of up to 16 bytes; the others of a space and up to 6 three-byte characters.
  const auto ascii =
      grow_pieces(letters, symbols, {std::begin(kWords), std::end(kWords)}, n_ascii, 16, rng, seen);
  const auto other =
      grow_pieces(foreign_alphabet(v.n_foreign), {}, {}, n_other, kSpace.size() + 3 * 6, rng, seen);
  // Interleave the two kinds over the ids (selection sampling: exactly n_ascii ASCII slots).
  size_t ia = 0, io = 0;
  for (size_t i = 0; i < n_normal; ++i) {
    const bool take_ascii = rng.below(n_normal - i) < n_ascii - ia;
    const std::string& p = take_ascii ? ascii[ia++] : other[io++];
    pieces.push_back({p, -static_cast<float>(i), SpPiece::kNormal});
  }
  return pieces;
}

int32_t piece_id(const std::vector<SpPiece>& pieces, const std::string& piece) {
  for (size_t i = 0; i < pieces.size(); ++i)
    if (pieces[i].piece == piece) return static_cast<int32_t>(i);
  return -1;
}

// ---- Preset shapes.

struct Shape {
  bool full_size;  // write the 4B config's keys only (the rest are SPEC §2 defaults)
  bool mobile;     // compact embedding + token_map, quantized fc2, split files
  int d_model, d_ff, n_layers, n_heads, n_kv_heads, head_dim, sliding_window, pattern;
  std::vector<int> layer_d_ff;  // empty: d_ff everywhere
  int64_t n_vocab;
  VocabShape vocab;
  int v_d_model, v_d_ff, v_layers, v_heads, image_size, mm_tokens;
};

Shape preset_shape(SynthPreset p) {
  const VocabShape big_vocab = {.n_pieces = 262144,  // as Gemma 3's
                                .n_ascii = 144256 - 265,
                                .n_foreign = 6000,
                                .seed = 0x6a09e667f3bcc908ull};
  const VocabShape tiny_vocab = {
      .n_pieces = 1000, .n_ascii = 400, .n_foreign = 40, .seed = 0xbb67ae8584caa73bull};
  const Shape original = {.full_size = true,
                          .mobile = false,
                          .d_model = 2560,
                          .d_ff = 10240,
                          .n_layers = 34,
                          .n_heads = 8,
                          .n_kv_heads = 4,
                          .head_dim = 256,
                          .sliding_window = 1024,
                          .pattern = 6,
                          .layer_d_ff = {},
                          .n_vocab = 262208,
                          .vocab = big_vocab,
                          .v_d_model = 1152,
                          .v_d_ff = 4304,
                          .v_layers = 27,
                          .v_heads = 16,
                          .image_size = 896,
                          .mm_tokens = 256};
  // Layer 3 is global; the window is short enough for a few dozen tokens to leave it.
  const Shape tiny = {.full_size = false,
                      .mobile = false,
                      .d_model = 256,
                      .d_ff = 512,
                      .n_layers = 4,
                      .n_heads = 4,
                      .n_kv_heads = 2,
                      .head_dim = 64,
                      .sliding_window = 16,
                      .pattern = 4,
                      .layer_d_ff = {},
                      .n_vocab = 1024,  // 1000 pieces rounded up to 64
                      .vocab = tiny_vocab,
                      .v_d_model = 128,
                      .v_d_ff = 240,
                      .v_layers = 2,
                      .v_heads = 2,
                      .image_size = 224,
                      .mm_tokens = 16};
  switch (p) {
    case SynthPreset::Original:
      return original;
    case SynthPreset::Mobile: {
      Shape s = original;
      s.mobile = true;
      s.n_layers = 31;  // layers 31-33 removed
      s.layer_d_ff.assign(14, 10240);
      s.layer_d_ff.resize(31, 7680);
      s.v_d_ff = 4352;  // fc1 padded with 48 zero rows
      s.image_size = 672;
      s.mm_tokens = 144;
      return s;
    }
    case SynthPreset::TinyMobile: {
      Shape s = tiny;
      s.mobile = true;
      s.layer_d_ff = {512, 512, 384, 384};
      s.v_d_ff = 256;  // fc1 padded with 16 zero rows
      s.image_size = 168;
      s.mm_tokens = 9;
      return s;
    }
    case SynthPreset::Tiny:
      break;
  }
  return tiny;
}

// The preset a mobile preset is derived from.
SynthPreset base_preset(SynthPreset p) {
  if (p == SynthPreset::Mobile) return SynthPreset::Original;
  if (p == SynthPreset::TinyMobile) return SynthPreset::Tiny;
  return p;
}

int64_t kept_count(const Shape& s) {
  return std::size(kSpecials) + 256 + s.vocab.n_ascii;  // specials, bytes, ASCII pieces
}

nlohmann::ordered_json make_config(const Shape& s, const std::vector<SpPiece>& pieces) {
  using oj = nlohmann::ordered_json;
  oj t;
  t["hidden_size"] = s.d_model;
  t["intermediate_size"] = s.d_ff;
  t["model_type"] = "gemma3_text";
  t["num_hidden_layers"] = s.n_layers;
  t["rope_scaling"] = {{"factor", 8.0}, {"rope_type", "linear"}};
  t["sliding_window"] = s.sliding_window;
  if (!s.full_size) {
    t["num_attention_heads"] = s.n_heads;
    t["num_key_value_heads"] = s.n_kv_heads;
    t["head_dim"] = s.head_dim;
    t["query_pre_attn_scalar"] = s.head_dim;
    t["rms_norm_eps"] = 1e-6;
    t["rope_theta"] = 1000000.0;
    t["rope_local_base_freq"] = 10000.0;
    t["sliding_window_pattern"] = s.pattern;
    t["vocab_size"] = s.n_vocab;
    t["hidden_activation"] = "gelu_pytorch_tanh";
    t["max_position_embeddings"] = 4096;
  }
  if (!s.layer_d_ff.empty()) t["per_layer_intermediate_sizes"] = s.layer_d_ff;

  oj v;
  v["hidden_size"] = s.v_d_model;
  v["image_size"] = s.image_size;
  v["intermediate_size"] = s.v_d_ff;
  v["model_type"] = "siglip_vision_model";
  v["num_attention_heads"] = s.v_heads;
  v["num_hidden_layers"] = s.v_layers;
  v["patch_size"] = 14;
  v["vision_use_head"] = false;
  if (!s.full_size) {
    v["layer_norm_eps"] = 1e-6;
    v["num_channels"] = 3;
  }

  oj c;
  c["architectures"] = {"Gemma3ForConditionalGeneration"};
  c["model_type"] = "gemma3";
  c["boi_token_index"] = piece_id(pieces, "<start_of_image>");
  c["eoi_token_index"] = piece_id(pieces, "<end_of_image>");
  c["image_token_index"] = piece_id(pieces, "<image_soft_token>");
  c["bos_token_id"] = piece_id(pieces, "<bos>");
  c["pad_token_id"] = piece_id(pieces, "<pad>");
  c["eos_token_id"] = {piece_id(pieces, "<eos>"), piece_id(pieces, "<end_of_turn>")};
  c["initializer_range"] = 0.02;
  c["mm_tokens_per_image"] = s.mm_tokens;
  c["quantization"] = {{"group_size", 64}, {"bits", 4}};
  c["text_config"] = t;
  c["torch_dtype"] = "bfloat16";
  c["vision_config"] = v;
  if (s.mobile) c["vocab_pruning"] = {{"compact_vocab_size", kept_count(s) + 1}};
  return c;
}

nlohmann::ordered_json make_preprocessor_config(const Shape& s) {
  return {{"do_convert_rgb", nullptr},
          {"do_normalize", true},
          {"do_rescale", true},
          {"do_resize", true},
          {"image_mean", {0.5, 0.5, 0.5}},
          {"image_processor_type", "Gemma3ImageProcessor"},
          {"image_seq_length", s.mm_tokens},
          {"image_std", {0.5, 0.5, 0.5}},
          {"processor_class", "Gemma3Processor"},
          {"resample", 2},
          {"rescale_factor", 1.0 / 255},
          {"size", {{"height", s.image_size}, {"width", s.image_size}}}};
}

// Gemma 3's chat format (SPEC §4): a system message joins the first user turn; "assistant" is
// called "model"; images are marked by <start_of_image> (the engine expands the soft tokens).
constexpr const char* kChatTemplate =
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}"
    "{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}"
    "{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<start_of_turn>model\n' }}"
    "{%- endif -%}";

nlohmann::ordered_json make_tokenizer_config(const std::vector<SpPiece>& pieces) {
  nlohmann::ordered_json added;
  for (size_t i = 0; i < std::size(kSpecials); ++i)
    added[std::to_string(i)] = {{"content", pieces[i].piece}, {"lstrip", false},
                                {"normalized", false},        {"rstrip", false},
                                {"single_word", false},       {"special", true}};
  return {{"add_bos_token", true},
          {"add_eos_token", false},
          {"added_tokens_decoder", added},
          {"boi_token", "<start_of_image>"},
          {"bos_token", "<bos>"},
          {"chat_template", kChatTemplate},
          {"clean_up_tokenization_spaces", false},
          {"eoi_token", "<end_of_image>"},
          {"eos_token", "<eos>"},
          {"image_token", "<image_soft_token>"},
          {"model_max_length", 131072},
          {"pad_token", "<pad>"},
          {"padding_side", "left"},
          {"processor_class", "Gemma3Processor"},
          {"sp_model_kwargs", nlohmann::ordered_json::object()},
          {"spaces_between_special_tokens", false},
          {"tokenizer_class", "GemmaTokenizer"},
          {"unk_token", "<unk>"},
          {"use_default_system_prompt", false}};
}

nlohmann::ordered_json make_generation_config(const nlohmann::ordered_json& config) {
  return {{"bos_token_id", config["bos_token_id"]},
          {"cache_implementation", "hybrid"},
          {"do_sample", true},
          {"eos_token_id", config["eos_token_id"]},
          {"pad_token_id", config["pad_token_id"]},
          {"top_k", 64},
          {"top_p", 0.95}};
}

TableLayout preset_layout(const Shape& s, const ModelConfig& c) {
  TableLayout l;
  l.lm_head = true;  // the 4B MLX checkpoint stores lm_head; the mobile variant keeps it full
  l.head_rows = c.text.n_vocab;
  l.token_map = s.mobile;
  l.fc2_quantized = s.mobile;
  l.vision = true;
  return l;
}

ModelConfig parse(const nlohmann::ordered_json& config) {
  return parse_config(nlohmann::json::parse(config.dump()), nullptr, "config.json");
}

std::vector<SafeTensorsWriter::Entry> stored_entries(const TensorSpec& t, QuantFormat fmt) {
  std::vector<SafeTensorsWriter::Entry> e;
  if (t.role == TensorRole::TokenMap) return {{t.name, DType::I32, t.shape}};
  if (t.role == TensorRole::Vector) return {{t.name, DType::BF16, t.shape}};
  const int64_t out = t.shape[0], in = t.shape[1];
  if (t.quantized)
    e = quantized_entries(t.name, out, in, fmt, DType::BF16);
  else
    e.push_back({names::weight(t.name), DType::BF16, {out, in}});
  if (t.has_bias) e.push_back({names::bias(t.name), DType::BF16, {out}});
  return e;
}

std::string file_of(const TensorSpec& t, bool split) {
  if (!split) return "model.safetensors";
  return names::split_file(t.vision);
}

}  // namespace

SynthPreset parse_synth_preset(const std::string& name) {
  for (SynthPreset p :
       {SynthPreset::Tiny, SynthPreset::TinyMobile, SynthPreset::Original, SynthPreset::Mobile})
    if (name == synth_preset_name(p)) return p;
  throw Error("preset '" + name + "' is unknown (expected tiny, tiny-mobile, original or mobile)");
}

const char* synth_preset_name(SynthPreset preset) {
  switch (preset) {
    case SynthPreset::Tiny:
      return "tiny";
    case SynthPreset::TinyMobile:
      return "tiny-mobile";
    case SynthPreset::Original:
      return "original";
    case SynthPreset::Mobile:
      return "mobile";
  }
  return "?";
}

uint64_t SynthFile::data_bytes() const {
  uint64_t n = 0;
  for (const auto& e : entries) {
    uint64_t k = dtype_size(e.dtype);
    for (int64_t d : e.shape) k *= d;
    n += k;
  }
  return n;
}

uint64_t SynthPlan::data_bytes() const {
  uint64_t n = 0;
  for (const auto& f : files) n += f.data_bytes();
  return n;
}

namespace {

// The shapes of a preset without its tokenizer: enough for the base table of a derived preset.
struct Skeleton {
  nlohmann::ordered_json config;
  ModelConfig model;
  TableLayout layout;
  std::vector<TensorSpec> table;
};

Skeleton skeleton(const Shape& s, const std::vector<SpPiece>& pieces) {
  Skeleton k;
  k.config = make_config(s, pieces);
  k.model = parse(k.config);
  k.layout = preset_layout(s, k.model);
  k.table = tensor_table(k.model, k.layout);
  return k;
}

}  // namespace

SynthPlan synth_plan(SynthPreset preset) {
  const Shape s = preset_shape(preset);
  SynthPlan p;
  p.preset = preset;
  p.pieces = synth_pieces(s.vocab);
  Skeleton k = skeleton(s, p.pieces);
  p.config = std::move(k.config);
  p.model = std::move(k.model);
  p.layout = k.layout;
  p.table = std::move(k.table);
  p.base_table = skeleton(preset_shape(base_preset(preset)), p.pieces).table;
  p.preprocessor_config = make_preprocessor_config(s);
  p.tokenizer_config = make_tokenizer_config(p.pieces);
  p.generation_config = make_generation_config(p.config);

  if (s.mobile) {
    p.token_map.assign(p.model.text.n_vocab, 0);
    p.compact_ids = {-1};
    for (size_t id = 0; id < p.pieces.size(); ++id) {
      const SpPiece& piece = p.pieces[id];
      if (piece.type != SpPiece::kNormal || is_ascii_piece(piece.piece)) {
        p.token_map[id] = static_cast<int32_t>(p.compact_ids.size());
        p.compact_ids.push_back(static_cast<int32_t>(id));
      }
    }
    // The preset's ASCII piece count is chosen to give compact_vocab_size rows.
    assert(static_cast<int64_t>(p.compact_ids.size()) == p.model.compact_vocab);
  }

  std::map<std::string, size_t> file_index;
  for (const TensorSpec& t : p.table) {
    const std::string f = file_of(t, s.mobile);
    if (!file_index.count(f)) {
      file_index[f] = p.files.size();
      p.files.push_back({f, {}});
    }
    for (auto& e : stored_entries(t, p.model.quant)) p.files[file_index[f]].entries.push_back(e);
  }
  return p;
}

namespace {

constexpr size_t kBlockBytes = 8 << 20;  // rows generated and written at a time
// 4-bit values are (q - 8) * scale with q uniform in 0..15: std = sqrt(21.5) * |scale|.
constexpr float kQuantStd = 4.6368f;

// One row of a random MLX 4-bit linear: per group a bf16 scale of random sign and of size
// `step` * [0.75, 1.25), bias = -8 * scale (exact in bf16, so q = 8 is exactly 0) and uniform
// nibbles. The row is generated group by group, so a row cut to fewer columns is a prefix.
void random_quant_row(Rng& rng, int64_t groups, int words_per_group, float step, uint32_t* q,
                      uint16_t* scales, uint16_t* biases) {
  for (int64_t g = 0; g < groups; ++g) {
    const uint64_t u = rng.next();
    const float size = step * (0.75f + 0.5f * static_cast<float>(u >> 40) * 0x1p-24f);
    const uint16_t s = f32_to_bf16((u & 1) ? -size : size);
    scales[g] = s;
    biases[g] = f32_to_bf16(-8.0f * bf16_to_f32(s));
    uint64_t bits = 0;
    for (int k = 0; k < words_per_group; ++k) {
      if (k % 2 == 0) bits = rng.next();
      q[g * words_per_group + k] = static_cast<uint32_t>(k % 2 == 0 ? bits : bits >> 32);
    }
  }
}

// Uniform values with the given mean and standard deviation, rounded to bf16 as stored.
void random_float_row(Rng& rng, int64_t n, float mean, float std, float* out) {
  const float half_width = std * 1.7320508f;
  for (int64_t i = 0; i < n; ++i)
    out[i] = bf16_to_f32(f32_to_bf16(mean + half_width * rng.symmetric()));
}

class CheckpointWriter {
 public:
  CheckpointWriter(const SynthPlan& plan, uint64_t seed, bool progress)
      : plan_(plan), seed_(seed), progress_("synth", plan.data_bytes(), progress) {
    for (const TensorSpec& t : plan.base_table) base_[t.name] = &t;
  }

  void write_file(const std::string& dir, const SynthFile& file) {
    SafeTensorsWriter w(dir + "/" + file.name, file.entries);
    std::map<std::string, bool> in_file;
    for (const auto& e : file.entries) in_file[e.name] = true;
    for (const TensorSpec& t : plan_.table) {
      if (!in_file.count(stored_names(t, t.quantized).front())) continue;
      if (t.role == TensorRole::Linear)
        write_linear(w, t, *base_.at(t.name));
      else
        write_vector(w, t);
    }
    w.close();
  }

  void finish() { progress_.finish(); }

 private:
  void emit(SafeTensorsWriter& w, const void* data, size_t n, const std::string& what) {
    w.write(data, n);
    done_ += n;
    progress_.update(done_, what);
  }

  // Rows beyond the base's are zero padding; a compact embedding takes the base rows of the ids
  // it keeps.
  int64_t source_row(const TensorSpec& t, const TensorSpec& base, int64_t r) const {
    if (!plan_.compact_ids.empty() && t.shape[0] != base.shape[0] &&
        t.shape[0] == static_cast<int64_t>(plan_.compact_ids.size()))
      return plan_.compact_ids[r];
    return r < base.shape[0] ? r : -1;
  }

  void write_linear(SafeTensorsWriter& w, const TensorSpec& t, const TensorSpec& base) {
    const QuantFormat fmt = plan_.model.quant;
    const int64_t out = t.shape[0], in = t.shape[1], base_in = base.shape[1];
    const float std = 1.0f / std::sqrt(static_cast<float>(base_in));
    const uint64_t key = tensor_key(seed_, t.name);
    const int64_t groups = t.quantized ? in / fmt.group_size : 0;
    const int words_per_group = fmt.group_size * fmt.bits / 32;
    const int64_t row_words = groups * words_per_group;
    const size_t row_bytes = t.quantized ? row_words * 4 : in * 2;
    const int64_t block = std::max<int64_t>(1, kBlockBytes / row_bytes);
    std::vector<uint16_t> scales(out * groups), biases(out * groups);
    std::vector<uint32_t> q(t.quantized ? block * row_words : 0);
    std::vector<uint16_t> floats(t.quantized ? 0 : block * in);
    for (int64_t r0 = 0; r0 < out; r0 += block) {
      const int64_t rows = std::min(block, out - r0);
      ThreadPool::global().parallel_for(rows, 1, [&](size_t begin, size_t end, int) {
        std::vector<float> buf(in), s(groups), b(groups);
        for (size_t i = begin; i < end; ++i) {
          const int64_t r = r0 + static_cast<int64_t>(i), src = source_row(t, base, r);
          Rng rng = row_rng(key, src);
          if (src < 0 && !t.quantized) {
            std::fill_n(floats.data() + i * in, in, uint16_t{0});
          } else if (!t.quantized) {
            random_float_row(rng, in, 0.0f, std, buf.data());
            from_f32(DType::BF16, buf.data(), in, floats.data() + i * in);
          } else if (src < 0) {
            std::fill_n(q.data() + i * row_words, row_words, 0u);
            std::fill_n(scales.data() + r * groups, groups, uint16_t{0});
            std::fill_n(biases.data() + r * groups, groups, uint16_t{0});
          } else if (base.quantized) {
            random_quant_row(rng, groups, words_per_group, std / kQuantStd,
                             q.data() + i * row_words, scales.data() + r * groups,
                             biases.data() + r * groups);
          } else {
            // The base stores this linear as floats (vision fc2): quantize its row, zero-padded
            // to the new width, with MLX's algorithm, as the compressor does.
            const int64_t n = std::min(in, base_in);
            random_float_row(rng, n, 0.0f, std, buf.data());
            std::fill(buf.begin() + n, buf.end(), 0.0f);
            quantize_row(buf.data(), in, fmt, q.data() + i * row_words, s.data(), b.data());
            from_f32(DType::BF16, s.data(), groups, scales.data() + r * groups);
            from_f32(DType::BF16, b.data(), groups, biases.data() + r * groups);
          }
        }
      });
      if (t.quantized)
        emit(w, q.data(), rows * row_words * 4, t.name);
      else
        emit(w, floats.data(), rows * in * 2, t.name);
    }
    if (t.quantized) {
      emit(w, scales.data(), scales.size() * 2, t.name);
      emit(w, biases.data(), biases.size() * 2, t.name);
    }
    if (t.has_bias) {
      // Small biases; zero for padded rows.
      Rng rng(tensor_key(seed_, names::bias(t.name)));
      std::vector<float> bias(out, 0.0f);
      for (int64_t r = 0; r < std::min(out, base.shape[0]); ++r)
        bias[r] = bf16_to_f32(f32_to_bf16(0.02f * rng.symmetric()));
      std::vector<uint16_t> encoded(out);
      from_f32(DType::BF16, bias.data(), out, encoded.data());
      emit(w, encoded.data(), out * 2, names::bias(t.name));
    }
  }

  void write_vector(SafeTensorsWriter& w, const TensorSpec& t) {
    if (t.role == TensorRole::TokenMap) {
      emit(w, plan_.token_map.data(), plan_.token_map.size() * 4, t.name);
      return;
    }
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    const int64_t rows = t.shape.size() == 1 ? 1 : t.shape[0], cols = numel / rows;
    // Gemma's RMSNorms scale by 1 + w: small w. SigLIP LayerNorms scale by w. Matrices: std
    // 1/sqrt(fan-in).
    float mean = 0.0f, std = 0.07f;
    switch (t.use) {
      case VectorUse::RmsNorm:
        break;
      case VectorUse::LayerNorm:
        mean = 1.0f;
        break;
      case VectorUse::Bias:
        std = 0.03f;
        break;
      case VectorUse::Kernel:
        std = 1.0f / std::sqrt(static_cast<float>(cols));
        break;
      case VectorUse::Projection:
        std = 1.0f / std::sqrt(static_cast<float>(rows));
        break;
    }
    const uint64_t key = tensor_key(seed_, t.name);
    std::vector<uint16_t> encoded(numel);
    ThreadPool::global().parallel_for(rows, 1, [&](size_t begin, size_t end, int) {
      std::vector<float> buf(cols);
      for (size_t r = begin; r < end; ++r) {
        Rng rng = row_rng(key, static_cast<int64_t>(r));
        random_float_row(rng, cols, mean, std, buf.data());
        from_f32(DType::BF16, buf.data(), cols, encoded.data() + r * cols);
      }
    });
    emit(w, encoded.data(), encoded.size() * 2, t.name);
  }

  const SynthPlan& plan_;
  uint64_t seed_;
  Progress progress_;
  uint64_t done_ = 0;
  std::map<std::string, const TensorSpec*> base_;
};

void write_text_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  check(f.good(), path + ": write failed (disk full?)");
}

void write_json(const std::string& path, const nlohmann::ordered_json& j) {
  write_text_file(path, j.dump(2) + "\n");
}

void write_all(const SynthPlan& plan, const std::string& dir, const SynthOptions& options) {
  write_json(dir + "/config.json", plan.config);
  write_json(dir + "/generation_config.json", plan.generation_config);
  write_json(dir + "/preprocessor_config.json", plan.preprocessor_config);
  write_json(dir + "/tokenizer_config.json", plan.tokenizer_config);
  SpModelOptions sp;
  sp.split_digits = true;
  write_text_file(dir + "/tokenizer.model", build_sp_model_proto(plan.pieces, sp));

  CheckpointWriter writer(plan, options.seed, options.progress);
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", plan.data_bytes()}};
  std::map<std::string, std::string> weight_map;  // sorted by name, as MLX writes it
  for (const SynthFile& f : plan.files) {
    writer.write_file(dir, f);
    for (const auto& e : f.entries) weight_map[e.name] = f.name;
  }
  writer.finish();
  index["weight_map"] = weight_map;
  write_json(dir + "/model.safetensors.index.json", index);
}

}  // namespace

void write_synth_checkpoint(const SynthPlan& plan, const std::string& out_dir,
                            const SynthOptions& options) {
  AtomicDir out(out_dir, options.force);
  try {
    write_all(plan, out.tmp(), options);
  } catch (const fs::filesystem_error& e) {
    throw Error(out.out() + ": " + e.what());
  }
  out.commit();
}

}  // namespace gp
