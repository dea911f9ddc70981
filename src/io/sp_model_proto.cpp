#include "io/sp_model_proto.h"

#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string_view>
#include <unordered_set>

#include "base/error.h"

namespace gp {
namespace {

// Field numbers of sentencepiece_model.proto.
enum ModelField { kPieces = 1, kTrainerSpec = 2, kNormalizerSpec = 3 };
enum PieceField { kPiece = 1, kScore = 2, kType = 3 };
enum TrainerField {
  kModelType = 3,
  kVocabSize = 4,
  kSplitDigits = 25,
  kByteFallback = 35,
  kUnkId = 40,
  kBosId = 41,
  kEosId = 42,
  kPadId = 43,
  kUnkPiece = 45,
  kBosPiece = 46,
  kEosPiece = 47,
  kPadPiece = 48,
};
enum NormalizerField {
  kName = 1,
  kAddDummyPrefix = 3,
  kRemoveExtraWhitespaces = 4,
  kEscapeWhitespaces = 5,
};
constexpr int kModelTypeBpe = 2;
enum WireType { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

class ProtoWriter {
 public:
  void int32_field(int field, int32_t v) {
    tag(field, kVarint);
    varint(static_cast<uint64_t>(static_cast<int64_t>(v)));  // negatives take 10 bytes
  }
  void bool_field(int field, bool v) {
    tag(field, kVarint);
    varint(v ? 1 : 0);
  }
  void float_field(int field, float v) {
    tag(field, kFixed32);
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
  }
  void bytes_field(int field, std::string_view s) {
    tag(field, kLengthDelimited);
    varint(s.size());
    out_.append(s);
  }
  const std::string& str() const { return out_; }

 private:
  void tag(int field, WireType wire) { varint((static_cast<uint64_t>(field) << 3) | wire); }
  void varint(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<char>((v & 0x7F) | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
  }

  std::string out_;
};

class ProtoReader {
 public:
  ProtoReader(std::string_view data, const std::string& source) : data_(data), source_(source) {}

  bool done() const { return pos_ >= data_.size(); }
  // Reads the next tag; returns the field number and sets *wire.
  uint64_t next(int* wire) {
    const uint64_t key = varint();
    *wire = static_cast<int>(key & 7);
    return key >> 3;
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      need(1);
      const uint8_t b = static_cast<uint8_t>(data_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (b < 0x80) return v;
    }
    fail("varint longer than 10 bytes");
  }
  float fixed32_float() {
    need(4);
    uint32_t bits = 0;
    for (int i = 0; i < 4; ++i)
      bits |= static_cast<uint32_t>(static_cast<uint8_t>(data_[pos_ + i])) << (8 * i);
    pos_ += 4;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    need(n);
    std::string_view s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  void skip(int wire) {
    switch (wire) {
      case kVarint:
        varint();
        return;
      case kFixed64:
        need(8);
        pos_ += 8;
        return;
      case kLengthDelimited:
        bytes();
        return;
      case kFixed32:
        need(4);
        pos_ += 4;
        return;
      default:
        fail("unsupported wire type " + std::to_string(wire));
    }
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(source_ + ": not a SentencePiece model (" + what + " at byte " +
                std::to_string(pos_) + "; truncated or corrupt file?)");
  }

 private:
  void need(uint64_t n) const {
    if (n > data_.size() - pos_) fail("unexpected end of data");
  }

  std::string_view data_;
  const std::string& source_;
  size_t pos_ = 0;
};

int index_of(const std::vector<SpPiece>& pieces, const std::string& name) {
  for (size_t i = 0; i < pieces.size(); ++i)
    if (pieces[i].piece == name) return static_cast<int>(i);
  return -1;
}

// <0xNN> with two upper-case hex digits, as sentencepiece spells byte pieces.
bool is_byte_piece(const std::string& p) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); };
  return p.size() == 6 && p.compare(0, 3, "<0x") == 0 && hex(p[3]) && hex(p[4]) && p[5] == '>';
}

using nlohmann::json;

// tokenizer.json, parsed in one pass: model.vocab and model.merges (most of the 33 MB of Gemma's
// file) stream into flat arrays; everything else becomes a small JSON document.
struct TokenizerJson {
  json rest;  // the file without model.vocab and model.merges
  std::vector<std::pair<std::string, uint64_t>> vocab;      // piece, id, in file order
  std::vector<std::pair<std::string, std::string>> merges;  // left, right, by rank
  bool has_vocab = false;
  bool has_merges = false;
};

// A SAX handler for nlohmann::json::sax_parse.
class TokenizerJsonSax {
 public:
  explicit TokenizerJsonSax(TokenizerJson* out) : out_(out) {}
  const std::string& error() const { return error_; }

  bool null() { return value(json()); }
  bool boolean(bool v) { return value(v); }
  bool number_integer(int64_t v) { return mode_ == kVocab ? fail("a negative id") : value(v); }
  bool number_unsigned(uint64_t v) {
    if (mode_ == kVocab) {
      out_->vocab.emplace_back(std::move(key_), v);
      return true;
    }
    return value(v);
  }
  bool number_float(double v, const std::string&) { return value(v); }
  bool string(std::string& v) {
    if (mode_ != kMerges) return value(std::move(v));
    if (merge_depth_ == 1) {
      pair_.push_back(std::move(v));
      return true;
    }
    // The older spelling of a merge: "left right".
    const size_t space = v.find(' ');
    if (space == std::string::npos || v.find(' ', space + 1) != std::string::npos)
      return fail("a merge \"" + v + "\" that is not \"left right\"");
    out_->merges.emplace_back(v.substr(0, space), v.substr(space + 1));
    return true;
  }
  bool binary(json::binary_t&) { return fail("binary data"); }
  bool key(std::string& k) {
    key_ = std::move(k);
    return true;
  }
  bool start_object(size_t) {
    if (mode_ != kDom) return fail("an object");
    if (in_model() && key_ == "vocab") {
      mode_ = kVocab;
      out_->has_vocab = true;
      return true;
    }
    return open(json::object());
  }
  bool end_object() {
    if (mode_ == kVocab) {
      mode_ = kDom;
      return true;
    }
    return close();
  }
  bool start_array(size_t) {
    if (mode_ == kMerges) {
      if (merge_depth_ != 0) return fail("nested arrays");
      merge_depth_ = 1;
      pair_.clear();
      return true;
    }
    if (mode_ != kDom) return fail("an array");
    if (in_model() && key_ == "merges") {
      mode_ = kMerges;
      merge_depth_ = 0;
      out_->has_merges = true;
      return true;
    }
    return open(json::array());
  }
  bool end_array() {
    if (mode_ == kMerges) {
      if (merge_depth_ == 0) {
        mode_ = kDom;
        return true;
      }
      merge_depth_ = 0;
      if (pair_.size() != 2) return fail("a merge that is not [left, right]");
      out_->merges.emplace_back(std::move(pair_[0]), std::move(pair_[1]));
      return true;
    }
    return close();
  }
  bool parse_error(size_t, const std::string&, const json::exception& e) {
    error_ = std::string("not valid JSON (") + e.what() + "; truncated download?)";
    return false;
  }

 private:
  enum Mode { kDom, kVocab, kMerges };

  bool fail(const std::string& what) {
    error_ = "unexpected " + what +
             (mode_ == kVocab    ? " in model.vocab (expected piece: id)"
              : mode_ == kMerges ? " in model.merges (expected [left, right] pairs)"
                                 : "");
    return false;
  }
  bool in_model() const { return stack_.size() == 2 && names_[1] == "model"; }
  // Adds a value to the open container (or makes it the root); returns where it now lives.
  json* add(json&& v) {
    if (mode_ != kDom) {
      fail("a " + std::string(v.type_name()));
      return nullptr;
    }
    if (stack_.empty()) {
      out_->rest = std::move(v);
      return &out_->rest;
    }
    json& parent = *stack_.back();
    if (parent.is_object()) return &(parent[key_] = std::move(v));
    parent.push_back(std::move(v));
    return &parent.back();
  }
  bool value(json&& v) { return add(std::move(v)) != nullptr; }
  bool open(json&& container) {
    const bool in_object = !stack_.empty() && stack_.back()->is_object();
    json* p = add(std::move(container));
    if (!p) return false;
    stack_.push_back(p);
    names_.push_back(in_object ? key_ : "");
    return true;
  }
  bool close() {
    stack_.pop_back();
    names_.pop_back();
    return true;
  }

  TokenizerJson* out_;
  Mode mode_ = kDom;
  std::vector<json*> stack_;        // open containers; pointers stay valid while they are open
  std::vector<std::string> names_;  // the key each open container sits under ("" in an array)
  std::string key_;
  int merge_depth_ = 0;
  std::vector<std::string> pair_;
  std::string error_;
};

TokenizerJson parse_tokenizer_json(const std::string& text, const std::string& source) {
  TokenizerJson out;
  TokenizerJsonSax sax(&out);
  if (!json::sax_parse(text, &sax)) throw Error(source + ": " + sax.error());
  return out;
}

// Piece -> id for the 262k pieces and 514k merge lookups of Gemma's file: open addressing over
// (hash, id), about twice as fast as std::unordered_map, whose every node is a cache miss.
class PieceIndex {
 public:
  PieceIndex(const std::vector<SpPiece>& pieces, const std::string& source) : pieces_(pieces) {
    size_t n = 1;
    while (n < 2 * pieces.size()) n *= 2;
    slots_.assign(n, Slot{0, -1});
    mask_ = n - 1;
    for (size_t id = 0; id < pieces.size(); ++id) {
      const uint64_t h = hash(pieces[id].piece);
      size_t i = h & mask_;
      for (; slots_[i].id >= 0; i = (i + 1) & mask_)
        if (slots_[i].hash == h && pieces[slots_[i].id].piece == pieces[id].piece)
          throw Error(source + ": the piece \"" + pieces[id].piece + "\" appears twice");
      slots_[i] = Slot{h, static_cast<int32_t>(id)};
    }
  }
  int32_t find(std::string_view piece) const {
    const uint64_t h = hash(piece);
    for (size_t i = h & mask_; slots_[i].id >= 0; i = (i + 1) & mask_)
      if (slots_[i].hash == h && pieces_[slots_[i].id].piece == piece) return slots_[i].id;
    return -1;
  }

 private:
  struct Slot {
    uint64_t hash;
    int32_t id;  // -1: empty
  };
  static uint64_t hash(std::string_view s) { return std::hash<std::string_view>()(s); }

  const std::vector<SpPiece>& pieces_;
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// j[key] as a string, "" when j is not an object or holds no string there: json::value() throws
// a raw type_error for a key of another type (a fuzzed {"type": 1}).
std::string string_at(const json& j, const char* key) {
  if (!j.is_object()) return {};
  const auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// j[key] as a boolean, `fallback` when absent or null; another type is an Error naming the key.
bool bool_at(const json& j, const char* key, bool fallback, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  check(it->is_boolean(),
        where + key + " is " + it->dump().substr(0, 100) + ", expected true or false");
  return it->get<bool>();
}

// HF's Replace normalizer: {"type":"Replace","pattern":{"String":" "},"content":"▁"}.
bool is_space_to_meta(const json& n) {
  return n.is_object() && string_at(n, "type") == "Replace" && n.contains("pattern") &&
         n["pattern"].is_object() && string_at(n["pattern"], "String") == " " &&
         string_at(n, "content") == "\u2581";
}

// Checks that the pipeline around the model is Gemma's, the one sentencepiece reproduces: spaces
// become ▁ and nothing is prepended or split away.
void check_pipeline(const json& root, const std::string& source) {
  const std::string expected =
      " (expected Gemma's tokenizer.json: normalizer Replace \" \" -> \"\u2581\", no pre-tokenizer "
      "or a Split on \" \"; a tokenizer of another model family?)";
  const json normalizer = root.value("normalizer", json());
  if (!is_space_to_meta(normalizer))
    throw Error(source + ": unsupported normalizer " + normalizer.dump().substr(0, 200) + expected);
  // After the normalizer there is no space left, so a Split on " " never splits.
  const json pre = root.value("pre_tokenizer", json());
  const bool split_on_space = pre.is_object() && string_at(pre, "type") == "Split" &&
                              pre.contains("pattern") && pre["pattern"].is_object() &&
                              string_at(pre["pattern"], "String") == " ";
  if (!pre.is_null() && !split_on_space)
    throw Error(source + ": unsupported pre_tokenizer " + pre.dump().substr(0, 200) + expected);
}

}  // namespace

std::string build_sp_model_proto(const std::vector<SpPiece>& pieces,
                                 const SpModelOptions& options) {
  const int unk_id = index_of(pieces, options.unk_piece);
  check(unk_id >= 0 && pieces[unk_id].type == SpPiece::kUnknown,
        "SentencePiece model: the unknown piece '" + options.unk_piece +
            "' must be present with type UNKNOWN");
  ProtoWriter model;
  for (const SpPiece& p : pieces) {
    ProtoWriter w;
    w.bytes_field(kPiece, p.piece);
    w.float_field(kScore, p.score);
    if (p.type != SpPiece::kNormal) w.int32_field(kType, p.type);  // NORMAL is the default
    model.bytes_field(kPieces, w.str());
  }
  ProtoWriter trainer;
  trainer.int32_field(kModelType, kModelTypeBpe);
  trainer.int32_field(kVocabSize, static_cast<int32_t>(pieces.size()));
  trainer.bool_field(kSplitDigits, options.split_digits);
  trainer.bool_field(kByteFallback, options.byte_fallback);
  trainer.int32_field(kUnkId, unk_id);
  trainer.int32_field(kBosId, index_of(pieces, options.bos_piece));
  trainer.int32_field(kEosId, index_of(pieces, options.eos_piece));
  trainer.int32_field(kPadId, index_of(pieces, options.pad_piece));
  // sentencepiece finds the special ids through these names (bos_id() = PieceToId(bos_piece)).
  trainer.bytes_field(kUnkPiece, options.unk_piece);
  trainer.bytes_field(kBosPiece, options.bos_piece);
  trainer.bytes_field(kEosPiece, options.eos_piece);
  trainer.bytes_field(kPadPiece, options.pad_piece);
  model.bytes_field(kTrainerSpec, trainer.str());
  ProtoWriter normalizer;
  normalizer.bytes_field(kName, "identity");
  normalizer.bool_field(kAddDummyPrefix, false);
  normalizer.bool_field(kRemoveExtraWhitespaces, false);
  normalizer.bool_field(kEscapeWhitespaces, true);
  model.bytes_field(kNormalizerSpec, normalizer.str());
  return model.str();
}

std::vector<SpPiece> read_sp_model_pieces(const std::string& serialized,
                                          const std::string& source) {
  std::vector<SpPiece> pieces;
  ProtoReader model(serialized, source);
  while (!model.done()) {
    int wire;
    const uint64_t field = model.next(&wire);
    if (field != kPieces || wire != kLengthDelimited) {
      model.skip(wire);
      continue;
    }
    SpPiece p;
    ProtoReader r(model.bytes(), source);
    while (!r.done()) {
      const uint64_t f = r.next(&wire);
      if (f == kPiece && wire == kLengthDelimited) {
        p.piece = std::string(r.bytes());
      } else if (f == kScore && wire == kFixed32) {
        p.score = r.fixed32_float();
      } else if (f == kType && wire == kVarint) {
        p.type = static_cast<int>(r.varint());
      } else {
        r.skip(wire);
      }
    }
    pieces.push_back(std::move(p));
  }
  if (pieces.empty()) model.fail("no pieces");
  return pieces;
}

std::string sp_model_proto_from_tokenizer_json(const std::string& json_text,
                                               const std::string& source) {
  const TokenizerJson file = parse_tokenizer_json(json_text, source);
  const json& root = file.rest;
  check(root.is_object() && root.contains("model") && root["model"].is_object() && file.has_vocab &&
            file.has_merges,
        source +
            ": expected an object with model.vocab and model.merges (not a Hugging Face "
            "tokenizer.json, or truncated?)");
  const json& model = root["model"];
  const std::string type = string_at(model, "type");
  check(type == "BPE", source + ": model.type is \"" + type +
                           "\", expected \"BPE\" (Gemma's tokenizer is BPE with byte fallback)");
  check(!bool_at(model, "ignore_merges", false, source + ": model."),
        source + ": model.ignore_merges is true, which sentencepiece cannot reproduce");
  check_pipeline(root, source);
  const json unk_token = model.value("unk_token", json());
  check(unk_token.is_string(), source + ": model.unk_token missing (sentencepiece needs one)");
  const bool byte_fallback = bool_at(model, "byte_fallback", false, source + ": model.");

  // Pieces by id: model.vocab, then the added tokens (some lie beyond it: <image_soft_token>).
  std::vector<SpPiece> pieces;
  // Ids run from 0 without gaps, so none can reach the number of entries: a bigger one is refused
  // before the table is sized by it.
  const json added_list = root.value("added_tokens", json::array());
  const uint64_t n_entries = file.vocab.size() + (added_list.is_array() ? added_list.size() : 0);
  auto slot = [&](uint64_t id, const std::string& piece) -> SpPiece& {
    if (id >= n_entries || id >= (uint64_t{1} << 24))
      throw Error(source + ": \"" + piece + "\" has id " + std::to_string(id) +
                  ", out of range (expected ids from 0 to " + std::to_string(n_entries - 1) +
                  " without gaps)");
    if (id >= pieces.size()) pieces.resize(id + 1);
    return pieces[id];
  };
  for (const auto& [piece, id] : file.vocab) {
    SpPiece& p = slot(id, piece);
    if (!p.piece.empty())
      throw Error(source + ": model.vocab gives id " + std::to_string(id) + " to both \"" +
                  p.piece + "\" and \"" + piece + "\"");
    p.piece = piece;
    if (byte_fallback && is_byte_piece(piece)) p.type = SpPiece::kByte;
  }
  SpModelOptions options;
  options.unk_piece = unk_token.get<std::string>();
  options.byte_fallback = byte_fallback;
  const std::unordered_set<std::string> control = {options.bos_piece, options.eos_piece,
                                                   options.pad_piece};
  const json added = root.value("added_tokens", json::array());
  check(added.is_array(), source + ": added_tokens is not an array");
  for (const json& t : added) {
    check(t.is_object() && t.contains("id") && t["id"].is_number_unsigned() &&
              t.contains("content") && t["content"].is_string(),
          source + ": added_tokens entry " + t.dump().substr(0, 200) +
              " lacks an integer \"id\" or a string \"content\"");
    const std::string content = t["content"].get<std::string>();
    SpPiece& p = slot(t["id"].get<uint64_t>(), content);
    check(p.piece.empty() || p.piece == content,
          source + ": added token \"" + content + "\" has id " + t["id"].dump() +
              ", which model.vocab gives to \"" + p.piece + "\"");
    p.piece = content;
    if (content == options.unk_piece) {
      p.type = SpPiece::kUnknown;
    } else if (control.count(content)) {
      p.type = SpPiece::kControl;
    } else if (bool_at(t, "normalized", false, source + ": added token \"" + content + "\": ") ||
               content.find("\u2581") == std::string::npos) {
      p.type = SpPiece::kUserDefined;
    }
  }
  for (size_t i = 0; i < pieces.size(); ++i)
    if (pieces[i].piece.empty())
      throw Error(source + ": no piece has id " + std::to_string(i) +
                  " (ids must run from 0 without gaps)");
  const PieceIndex id_of(pieces, source);
  const int32_t unk_id = id_of.find(options.unk_piece);
  check(unk_id >= 0,
        source + ": model.unk_token \"" + options.unk_piece + "\" is not in the vocab");
  pieces[unk_id].type = SpPiece::kUnknown;

  // Pieces no merge produces (characters, bytes, specials) need no score; the lowest keeps a
  // multi-character one (none in Gemma's file) from being formed ahead of real merges.
  const float lowest = -static_cast<float>(file.merges.size());
  for (SpPiece& p : pieces) p.score = lowest;
  std::vector<bool> scored(pieces.size(), false);
  std::string joined;
  for (size_t rank = 0; rank < file.merges.size(); ++rank) {
    const auto& [left, right] = file.merges[rank];
    joined.assign(left);
    joined.append(right);
    const int32_t id = id_of.find(joined);
    if (id < 0)
      throw Error(source + ": merge " + std::to_string(rank) + " (\"" + left + "\", \"" + right +
                  "\") makes a piece missing from the vocab");
    if (!scored[id]) {
      scored[id] = true;
      pieces[id].score = -static_cast<float>(rank);  // exact: ranks stay below 2^24
    }
  }
  return build_sp_model_proto(pieces, options);
}

}  // namespace gp
