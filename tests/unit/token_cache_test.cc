#include "common/token_cache.h"

#include <unistd.h>

#include <fstream>

#include <gtest/gtest.h>

namespace herd {
namespace {

namespace fs = std::filesystem;

TokenizedData sample_data() {
  TokenizedData d;
  d.ids = {1, 5, 9, 2, 1, 7, 8, 9, 10};
  d.mask = {0, 1, 1, 1, 0, 0, 1, 1, 1};
  d.offsets = {0, 4, 9};
  d.records = {0, 2};
  d.truncated = {0, 1};
  d.report.records = 3;
  d.report.skipped["empty conversation"] = 1;
  return d;
}

class Cache : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = fs::temp_directory_path() / ("herd-cache-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    TokenCache::write(file_, sample_data(), 42, 16);
  }
  void TearDown() override { fs::remove(file_); }
  std::string problem_of(uint64_t key = 42, int32_t vocab = 16) {
    std::string problem;
    auto c = TokenCache::open(file_, key, vocab, &problem);
    return c ? "" : problem;
  }
  void corrupt(size_t offset, char value) {
    std::fstream f(file_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(offset));
    f.put(value);
  }
  fs::path file_;
};

TEST_F(Cache, RoundTrip) {
  std::string problem;
  auto c = TokenCache::open(file_, 42, 16, &problem);
  ASSERT_TRUE(c) << problem;
  EXPECT_EQ(c->samples(), 2u);
  EXPECT_EQ(c->tokens(), 9u);
  auto [ids, n] = c->ids(1);
  EXPECT_EQ(std::vector<int32_t>(ids, ids + n), (std::vector<int32_t>{1, 7, 8, 9, 10}));
  EXPECT_EQ(std::vector<uint8_t>(c->mask(1), c->mask(1) + n), (std::vector<uint8_t>{0, 0, 1, 1, 1}));
  EXPECT_EQ(c->record(1), 2u);
  EXPECT_TRUE(c->truncated(1));
  EXPECT_EQ(c->report(), R"({"records":3,"skipped":{"empty conversation":1}})");
}

TEST_F(Cache, AnyDamageIsDetected) {
  EXPECT_EQ(problem_of(43), "built from other data, tokenizer or settings");
  EXPECT_EQ(problem_of(42, 8), "built for another vocabulary size");
  corrupt(0, 'X');
  EXPECT_EQ(problem_of(), "not a herd token cache (version 1)");
  TokenCache::write(file_, sample_data(), 42, 16);
  corrupt(64 + 8 * 3 + 8 * 2 + 4 * 2, 3);  // one token id changed: the checksum notices
  EXPECT_EQ(problem_of(), "checksum mismatch");
  TokenCache::write(file_, sample_data(), 42, 16);
  fs::resize_file(file_, fs::file_size(file_) - 5);
  EXPECT_EQ(problem_of(), "sizes in the header do not match the file (truncated?)");
  fs::resize_file(file_, 10);
  EXPECT_EQ(problem_of(), "10 bytes is shorter than the header");
  fs::remove(file_);
  EXPECT_EQ(problem_of(), "no cache file");
}

TEST_F(Cache, OutOfRangeTokensAreRefusedEvenWithAValidChecksum) {
  TokenizedData d = sample_data();
  d.ids[3] = 99;  // beyond the vocabulary of 16
  TokenCache::write(file_, d, 42, 16);
  EXPECT_EQ(problem_of(), "token 3 is out of range");
}

TEST(Hash, IsStableAndSensitive) {
  EXPECT_EQ(hash_bytes("herd"), hash_bytes("herd"));
  EXPECT_NE(hash_bytes("herd"), hash_bytes("herc"));
  EXPECT_NE(hash_bytes("herd", 1), hash_bytes("herd", 2));
  EXPECT_NE(hash_bytes(std::string(9, 'a')), hash_bytes(std::string(10, 'a')));
  DatasetSettings a, b;
  b.train_on_inputs = false;
  EXPECT_NE(TokenCache::key(1, 2, a), TokenCache::key(1, 2, b));
  EXPECT_NE(TokenCache::key(1, 2, a), TokenCache::key(1, 3, a));
}

}  // namespace
}  // namespace herd
