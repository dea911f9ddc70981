// tokenizer.model: the input is a serialized SentencePiece ModelProto, read by our protobuf
// reader and by libsentencepiece; a model that loads must encode, decode and stream any text.
#include <cstdint>
#include <string>
#include <vector>

#include "base/error.h"
#include "io/sp_model_proto.h"
#include "io/tokenizer.h"

namespace {
// Exercises a loaded tokenizer over text with specials, bytes beyond ASCII and invalid UTF-8.
void exercise(const gp::Tokenizer& t) {
  const std::string text = "<start_of_turn>user\nH\xc3\xa9llo  w\xf0\x9f\x99\x82rld\xff\n\n<b>12";
  const std::vector<int32_t> ids = t.encode(text);
  t.decode(ids);
  gp::TokenStreamer streamer(t);
  for (int32_t id : ids) streamer.push(id);
  streamer.flush();
  for (int32_t id = 0; id < t.vocab_size() && id < 4096; ++id) {
    t.piece(id);
    t.token_bytes(id);
    t.is_control(id);
  }
  for (int32_t id : {t.bos_id(), t.eos_id(), t.pad_id(), t.unk_id()})
    if (id >= 0) t.piece(id);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    gp::read_sp_model_pieces(bytes, "fuzz tokenizer.model");
  } catch (const gp::Error&) {
  }
  try {
    exercise(gp::Tokenizer::from_model_proto(bytes, "fuzz tokenizer.model"));
  } catch (const gp::Error&) {
  }
  return 0;
}
