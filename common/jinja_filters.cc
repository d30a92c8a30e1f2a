// jinja2's filters and tests, transformers' tojson, and the globals chat templates
// call. Each takes Python's arguments (positional or by name) and behaves as its
// Python original.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>

#include <fmt/format.h>

#include "common/jinja_internal.h"
#include "common/text.h"

namespace herd::jinja {

namespace {

[[noreturn]] void type_error(const std::string& what) { throw RenderError(what); }

Value opt(const Args& a, size_t index, std::string_view name, Value def) { return a.get(index, name).value_or(def); }

std::string json_string(const std::string& s, bool ascii) {
  std::string out = "\"";
  const auto at = code_point_offsets(s);
  for (size_t i = 0; i + 1 < at.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[at[i]]);
    const size_t n = at[i + 1] - at[i];
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f') {
      out += c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : c == '\b' ? "\\b" : "\\f";
    } else if (c < 0x20) {
      out += fmt::format("\\u{:04x}", c);
    } else if (n > 1 && ascii) {
      uint32_t cp = c & (0xFF >> (n + 1));
      for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[at[i] + k]) & 0x3F);
      if (cp >= 0x10000) {
        cp -= 0x10000;
        out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
      } else {
        out += fmt::format("\\u{:04x}", cp);
      }
    } else {
      out += s.substr(at[i], n);
    }
  }
  return out + "\"";
}

struct JsonStyle {
  bool ascii = false, sort = false;
  std::optional<std::string> indent;
  std::string item_sep, key_sep;
};

std::string json_dumps(const Value& v, const JsonStyle& st, int level) {
  switch (v.kind) {
    case Value::Kind::None:
      return "null";
    case Value::Kind::Bool:
      return v.boolean ? "true" : "false";
    case Value::Kind::Int:
      return str(v);
    case Value::Kind::Float:
      if (std::isnan(v.number)) return "NaN";
      if (std::isinf(v.number)) return v.number > 0 ? "Infinity" : "-Infinity";
      return str(v);
    case Value::Kind::String:
      return json_string(v.text, st.ascii);
    case Value::Kind::List:
    case Value::Kind::Tuple:
    case Value::Kind::Dict:
      break;
    default:
      type_error(fmt::format("Object of type {} is not JSON serializable", type_name(v)));
  }
  const bool dict = v.kind == Value::Kind::Dict;
  std::vector<std::string> parts;
  if (dict) {
    Object entries = *v.object;
    if (st.sort) std::stable_sort(entries.begin(), entries.end(), [](auto& a, auto& b) { return a.first < b.first; });
    for (const auto& [k, x] : entries)
      parts.push_back(json_string(k, st.ascii) + st.key_sep + json_dumps(x, st, level + 1));
  } else {
    for (const auto& x : *v.list) parts.push_back(json_dumps(x, st, level + 1));
  }
  const std::string open = dict ? "{" : "[", close = dict ? "}" : "]";
  if (parts.empty()) return open + close;
  std::string inner, pad, outer;
  if (st.indent) {
    for (int i = 0; i <= level; ++i) pad += *st.indent;
    outer = "\n" + pad.substr(0, pad.size() - st.indent->size());
    pad = "\n" + pad;
  }
  for (size_t i = 0; i < parts.size(); ++i) {
    inner += (i ? st.item_sep : "") + pad + parts[i];
    if (inner.size() > kMaxString) type_error("tojson: a string longer than 64 MiB");
  }
  return open + inner + outer + close;
}

// transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).
Value tojson(const Value& v, const Args& a) {
  JsonStyle st;
  st.ascii = truthy(opt(a, 0, "ensure_ascii", Value::of_bool(false)));
  const Value indent = opt(a, 1, "indent", Value::none());
  // Found by tests/fuzz: an indent of 10^14 spaces asked for that many bytes at once.
  constexpr int64_t kMaxIndent = 4096;
  if ((indent.kind == Value::Kind::Int && indent.integer > kMaxIndent) ||
      (indent.is_string() && indent.text.size() > static_cast<size_t>(kMaxIndent))) {
    type_error(fmt::format("tojson: an indent past {} characters", kMaxIndent));
  }
  if (indent.kind == Value::Kind::Int)
    st.indent = std::string(static_cast<size_t>(std::max<int64_t>(0, indent.integer)), ' ');
  if (indent.is_string()) st.indent = indent.text;
  const Value seps = opt(a, 2, "separators", Value::none());
  st.item_sep = st.indent ? "," : ", ";
  st.key_sep = ": ";
  if (seps.is_sequence() && seps.list->size() == 2) {
    st.item_sep = str((*seps.list)[0]);
    st.key_sep = str((*seps.list)[1]);
  }
  st.sort = truthy(opt(a, 3, "sort_keys", Value::of_bool(false)));
  return Value::of_string(json_dumps(v, st, 0));
}

int64_t length(const Value& v) {
  switch (v.kind) {
    case Value::Kind::String:
      return static_cast<int64_t>(code_point_offsets(v.text).size() - 1);
    case Value::Kind::List:
    case Value::Kind::Tuple:
      return static_cast<int64_t>(v.list->size());
    case Value::Kind::Dict:
      return static_cast<int64_t>(v.object->size());
    case Value::Kind::Undefined:
      return 0;
    default:
      type_error(fmt::format("object of type '{}' has no len()", type_name(v)));
  }
}

// An attribute path ("a.b") looked up as jinja2's attribute getter does: items first.
Value attribute_path(const Value& v, const std::string& path) {
  Value cur = v;
  for (size_t pos = 0;;) {
    const size_t dot = path.find('.', pos);
    const std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    int64_t index = 0;
    const auto [end, ec] = std::from_chars(part.data(), part.data() + part.size(), index);
    const bool digits = !part.empty() && part.find_first_not_of("0123456789") == std::string::npos;
    if (digits && ec != std::errc()) return Value::undefined(fmt::format("no element {}", part));  // found by tests/fuzz
    cur = get_item(cur, digits ? Value::of_int(index) : Value::of_string(part));
    if (dot == std::string::npos) return cur;
    pos = dot + 1;
  }
}

// select / reject / selectattr / rejectattr.
Value select(const Value& seq, const Args& a, Renderer& r, bool attr, bool keep) {
  size_t first_test_arg = 0;
  std::string attribute;
  if (attr) {
    const auto at = a.get(0, "attribute");
    if (!at || !at->is_string()) type_error("selectattr/rejectattr need an attribute name");
    attribute = at->text;
    first_test_arg = 1;
  }
  const auto test = a.get(first_test_arg, "");
  Args test_args;
  for (size_t i = first_test_arg + 1; i < a.positional.size(); ++i) test_args.positional.push_back(a.positional[i]);
  List out;
  if (!truthy(seq)) return Value::of_list({});  // jinja2 selects nothing from a false value (none)
  for (const Value& item : iterate(seq)) {
    const Value subject = attr ? attribute_path(item, attribute) : item;
    const bool pass = test ? r.apply_test(str(*test), subject, test_args) : truthy(subject);
    if (pass == keep) out.push_back(item);
  }
  return Value::of_list(std::move(out));
}

Value map_filter(const Value& seq, const Args& a, Renderer& r) {
  List out;
  if (!truthy(seq)) return Value::of_list({});  // jinja2 maps nothing over a false value (none)
  const auto attribute = a.get(99, "attribute");
  for (const Value& item : iterate(seq)) {
    if (attribute) {
      Value v = attribute_path(item, str(*attribute));
      if (v.kind == Value::Kind::Undefined) v = a.get(99, "default").value_or(v);
      out.push_back(v);
      continue;
    }
    if (a.positional.empty()) type_error("map needs a filter name or attribute=");
    Args rest;
    rest.positional.assign(a.positional.begin() + 1, a.positional.end());
    rest.named = a.named;
    out.push_back(r.apply_filter(str(a.positional[0]), item, rest));
  }
  return Value::of_list(std::move(out));
}

Value join(const Value& seq, const Args& a) {
  const Value sep = as_string(opt(a, 0, "d", Value::of_string("")));
  const auto attribute = a.get(1, "attribute");
  Value out = Value::of_string("");
  bool first = true;
  for (const Value& item : iterate(seq)) {
    if (!first) out = concat(out, sep);
    out = concat(out, as_string(attribute ? attribute_path(item, str(*attribute)) : item));
    first = false;
  }
  return out;
}

Value dictsort(const Value& d, const Args& a) {
  if (d.kind != Value::Kind::Dict) type_error(fmt::format("dictsort needs a dict, not {}", type_name(d)));
  const bool case_sensitive = truthy(opt(a, 0, "case_sensitive", Value::of_bool(false)));
  const bool by_value = str(opt(a, 1, "by", Value::of_string("key"))) == "value";
  const bool reverse = truthy(opt(a, 2, "reverse", Value::of_bool(false)));
  List items;
  for (const auto& [k, v] : *d.object) items.push_back(Value::of_list({Value::of_string(k), v}, Value::Kind::Tuple));
  auto key = [&](const Value& item) {
    Value k = (*item.list)[by_value ? 1 : 0];
    if (!case_sensitive && k.is_string())
      k = Value::of_string(k.text), std::transform(k.text.begin(), k.text.end(), k.text.begin(), ::tolower);
    return k;
  };
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    const int c = compare(key(x), key(y), "<");
    return reverse ? c > 0 : c < 0;
  });
  return Value::of_list(std::move(items));
}

Value call_method(const Value& subject, const std::string& method, const Args& a);

// sort, unique, min and max: the key each item is compared by (jinja2's
// ignore_case: strings lowered unless case_sensitive; an attribute path first).
struct SortKey {
  bool case_sensitive = false;
  std::optional<std::string> attribute;
  SortKey(const Args& a, size_t case_index, size_t attribute_index) {
    case_sensitive = truthy(opt(a, case_index, "case_sensitive", Value::of_bool(false)));
    if (auto at = a.get(attribute_index, "attribute"); at && at->kind != Value::Kind::None) attribute = str(*at);
  }
  Value operator()(const Value& item) const {
    Value k = attribute ? attribute_path(item, *attribute) : item;
    if (!case_sensitive && k.is_string()) k = call_method(k, "lower", {});
    return k;
  }
};

Value sort(const Value& seq, const Args& a) {
  const bool reverse = truthy(opt(a, 0, "reverse", Value::of_bool(false)));
  const SortKey key(a, 1, 2);
  auto items = iterate(seq);
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    const int c = compare(key(x), key(y), "<");
    return reverse ? c > 0 : c < 0;
  });
  return Value::of_list(std::move(items));
}

Value unique(const Value& seq, const Args& a) {
  const SortKey key(a, 0, 1);
  List out, seen;
  for (const Value& item : iterate(seq)) {
    const Value k = key(item);
    if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return equal(s, k); })) continue;
    seen.push_back(k);
    out.push_back(item);
  }
  return Value::of_list(std::move(out));
}

Value extreme(const Value& seq, const Args& a, bool largest) {
  const SortKey key(a, 0, 1);
  const auto items = iterate(seq);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  const Value* best = &items[0];
  for (const Value& item : items) {
    const int c = compare(key(item), key(*best), "<");
    if (largest ? c > 0 : c < 0) best = &item;
  }
  return *best;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// A str method on str(subject), or a dict method on a dict.
Value call_method(const Value& subject, const std::string& method, const Args& a) {
  const Value m = get_attribute(subject.kind == Value::Kind::Dict ? subject : as_string(subject), method);
  if (m.kind != Value::Kind::Callable) type_error(fmt::format("{} has no method {}", type_name(subject), method));
  return m.callable->builtin(m.callable->self, a);
}

Value default_filter(const Value& v, const Args& a, Renderer&) {
  const bool boolean = truthy(opt(a, 1, "boolean", Value::of_bool(false)));
  const bool use = v.kind == Value::Kind::Undefined || (boolean && !truthy(v));
  return use ? opt(a, 0, "default_value", Value::of_string("")) : v;
}

Value first_or_last(const Value& v, bool first) {
  const auto items = iterate(v);
  if (items.empty()) return Value::undefined("No first item, sequence was empty.");
  return first ? items.front() : items.back();
}

Value to_number(const Value& v, const Args& a, bool integer) {
  const Value def = opt(a, 0, "default", integer ? Value::of_int(0) : Value::of_float(0));
  if (v.kind == Value::Kind::Int || v.kind == Value::Kind::Bool)
    return integer ? Value::of_int(v.integer + v.boolean) : Value::of_float(static_cast<double>(v.integer + v.boolean));
  if (v.kind == Value::Kind::Float) return integer ? Value::of_int(static_cast<int64_t>(v.number)) : v;
  if (!v.is_string()) return def;
  try {
    size_t used = 0;
    const std::string t = str(call_method(v, "strip", {}));
    if (integer) {
      const int64_t i = std::stoll(t, &used);
      return used == t.size() ? Value::of_int(i) : def;
    }
    const double d = std::stod(t, &used);
    return used == t.size() ? Value::of_float(d) : def;
  } catch (const std::exception&) {
    return def;
  }
}

}  // namespace

const std::map<std::string, Filter, std::less<>>& filters() {
  using R = Renderer;
  static const std::map<std::string, Filter, std::less<>> f = {
      {"trim", [](const Value& v, const Args& a, R&) { return call_method(v, "strip", a); }},
      {"tojson", [](const Value& v, const Args& a, R&) { return tojson(v, a); }},
      {"length", [](const Value& v, const Args&, R&) { return Value::of_int(length(v)); }},
      {"count", [](const Value& v, const Args&, R&) { return Value::of_int(length(v)); }},
      {"list", [](const Value& v, const Args&, R&) { return Value::of_list(iterate(v)); }},
      {"string", [](const Value& v, const Args&, R&) { return as_string(v); }},
      {"join", [](const Value& v, const Args& a, R&) { return join(v, a); }},
      {"select", [](const Value& v, const Args& a, R& r) { return select(v, a, r, false, true); }},
      {"reject", [](const Value& v, const Args& a, R& r) { return select(v, a, r, false, false); }},
      {"selectattr", [](const Value& v, const Args& a, R& r) { return select(v, a, r, true, true); }},
      {"rejectattr", [](const Value& v, const Args& a, R& r) { return select(v, a, r, true, false); }},
      {"map", map_filter},
      {"items", [](const Value& v, const Args& a,
                   R&) { return call_method(v.kind == Value::Kind::Undefined ? Value::of_dict({}) : v, "items", a); }},
      {"default", default_filter},
      {"d", default_filter},
      {"upper", [](const Value& v, const Args& a, R&) { return call_method(v, "upper", a); }},
      {"lower", [](const Value& v, const Args& a, R&) { return call_method(v, "lower", a); }},
      {"capitalize", [](const Value& v, const Args& a, R&) { return call_method(v, "capitalize", a); }},
      {"title", [](const Value& v, const Args& a, R&) { return call_method(v, "title", a); }},
      {"replace", [](const Value& v, const Args& a, R&) { return call_method(v, "replace", a); }},
      {"first", [](const Value& v, const Args&, R&) { return first_or_last(v, true); }},
      {"last", [](const Value& v, const Args&, R&) { return first_or_last(v, false); }},
      {"reverse",
       [](const Value& v, const Args&, R&) {
         if (v.is_string()) return slice(v, std::nullopt, std::nullopt, -1);
         auto items = iterate(v);
         std::reverse(items.begin(), items.end());
         return Value::of_list(std::move(items));
       }},
      {"safe", [](const Value& v, const Args&, R&) { return v; }},
      {"escape", [](const Value& v, const Args&, R&) { return Value::of_string(html_escape(str(v))); }},
      {"e", [](const Value& v, const Args&, R&) { return Value::of_string(html_escape(str(v))); }},
      {"int", [](const Value& v, const Args& a, R&) { return to_number(v, a, true); }},
      {"float", [](const Value& v, const Args& a, R&) { return to_number(v, a, false); }},
      {"abs",
       [](const Value& v, const Args&, R&) {
         if (v.kind == Value::Kind::Float) return Value::of_float(std::fabs(v.number));
         if (v.kind == Value::Kind::Int) return Value::of_int(v.integer < 0 ? -v.integer : v.integer);
         type_error(fmt::format("bad operand type for abs(): '{}'", type_name(v)));
       }},
      {"dictsort", [](const Value& v, const Args& a, R&) { return dictsort(v, a); }},
      {"sort", [](const Value& v, const Args& a, R&) { return sort(v, a); }},
      {"unique", [](const Value& v, const Args& a, R&) { return unique(v, a); }},
      {"min", [](const Value& v, const Args& a, R&) { return extreme(v, a, false); }},
      {"max", [](const Value& v, const Args& a, R&) { return extreme(v, a, true); }},
  };
  return f;
}

namespace {

bool is_lower_or_upper(const Value& v, bool lower) {
  if (!v.is_string()) return false;
  const Value mapped = call_method(v, lower ? "lower" : "upper", {});
  return mapped.text == v.text && call_method(v, lower ? "upper" : "lower", {}).text != v.text;
}

bool compare_test(const Value& v, const Args& a, const char* op) {
  const auto other = a.get(0, "other");
  if (!other) type_error(fmt::format("the test '{}' needs a value to compare with", op));
  const std::string o = op;
  if (o == "==") return equal(v, *other);
  if (o == "!=") return !equal(v, *other);
  const int c = compare(v, *other, o);
  return o == "<" ? c < 0 : o == "<=" ? c <= 0 : o == ">" ? c > 0 : c >= 0;
}

int64_t integer_of(const Value& v, const char* test) {
  if (v.kind != Value::Kind::Int && v.kind != Value::Kind::Bool)
    type_error(fmt::format("the test '{}' needs an integer", test));
  return v.integer + v.boolean;
}

}  // namespace

const std::map<std::string, Test, std::less<>>& tests() {
  using K = Value::Kind;
  using R = Renderer;
  static const std::map<std::string, Test, std::less<>> t = {
      {"defined", [](const Value& v, const Args&, R&) { return v.kind != K::Undefined; }},
      {"undefined", [](const Value& v, const Args&, R&) { return v.kind == K::Undefined; }},
      {"none", [](const Value& v, const Args&, R&) { return v.kind == K::None; }},
      {"string", [](const Value& v, const Args&, R&) { return v.is_string(); }},
      {"number", [](const Value& v, const Args&, R&) { return v.is_number(); }},
      {"integer", [](const Value& v, const Args&, R&) { return v.kind == K::Int; }},
      {"float", [](const Value& v, const Args&, R&) { return v.kind == K::Float; }},
      {"boolean", [](const Value& v, const Args&, R&) { return v.kind == K::Bool; }},
      {"true", [](const Value& v, const Args&, R&) { return v.kind == K::Bool && v.boolean; }},
      {"false", [](const Value& v, const Args&, R&) { return v.kind == K::Bool && !v.boolean; }},
      {"mapping", [](const Value& v, const Args&, R&) { return v.kind == K::Dict; }},
      {"iterable", [](const Value& v, const Args&,
                      R&) { return v.is_string() || v.is_sequence() || v.kind == K::Dict || v.kind == K::Undefined; }},
      {"sequence",
       [](const Value& v, const Args&, R&) { return v.is_string() || v.is_sequence() || v.kind == K::Dict; }},
      {"callable", [](const Value& v, const Args&, R&) { return v.kind == K::Callable; }},
      {"equalto", [](const Value& v, const Args& a, R&) { return compare_test(v, a, "=="); }},
      {"eq", [](const Value& v, const Args& a, R&) { return compare_test(v, a, "=="); }},
      {"==", [](const Value& v, const Args& a, R&) { return compare_test(v, a, "=="); }},
      {"ne", [](const Value& v, const Args& a, R&) { return compare_test(v, a, "!="); }},
      {"!=", [](const Value& v, const Args& a, R&) { return compare_test(v, a, "!="); }},
      {"lt", [](const Value& v, const Args& a, R&) { return compare_test(v, a, "<"); }},
      {"le", [](const Value& v, const Args& a, R&) { return compare_test(v, a, "<="); }},
      {"gt", [](const Value& v, const Args& a, R&) { return compare_test(v, a, ">"); }},
      {"ge", [](const Value& v, const Args& a, R&) { return compare_test(v, a, ">="); }},
      {"sameas", [](const Value& v, const Args& a, R&) { return compare_test(v, a, "=="); }},
      {"in", [](const Value& v, const Args& a, R&) { return contains(a.get(0, "seq").value_or(Value::none()), v); }},
      {"odd", [](const Value& v, const Args&, R&) { return integer_of(v, "odd") % 2 != 0; }},
      {"even", [](const Value& v, const Args&, R&) { return integer_of(v, "even") % 2 == 0; }},
      {"divisibleby",
       [](const Value& v, const Args& a, R&) {
         const int64_t d = integer_of(a.get(0, "num").value_or(Value::none()), "divisibleby");
         if (d == 0) type_error("divisibleby 0");
         return integer_of(v, "divisibleby") % d == 0;
       }},
      {"lower", [](const Value& v, const Args&, R&) { return is_lower_or_upper(v, true); }},
      {"upper", [](const Value& v, const Args&, R&) { return is_lower_or_upper(v, false); }},
  };
  return t;
}

namespace {

Value range(const Value&, const Args& a) {
  std::vector<int64_t> n;
  for (const auto& v : a.positional) {
    if (v.kind != Value::Kind::Int) type_error("range needs integers");
    n.push_back(v.integer);
  }
  if (n.empty() || n.size() > 3) type_error("range takes 1 to 3 integers");
  const int64_t start = n.size() > 1 ? n[0] : 0, stop = n.size() > 1 ? n[1] : n[0], step = n.size() > 2 ? n[2] : 1;
  if (step == 0) type_error("range() arg 3 must not be zero");
  List out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    out.push_back(Value::of_int(i));
    if (out.size() > 100000) type_error("range() of more than 100000 numbers (jinja2's sandbox limit)");
  }
  return Value::of_list(std::move(out));
}

// dict(...) and namespace(...): a positional mapping, then keyword arguments.
Object entries(const Args& a) {
  Object out;
  auto put = [&](const std::string& k, const Value& v) {
    for (auto& e : out) {
      if (e.first == k) return void(e.second = v);
    }
    out.emplace_back(k, v);
  };
  if (!a.positional.empty()) {
    if (a.positional[0].kind != Value::Kind::Dict) type_error("dict() and namespace() take a mapping or keywords");
    for (const auto& [k, v] : *a.positional[0].object) put(k, v);
  }
  for (const auto& [k, v] : a.named) put(k, v);
  return out;
}

Callable global(std::string name, std::function<Value(const Value&, const Args&)> f) {
  Callable c;
  c.name = std::move(name);
  c.builtin = std::move(f);
  return c;
}

}  // namespace

const std::map<std::string, Callable, std::less<>>& global_functions() {
  static const std::map<std::string, Callable, std::less<>> g = {
      {"range", global("range", range)},
      {"dict", global("dict", [](const Value&, const Args& a) { return Value::of_dict(entries(a)); })},
      {"namespace", global("namespace",
                           [](const Value&, const Args& a) {
                             Value v = Value::of_dict(entries(a));
                             for (const auto& [k, x] : *v.object) {
                               if (!k.empty() && k[0] == '_')
                                 type_error(fmt::format("a namespace attribute may not start with '_': {}", k));
                             }
                             v.kind = Value::Kind::Namespace;
                             return v;
                           })},
      {"raise_exception", global("raise_exception",
                                 [](const Value&, const Args& a) -> Value {
                                   throw RenderError(
                                       fmt::format("the template raised: {}",
                                                   str(a.get(0, "message").value_or(Value::of_string("")))));
                                 })},
      {"strftime_now", global("strftime_now",
                              [](const Value&, const Args& a) {
                                const std::time_t now = std::time(nullptr);
                                std::tm local{};
                                localtime_r(&now, &local);
                                char buf[256];
                                const size_t n = std::strftime(
                                    buf, sizeof buf, str(a.get(0, "format").value_or(Value::of_string(""))).c_str(),
                                    &local);
                                return Value::of_string(std::string(buf, n));
                              })},
  };
  return g;
}

}  // namespace herd::jinja
