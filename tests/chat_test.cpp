#include "runtime/chat.h"

#include <gtest/gtest.h>

#include "base/error.h"

namespace gp {
namespace {

TEST(Chat, SingleTurnMatchesGemmaTemplate) {
  ChatPieces p;
  EXPECT_EQ(format_chat({{"user", "  Hello, how are you?\n", 0}}, p),
            "<start_of_turn>user\nHello, how are you?<end_of_turn>\n<start_of_turn>model\n");
}

TEST(Chat, SystemPromptJoinsFirstUserTurn) {
  ChatPieces p;
  EXPECT_EQ(format_chat({{"system", "Be brief.", 0}, {"user", "Hi", 0}}, p),
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n");
}

TEST(Chat, MultiTurnAlternates) {
  ChatPieces p;
  EXPECT_EQ(format_chat({{"user", "A", 0}, {"assistant", "B", 0}, {"user", "C", 0}}, p),
            "<start_of_turn>user\nA<end_of_turn>\n<start_of_turn>model\nB<end_of_turn>\n"
            "<start_of_turn>user\nC<end_of_turn>\n<start_of_turn>model\n");
}

TEST(Chat, ImagesGoBeforeTheTextWithTheirPlaceholder) {
  ChatPieces p;
  p.mm_tokens_per_image = 3;
  const std::string img =
      "\n\n<start_of_image><image_soft_token><image_soft_token><image_soft_token><end_of_image>"
      "\n\n";
  EXPECT_EQ(image_placeholder(p), img);
  EXPECT_EQ(
      format_chat({{"user", "What is this?", 2}}, p),
      "<start_of_turn>user\n" + img + img + "What is this?<end_of_turn>\n<start_of_turn>model\n");
}

TEST(Chat, RejectsBadRoleOrder) {
  ChatPieces p;
  EXPECT_THROW(format_chat({{"assistant", "A", 0}}, p), Error);
  EXPECT_THROW(format_chat({{"user", "A", 0}, {"user", "B", 0}}, p), Error);
  EXPECT_THROW(format_chat({{"user", "A", 0}, {"assistant", "B", 0}}, p), Error);
  EXPECT_THROW(format_chat({{"tool", "A", 0}}, p), Error);
  EXPECT_THROW(format_chat({}, p), Error);
}

}  // namespace
}  // namespace gp
