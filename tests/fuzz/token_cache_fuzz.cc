// The token cache reader. Its checksum turns away nearly every random file, so the
// target also writes the input as a body under a valid header and checksum (the
// layout of docs/data-format.md), reaching the checks of what the bytes claim: the
// cache is refused with a reason, or every sample lies inside it, ids below the
// vocabulary, masks 0 or 1.
#include <cstring>

#include "common/token_cache.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

constexpr int32_t kVocab = 632;
constexpr uint64_t kKey = 0x1234;

// First byte even: the input is the file. Odd: the rest is a body for (bits of the
// second byte) samples and the tokens the body's size allows, under a valid header.
std::string file_bytes(const uint8_t* data, size_t size) {
  std::string raw(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] % 2 == 0) return raw;
  const uint64_t samples = size > 1 ? data[1] % 8 : 0;
  std::string body = raw.size() > 1 ? raw.substr(1) : std::string();
  const uint64_t fixed = 8 * (samples + 1) + 8 * samples + samples;  // offsets, records, truncated
  if (body.size() < fixed) body.resize(fixed, '\0');
  const uint64_t tokens = (body.size() - fixed) / 5;  // ids and masks; what is left is the report
  const uint64_t report = body.size() - fixed - 5 * tokens;
  struct {
    char magic[8] = {'H', 'E', 'R', 'D', 'T', 'O', 'K', '\0'};
    uint32_t version = 1, vocab = kVocab;
    uint64_t key = kKey, samples, tokens, report_bytes, checksum, reserved = 0;
  } header;
  static_assert(sizeof header == 64);
  header.samples = samples;
  header.tokens = tokens;
  header.report_bytes = report;
  header.checksum = herd::hash_bytes(body);
  return std::string(reinterpret_cast<const char*>(&header), sizeof header) + body;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string bytes = file_bytes(data, size);
  std::string problem;
  const auto cache = herd::TokenCache::open(
      herd::fuzz::as_file(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "cache.herdtok"), kKey, kVocab,
      &problem);
  if (!cache) {
    if (problem.empty()) __builtin_trap();  // refused without a reason
    return 0;
  }
  size_t total = 0;
  for (size_t i = 0; i < cache->samples(); ++i) {
    const auto [ids, n] = cache->ids(i);
    const uint8_t* mask = cache->mask(i);
    total += n;
    for (size_t j = 0; j < n; ++j) {
      if (ids[j] < 0 || ids[j] >= kVocab || mask[j] > 1) __builtin_trap();
    }
  }
  if (total != cache->tokens()) __builtin_trap();
  return 0;
}
