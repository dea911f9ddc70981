#include "runtime/chat.h"

#include "base/error.h"

namespace gp {
namespace {
std::string trim(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}
}  // namespace

std::string image_placeholder(const ChatPieces& p) {
  std::string s = "\n\n" + p.start_of_image;
  s.reserve(s.size() + p.image_soft_token.size() * p.mm_tokens_per_image + 32);
  for (int i = 0; i < p.mm_tokens_per_image; ++i) s += p.image_soft_token;
  return s + p.end_of_image + "\n\n";
}

std::string format_chat(const std::vector<ChatMessage>& messages, const ChatPieces& p) {
  return format_chat(messages, p, nullptr);
}

std::vector<std::string> template_markers(const ChatPieces& p) {
  return {p.start_of_turn, p.end_of_turn, p.start_of_image, p.end_of_image, p.image_soft_token};
}

std::string format_chat(const std::vector<ChatMessage>& messages, const ChatPieces& p,
                        std::vector<std::pair<size_t, size_t>>* content) {
  std::string out, system;
  auto add_content = [&](const std::string& text) {
    if (content && !text.empty()) content->emplace_back(out.size(), out.size() + text.size());
    out += text;
  };
  size_t i = 0;
  if (!messages.empty() && messages[0].role == "system") {
    check(messages[0].n_images == 0, "chat: a system message cannot hold images");
    system = trim(messages[0].text);
    i = 1;
  }
  check(i < messages.size(), "chat: expected at least one user message");
  bool expect_user = true;
  bool first_user = true;
  for (; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool is_user = m.role == "user";
    const bool is_model = m.role == "assistant" || m.role == "model";
    check(is_user || is_model, "chat: message " + std::to_string(i) + " has role '" + m.role +
                                   "', expected user or assistant (system only first)");
    check(is_user == expect_user,
          "chat: message " + std::to_string(i) + " has role '" + m.role +
              "', but roles must alternate user/assistant starting with user");
    out += p.start_of_turn + (is_user ? "user\n" : "model\n");
    if (is_user && first_user && !system.empty()) {
      add_content(system);
      out += "\n\n";
    }
    for (int k = 0; k < m.n_images; ++k) out += image_placeholder(p);
    add_content(trim(m.text));
    out += p.end_of_turn + "\n";
    if (is_user) first_user = false;
    expect_user = !expect_user;
  }
  check(!expect_user, "chat: the last message must be from the user");
  return out + p.start_of_turn + "model\n";
}

}  // namespace gp
