// A model's own chat template, rendered as transformers' apply_chat_template(messages,
// tokenize=False) renders it (common/jinja.h), with the bytes that each assistant
// message's content became: what the loss covers with data.prompt_style chat_template.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/jinja.h"

namespace herd {

class ChatTemplateError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", or any other the template knows
  std::string content;
};

// The source of the folder's template where AutoTokenizer finds it (below), unparsed;
// empty when it has none. `origin`: the file it is read from.
std::string chat_template_source(const std::filesystem::path& dir, std::filesystem::path* origin = nullptr);

class ChatTemplate {
 public:
  // The template of the model folder `dir`, where AutoTokenizer finds it:
  // chat_template.jinja, else tokenizer_config.json's "chat_template" (a string, or a
  // list's entry named "default"); with tokenizer_config.json's special tokens
  // (bos_token, eos_token, ...: a string or {"content": ...}). Throws
  // ChatTemplateError naming the file: no template, or a construct herd cannot render
  // (named, with its line).
  static std::shared_ptr<const ChatTemplate> load(const std::filesystem::path& dir);
  static bool available(const std::filesystem::path& dir);  // the folder has a template

  ChatTemplate(std::string source, std::vector<std::pair<std::string, std::string>> special_tokens, std::string origin);

  struct Rendered {
    std::string text;
    std::vector<std::pair<uint32_t, uint32_t>> assistant;  // bytes of each assistant message's content
  };
  // Throws ChatTemplateError: the template's raise_exception, a type error, or an
  // assistant message whose content the template does not render as it is (herd
  // could not place its loss).
  Rendered render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

  const std::string& origin() const { return origin_; }  // the file it came from
  std::string describe() const;                          // what changes the text: the source and the special tokens

 private:
  std::string source_, origin_;
  jinja::Object special_tokens_;
  jinja::Template template_;
};

}  // namespace herd
