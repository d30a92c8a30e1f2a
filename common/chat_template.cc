#include "common/chat_template.h"

#include <ctime>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace herd {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// transformers' named special tokens (SPECIAL_TOKENS_ATTRIBUTES): what a template sees.
constexpr const char* kSpecialTokens[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                          "pad_token", "cls_token", "mask_token"};

std::string read_file(const fs::path& f) {
  std::ifstream in(f, std::ios::binary);
  if (!in) throw ChatTemplateError(fmt::format("{}: cannot read", f.string()));
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

json read_config(const fs::path& f) {
  if (!fs::exists(f)) return json::object();
  try {
    json j = json::parse(read_file(f));
    if (!j.is_object()) throw ChatTemplateError(fmt::format("{}: not a JSON object", f.string()));
    return j;
  } catch (const json::exception& e) {
    throw ChatTemplateError(fmt::format("{}: not JSON ({})", f.string(), e.what()));
  }
}

// The template's source from tokenizer_config.json, or "" when it has none.
std::string config_template(const json& config, const fs::path& file) {
  if (!config.contains("chat_template") || config["chat_template"].is_null()) return "";
  const json& t = config["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array()) {
    for (const auto& entry : t) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string()) {
        return entry["template"].get<std::string>();
      }
    }
    throw ChatTemplateError(
        fmt::format("{}: chat_template is a list without an entry named \"default\"", file.string()));
  }
  throw ChatTemplateError(fmt::format("{}: chat_template is {}, not a string or a list", file.string(), t.type_name()));
}

}  // namespace

std::string chat_template_source(const fs::path& dir, fs::path* origin) {
  const fs::path config_file = dir / "tokenizer_config.json", jinja_file = dir / "chat_template.jinja";
  if (origin) *origin = fs::exists(jinja_file) ? jinja_file : config_file;
  if (fs::exists(jinja_file)) return read_file(jinja_file);
  return config_template(read_config(config_file), config_file);
}

bool ChatTemplate::available(const fs::path& dir) {
  try {
    return !chat_template_source(dir).empty();
  } catch (const ChatTemplateError&) {
    return true;  // there is one, and load() says what is wrong with it
  }
}

std::shared_ptr<const ChatTemplate> ChatTemplate::load(const fs::path& dir) {
  const json config = read_config(dir / "tokenizer_config.json");
  fs::path origin;
  std::string source = chat_template_source(dir, &origin);
  if (source.empty()) {
    throw ChatTemplateError(fmt::format(
        "{}: no chat template (neither chat_template.jinja nor tokenizer_config.json's chat_template); "
        "data.prompt_style seed formats without one",
        dir.string()));
  }
  std::vector<std::pair<std::string, std::string>> specials;
  for (const char* key : kSpecialTokens) {
    if (!config.contains(key)) continue;
    const json& v = config[key];
    if (v.is_string()) specials.emplace_back(key, v.get<std::string>());
    if (v.is_object() && v.contains("content") && v["content"].is_string()) {
      specials.emplace_back(key, v["content"].get<std::string>());
    }
  }
  try {
    return std::make_shared<const ChatTemplate>(std::move(source), std::move(specials), origin.string());
  } catch (const jinja::TemplateError& e) {
    throw ChatTemplateError(fmt::format("{}: chat template {}", origin.string(), e.what()));
  }
}

ChatTemplate::ChatTemplate(std::string source, std::vector<std::pair<std::string, std::string>> special_tokens,
                           std::string origin)
    : source_(std::move(source)), origin_(std::move(origin)), template_(source_) {
  for (auto& [k, v] : special_tokens) special_tokens_.emplace_back(k, jinja::Value::of_string(v));
}

ChatTemplate::Rendered ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                            bool add_generation_prompt) const {
  using jinja::Value;
  jinja::List list;
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    std::vector<jinja::Mark> marks;
    if (m.role == "assistant") marks.push_back({0, static_cast<uint32_t>(m.content.size()), static_cast<int32_t>(i)});
    list.push_back(
        Value::of_dict({{"role", Value::of_string(m.role)}, {"content", Value::of_string(m.content, marks)}}));
  }
  jinja::Object vars = special_tokens_;
  vars.emplace_back("messages", Value::of_list(std::move(list)));
  vars.emplace_back("tools", Value::none());
  vars.emplace_back("documents", Value::none());
  vars.emplace_back("add_generation_prompt", Value::of_bool(add_generation_prompt));
  jinja::Output out;
  try {
    out = template_.render(vars);
  } catch (const jinja::RenderError& e) {
    throw ChatTemplateError(fmt::format("chat template ({}) {}", origin_, e.what()));
  }
  Rendered r{std::move(out.text), {}};
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role != "assistant") continue;
    size_t found = 0;
    for (const auto& mark : out.marks) {
      if (mark.tag != static_cast<int32_t>(i)) continue;
      r.assistant.emplace_back(mark.begin, mark.end);
      ++found;
    }
    if (found == 0 && !messages[i].content.empty()) {
      throw ChatTemplateError(fmt::format(
          "chat template ({}) does not render message {} (assistant) as it is (it transforms or drops it), so herd "
          "cannot tell which tokens are the reply",
          origin_, i));
    }
  }
  std::sort(r.assistant.begin(), r.assistant.end());
  return r;
}

std::string ChatTemplate::describe() const {
  std::string d = fmt::format("template={}", json(source_).dump());
  for (const auto& [k, v] : special_tokens_) d += fmt::format(" {}={}", k, json(v.text).dump());
  if (source_.find("strftime_now") != std::string::npos) {  // the text has today's date (Llama-3.2's template)
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    d += fmt::format(" date={}-{}-{}", local.tm_year + 1900, local.tm_mon + 1, local.tm_mday);
  }
  return d;
}

}  // namespace herd
