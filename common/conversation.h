// The seed trainer's three data types, each read and formatted byte for byte as its
// processor in llm_qlora did, and tokenized with a loss mask:
// - vicuna: conversations in the Vicuna / ShareGPT format (VicunaDataProcessor);
// - orca: records of system_prompt, question and response (OrcaDataProcessor);
// - raw_text: text files cut into overlapping chunks of characters
//   (RawTextDataProcessor).
// Records are validated where they are read: a bad one is an error with its file,
// record index and reason, or skipped and counted with data.skip_invalid.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/chat_template.h"
#include "common/tokenizer.h"

namespace herd {

struct Turn {
  std::string role;  // "human", "gpt" or any other role (a messages record's user and assistant read as human and gpt)
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

// A JSON array or JSON Lines of {"id": ..., "conversations": [{"from", "value"}...]}
// or {"id": ..., "messages": [{"role", "content"}...]} (roles user and assistant read
// as human and gpt; a message's other keys are refused, not dropped).
// Without skip_invalid the first bad record throws DatasetError naming the file, the
// record index and the reason; a JSON syntax error or a truncated file names the
// byte offset.
std::vector<Conversation> read_conversations(const std::filesystem::path& file, bool skip_invalid,
                                             ReadReport* report = nullptr);

struct FormatOptions {
  std::string user_header = "### HUMAN:\n";  // vicuna
  std::string response_header = "### RESPONSE:\n";
  std::string system_header, instruction_header;  // orca
  std::string eos = "</s>";  // the tokenizer's EOS string, written after each response
  // data.prompt_style chat_template: the model's template formats vicuna and orca
  // records instead of the headers above.
  std::shared_ptr<const ChatTemplate> chat_template;
};

// The text, and the byte ranges that are responses (value, EOS and the "\n\n" of
// each gpt turn): what stays in the loss when human turns and headers are masked.
struct FormattedConversation {
  std::string text;
  std::vector<std::pair<uint32_t, uint32_t>> responses;
  // Rendered by a chat template: the text has its special tokens (none are added),
  // and a special token right after a response ends that turn, in the loss too.
  bool templated = false;
};

// human: user_header + value + "\n\n"; gpt: response_header + value + EOS + "\n\n";
// any other role R: "### " + upper(R) + ":\n" + value + "\n\n".
FormattedConversation format_conversation(const Conversation& c, const FormatOptions& options);

// The turns as messages (human -> user, gpt -> assistant), rendered by the template;
// the responses are the bytes of the assistant messages' content. Throws
// ChatTemplateError.
FormattedConversation format_chat(const std::vector<Turn>& turns, const ChatTemplate& t);

// An Orca record (OpenOrca's columns).
struct OrcaRecord {
  size_t record = 0;
  std::string id;
  std::string system_prompt, question, response;
};

// A JSON array or JSON Lines of {"system_prompt", "question", "response"} strings
// ("id" optional), with read_conversations' errors.
std::vector<OrcaRecord> read_orca(const std::filesystem::path& file, bool skip_invalid, ReadReport* report = nullptr);

// system_header + system_prompt + "\n\n" + instruction_header + question + "\n\n" +
// response_header + response + EOS + "\n"; the response is the span from the
// response's value to the end.
FormattedConversation format_orca(const OrcaRecord& r, const FormatOptions& options);

struct RawTextOptions {
  size_t chunk_len = 0;  // characters: Unicode code points, as Python's str counts them
  size_t overlap = 0;    // < chunk_len
  std::string prefix;    // prepended to every chunk
};

// A text file as Python's open() in text mode reads it: UTF-8 (invalid bytes are an
// error naming the file and the byte offset), "\r\n" and a lone "\r" read as "\n".
std::string read_text_file(const std::filesystem::path& file);

// The chunks RawTextDataProcessor cut: chunk 0 is characters [0, chunk_len); each
// next one starts `overlap` characters before the previous one ended and runs
// chunk_len characters (or to the end); cutting stops once a chunk reaches the end.
// Empty text: no chunks.
std::vector<std::string> chunk_text(const std::string& text, const RawTextOptions& options);

// One sample before tokenization.
struct TextSample {
  size_t record = 0;  // the record's index in its file; raw_text: the chunk's, over all files in order
  std::string id;     // the record's "id"; raw_text: FILE#CHUNK (the chunk's index within its file)
  FormattedConversation formatted;
};

// Every sample of a dataset of `type` (vicuna, orca: one file; raw_text: its files in
// order), formatted.
std::vector<TextSample> read_samples(const std::string& type, const std::vector<std::filesystem::path>& files,
                                     const FormatOptions& format, const RawTextOptions& raw, bool skip_invalid,
                                     ReadReport* report = nullptr);

struct TokenizedSample {
  std::vector<int32_t> ids;   // BOS first (templated: the template's first token)
  std::vector<uint8_t> mask;  // 1: the token is a loss target (predicted from the one before); BOS never is
  bool truncated = false;     // cut at the context window (right truncation)
};

TokenizedSample tokenize_conversation(const Tokenizer& tokenizer, const FormattedConversation& f, bool train_on_inputs,
                                      size_t context_window);

}  // namespace herd
