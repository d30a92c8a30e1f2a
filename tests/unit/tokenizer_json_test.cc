// tokenizer.json inputs the fuzz target found (tests/fuzz/corpus/tokenizer_json/found-*):
// each a named TokenizerError or a tokenizer whose ids are in its vocabulary. The
// pipeline's agreement with the tokenizers library is tests/oracle/test_tokenizer_json.py's.

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/tokenizer_json.h"

namespace herd {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A byte-fallback tokenizer.json: <unk>, <s>, </s>, the 256 byte pieces but those in
// `missing`, and "a".
json byte_fallback(const std::string& missing = "") {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  int id = 3;
  for (int b = 0; b < 256; ++b) {
    if (missing.find(static_cast<char>(b)) == std::string::npos) vocab[fmt::format("<0x{:02X}>", b)] = id++;
  }
  vocab["a"] = id;
  return {{"added_tokens", {{{"id", 2}, {"content", "</s>"}, {"special", true}, {"normalized", false}}}},
          {"model",
           {{"type", "BPE"},
            {"unk_token", "<unk>"},
            {"byte_fallback", true},
            {"vocab", vocab},
            {"merges", json::array()}}}};
}

std::string error_of(const std::string& text) {
  const fs::path dir = fs::temp_directory_path() / ("herd-tokenizer-json-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << text;
  try {
    JsonTokenizer::load(dir / "tokenizer.json");
  } catch (const TokenizerError& e) {
    return e.what();
  }
  return "";
}

TEST(TokenizerJson, NumbersThatAreNotIdsAreNamedErrors) {
  json j = byte_fallback();
  j["model"]["vocab"]["a"] = 1e22;  // found: nlohmann's conversion of it to an integer is undefined
  EXPECT_NE(error_of(j.dump()).find("model.vocab: expected an integer, got 1e+22"), std::string::npos);
  j = byte_fallback();
  j["added_tokens"][0]["id"] = 1000;
  EXPECT_NE(error_of(j.dump()).find("added_tokens[0].id: 1000 is not below 261"), std::string::npos);
  // found: a number past a double's range is json's out_of_range, not its parse_error
  EXPECT_NE(error_of(R"({"model": {"vocab": {"a": 2e2222}}})").find("not JSON"), std::string::npos);
}

TEST(TokenizerJson, ACharacterWhoseBytePieceIsMissingIsUnknown) {
  // found: byte fallback took the missing piece's id, -1
  const fs::path dir = fs::temp_directory_path() / ("herd-tokenizer-json-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << byte_fallback("\xC3").dump();
  const auto t = JsonTokenizer::load(dir / "tokenizer.json");
  // "é" is C3 A9: without <0xC3> the character is <unk>; "b" falls back to <0x62>.
  const auto ids = t->encode(
      "a\xC3\xA9"
      "b",
      false);
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(t->piece(ids[0]), "a");
  EXPECT_EQ(ids[1], 0);
  EXPECT_EQ(t->piece(ids[2]), "<0x62>");
}

}  // namespace
}  // namespace herd
