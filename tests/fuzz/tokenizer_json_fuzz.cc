// The tokenizer.json reader on any bytes: a TokenizerError naming the file, or a
// tokenizer that encodes a sample text into ids of its vocabulary and decodes them.
#include "common/tokenizer_json.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto t = herd::JsonTokenizer::load(herd::fuzz::as_file(data, size, "tokenizer.json"));
    const auto ids = t->encode("### HUMAN:\nhello wörld 123 it's</s><|im_end|>\r\n\n  😀", true);
    for (int32_t id : ids) {
      if (id < 0 || id >= t->vocab_size()) __builtin_trap();
    }
    (void)t->decode(ids);
  } catch (const herd::TokenizerError&) {
  }
  return 0;
}
