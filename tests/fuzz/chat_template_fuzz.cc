// The chat-template engine on any template text: a TemplateError naming the construct,
// or a template that renders a conversation (or fails with a ChatTemplateError) with
// every assistant span inside the text; never a crash, a hang or unbounded memory.
#include <string>

#include "common/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const herd::ChatTemplate t(std::string(reinterpret_cast<const char*>(data), size),
                               {{"bos_token", "<s>"}, {"eos_token", "</s>"}}, "fuzz.jinja");
    const auto r = t.render({{"system", " be brief "}, {"user", "hi 😀"}, {"assistant", " 4\n"}}, true);
    for (const auto& [b, e] : r.assistant) {
      if (b > e || e > r.text.size()) __builtin_trap();
    }
  } catch (const herd::jinja::TemplateError&) {
  } catch (const herd::ChatTemplateError&) {
  }
  return 0;
}
