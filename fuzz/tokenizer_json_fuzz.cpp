// tokenizer.json: the input is a Hugging Face tokenizer.json, converted into a SentencePiece
// model in memory; a converted model must load and encode text.
#include <cstdint>
#include <string>

#include "base/error.h"
#include "io/sp_model_proto.h"
#include "io/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const std::string proto = gp::sp_model_proto_from_tokenizer_json(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz tokenizer.json");
    const gp::Tokenizer t = gp::Tokenizer::from_model_proto(proto, "fuzz tokenizer.json");
    t.decode(t.encode("<start_of_turn>user\nH\xc3\xa9llo  world\xff\n\n12"));
  } catch (const gp::Error&) {
  }
  return 0;
}
