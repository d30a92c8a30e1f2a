// The conversation readers on any file: the first byte picks the type (vicuna, orca,
// raw_text) and whether invalid records are skipped; a DatasetError (file, record)
// or samples.
#include "common/conversation.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const char* const kTypes[] = {"vicuna", "orca", "raw_text"};
  const std::string type = kTypes[data[0] % 3];
  const bool skip_invalid = data[0] & 4;
  herd::FormatOptions format;
  format.system_header = "### System:\n";
  format.instruction_header = "### Instruction:\n";
  herd::RawTextOptions raw;
  raw.chunk_len = 8 + data[0] % 7;
  raw.overlap = data[0] % 5;
  raw.prefix = "P: ";
  try {
    herd::ReadReport report;
    const auto file = herd::fuzz::as_file(data + 1, size - 1, type == "raw_text" ? "data.txt" : "data.json");
    const auto samples = herd::read_samples(type, {file}, format, raw, skip_invalid, &report);
    for (const auto& s : samples) {
      for (const auto& [begin, end] : s.formatted.responses) {
        if (begin > end || end > s.formatted.text.size()) __builtin_trap();
      }
    }
  } catch (const herd::DatasetError&) {
  }
  return 0;
}
