// Gemma's tokenizer: SentencePiece BPE with byte fallback and no dummy prefix, run by
// libsentencepiece. A checkpoint holds tokenizer.model (loaded as is) and/or the Hugging Face
// tokenizer.json (converted in memory into an equivalent SentencePiece model, see
// sp_model_proto.h). Special ids are never hard-coded: look them up with
// piece_to_id("<start_of_turn>").
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace gp {

class Tokenizer {
 public:
  // Loads DIR/tokenizer.model when present, else DIR/tokenizer.json. Throws Error naming the
  // directory when neither exists, or the file when it is malformed.
  static Tokenizer load(const std::string& dir);
  // A serialized SentencePiece ModelProto; `source` names it in error messages.
  static Tokenizer from_model_proto(const std::string& serialized,
                                    const std::string& source = "SentencePiece model");

  // Text -> ids, no BOS added. Text-side special pieces (<start_of_turn>, ...) are USER_DEFINED in
  // the model and come out as their single ids; CONTROL pieces (<bos>, <eos>) are never parsed.
  std::vector<int32_t> encode(const std::string& text) const;
  // Ids -> text. CONTROL pieces decode to nothing. Throws Error on an id out of range.
  std::string decode(const std::vector<int32_t>& ids) const;

  // The raw piece: "▁the", "<0x0A>", "<start_of_turn>". Throws Error on an id out of range.
  std::string piece(int32_t id) const;
  // The bytes one token contributes to the text: a byte piece is its byte, ▁ is a space, CONTROL
  // pieces are empty. May be part of a UTF-8 character: stream through TokenStreamer.
  std::string token_bytes(int32_t id) const;
  int32_t piece_to_id(const std::string& piece) const;  // -1 when unknown
  int32_t vocab_size() const { return static_cast<int32_t>(types_.size()); }

  // Special ids as the model names them; -1 when the model has none.
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t pad_id() const;
  int32_t unk_id() const;

  bool is_control(int32_t id) const;       // <bos>, <eos>, <pad>
  bool is_user_defined(int32_t id) const;  // matched in text: <start_of_turn>, "\n\n", <b>, ...
  bool is_byte(int32_t id) const;          // <0xNN>
  bool is_unknown(int32_t id) const;

 private:
  Tokenizer() = default;
  void check_id(int32_t id) const;

  std::shared_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::vector<uint8_t> types_;  // SpPiece::Type by id
};

// Turns a stream of ids into text that is printable as it comes: bytes of a character split over
// several byte-fallback tokens are held back until the character is complete.
class TokenStreamer {
 public:
  explicit TokenStreamer(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}
  // The text completed by this token (possibly empty). Invalid UTF-8 comes out as U+FFFD.
  std::string push(int32_t id);
  // Whatever is held back (an incomplete character, as U+FFFD); the streamer is then empty.
  std::string flush();

 private:
  const Tokenizer* tokenizer_;
  std::string pending_;  // bytes not yet printed
};

// A piece's text: SentencePiece's escaped space ▁ (U+2581) becomes ' '; nothing else changes.
std::string unescape_piece(const std::string& piece);

}  // namespace gp
