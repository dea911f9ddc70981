#include "io/tokenizer.h"

#include <sentencepiece_processor.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string_view>

#include "base/error.h"
#include "base/mapped_file.h"
#include "io/sp_model_proto.h"

namespace gp {
namespace fs = std::filesystem;

namespace {

constexpr std::string_view kSpaceSymbol = "\u2581";  // ▁, how sentencepiece spells a space
constexpr std::string_view kReplacement = "\uFFFD";

std::string read_file(const std::string& path) {
  check_regular_file(path);
  // Gemma's tokenizer.json is 33 MB; a file far beyond is not a tokenizer.
  constexpr uintmax_t kMaxBytes = uintmax_t{512} << 20;
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  check(!ec && size <= kMaxBytes,
        path + ": " + std::to_string(size) + " bytes, expected a tokenizer of at most 512 MB");
  std::ifstream f(path, std::ios::binary);
  check(f.good(), path + ": cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  check(!f.bad(), path + ": read error");
  return ss.str();
}

// For the bytes at s[i..]: the length of the complete, valid UTF-8 character starting there; 0 if
// they are a valid start that needs more bytes; -1 if s[i] cannot start a character there.
int utf8_char_length(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t b = byte(i);
  int n;
  uint8_t lo = 0x80, hi = 0xBF;  // range of the second byte (excludes overlongs and surrogates)
  if (b < 0x80) {
    return 1;
  } else if (b >= 0xC2 && b <= 0xDF) {
    n = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    n = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    n = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (int k = 1; k < n; ++k) {
    if (i + k >= s.size()) return 0;
    const uint8_t c = byte(i + k);
    if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xBF)) return -1;
  }
  return n;
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& dir) {
  check(fs::is_directory(dir),
        dir +
            ": not a directory (expected a checkpoint directory with tokenizer.model or "
            "tokenizer.json)");
  const std::string model = dir + "/tokenizer.model";
  const std::string json = dir + "/tokenizer.json";
  if (fs::exists(model)) return from_model_proto(read_file(model), model);
  if (fs::exists(json))
    return from_model_proto(sp_model_proto_from_tokenizer_json(read_file(json), json), json);
  throw Error(dir +
              ": tokenizer.model and tokenizer.json are both missing (a checkpoint needs one of "
              "them; incomplete download?)");
}

Tokenizer Tokenizer::from_model_proto(const std::string& serialized, const std::string& source) {
  Tokenizer t;
  // Our own reader first: it gives the piece types, which the library does not expose, and a
  // precise message for a file that is not a model at all.
  const std::vector<SpPiece> pieces = read_sp_model_pieces(serialized, source);
  t.types_.reserve(pieces.size());
  for (const SpPiece& p : pieces) t.types_.push_back(static_cast<uint8_t>(p.type));
  t.sp_ = std::make_shared<sentencepiece::SentencePieceProcessor>();
  sentencepiece::util::Status status;
  try {
    status = t.sp_->LoadFromSerializedProto(serialized);
  } catch (const std::exception& e) {  // its trie builder throws on some piece sets
    throw Error(source + ": sentencepiece cannot load it (" + e.what() +
                "; corrupt or not a SentencePiece model?)");
  }
  check(status.ok(), source + ": sentencepiece cannot load it (" + status.ToString() +
                         "; corrupt or not a SentencePiece model?)");
  check(t.sp_->GetPieceSize() == t.vocab_size(),
        source + ": sentencepiece sees " + std::to_string(t.sp_->GetPieceSize()) +
            " pieces, the file holds " + std::to_string(t.vocab_size()));
  return t;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  check(status.ok(), "tokenizer: cannot encode text (" + status.ToString() + ")");
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  for (int32_t id : ids) check_id(id);
  std::string text;
  const auto status = sp_->Decode(std::vector<int>(ids.begin(), ids.end()), &text);
  check(status.ok(), "tokenizer: cannot decode ids (" + status.ToString() + ")");
  return text;
}

std::string Tokenizer::piece(int32_t id) const {
  check_id(id);
  return sp_->IdToPiece(id);
}

std::string Tokenizer::token_bytes(int32_t id) const {
  check_id(id);
  if (is_control(id)) return "";
  const std::string& p = sp_->IdToPiece(id);
  if (is_byte(id)) return std::string(1, static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16)));
  if (is_unknown(id)) return decode({id});  // the model's unk surface, " ⁇ " by default
  return unescape_piece(p);
}

std::string unescape_piece(const std::string& piece) {
  std::string text;
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
      text += ' ';
      i += kSpaceSymbol.size();
    } else {
      text += piece[i++];
    }
  }
  return text;
}

int32_t Tokenizer::piece_to_id(const std::string& piece) const {
  const int id = sp_->PieceToId(piece);
  // sentencepiece answers unk_id for any unknown piece.
  if (is_unknown(id) && sp_->IdToPiece(id) != piece) return -1;
  return id;
}

int32_t Tokenizer::bos_id() const { return sp_->bos_id(); }
int32_t Tokenizer::eos_id() const { return sp_->eos_id(); }
int32_t Tokenizer::pad_id() const { return sp_->pad_id(); }
int32_t Tokenizer::unk_id() const { return sp_->unk_id(); }

bool Tokenizer::is_control(int32_t id) const {
  return id >= 0 && id < vocab_size() && types_[id] == SpPiece::kControl;
}
bool Tokenizer::is_user_defined(int32_t id) const {
  return id >= 0 && id < vocab_size() && types_[id] == SpPiece::kUserDefined;
}
bool Tokenizer::is_byte(int32_t id) const {
  return id >= 0 && id < vocab_size() && types_[id] == SpPiece::kByte;
}
bool Tokenizer::is_unknown(int32_t id) const {
  return id >= 0 && id < vocab_size() && types_[id] == SpPiece::kUnknown;
}

void Tokenizer::check_id(int32_t id) const {
  check(id >= 0 && id < vocab_size(), "tokenizer: token id " + std::to_string(id) +
                                          " is out of range [0, " + std::to_string(vocab_size()) +
                                          ") (a model whose vocabulary exceeds the tokenizer's?)");
}

std::string TokenStreamer::push(int32_t id) {
  pending_ += tokenizer_->token_bytes(id);
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    const int n = utf8_char_length(pending_, i);
    if (n == 0) break;  // wait for the rest of the character
    if (n < 0) {
      out += kReplacement;
      ++i;
    } else {
      out.append(pending_, i, n);
      i += n;
    }
  }
  pending_.erase(0, i);
  return out;
}

std::string TokenStreamer::flush() {
  std::string out = pending_.empty() ? "" : std::string(kReplacement);
  pending_.clear();
  return out;
}

}  // namespace gp
