#include "common/conversation.h"

#include <unistd.h>

#include <fstream>

#include <gtest/gtest.h>

namespace herd {
namespace {

namespace fs = std::filesystem;

Conversation convo(std::vector<Turn> turns) { return Conversation{0, "x", std::move(turns)}; }

TEST(Format, MultiTurnIsTheSeedsTextByteForByte) {
  auto f = format_conversation(convo({{"human", "Hi there"}, {"gpt", "Hello!"}, {"human", "2+2?"}, {"gpt", "4"}}), {});
  EXPECT_EQ(f.text,
            "### HUMAN:\nHi there\n\n### RESPONSE:\nHello!</s>\n\n### HUMAN:\n2+2?\n\n### RESPONSE:\n4</s>\n\n");
  ASSERT_EQ(f.responses.size(), 2u);
  EXPECT_EQ(f.text.substr(f.responses[0].first, f.responses[0].second - f.responses[0].first), "Hello!</s>\n\n");
  EXPECT_EQ(f.text.substr(f.responses[1].first, f.responses[1].second - f.responses[1].first), "4</s>\n\n");
}

TEST(Format, OtherRolesAreUpperCasedHeaders) {
  auto f = format_conversation(convo({{"system", "Be brief."}, {"human", "Q"}, {"Tool_Call", "{}"}, {"gpt", "A"}}), {});
  EXPECT_EQ(f.text, "### SYSTEM:\nBe brief.\n\n### HUMAN:\nQ\n\n### TOOL_CALL:\n{}\n\n### RESPONSE:\nA</s>\n\n");
}

TEST(Format, CustomHeadersAndEos) {
  FormatOptions o;
  o.user_header = "<|user|>\n";
  o.response_header = "<|assistant|>\n";
  o.eos = "<|end|>";
  auto f = format_conversation(convo({{"human", "a"}, {"gpt", "b"}}), o);
  EXPECT_EQ(f.text, "<|user|>\na\n\n<|assistant|>\nb<|end|>\n\n");
  EXPECT_EQ(f.responses[0], (std::pair<uint32_t, uint32_t>{26, 36}));  // "b<|end|>\n\n"
}

class Records : public ::testing::Test {
 protected:
  fs::path write(const std::string& name, const std::string& text) {
    fs::path p = fs::temp_directory_path() / ("herd-data-" + std::to_string(::getpid()) + "-" + name);
    std::ofstream(p, std::ios::binary) << text;
    files_.push_back(p);
    return p;
  }
  void TearDown() override {
    for (const auto& f : files_) fs::remove(f);
  }
  std::string error_of(const std::string& text, const std::string& name = "d.json") {
    try {
      read_conversations(write(name, text), false);
    } catch (const DatasetError& e) {
      return e.what();
    }
    return "";
  }
  std::vector<fs::path> files_;
};

const std::string kGood =
    R"({"id": "g", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]})";

TEST_F(Records, ArrayAndJsonLinesRead) {
  auto a = read_conversations(write("a.json", "[" + kGood + ", " + kGood + "]"), false);
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[1].record, 1u);
  EXPECT_EQ(a[0].id, "g");
  EXPECT_EQ(a[0].turns[1].value, "yo");
  auto l = read_conversations(write("l.jsonl", kGood + "\n\n" + kGood + "\n"), false);
  EXPECT_EQ(l.size(), 2u);
  EXPECT_EQ(l[1].record, 1u);
}

struct Bad {
  const char* name;
  std::string record;  // one JSON value (or broken text) placed as record 1
  std::string reason;
};
void PrintTo(const Bad& b, std::ostream* os) { *os << b.name; }

class BadRecord : public Records, public ::testing::WithParamInterface<Bad> {};

TEST_P(BadRecord, IsNamedByIndexAndReasonAndCanBeSkipped) {
  const Bad& b = GetParam();
  for (bool lines : {false, true}) {
    // In a JSON array, text that does not parse breaks the file, not one record: it
    // is a file-level error with its byte offset (FileLevelErrorsNameTheByteOffset).
    if (!lines && (b.reason == "JSON syntax error" || b.reason == "invalid UTF-8")) continue;
    std::string text =
        lines ? kGood + "\n" + b.record + "\n" + kGood + "\n" : "[" + kGood + ", " + b.record + ", " + kGood + "]";
    const std::string name = lines ? "b.jsonl" : "b.json";
    std::string e = error_of(text, name);
    EXPECT_NE(e.find(": record 1: "), std::string::npos) << e;
    EXPECT_NE(e.find("(" + b.reason + ";"), std::string::npos) << e;
    ReadReport report;
    auto kept = read_conversations(write(name, text), true, &report);
    EXPECT_EQ(kept.size(), 2u);
    EXPECT_EQ(kept[1].record, 2u);
    EXPECT_EQ(report.records, 3u);
    EXPECT_EQ(report.skipped.at(b.reason), 1u);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Vicuna, BadRecord,
    ::testing::Values(
        Bad{"array_not_object", "[1, 2]", "not an object"}, Bad{"string", "\"text\"", "not an object"},
        Bad{"null", "null", "not an object"}, Bad{"no_conversations", R"({"id": "x"})", "missing conversations"},
        Bad{"misspelt_conversations", R"({"conversation": []})", "missing conversations"},
        Bad{"conversations_object", R"({"conversations": {"from": "human"}})", "conversations not a list"},
        Bad{"empty", R"({"conversations": []})", "empty conversation"},
        Bad{"turn_string", R"({"conversations": ["hi"]})", "turn not an object"},
        Bad{"turn_without_from", R"({"conversations": [{"value": "hi"}]})", "turn without from"},
        Bad{"from_number", R"({"conversations": [{"from": 1, "value": "hi"}]})", "turn without from"},
        Bad{"turn_without_value", R"({"conversations": [{"from": "human"}]})", "turn without value"},
        Bad{"value_number", R"({"conversations": [{"from": "gpt", "value": 42}]})", "non-string value"},
        Bad{"value_null", R"({"conversations": [{"from": "gpt", "value": null}]})", "non-string value"},
        Bad{"value_list", R"({"conversations": [{"from": "gpt", "value": ["a"]}]})", "non-string value"},
        Bad{"invalid_utf8", "{\"conversations\": [{\"from\": \"gpt\", \"value\": \"\xC3\x28\"}]}", "invalid UTF-8"},
        Bad{"syntax", R"({"conversations": [{"from": "gpt", "value": "a"})", "JSON syntax error"},
        Bad{"trailing_comma", R"({"conversations": [],})", "JSON syntax error"},
        Bad{"messages_without_content", R"({"messages": [{"role": "user"}]})", "turn without content"},
        Bad{"messages_content_parts", R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})",
            "non-string content"},
        Bad{"messages_tool_calls", R"({"messages": [{"role": "assistant", "content": "", "tool_calls": []}]})",
            "message key not read"}),
    [](const ::testing::TestParamInfo<Bad>& p) { return std::string(p.param.name); });

TEST_F(Records, MessagesRecordsReadAsTheSameTurns) {
  const auto c = read_conversations(
      write("m.jsonl",
            R"({"id": 7, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},)"
            R"( {"role": "assistant", "content": "yo"}]})"
            "\n"),
      false);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].id, "7");
  ASSERT_EQ(c[0].turns.size(), 3u);
  EXPECT_EQ(c[0].turns[0].role, "system");
  EXPECT_EQ(c[0].turns[1].role, "human");
  EXPECT_EQ(c[0].turns[2].role, "gpt");
  EXPECT_EQ(c[0].turns[2].value, "yo");
  // the seed's format reads them as it reads conversations
  EXPECT_EQ(format_conversation(c[0], {}).text, "### SYSTEM:\ns\n\n### HUMAN:\nhi\n\n### RESPONSE:\nyo</s>\n\n");
}

TEST_F(Records, AChatTemplateErrorIsTheRecordsOrItIsSkipped) {
  FormatOptions o;
  o.chat_template = std::make_shared<const ChatTemplate>(
      "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
      "[{{ m.role }}]{{ m.content }}{% endfor %}",
      std::vector<std::pair<std::string, std::string>>{}, "t.jinja");
  const fs::path f =
      write("t.jsonl", kGood + "\n" +
                           R"({"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}]})" +
                           "\n");
  try {
    read_samples("vicuna", {f}, o, {}, false);
    FAIL();
  } catch (const DatasetError& e) {
    EXPECT_NE(
        std::string(e.what()).find(": record 1: chat template (t.jinja) line 1: the template raised: no system role"),
        std::string::npos)
        << e.what();
  }
  ReadReport r;
  const auto samples = read_samples("vicuna", {f}, o, {}, true, &r);
  ASSERT_EQ(samples.size(), 1u);
  EXPECT_EQ(samples[0].formatted.text, "[user]hi[assistant]yo");
  EXPECT_TRUE(samples[0].formatted.templated);
  EXPECT_EQ(samples[0].formatted.responses, (std::vector<std::pair<uint32_t, uint32_t>>{{19, 21}}));
  EXPECT_EQ(r.skipped.at("chat template error"), 1u);
}

TEST_F(Records, FileLevelErrorsNameTheByteOffset) {
  EXPECT_NE(error_of("[" + kGood + ", " + kGood.substr(0, 30)).find("(the file is truncated)"), std::string::npos);
  std::string e = error_of("[" + kGood + ", {\"id\": }]");
  EXPECT_NE(e.find("JSON syntax error at byte " + std::to_string(kGood.size() + 10)), std::string::npos) << e;
  EXPECT_NE(error_of("[" + kGood + ", \"\xC3\x28\"]").find("invalid UTF-8 at byte"), std::string::npos);
  EXPECT_NE(error_of("   \n").find("the file is empty"), std::string::npos);
  e = error_of(kGood + "\n" + kGood.substr(0, 40), "t.jsonl");
  EXPECT_NE(e.find("record 1: JSON syntax error at byte"), std::string::npos) << e;
  EXPECT_NE(e.find("(the file is truncated)"), std::string::npos) << e;
}

TEST_F(Records, SkipCountsEveryReason) {
  std::string text = kGood + "\n" + R"({"conversations": []})" + "\n" + R"({"conversations": []})" + "\n" +
                     R"({"conversations": [{"from": "gpt", "value": 1}]})" + "\n{broken\n" + kGood + "\n";
  ReadReport report;
  auto kept = read_conversations(write("s.jsonl", text), true, &report);
  EXPECT_EQ(kept.size(), 2u);
  EXPECT_EQ(report.records, 6u);
  EXPECT_EQ(report.skipped, (std::map<std::string, size_t>{
                                {"empty conversation", 2}, {"non-string value", 1}, {"JSON syntax error", 1}}));
}

// llm_qlora's OrcaDataProcessor: f"{system_header}{system_prompt}\n\n{instruction_header}{question}\n\n"
// f"{response_header}{response}{eos}\n" with the published headers, written out here by hand.
TEST(Format, OrcaIsTheSeedsPromptByteForByte) {
  FormatOptions o;
  o.system_header = "### System:\n";
  o.instruction_header = "### Instruction:\n";
  o.response_header = "### Response:\n";
  auto f = format_orca({0, "", "Sei hilfreich.", "Wo liegt Z\u00fcrich? \U0001F680", "In der Schweiz."}, o);
  EXPECT_EQ(f.text,
            "### System:\nSei hilfreich.\n\n### Instruction:\nWo liegt Z\xc3\xbcrich? \xf0\x9f\x9a\x80\n\n"
            "### Response:\nIn der Schweiz.</s>\n");
  ASSERT_EQ(f.responses.size(), 1u);
  EXPECT_EQ(f.text.substr(f.responses[0].first), "In der Schweiz.</s>\n");
  // Empty fields (OpenOrca has many empty system prompts) keep every separator.
  auto e = format_orca({0, "", "", "", ""}, o);
  EXPECT_EQ(e.text, "### System:\n\n\n### Instruction:\n\n\n### Response:\n</s>\n");
  EXPECT_EQ(e.text.substr(e.responses[0].first), "</s>\n");
}

// RawTextDataProcessor's loop, worked out by hand: i = 0; while i < len(text):
// i = max(i - overlap, 0); chunk = prefix + text[i:i + len]; i += len.
TEST(RawText, ChunksAreTheSeedsCountedInCodePoints) {
  using V = std::vector<std::string>;
  EXPECT_EQ(chunk_text("abcdefghij", {4, 0, ""}), (V{"abcd", "efgh", "ij"}));
  EXPECT_EQ(chunk_text("abcdefghij", {4, 1, ""}), (V{"abcd", "defg", "ghij"}));
  EXPECT_EQ(chunk_text("abcdefghij", {5, 0, ""}), (V{"abcde", "fghij"}));
  EXPECT_EQ(chunk_text("abcdefghij", {5, 4, ""}), (V{"abcde", "bcdef", "cdefg", "defgh", "efghi", "fghij"}));
  // Greek letters are two bytes, the rocket four: slices are by character, never inside one.
  EXPECT_EQ(chunk_text("\u03b1\u03b2\u03b3\u03b4\u03b5", {2, 1, ""}),
            (V{"\u03b1\u03b2", "\u03b2\u03b3", "\u03b3\u03b4", "\u03b4\u03b5"}));
  EXPECT_EQ(chunk_text("a\U0001F680b\U0001F680c", {2, 0, "> "}),
            (V{"> a\U0001F680", "> b\U0001F680", "> c"}));
  EXPECT_EQ(chunk_text("short", {100, 10, "P: "}), (V{"P: short"}));  // shorter than one chunk
  EXPECT_EQ(chunk_text("", {4, 1, "P: "}), V{});
  EXPECT_THROW(chunk_text("abc", {3, 3, ""}), std::invalid_argument);  // would never advance
}

TEST_F(Records, TextFilesReadAsPythonsTextModeDoes) {
  EXPECT_EQ(read_text_file(write("t.txt", "a\r\nb\rc\n\r\n\xc3\xa9")), "a\nb\nc\n\n\xc3\xa9");
  for (const std::string bad : {"ok\xc3\x28", "\xed\xa0\x80", "\xc0\xaf", "x\xf0\x9f"}) {
    try {
      read_text_file(write("bad.txt", bad));
      ADD_FAILURE() << "read invalid UTF-8";
    } catch (const DatasetError& e) {
      EXPECT_NE(std::string(e.what()).find("bad.txt: invalid UTF-8 at byte"), std::string::npos) << e.what();
    }
  }
}

// Found by tests/fuzz/conversation_fuzz.cc: a number past a double's range threw
// json's out_of_range through the reader.
TEST_F(Records, ANumberTooLargeForADoubleIsABadRecordNotACrash) {
  const std::string good = R"({"id": "o1", "system_prompt": "", "question": "q", "response": "r"})";
  ReadReport report;
  auto kept = read_orca(write("big.jsonl", good + "\n" + std::string(60, '8') + "E88888888\n"), true, &report);
  EXPECT_EQ(kept.size(), 1u);
  EXPECT_EQ(report.skipped.at("number out of range"), 1u);
  try {
    read_orca(write("big.jsonl", good + "\n{\"question\": 1E400}\n"), false);
    ADD_FAILURE() << "read a number too large";
  } catch (const DatasetError& e) {
    EXPECT_NE(std::string(e.what()).find("big.jsonl: record 1: a number too large for a double"), std::string::npos)
        << e.what();
  }
  try {
    read_orca(write("big.json", "[1E400]"), false);
    ADD_FAILURE() << "read a number too large";
  } catch (const DatasetError& e) {
    EXPECT_NE(std::string(e.what()).find("big.json: a number too large for a double"), std::string::npos) << e.what();
  }
}

TEST_F(Records, OrcaRecordsAreValidatedAndSkippedByReason) {
  const std::string good = R"({"id": "o1", "system_prompt": "", "question": "q", "response": "r"})";
  auto read = read_orca(write("o.jsonl", good + "\n" + good + "\n"), false);
  ASSERT_EQ(read.size(), 2u);
  EXPECT_EQ(read[1].record, 1u);
  EXPECT_EQ(read[0].id, "o1");
  EXPECT_EQ(read[0].question, "q");
  const std::string text = "[" + good + R"(, {"question": "q", "response": "r"}, {"system_prompt": "", "question": 3,
      "response": "r"}, )" + good + "]";
  try {
    read_orca(write("o.json", text), false);
    ADD_FAILURE() << "read a record without system_prompt";
  } catch (const DatasetError& e) {
    EXPECT_NE(std::string(e.what()).find("o.json: record 1: no \"system_prompt\" key (missing system_prompt;"),
              std::string::npos)
        << e.what();
  }
  ReadReport report;
  auto kept = read_orca(write("o.json", text), true, &report);
  EXPECT_EQ(kept.size(), 2u);
  EXPECT_EQ(kept[1].record, 3u);
  EXPECT_EQ(report.skipped, (std::map<std::string, size_t>{{"missing system_prompt", 1}, {"non-string question", 1}}));
}

TEST_F(Records, RawTextSamplesRunOverTheFilesInOrder) {
  const auto a = write("a.txt", "abcdef"), b = write("b.txt", "xyz");
  ReadReport report;
  auto samples = read_samples("raw_text", {a, b}, {}, {4, 1, ""}, false, &report);
  ASSERT_EQ(samples.size(), 3u);
  EXPECT_EQ(report.records, 3u);
  EXPECT_EQ(samples[0].formatted.text, "abcd");
  EXPECT_EQ(samples[1].formatted.text, "def");
  EXPECT_EQ(samples[2].formatted.text, "xyz");
  EXPECT_EQ(samples[2].record, 2u);
  EXPECT_EQ(samples[2].id, b.string() + "#0");
  EXPECT_TRUE(samples[0].formatted.responses.empty());
}

}  // namespace
}  // namespace herd
