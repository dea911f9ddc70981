// SentencePiece model files (a serialized sentencepiece.ModelProto) written and read by hand, in
// the protobuf wire format: no protobuf dependency, since Debian's libsentencepiece-dev ships no
// .pb.h. Also the conversion of a Hugging Face tokenizer.json (BPE, as Gemma's) into such a model.
// Field numbers follow sentencepiece_model.proto: ModelProto {pieces 1, trainer_spec 2,
// normalizer_spec 3}, SentencePiece {piece 1, score 2, type 3}.
#pragma once

#include <string>
#include <vector>

namespace gp {

struct SpPiece {
  // sentencepiece.ModelProto.SentencePiece.Type
  enum Type : int {
    kNormal = 1,
    kUnknown = 2,
    kControl = 3,      // never matched in text (<bos>, <eos>, <pad>)
    kUserDefined = 4,  // matched in text as one piece before BPE (<start_of_turn>)
    kUnused = 5,
    kByte = 6,  // <0xNN>, for byte fallback
  };
  std::string piece;
  float score = 0.0f;  // BPE merges the adjacent pair whose concatenation scores highest
  int type = kNormal;
};

// The special pieces are found by name; their ids are their positions in `pieces` (-1 if absent;
// the unknown piece must exist). The normalizer is fixed to what Gemma uses: identity, no dummy
// prefix, no removal of extra whitespace, spaces escaped as U+2581.
struct SpModelOptions {
  std::string unk_piece = "<unk>";
  std::string bos_piece = "<bos>";
  std::string eos_piece = "<eos>";
  std::string pad_piece = "<pad>";
  bool byte_fallback = true;
  bool split_digits = false;  // a training option, recorded for spm tools; encoding ignores it
};

// A serialized BPE ModelProto holding `pieces` in id order. Deterministic: same input, same bytes.
std::string build_sp_model_proto(const std::vector<SpPiece>& pieces,
                                 const SpModelOptions& options = {});

// The pieces of a serialized ModelProto, in id order. Throws Error naming `source` when the bytes
// are not a ModelProto.
std::vector<SpPiece> read_sp_model_pieces(const std::string& serialized, const std::string& source);

// Converts the text of a Hugging Face tokenizer.json (model BPE, normalizer Replace " " -> "▁", no
// prepended space) into a serialized ModelProto that encodes text the same way:
//  - each piece's score is minus the rank of the first merge producing it, so sentencepiece's
//    "highest score first" replays the merge list in order;
//  - <0xNN> pieces are BYTE, <bos>/<eos>/<pad> CONTROL (BOS is never parsed from text), the
//    model's unk_token UNKNOWN, and the other added tokens USER_DEFINED (matched in text, as the
//    Hugging Face tokenizer does), except those holding "▁": those only ever match a literal "▁"
//    in the raw text, so they stay NORMAL and BPE forms them from spaces.
// Throws Error naming `source` when the JSON is malformed or of another kind.
std::string sp_model_proto_from_tokenizer_json(const std::string& json_text,
                                               const std::string& source);

}  // namespace gp
