// Gemma 3's chat format (SPEC §4) and the image placeholder of SPEC §3.7, as text with the special
// pieces spelled out; the tokenizer turns the pieces into their ids. BOS is added as an id, never
// parsed from text.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace gp {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant" ("model" is accepted for assistant)
  std::string text;
  int n_images = 0;  // images at the start of the content, before the text
};

// The special pieces of the template, as named in the tokenizer.
struct ChatPieces {
  std::string start_of_turn = "<start_of_turn>", end_of_turn = "<end_of_turn>";
  std::string start_of_image = "<start_of_image>", end_of_image = "<end_of_image>";
  std::string image_soft_token = "<image_soft_token>";
  int mm_tokens_per_image = 256;
};

// "\n\n<start_of_image>" + soft token x mm_tokens_per_image + "<end_of_image>\n\n".
std::string image_placeholder(const ChatPieces& p);

// The conversation as prompt text ending with "<start_of_turn>model\n" (without BOS). A system
// message (first only) is prepended to the first user turn; roles must alternate user/assistant,
// starting with user. Throws Error otherwise.
std::string format_chat(const std::vector<ChatMessage>& messages, const ChatPieces& p);
// The same, with the byte ranges [begin, end) of the text that came from message content: there
// the template's pieces are ordinary text, so that a message cannot forge a turn boundary.
std::string format_chat(const std::vector<ChatMessage>& messages, const ChatPieces& p,
                        std::vector<std::pair<size_t, size_t>>* content);

// The template's own markers (turn and image pieces): the only text tokenized as control tokens.
std::vector<std::string> template_markers(const ChatPieces& p);

}  // namespace gp
