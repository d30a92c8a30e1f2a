#include "common/token_cache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/files.h"

namespace herd {

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'H', 'E', 'R', 'D', 'T', 'O', 'K', '\0'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 64;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t vocab_size;
  uint64_t key;
  uint64_t samples;
  uint64_t tokens;
  uint64_t report_bytes;
  uint64_t checksum;  // hash_bytes of everything after the header
  uint64_t reserved;
};
static_assert(sizeof(Header) == kHeaderBytes);

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL, kP2 = 0xC2B2AE3D27D4EB4FULL, kP3 = 0x165667B19E3779F9ULL;

uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
uint64_t mix(uint64_t w) { return rotl(w * kP2, 31) * kP1; }

// Byte size of the arrays for `samples` samples and `tokens` tokens.
uint64_t body_bytes(uint64_t samples, uint64_t tokens, uint64_t report) {
  return 8 * (samples + 1) + 8 * samples + 4 * tokens + tokens + samples + report;
}

}  // namespace

uint64_t hash_bytes(std::string_view bytes, uint64_t seed) {
  uint64_t h = seed ^ (static_cast<uint64_t>(bytes.size()) * kP3);
  size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, bytes.data() + i, 8);
    h = rotl(h ^ mix(w), 27) * kP1 + kP3;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, bytes.data() + i, bytes.size() - i);
  h ^= mix(tail);
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  return h ^ (h >> 32);
}

uint64_t hash_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw DatasetError(fmt::format("{}: cannot read", file.string()));
  std::stringstream s;
  s << in.rdbuf();
  return hash_bytes(s.str());
}

std::string DatasetSettings::describe() const {
  auto q = [](const std::string& v) { return nlohmann::json(v).dump(); };
  std::string d = fmt::format("format=2 type={} eos={} train_on_inputs={} skip_invalid={} context={}", type,
                              q(format.eos), train_on_inputs, skip_invalid, context_window);
  if (format.chat_template) return d + " " + format.chat_template->describe();
  if (type == "vicuna") d += fmt::format(" user={} response={}", q(format.user_header), q(format.response_header));
  if (type == "orca") {
    d += fmt::format(" system={} instruction={} response={}", q(format.system_header), q(format.instruction_header),
                     q(format.response_header));
  }
  if (type == "raw_text") d += fmt::format(" chunk={} overlap={} prefix={}", raw.chunk_len, raw.overlap, q(raw.prefix));
  return d;
}

TokenizedData tokenize_dataset(const std::vector<TextSample>& samples, const Tokenizer& tokenizer,
                               const DatasetSettings& settings) {
  const size_t n = samples.size();
  const size_t threads = std::max<size_t>(1, std::min<size_t>(std::thread::hardware_concurrency(), n / 64 + 1));
  std::vector<std::vector<TokenizedSample>> parts(threads);
  std::vector<std::thread> pool;
  for (size_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (size_t i = t * n / threads; i < (t + 1) * n / threads; ++i) {
        parts[t].push_back(
            tokenize_conversation(tokenizer, samples[i].formatted, settings.train_on_inputs, settings.context_window));
      }
    });
  }
  for (auto& th : pool) th.join();
  TokenizedData d;
  size_t i = 0;
  for (auto& part : parts) {
    for (auto& s : part) {
      d.ids.insert(d.ids.end(), s.ids.begin(), s.ids.end());
      d.mask.insert(d.mask.end(), s.mask.begin(), s.mask.end());
      d.offsets.push_back(d.ids.size());
      d.records.push_back(samples[i++].record);
      d.truncated.push_back(s.truncated);
    }
  }
  return d;
}

uint64_t TokenCache::key(uint64_t data_hash, uint64_t tokenizer_hash, const DatasetSettings& settings) {
  return hash_bytes(settings.describe(), data_hash * kP1 + tokenizer_hash);
}

void TokenCache::write(const fs::path& file, const TokenizedData& d, uint64_t key, int32_t vocab_size) {
  nlohmann::json report = {{"records", d.report.records}, {"skipped", d.report.skipped}};
  const std::string report_text = report.dump();
  std::string body;
  body.reserve(body_bytes(d.samples(), d.ids.size(), report_text.size()));
  auto append = [&](const void* p, size_t n) { body.append(static_cast<const char*>(p), n); };
  append(d.offsets.data(), 8 * d.offsets.size());
  append(d.records.data(), 8 * d.records.size());
  append(d.ids.data(), 4 * d.ids.size());
  append(d.mask.data(), d.mask.size());
  append(d.truncated.data(), d.truncated.size());
  body += report_text;
  Header h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = kVersion;
  h.vocab_size = static_cast<uint32_t>(vocab_size);
  h.key = key;
  h.samples = d.samples();
  h.tokens = d.ids.size();
  h.report_bytes = report_text.size();
  h.checksum = hash_bytes(body);
  fs::create_directories(file.parent_path());
  const fs::path tmp = file.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(&h), sizeof h);
    out.write(body.data(), static_cast<std::streamsize>(body.size()));
    close_file(out, tmp);
  }
  fs::rename(tmp, file);
}

std::unique_ptr<TokenCache> TokenCache::open(const fs::path& file, uint64_t key, int32_t vocab_size,
                                             std::string* problem) {
  auto fail = [&](const std::string& why) -> std::unique_ptr<TokenCache> {
    if (problem) *problem = why;
    return nullptr;
  };
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail("no cache file");
  struct stat st {};
  ::fstat(fd, &st);
  std::unique_ptr<TokenCache> c(new TokenCache());
  c->size_ = static_cast<size_t>(st.st_size);
  if (c->size_ < kHeaderBytes) {
    ::close(fd);
    return fail(fmt::format("{} bytes is shorter than the header", c->size_));
  }
  c->map_ = ::mmap(nullptr, c->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (c->map_ == MAP_FAILED) {
    c->map_ = nullptr;
    return fail("cannot map");
  }
  Header h;
  std::memcpy(&h, c->map_, sizeof h);
  if (std::memcmp(h.magic, kMagic, 8) != 0 || h.version != kVersion) return fail("not a herd token cache (version 1)");
  if (h.key != key) return fail("built from other data, tokenizer or settings");
  if (h.vocab_size != static_cast<uint32_t>(vocab_size)) return fail("built for another vocabulary size");
  if (h.samples > c->size_ || h.tokens > c->size_ || h.report_bytes > c->size_ ||
      kHeaderBytes + body_bytes(h.samples, h.tokens, h.report_bytes) != c->size_) {
    return fail("sizes in the header do not match the file (truncated?)");
  }
  const auto* body = static_cast<const char*>(c->map_) + kHeaderBytes;
  if (hash_bytes(std::string_view(body, c->size_ - kHeaderBytes)) != h.checksum) return fail("checksum mismatch");
  c->samples_ = h.samples;
  c->tokens_ = h.tokens;
  c->offsets_ = reinterpret_cast<const uint64_t*>(body);
  c->records_ = c->offsets_ + h.samples + 1;
  c->ids_ = reinterpret_cast<const int32_t*>(c->records_ + h.samples);
  c->mask_ = reinterpret_cast<const uint8_t*>(c->ids_ + h.tokens);
  c->truncated_ = c->mask_ + h.tokens;
  c->report_ = std::string_view(reinterpret_cast<const char*>(c->truncated_ + h.samples), h.report_bytes);
  // The checksum vouches for the bytes; these check what the bytes claim.
  if (c->offsets_[0] != 0 || c->offsets_[h.samples] != h.tokens) return fail("sample offsets do not cover the tokens");
  for (size_t i = 0; i < h.samples; ++i) {
    if (c->offsets_[i] > c->offsets_[i + 1]) return fail(fmt::format("sample {} has a negative length", i));
  }
  for (size_t i = 0; i < h.tokens; ++i) {
    if (c->ids_[i] < 0 || c->ids_[i] >= vocab_size || c->mask_[i] > 1) {
      return fail(fmt::format("token {} is out of range", i));
    }
  }
  return c;
}

TokenCache::~TokenCache() {
  if (map_ != nullptr) ::munmap(map_, size_);
}

std::pair<const int32_t*, size_t> TokenCache::ids(size_t sample) const {
  return {ids_ + offsets_[sample], offsets_[sample + 1] - offsets_[sample]};
}

const uint8_t* TokenCache::mask(size_t sample) const { return mask_ + offsets_[sample]; }

LoadedDataset load_tokenized_dataset(const std::vector<fs::path>& data_files, const fs::path& tokenizer_file,
                                     const DatasetSettings& settings, const fs::path& cache_dir) {
  const auto tokenizer = Tokenizer::load(tokenizer_file);
  uint64_t data_hash = 0;
  for (const auto& f : data_files) data_hash = data_hash * kP1 + hash_file(f);
  const uint64_t key = TokenCache::key(data_hash, hash_file(tokenizer_file), settings);
  LoadedDataset out;
  out.file = cache_dir / fmt::format("{:016x}.herdtok", key);
  std::string problem;
  out.cache = TokenCache::open(out.file, key, tokenizer->vocab_size(), &problem);
  if (out.cache) return out;
  if (fs::exists(out.file)) out.rebuilt_because = problem;
  ReadReport report;
  const auto samples = read_samples(settings.type, data_files, settings.format, settings.raw, settings.skip_invalid,
                                    &report);
  TokenizedData t = tokenize_dataset(samples, *tokenizer, settings);
  t.report = report;
  TokenCache::write(out.file, t, key, tokenizer->vocab_size());
  out.cache = TokenCache::open(out.file, key, tokenizer->vocab_size(), &problem);
  if (!out.cache)
    throw DatasetError(fmt::format("{}: the cache just written does not read back: {}", out.file.string(), problem));
  out.built = true;
  return out;
}

}  // namespace herd
