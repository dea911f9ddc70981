// The keep rule of the vocabulary step (SPEC §5 step 1), over the tokenizer's pieces.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "model/config.h"

namespace gp::prune {

// The 26 suffixes a word list entry is extended with.
extern const char* const kWordSuffixes[26];

// A piece made only of printable ASCII (32..126), reading SentencePiece's ▁ as a space.
bool is_printable_ascii_piece(const std::string& piece);
// A number piece: ASCII digits, optionally led by ▁ and joined by '.' or ','. (Gemma splits digits,
// so these are single digits; digits of other scripts are not kept.)
bool is_number_piece(const std::string& piece);
// Whitespace runs with a newline, tab or carriage return ("\n", "\n\n", "\t\t", ...): Gemma's
// chat format puts "\n" after every turn marker, so these are kept with the printable pieces.
bool is_whitespace_piece(const std::string& piece);
// "<unused123>": reserved placeholder pieces, never produced for text. Not kept, although ASCII.
bool is_unused_piece(const std::string& piece);

// The ids the vocabulary step keeps, ascending, all below c.text.n_vocab:
//  - byte pieces, control and unknown pieces, the turn and image markers, and the ids the config
//    names (bos, eos, boi, eoi, image token);
//  - pieces of printable ASCII (▁ as space), whitespace runs and number pieces, except the
//    <unusedN> placeholders;
//  - with a word list: every id the tokenizer produces for each word and its 26 suffixed forms,
//    alone and after a space.
std::vector<int32_t> vocab_keep_ids(const Tokenizer& tokenizer, const ModelConfig& c,
                                    const std::vector<std::string>& words);

// One word per line; blank lines and surrounding whitespace ignored. Throws Error.
std::vector<std::string> read_word_list(const std::string& path);

}  // namespace gp::prune
