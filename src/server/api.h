// The OpenAI API as gemma-server speaks it: request bodies of /v1/chat/completions and
// /v1/completions parsed and checked field by field, answers, stream chunks and error objects
// built. No sockets and no model here (see docs/SERVER.md for the fields and the decisions).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "io/image.h"
#include "runtime/chat.h"
#include "runtime/sampler.h"

namespace gp {

// A request the server refuses: the HTTP status and the fields of OpenAI's error object.
class ApiError : public Error {
 public:
  ApiError(int status, std::string type, std::string code, const std::string& message,
           std::string param = "")
      : Error(message),
        status(status),
        type(std::move(type)),
        code(std::move(code)),
        param(std::move(param)) {}
  int status;
  std::string type;   // "invalid_request_error", "server_error"
  std::string code;   // "invalid_value", "model_not_found", ...
  std::string param;  // the offending field ("messages[1].content"), empty when none
};

// 400 invalid_request_error.
ApiError invalid_request(const std::string& message, const std::string& param = "",
                         const std::string& code = "invalid_value");

// {"error": {"message", "type", "code", "param"}}
nlohmann::json error_body(const ApiError& e);

struct CompletionRequest {
  bool chat = true;
  std::vector<ChatMessage> messages;  // chat: the conversation; images counted per message
  std::vector<Image> images;          // chat: every image, in prompt order
  std::string prompt;                 // completions: raw text (BOS + its tokens, no template)
  std::vector<int32_t> prompt_ids;    // completions: the prompt as token ids instead
  bool prompt_is_ids = false;
  SamplingParams sampling;
  std::optional<int> max_tokens;  // absent: until the context is full
  std::vector<std::string> stop;
  bool ignore_eos = false;  // extension (as llama.cpp's): stop tokens do not end the answer
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the usage
};

// Parses the JSON body of POST /v1/chat/completions (chat) or /v1/completions. `model` is the
// id of the served model (a request naming another gets 404); `defaults` fills the sampling
// fields the request leaves out, and a missing seed is drawn at random. Images come as data: URLs
// and are decoded here. Throws ApiError naming the field.
CompletionRequest parse_completion_request(const std::string& body, bool chat,
                                           const std::string& model,
                                           const SamplingParams& defaults);

// What a generation produced, as the answer reports it.
struct Completion {
  std::string text;
  std::string finish_reason;  // finish_reason_name: "stop" or "length"
  int prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;
  double prompt_ms = 0, predicted_ms = 0;  // prompt evaluation (images included), generation
  double prompt_per_second = 0, predicted_per_second = 0;  // as GenerateResult counts them
};

// The fields every answer and chunk of one request shares.
struct ResponseHead {
  bool chat = true;
  std::string id;  // "chatcmpl-N" or "cmpl-N"
  std::string model;
  int64_t created = 0;  // unix seconds
};

// The whole answer of a non-streaming request.
nlohmann::json completion_response(const ResponseHead& head, const Completion& c);
// One stream chunk: the assistant role (chat's first chunk), a piece of text, or the finish
// reason (then with "timings"). Empty strings leave the part out.
nlohmann::json stream_chunk(const ResponseHead& head, const std::string& role,
                            const std::string& text, const std::string& finish_reason,
                            const Completion* done = nullptr);
// The last chunk when the client asked for stream_options.include_usage: no choices, the usage.
nlohmann::json usage_chunk(const ResponseHead& head, const Completion& c);
// GET /v1/models and /v1/models/{id}.
nlohmann::json model_object(const std::string& model, int64_t created);
nlohmann::json models_response(const std::string& model, int64_t created);

// JSON text that never throws on invalid UTF-8 (replaced by U+FFFD).
std::string dump(const nlohmann::json& j);
// A server-sent event: "data: {json}\n\n".
std::string sse_event(const nlohmann::json& j);

}  // namespace gp
