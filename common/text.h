// Small text helpers shared by the error messages of every input format.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace herd {

// Edit distance (insert, delete, substitute; each costs 1).
size_t edit_distance(std::string_view a, std::string_view b);

// The candidate nearest to `word` by edit distance (the first one on a tie);
// empty when there are no candidates.
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);

// `s` as a double-quoted string with C escapes (\n, \t, \", \\, \xNN).
std::string c_quoted(std::string_view s);

// Bytes in a UTF-8 sequence that starts with `lead`; 0 for a byte that cannot start one.
size_t sequence_length(unsigned char lead);

// The byte offset of every code point of valid UTF-8 `text`, and text.size() last.
std::vector<size_t> code_point_offsets(const std::string& text);

// The offset of the first byte that is not valid UTF-8 (overlong forms, surrogates
// and values past U+10FFFF included), or npos.
size_t invalid_utf8(std::string_view text);

// "a, b, c"
std::string join(const std::vector<std::string>& items, std::string_view sep = ", ");

}  // namespace herd
