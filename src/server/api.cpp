#include "server/api.h"

#include <limits>
#include <random>
#include <semaphore>
#include <set>

namespace gp {

using nlohmann::json;

ApiError invalid_request(const std::string& message, const std::string& param,
                         const std::string& code) {
  return ApiError(400, "invalid_request_error", code, message, param);
}

json error_body(const ApiError& e) {
  return {{"error",
           {{"message", e.what()},
            {"type", e.type},
            {"code", e.code},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)}}}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse_event(const json& j) { return "data: " + dump(j) + "\n\n"; }

namespace {

const char* type_name(const json& v) {
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return "null";
}

ApiError wrong_type(const std::string& name, const char* expected, const json& v) {
  return invalid_request("'" + name + "' must be " + expected + ", got " + type_name(v), name,
                         "invalid_type");
}

double number(const json& v, const std::string& name) {
  if (!v.is_number()) throw wrong_type(name, "a number", v);
  return v.get<double>();
}

int64_t integer(const json& v, const std::string& name) {
  if (!v.is_number_integer()) throw wrong_type(name, "an integer", v);
  return v.is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(
                                      v.get<uint64_t>(), std::numeric_limits<int64_t>::max()))
                                : v.get<int64_t>();
}

bool boolean(const json& v, const std::string& name) {
  if (!v.is_boolean()) throw wrong_type(name, "a boolean", v);
  return v.get<bool>();
}

const std::string& string(const json& v, const std::string& name) {
  if (!v.is_string()) throw wrong_type(name, "a string", v);
  return v.get_ref<const std::string&>();
}

void check_range(bool ok, const std::string& name, const std::string& expected, double got) {
  if (!ok) {
    std::string g = std::to_string(got);
    g.erase(g.find_last_not_of('0') + 1);
    if (!g.empty() && g.back() == '.') g.pop_back();
    throw invalid_request("'" + name + "' must be " + expected + ", got " + g, name);
  }
}

// Base64 (standard alphabet, padding optional, no whitespace) to bytes.
std::vector<uint8_t> base64_decode(const std::string& s, size_t begin, const std::string& name) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  size_t end = s.size();
  while (end > begin && s[end - 1] == '=') --end;
  if (s.size() - end > 2 || (end - begin) % 4 == 1)
    throw invalid_request("'" + name + "': the base64 data has a wrong length (truncated?)", name);
  std::vector<uint8_t> out;
  out.reserve((end - begin) * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = begin; i < end; ++i) {
    const int v = value(s[i]);
    if (v < 0)
      throw invalid_request("'" + name + "': invalid base64 character at offset " +
                                std::to_string(i) + " (expected A-Z a-z 0-9 + /)",
                            name);
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>(acc >> bits));
    }
  }
  return out;
}

// Images decoded at the same time, over all requests.
constexpr int kMaxDecodes = 2;

// "data:image/png;base64,...." -> the decoded image.
Image decode_data_url(const std::string& url, const std::string& name) {
  if (url.rfind("data:", 0) != 0)
    throw invalid_request("'" + name +
                              "': only data: URLs are supported (the server fetches "
                              "nothing); expected data:image/png;base64,... or data:image/jpeg;...",
                          name);
  const size_t comma = url.find(',');
  const std::string meta = url.substr(5, comma == std::string::npos ? 0 : comma - 5);
  if (comma == std::string::npos || meta.size() < 7 ||
      meta.compare(meta.size() - 7, 7, ";base64") != 0)
    throw invalid_request("'" + name + "': expected a base64 data URL (data:image/...;base64,...)",
                          name);
  if (meta.rfind("image/", 0) != 0 && meta != ";base64")
    throw invalid_request("'" + name + "': the data URL holds '" + meta.substr(0, meta.size() - 7) +
                              "', expected an image (image/png, image/jpeg)",
                          name);
  const auto bytes = base64_decode(url, comma + 1, name);
  // Decoding runs on the HTTP thread before the queue is asked: at most a few at once, each
  // within the pixel budget decode_image checks from the header, so uploads cannot take the
  // machine's memory. A request that finds every slot busy is told to retry, like a full queue.
  static std::counting_semaphore<kMaxDecodes> slots(kMaxDecodes);
  if (!slots.try_acquire())
    throw ApiError(
        503, "server_error", "server_busy",
        "the server is busy decoding " + std::to_string(kMaxDecodes) + " other images; retry later",
        name);
  struct Release {
    std::counting_semaphore<kMaxDecodes>& s;
    ~Release() { s.release(); }
  } release{slots};
  try {
    return decode_image(bytes.data(), bytes.size(), name);
  } catch (const Error& e) {
    throw invalid_request(e.what(), name, "invalid_image");
  }
}

// One message of a chat request: its role, its text parts joined by newlines, its images.
ChatMessage parse_message(const json& m, const std::string& name, std::vector<Image>& images) {
  if (!m.is_object()) throw wrong_type(name, "an object", m);
  ChatMessage out;
  for (const auto& [key, v] : m.items())
    if (!v.is_null() && key != "role" && key != "content" && key != "name")
      throw invalid_request("'" + name + "." + key + "' is not supported (expected role, content)",
                            name + "." + key, "unknown_parameter");
  if (!m.contains("role") || m["role"].is_null())
    throw invalid_request("'" + name + ".role' is required", name + ".role");
  out.role = string(m["role"], name + ".role");
  if (out.role == "developer") out.role = "system";  // OpenAI's newer name for it
  if (out.role != "system" && out.role != "user" && out.role != "assistant")
    throw invalid_request(
        "'" + name + ".role' is '" + out.role + "', expected system, user or assistant",
        name + ".role");
  const json& content = m.contains("content") ? m["content"] : json();
  if (content.is_null()) {
    if (out.role != "assistant")
      throw invalid_request("'" + name + ".content' is required", name + ".content");
  } else if (content.is_string()) {
    out.text = content.get<std::string>();
  } else if (content.is_array()) {
    for (size_t i = 0; i < content.size(); ++i) {
      const std::string pname = name + ".content[" + std::to_string(i) + "]";
      const json& part = content[i];
      if (!part.is_object()) throw wrong_type(pname, "an object", part);
      if (!part.contains("type")) throw invalid_request("'" + pname + ".type' is required", pname);
      const std::string& type = string(part["type"], pname + ".type");
      if (type == "text") {
        if (!part.contains("text"))
          throw invalid_request("'" + pname + ".text' is required", pname + ".text");
        if (!out.text.empty()) out.text += "\n";
        out.text += string(part["text"], pname + ".text");
      } else if (type == "image_url") {
        if (!part.contains("image_url"))
          throw invalid_request("'" + pname + ".image_url' is required", pname + ".image_url");
        const json& iu = part["image_url"];
        const json& url = iu.is_object() && iu.contains("url") ? iu["url"] : iu;
        images.push_back(decode_data_url(string(url, pname + ".image_url.url"), pname));
        ++out.n_images;
      } else {
        throw invalid_request("'" + pname + ".type' is '" + type + "', expected text or image_url",
                              pname + ".type");
      }
    }
  } else {
    throw wrong_type(name + ".content", "a string or an array of content parts", content);
  }
  if (out.role == "system" && out.n_images > 0)
    throw invalid_request("'" + name + "': a system message cannot hold images", name);
  return out;
}

}  // namespace

CompletionRequest parse_completion_request(const std::string& body, bool chat,
                                           const std::string& model,
                                           const SamplingParams& defaults) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number beyond double
    throw invalid_request(std::string("the body is not valid JSON: ") + e.what(), "",
                          "invalid_json");
  }
  if (!j.is_object()) throw wrong_type("body", "a JSON object", j);

  // Fields an OpenAI client may send with their neutral value; other values are refused rather
  // than silently ignored.
  static const std::set<std::string> common = {"model",
                                               "stream",
                                               "stream_options",
                                               "max_tokens",
                                               "temperature",
                                               "top_p",
                                               "top_k",
                                               "min_p",
                                               "seed",
                                               "stop",
                                               "repetition_penalty",
                                               "n",
                                               "presence_penalty",
                                               "frequency_penalty",
                                               "logprobs",
                                               "user",
                                               "ignore_eos"};
  for (const auto& [key, v] : j.items()) {
    if (v.is_null()) continue;  // null means absent, for any field
    // The default answer format, which is what the server gives anyway.
    if (key == "response_format" && v == json{{"type", "text"}}) continue;
    const bool known =
        common.count(key) || (chat ? key == "messages" || key == "max_completion_tokens"
                                   : key == "prompt" || key == "echo");
    if (!known)
      throw invalid_request("unknown parameter '" + key +
                                "' (see docs/SERVER.md for the supported "
                                "ones)",
                            key, "unknown_parameter");
  }
  // Null means absent, as OpenAI's clients send it.
  auto get = [&](const char* key) -> const json* {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };

  CompletionRequest r;
  r.chat = chat;
  if (const json* v = get("model")) {
    const std::string& m = string(*v, "model");
    if (m != model)
      throw ApiError(404, "invalid_request_error", "model_not_found",
                     "the model '" + m + "' does not exist; this server serves '" + model + "'",
                     "model");
  }
  if (chat) {
    const json* msgs = get("messages");
    if (!msgs) throw invalid_request("'messages' is required", "messages", "missing_parameter");
    if (!msgs->is_array()) throw wrong_type("messages", "an array", *msgs);
    if (msgs->empty()) throw invalid_request("'messages' is empty", "messages");
    for (size_t i = 0; i < msgs->size(); ++i)
      r.messages.push_back(
          parse_message((*msgs)[i], "messages[" + std::to_string(i) + "]", r.images));
  } else {
    const json* p = get("prompt");
    if (!p) throw invalid_request("'prompt' is required", "prompt", "missing_parameter");
    if (p->is_string()) {
      r.prompt = p->get<std::string>();
    } else if (p->is_array() && !p->empty() && (*p)[0].is_number()) {
      r.prompt_is_ids = true;
      for (size_t i = 0; i < p->size(); ++i) {
        const int64_t id = integer((*p)[i], "prompt[" + std::to_string(i) + "]");
        check_range(id >= 0 && id <= std::numeric_limits<int32_t>::max(),
                    "prompt[" + std::to_string(i) + "]", "a token id", static_cast<double>(id));
        r.prompt_ids.push_back(static_cast<int32_t>(id));
      }
    } else if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) {
      r.prompt = (*p)[0].get<std::string>();
    } else {
      throw wrong_type("prompt", "a string or an array of token ids", *p);
    }
    if (const json* v = get("echo"))
      if (boolean(*v, "echo")) throw invalid_request("'echo' is not supported", "echo");
  }

  if (const json* v = get("stream")) r.stream = boolean(*v, "stream");
  if (const json* v = get("ignore_eos")) r.ignore_eos = boolean(*v, "ignore_eos");
  if (const json* v = get("stream_options")) {
    if (!v->is_object()) throw wrong_type("stream_options", "an object", *v);
    for (const auto& [key, o] : v->items()) {
      if (o.is_null()) continue;
      if (key != "include_usage")
        throw invalid_request("unknown parameter 'stream_options." + key + "'",
                              "stream_options." + key, "unknown_parameter");
      r.include_usage = boolean(o, "stream_options.include_usage");
    }
  }
  for (const char* key : {"max_tokens", "max_completion_tokens"})
    if (const json* v = get(key)) {
      const int64_t n = integer(*v, key);
      check_range(n >= 1, key, "at least 1", static_cast<double>(n));
      r.max_tokens = static_cast<int>(std::min<int64_t>(n, std::numeric_limits<int>::max()));
    }

  SamplingParams& s = r.sampling;
  s = defaults;
  if (const json* v = get("temperature")) {
    s.temperature = static_cast<float>(number(*v, "temperature"));
    check_range(s.temperature >= 0, "temperature", "at least 0 (0: greedy)", s.temperature);
  }
  if (const json* v = get("top_p")) {
    s.top_p = static_cast<float>(number(*v, "top_p"));
    check_range(s.top_p > 0 && s.top_p <= 1, "top_p", "in (0, 1]", s.top_p);
  }
  if (const json* v = get("top_k")) {
    const int64_t k = integer(*v, "top_k");
    check_range(k >= 0, "top_k", "at least 0 (0: off)", static_cast<double>(k));
    s.top_k = static_cast<int>(std::min<int64_t>(k, std::numeric_limits<int>::max()));
  }
  if (const json* v = get("min_p")) {
    s.min_p = static_cast<float>(number(*v, "min_p"));
    check_range(s.min_p >= 0 && s.min_p <= 1, "min_p", "in [0, 1]", s.min_p);
  }
  if (const json* v = get("repetition_penalty")) {
    s.repetition_penalty = static_cast<float>(number(*v, "repetition_penalty"));
    check_range(s.repetition_penalty > 0, "repetition_penalty", "above 0 (1: off)",
                s.repetition_penalty);
  }
  if (const json* v = get("seed"))
    s.seed = static_cast<uint64_t>(integer(*v, "seed"));
  else
    s.seed = (static_cast<uint64_t>(std::random_device{}()) << 32) | std::random_device{}();

  if (const json* v = get("stop")) {
    if (v->is_string()) {
      r.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      for (size_t i = 0; i < v->size(); ++i)
        r.stop.push_back(string((*v)[i], "stop[" + std::to_string(i) + "]"));
    } else {
      throw wrong_type("stop", "a string or an array of strings", *v);
    }
    for (const auto& st : r.stop)
      if (st.empty()) throw invalid_request("'stop' holds an empty string", "stop");
  }

  // Accepted only with the value that changes nothing.
  if (const json* v = get("n"))
    check_range(integer(*v, "n") == 1, "n", "1 (one answer per request)",
                static_cast<double>(integer(*v, "n")));
  for (const char* key : {"presence_penalty", "frequency_penalty"})
    if (const json* v = get(key))
      check_range(number(*v, key) == 0, key, "0 (not supported; use repetition_penalty)",
                  number(*v, key));
  if (const json* v = get("logprobs"))
    if (v->is_boolean() ? v->get<bool>() : integer(*v, "logprobs") != 0)
      throw invalid_request("'logprobs' is not supported", "logprobs");
  if (const json* v = get("user")) string(*v, "user");
  return r;
}

namespace {
json usage(const Completion& c) {
  return {{"prompt_tokens", c.prompt_tokens},
          {"completion_tokens", c.completion_tokens},
          {"total_tokens", c.prompt_tokens + c.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", c.cached_tokens}}}};
}

// llama.cpp's extra field, which the chat page reads for its speed line.
json timings(const Completion& c) {
  return {{"prompt_n", c.prompt_tokens - c.cached_tokens},
          {"prompt_ms", c.prompt_ms},
          {"prompt_per_second", c.prompt_per_second},
          {"predicted_n", c.completion_tokens},
          {"predicted_ms", c.predicted_ms},
          {"predicted_per_second", c.predicted_per_second}};
}

json head_json(const ResponseHead& h, bool chunk) {
  return {{"id", h.id},
          {"object",
           h.chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
          {"created", h.created},
          {"model", h.model}};
}
}  // namespace

json completion_response(const ResponseHead& head, const Completion& c) {
  json choice = {{"index", 0}, {"finish_reason", c.finish_reason}, {"logprobs", nullptr}};
  if (head.chat)
    choice["message"] = {{"role", "assistant"}, {"content", c.text}};
  else
    choice["text"] = c.text;
  json j = head_json(head, false);
  j["choices"] = json::array({choice});
  j["usage"] = usage(c);
  j["timings"] = timings(c);
  return j;
}

json stream_chunk(const ResponseHead& head, const std::string& role, const std::string& text,
                  const std::string& finish_reason, const Completion* done) {
  json choice = {{"index", 0},
                 {"finish_reason", finish_reason.empty() ? json(nullptr) : json(finish_reason)},
                 {"logprobs", nullptr}};
  if (head.chat) {
    json delta = json::object();
    if (!role.empty()) delta["role"] = role;
    if (!text.empty() || !role.empty()) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  json j = head_json(head, true);
  j["choices"] = json::array({choice});
  if (done) j["timings"] = timings(*done);
  return j;
}

json usage_chunk(const ResponseHead& head, const Completion& c) {
  json j = head_json(head, true);
  j["choices"] = json::array();
  j["usage"] = usage(c);
  return j;
}

json model_object(const std::string& model, int64_t created) {
  return {{"id", model}, {"object", "model"}, {"created", created}, {"owned_by", "gemma-prune"}};
}

json models_response(const std::string& model, int64_t created) {
  return {{"object", "list"}, {"data", json::array({model_object(model, created)})}};
}

}  // namespace gp
