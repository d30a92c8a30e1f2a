// Tokenized datasets on disk (docs/data-format.md): built once from a conversation
// file, memory-mapped by readers, keyed by a hash of the data file, the tokenizer
// and the formatting settings. A reader checks the header, every size and a checksum
// of the arrays before it uses one; a bad file is reported and rebuilt, never used.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/conversation.h"

namespace herd {

// A 64-bit hash of bytes (not cryptographic: it detects change and corruption).
uint64_t hash_bytes(std::string_view bytes, uint64_t seed = 0);
uint64_t hash_file(const std::filesystem::path& file);

struct DatasetSettings {
  std::string type = "vicuna";  // vicuna | orca | raw_text
  std::string prompt_style = "seed";  // seed | chat_template (format.chat_template, once loaded)
  FormatOptions format;
  RawTextOptions raw;  // raw_text
  bool train_on_inputs = true;
  bool skip_invalid = false;
  size_t context_window = 4096;

  std::string describe() const;  // everything that changes the tokens, as text
};

// Tokenizes every sample (on all cores).
struct TokenizedData {
  std::vector<uint64_t> offsets{0};  // sample i is tokens [offsets[i], offsets[i+1])
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
  std::vector<uint64_t> records;  // record index in the data file
  std::vector<uint8_t> truncated;
  ReadReport report;

  size_t samples() const { return records.size(); }
};
TokenizedData tokenize_dataset(const std::vector<TextSample>& samples, const Tokenizer& tokenizer,
                               const DatasetSettings& settings);

// A mapped cache file.
class TokenCache {
 public:
  // Builds the key from the inputs' hashes.
  static uint64_t key(uint64_t data_hash, uint64_t tokenizer_hash, const DatasetSettings& settings);
  static void write(const std::filesystem::path& file, const TokenizedData& data, uint64_t key, int32_t vocab_size);
  // nullopt and `problem` set when the file is missing, for another key, or corrupt.
  static std::unique_ptr<TokenCache> open(const std::filesystem::path& file, uint64_t key, int32_t vocab_size,
                                          std::string* problem);
  ~TokenCache();

  size_t samples() const { return samples_; }
  size_t tokens() const { return tokens_; }
  std::pair<const int32_t*, size_t> ids(size_t sample) const;
  const uint8_t* mask(size_t sample) const;
  uint64_t record(size_t sample) const { return records_[sample]; }
  bool truncated(size_t sample) const { return truncated_[sample] != 0; }
  // {"records": N, "skipped": {reason: count}} as read when the cache was built.
  std::string_view report() const { return report_; }

 private:
  TokenCache() = default;
  void* map_ = nullptr;
  size_t size_ = 0;
  size_t samples_ = 0, tokens_ = 0;
  const uint64_t* offsets_ = nullptr;
  const int32_t* ids_ = nullptr;
  const uint8_t* mask_ = nullptr;
  const uint64_t* records_ = nullptr;
  const uint8_t* truncated_ = nullptr;
  std::string_view report_;
};

// The whole path: read (or reuse the cache for) `data_files` (one file; raw_text: its
// files in order) under `cache_dir`.
struct LoadedDataset {
  std::unique_ptr<TokenCache> cache;
  bool built = false;           // false: a cache hit
  std::string rebuilt_because;  // why an existing cache file was not used
  std::filesystem::path file;
};
LoadedDataset load_tokenized_dataset(const std::vector<std::filesystem::path>& data_files,
                                     const std::filesystem::path& tokenizer_file, const DatasetSettings& settings,
                                     const std::filesystem::path& cache_dir);

}  // namespace herd
