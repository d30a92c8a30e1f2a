// The builtins chat templates call: jinja2's filters and tests, Python's str and dict
// methods, and the globals transformers adds (raise_exception, strftime_now,
// namespace, dict) beside jinja2's range. Each behaves as its Python original.
#include <algorithm>

#include <fmt/format.h>
#include <utf8proc.h>

#include "common/jinja_internal.h"
#include "common/text.h"

namespace herd::jinja {

namespace {

[[noreturn]] void type_error(const std::string& what) { throw RenderError(what); }

std::optional<Value> arg(const Args& a, size_t index, std::string_view name) { return a.get(index, name); }

std::string string_arg(const Args& a, size_t index, std::string_view name, const char* what) {
  const auto v = a.get(index, name);
  if (!v || !v->is_string()) type_error(fmt::format("{} needs a string {}", what, name));
  return v->text;
}

Value make_callable(std::string name, std::function<Value(const Value&, const Args&)> f, Value self = {}) {
  auto c = std::make_shared<Callable>();
  c->name = std::move(name);
  c->builtin = std::move(f);
  c->self = std::move(self);
  Value v;
  v.kind = Value::Kind::Callable;
  v.callable = std::move(c);
  return v;
}

// Python's str.isspace() characters.
bool python_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

uint32_t code_point(const std::string& s, size_t b, size_t e) {
  utf8proc_int32_t cp = 0;
  utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + b), static_cast<utf8proc_ssize_t>(e - b), &cp);
  return static_cast<uint32_t>(cp);
}

// str.strip / lstrip / rstrip: Python's whitespace, or the code points of `chars`.
Value strip(const Value& s, std::optional<Value> chars, bool left, bool right) {
  if (!s.is_string()) type_error(fmt::format("strip needs a string, not {}", type_name(s)));
  const auto at = code_point_offsets(s.text);
  std::vector<uint32_t> set;
  const bool custom = chars && chars->kind != Value::Kind::None;
  if (custom) {
    const auto c = code_point_offsets(chars->text);
    for (size_t i = 0; i + 1 < c.size(); ++i) set.push_back(code_point(chars->text, c[i], c[i + 1]));
  }
  auto strips = [&](size_t i) {
    const uint32_t cp = code_point(s.text, at[i], at[i + 1]);
    return custom ? std::find(set.begin(), set.end(), cp) != set.end() : python_space(cp);
  };
  size_t b = 0, e = at.size() - 1;
  while (left && b < e && strips(b)) ++b;
  while (right && e > b && strips(e - 1)) --e;
  return substring(s, at[b], at[e]);
}

std::string map_case(const std::string& s, utf8proc_int32_t (*f)(utf8proc_int32_t)) {
  std::string out;
  const auto at = code_point_offsets(s);
  for (size_t i = 0; i + 1 < at.size(); ++i) {
    utf8proc_uint8_t buf[4];
    const auto n = utf8proc_encode_char(f(static_cast<utf8proc_int32_t>(code_point(s, at[i], at[i + 1]))), buf);
    out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
  }
  return out;
}

// Python's capitalize (first upper, rest lower) and title (each word's first upper).
std::string capitalize(const std::string& s, bool every_word) {
  std::string out;
  const auto at = code_point_offsets(s);
  bool start = true;
  for (size_t i = 0; i + 1 < at.size(); ++i) {
    const std::string c = s.substr(at[i], at[i + 1] - at[i]);
    const auto cp = static_cast<utf8proc_int32_t>(code_point(s, at[i], at[i + 1]));
    out += map_case(c, start ? utf8proc_toupper : utf8proc_tolower);
    const auto cat = utf8proc_category(cp);
    const bool cased = cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
    start = every_word ? !cased : false;
  }
  return out;
}

Value replace(const Value& s, const std::string& from, const std::string& to, int64_t count) {
  std::string out;
  size_t pos = 0;
  for (int64_t n = 0; count < 0 || n < count; ++n) {
    const size_t at = from.empty() ? (pos <= s.text.size() ? pos : std::string::npos) : s.text.find(from, pos);
    if (at == std::string::npos) break;
    out += s.text.substr(pos, at - pos) + to;
    if (from.empty()) {
      if (at == s.text.size()) return Value::of_string(out);
      const size_t len = sequence_length(static_cast<unsigned char>(s.text[at]));
      out += s.text.substr(at, len);
      pos = at + len;
    } else {
      pos = at + from.size();
    }
  }
  return Value::of_string(out + s.text.substr(std::min(pos, s.text.size())));
}

// str.split(sep=None, maxsplit=-1).
Value split(const Value& s, const Args& a) {
  const auto sep = arg(a, 0, "sep");
  const auto max = arg(a, 1, "maxsplit");
  int64_t left = max && max->kind == Value::Kind::Int ? max->integer : -1;
  List out;
  if (sep && sep->is_string()) {
    if (sep->text.empty()) type_error("empty separator");
    size_t pos = 0;
    for (size_t at; left != 0 && (at = s.text.find(sep->text, pos)) != std::string::npos; --left) {
      out.push_back(substring(s, pos, at));
      pos = at + sep->text.size();
    }
    out.push_back(substring(s, pos, s.text.size()));
    return Value::of_list(std::move(out));
  }
  const auto at = code_point_offsets(s.text);
  size_t i = 0;
  auto space_at = [&](size_t k) { return python_space(code_point(s.text, at[k], at[k + 1])); };
  const size_t n = at.size() - 1;
  while (i < n) {
    while (i < n && space_at(i)) ++i;
    if (i == n) break;
    size_t j = i;
    if (left == 0) {
      size_t e = n;
      while (e > i && space_at(e - 1)) --e;
      out.push_back(substring(s, at[i], at[e]));
      break;
    }
    while (j < n && !space_at(j)) ++j;
    out.push_back(substring(s, at[i], at[j]));
    --left;
    i = j;
  }
  return Value::of_list(std::move(out));
}

bool starts_or_ends(const Value& s, const Value& affix, bool start) {
  auto one = [&](const Value& p) {
    if (!p.is_string()) type_error("startswith/endswith need a string or a tuple of strings");
    return s.text.size() >= p.text.size() &&
           s.text.compare(start ? 0 : s.text.size() - p.text.size(), p.text.size(), p.text) == 0;
  };
  if (affix.is_sequence()) return std::any_of(affix.list->begin(), affix.list->end(), one);
  return one(affix);
}

using Method = std::function<Value(const Value&, const Args&)>;

const std::map<std::string, Method, std::less<>>& string_methods() {
  static const std::map<std::string, Method, std::less<>> m = {
      {"strip", [](const Value& s, const Args& a) { return strip(s, arg(a, 0, "chars"), true, true); }},
      {"lstrip", [](const Value& s, const Args& a) { return strip(s, arg(a, 0, "chars"), true, false); }},
      {"rstrip", [](const Value& s, const Args& a) { return strip(s, arg(a, 0, "chars"), false, true); }},
      {"startswith",
       [](const Value& s, const Args& a) {
         return Value::of_bool(starts_or_ends(s, arg(a, 0, "prefix").value_or(Value::none()), true));
       }},
      {"endswith",
       [](const Value& s, const Args& a) {
         return Value::of_bool(starts_or_ends(s, arg(a, 0, "suffix").value_or(Value::none()), false));
       }},
      {"split", split},
      {"upper", [](const Value& s, const Args&) { return Value::of_string(map_case(s.text, utf8proc_toupper)); }},
      {"lower", [](const Value& s, const Args&) { return Value::of_string(map_case(s.text, utf8proc_tolower)); }},
      {"title", [](const Value& s, const Args&) { return Value::of_string(capitalize(s.text, true)); }},
      {"capitalize", [](const Value& s, const Args&) { return Value::of_string(capitalize(s.text, false)); }},
      {"replace",
       [](const Value& s, const Args& a) {
         const auto count = arg(a, 2, "count");
         return replace(s, string_arg(a, 0, "old", "replace"), string_arg(a, 1, "new", "replace"),
                        count && count->kind == Value::Kind::Int ? count->integer : -1);
       }},
      {"find",
       [](const Value& s, const Args& a) {
         const size_t at = s.text.find(string_arg(a, 0, "sub", "find"));
         if (at == std::string::npos) return Value::of_int(-1);
         return Value::of_int(static_cast<int64_t>(code_point_offsets(s.text.substr(0, at)).size() - 1));
       }},
  };
  return m;
}

Value items_of(const Value& d) {
  List out;
  if (d.kind == Value::Kind::Dict) {
    for (const auto& [k, v] : *d.object) out.push_back(Value::of_list({Value::of_string(k), v}, Value::Kind::Tuple));
  } else if (d.kind != Value::Kind::Undefined) {
    type_error(fmt::format("items needs a dict, not {}", type_name(d)));
  }
  return Value::of_list(std::move(out));
}

const std::map<std::string, Method, std::less<>>& dict_methods() {
  static const std::map<std::string, Method, std::less<>> m = {
      {"items", [](const Value& d, const Args&) { return items_of(d); }},
      {"keys", [](const Value& d, const Args&) { return Value::of_list(iterate(d)); }},
      {"values",
       [](const Value& d, const Args&) {
         List out;
         for (const auto& e : *d.object) out.push_back(e.second);
         return Value::of_list(std::move(out));
       }},
      {"get",
       [](const Value& d, const Args& a) {
         const auto key = arg(a, 0, "key");
         const Value* found = key && key->is_string() ? d.find(key->text) : nullptr;
         return found ? *found : arg(a, 1, "default").value_or(Value::none());
       }},
  };
  return m;
}

}  // namespace

std::optional<Value> Args::get(size_t index, std::string_view name) const {
  if (index < positional.size()) return positional[index];
  for (const auto& [n, v] : named) {
    if (n == name) return v;
  }
  return std::nullopt;
}

bool has_method(std::string_view name) { return string_methods().count(name) || dict_methods().count(name); }

Value get_attribute(const Value& v, const std::string& name) {
  if (v.kind == Value::Kind::Undefined) type_error(v.text);
  const auto& methods = v.is_string() ? string_methods() : dict_methods();
  if (v.is_string() || v.kind == Value::Kind::Dict) {
    if (auto m = methods.find(name); m != methods.end()) {
      const Method f = m->second;
      return make_callable(
          name, [f](const Value& self, const Args& a) { return f(self, a); }, v);
    }
  }
  if (const Value* found = v.find(name)) return *found;
  return Value::undefined(fmt::format("'{} object' has no attribute '{}'", type_name(v), name));
}

}  // namespace herd::jinja
