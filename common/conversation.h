// Conversation data in the Vicuna / ShareGPT format, formatted byte for byte as the
// seed's trainer (llm_qlora's VicunaDataProcessor) did, and tokenized with a loss
// mask. Records are validated where they are read: a bad one is an error with its
// record index and reason, or skipped and counted with data.skip_invalid.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/tokenizer.h"

namespace herd {

struct Turn {
  std::string role;  // "human", "gpt" or any other role
  std::string value;
};

struct Conversation {
  size_t record = 0;  // index in the file (0-based)
  std::string id;     // the record's "id", if any
  std::vector<Turn> turns;
};

class DatasetError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ReadReport {
  size_t records = 0;                     // records in the file
  std::map<std::string, size_t> skipped;  // reason -> count (with skip_invalid)
};

// A JSON array or JSON Lines of {"id": ..., "conversations": [{"from", "value"}...]}.
// Without skip_invalid the first bad record throws DatasetError naming the file, the
// record index and the reason; a JSON syntax error or a truncated file names the
// byte offset.
std::vector<Conversation> read_conversations(const std::filesystem::path& file, bool skip_invalid,
                                             ReadReport* report = nullptr);

struct FormatOptions {
  std::string user_header = "### HUMAN:\n";
  std::string response_header = "### RESPONSE:\n";
  std::string eos = "</s>";  // the tokenizer's EOS string, written after each gpt value
};

// The text, and the byte ranges that are responses (value, EOS and the "\n\n" of
// each gpt turn): what stays in the loss when human turns and headers are masked.
struct FormattedConversation {
  std::string text;
  std::vector<std::pair<uint32_t, uint32_t>> responses;
};

// human: user_header + value + "\n\n"; gpt: response_header + value + EOS + "\n\n";
// any other role R: "### " + upper(R) + ":\n" + value + "\n\n".
FormattedConversation format_conversation(const Conversation& c, const FormatOptions& options);

struct TokenizedSample {
  std::vector<int32_t> ids;   // BOS first
  std::vector<uint8_t> mask;  // 1: the token is a loss target (predicted from the one before); BOS never is
  bool truncated = false;     // cut at the context window (right truncation)
};

TokenizedSample tokenize_conversation(const Tokenizer& tokenizer, const FormattedConversation& f, bool train_on_inputs,
                                      size_t context_window);

}  // namespace herd
