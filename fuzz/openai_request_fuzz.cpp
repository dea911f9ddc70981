// The OpenAI request bodies: the first byte picks /v1/chat/completions (even) or /v1/completions
// (odd), the rest is the JSON body turned into the internal request.
#include <cstdint>
#include <string>

#include "base/error.h"
#include "server/api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool chat = data[0] % 2 == 0;
  gp::SamplingParams defaults;
  defaults.temperature = 1.0f;
  defaults.top_k = 64;
  defaults.top_p = 0.95f;
  try {
    gp::parse_completion_request(std::string(reinterpret_cast<const char*>(data + 1), size - 1),
                                 chat, "tiny", defaults);
  } catch (const gp::Error&) {
  }
  return 0;
}
