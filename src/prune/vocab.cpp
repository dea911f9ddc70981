#include "prune/vocab.h"

#include <fstream>

#include "base/error.h"

namespace gp::prune {

const char* const kWordSuffixes[26] = {"s",    "ed",   "ing",  "er",   "est", "ly",   "tion",
                                       "ness", "ment", "able", "ible", "ful", "less", "ous",
                                       "ive",  "al",   "ize",  "ise",  "ity", "ence", "ance",
                                       "ure",  "dom",  "ship", "ward", "wise"};

bool is_printable_ascii_piece(const std::string& piece) {
  const std::string s = unescape_piece(piece);
  if (s.empty()) return false;
  for (unsigned char ch : s)
    if (ch < 32 || ch > 126) return false;
  return true;
}

bool is_whitespace_piece(const std::string& piece) {
  const std::string s = unescape_piece(piece);
  bool control = false;
  for (char ch : s) {
    if (ch != ' ' && ch != '\n' && ch != '\t' && ch != '\r') return false;
    control = control || ch != ' ';
  }
  return control;
}

bool is_number_piece(const std::string& piece) {
  std::string s = unescape_piece(piece);
  if (!s.empty() && s[0] == ' ') s.erase(0, 1);
  if (s.empty() || s[0] < '0' || s[0] > '9') return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char ch = s[i];
    const bool digit = ch >= '0' && ch <= '9';
    const bool sep =
        (ch == '.' || ch == ',') && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '9';
    if (!digit && !sep) return false;
  }
  return true;
}

bool is_unused_piece(const std::string& piece) {
  const std::string head = "<unused";
  if (piece.size() < head.size() + 2 || piece.compare(0, head.size(), head) != 0 ||
      piece.back() != '>')
    return false;
  for (size_t i = head.size(); i + 1 < piece.size(); ++i)
    if (piece[i] < '0' || piece[i] > '9') return false;
  return true;
}

std::vector<int32_t> vocab_keep_ids(const Tokenizer& tokenizer, const ModelConfig& c,
                                    const std::vector<std::string>& words) {
  const int64_t n_vocab = c.text.n_vocab;
  std::vector<bool> keep(n_vocab, false);
  auto mark = [&](int32_t id) {
    if (id >= 0 && id < n_vocab) keep[id] = true;
  };
  const int32_t n_pieces = static_cast<int32_t>(std::min<int64_t>(tokenizer.vocab_size(), n_vocab));
  for (int32_t id = 0; id < n_pieces; ++id) {
    if (tokenizer.is_byte(id) || tokenizer.is_control(id) || tokenizer.is_unknown(id)) {
      mark(id);
      continue;
    }
    const std::string p = tokenizer.piece(id);
    if (is_unused_piece(p)) continue;
    if (is_printable_ascii_piece(p) || is_whitespace_piece(p) || is_number_piece(p)) mark(id);
  }
  for (const char* special : {"<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                              "<end_of_image>", "<image_soft_token>"})
    mark(tokenizer.piece_to_id(special));
  for (int32_t id : {c.bos_token, c.boi_token, c.eoi_token, c.image_token}) mark(id);
  for (int32_t id : c.eos_tokens) mark(id);
  for (const std::string& w : words) {
    std::vector<std::string> forms = {w};
    for (const char* s : kWordSuffixes) forms.push_back(w + s);
    for (const std::string& f : forms) {
      for (int32_t id : tokenizer.encode(f)) mark(id);
      for (int32_t id : tokenizer.encode(" " + f)) mark(id);
    }
  }
  std::vector<int32_t> ids;
  for (int64_t id = 0; id < n_vocab; ++id)
    if (keep[id]) ids.push_back(static_cast<int32_t>(id));
  return ids;
}

std::vector<std::string> read_word_list(const std::string& path) {
  std::ifstream f(path);
  check(f.good(), path + ": cannot open the word list");
  std::vector<std::string> words;
  std::string line;
  while (std::getline(f, line)) {
    const size_t b = line.find_first_not_of(" \t\r\n"), e = line.find_last_not_of(" \t\r\n");
    if (b != std::string::npos) words.push_back(line.substr(b, e - b + 1));
  }
  check(!f.bad(), path + ": read error");
  return words;
}

}  // namespace gp::prune
