// The chat template: the input is a conversation, one message per line as ROLE, a tab, the
// number of images (a digit) and the text (with \x01 standing for a newline); the prompt is
// formatted and tokenized by the tiny fixture's tokenizer.
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "fuzz_util.h"
#include "io/tokenizer.h"
#include "runtime/chat.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const gp::Tokenizer tokenizer = gp::Tokenizer::load(gp::fuzz::data_path("tiny-mobile"));
  std::vector<gp::ChatMessage> messages;
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  for (std::string line; std::getline(in, line);) {
    gp::ChatMessage m;
    const size_t tab = line.find('\t');
    m.role = line.substr(0, tab);
    if (tab != std::string::npos && tab + 1 < line.size()) {
      const char n = line[tab + 1];
      m.n_images = n >= '0' && n <= '9' ? n - '0' : 0;
      m.text = line.substr(tab + 2);
      for (char& ch : m.text)
        if (ch == '\x01') ch = '\n';
    }
    messages.push_back(m);
  }
  gp::ChatPieces pieces;
  pieces.mm_tokens_per_image = 4;
  try {
    tokenizer.encode(gp::format_chat(messages, pieces));
  } catch (const gp::Error&) {
  }
  return 0;
}
