// Python's value semantics, as jinja2 inherits them: truth, equality, ordering,
// str() and repr(), arithmetic, indexing and slicing, iteration; and the marks that
// strings carry through them.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include <fmt/format.h>

#include "common/jinja_internal.h"
#include "common/text.h"

namespace herd::jinja {

void fail(int line, const std::string& what) { throw RenderError(fmt::format("line {}: {}", line, what)); }

namespace {
// Errors from value operations name no line; the renderer adds it.
[[noreturn]] void type_error(const std::string& what) { throw RenderError(what); }
}  // namespace

Value Value::none() {
  Value v;
  v.kind = Kind::None;
  return v;
}
Value Value::of_bool(bool b) {
  Value v;
  v.kind = Kind::Bool;
  v.boolean = b;
  return v;
}
Value Value::of_int(int64_t i) {
  Value v;
  v.kind = Kind::Int;
  v.integer = i;
  return v;
}
Value Value::of_float(double d) {
  Value v;
  v.kind = Kind::Float;
  v.number = d;
  return v;
}
Value Value::of_string(std::string s, std::vector<Mark> marks) {
  Value v;
  v.kind = Kind::String;
  v.text = std::move(s);
  v.marks = std::move(marks);
  return v;
}
Value Value::of_list(List items, Kind kind) {
  Value v;
  v.kind = kind;
  v.list = std::make_shared<const List>(std::move(items));
  return v;
}
Value Value::of_dict(Object entries) {
  Value v;
  v.kind = Kind::Dict;
  v.object = std::make_shared<Object>(std::move(entries));
  return v;
}
Value Value::undefined(std::string name) {
  Value v;
  v.text = std::move(name);
  return v;
}

const Value* Value::find(std::string_view key) const {
  if (kind != Kind::Dict && kind != Kind::Namespace) return nullptr;
  for (const auto& [k, v] : *object) {
    if (k == key) return &v;
  }
  return nullptr;
}

void Output::append(const std::string& s, const std::vector<Mark>& m) {
  if (text.size() + s.size() > kMaxString) throw RenderError("the output passed 64 MiB");
  const auto at = static_cast<uint32_t>(text.size());
  for (const auto& mark : m) marks.push_back({mark.begin + at, mark.end + at, mark.tag});
  text += s;
}

std::string type_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return "Undefined";
    case Value::Kind::None:
      return "NoneType";
    case Value::Kind::Bool:
      return "bool";
    case Value::Kind::Int:
      return "int";
    case Value::Kind::Float:
      return "float";
    case Value::Kind::String:
      return "str";
    case Value::Kind::List:
      return "list";
    case Value::Kind::Tuple:
      return "tuple";
    case Value::Kind::Dict:
      return "dict";
    case Value::Kind::Namespace:
      return "Namespace";
    case Value::Kind::Callable:
      return "function";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None:
      return false;
    case Value::Kind::Bool:
      return v.boolean;
    case Value::Kind::Int:
      return v.integer != 0;
    case Value::Kind::Float:
      return v.number != 0;
    case Value::Kind::String:
      return !v.text.empty();
    case Value::Kind::List:
    case Value::Kind::Tuple:
      return !v.list->empty();
    case Value::Kind::Dict:
      return !v.object->empty();
    default:
      return true;
  }
}

namespace {
double as_double(const Value& v) {
  return v.kind == Value::Kind::Float ? v.number
                                      : static_cast<double>(v.kind == Value::Kind::Bool ? v.boolean : v.integer);
}
int64_t as_int(const Value& v) { return v.kind == Value::Kind::Bool ? v.boolean : v.integer; }
}  // namespace

bool equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Value::Kind::Float || b.kind == Value::Kind::Float) return as_double(a) == as_double(b);
    return as_int(a) == as_int(b);
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None:
      return true;
    case Value::Kind::String:
      return a.text == b.text;
    case Value::Kind::List:
    case Value::Kind::Tuple:
      return std::equal(a.list->begin(), a.list->end(), b.list->begin(), b.list->end(), equal);
    case Value::Kind::Dict:
      if (a.object->size() != b.object->size()) return false;
      for (const auto& [k, v] : *a.object) {
        const Value* w = b.find(k);
        if (!w || !equal(v, *w)) return false;
      }
      return true;
    default:
      return a.object == b.object && a.callable == b.callable;
  }
}

int compare(const Value& a, const Value& b, const std::string& op) {
  if (a.is_number() && b.is_number()) {
    const double x = as_double(a), y = as_double(b);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) return a.text.compare(b.text);  // UTF-8 bytes order as code points do
  if (a.is_sequence() && a.kind == b.kind) {
    for (size_t i = 0; i < std::min(a.list->size(), b.list->size()); ++i) {
      if (!equal((*a.list)[i], (*b.list)[i])) return compare((*a.list)[i], (*b.list)[i], op);
    }
    return a.list->size() < b.list->size() ? -1 : a.list->size() > b.list->size() ? 1 : 0;
  }
  type_error(fmt::format("'{}' not supported between instances of '{}' and '{}'", op, type_name(a), type_name(b)));
}

namespace {

std::string python_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  std::string s = fmt::format("{}", d);
  if (s.find_first_of(".eni") == std::string::npos) s += ".0";
  return s;
}

std::string string_repr(const std::string& s) {
  const char q = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, q);
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\\' || c == q) {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u == 0x7f) {
      out += fmt::format("\\x{:02x}", u);
    } else {
      out += c;
    }
  }
  return out + q;
}

}  // namespace

std::string repr(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return "Undefined";  // jinja2's Undefined.__repr__
    case Value::Kind::String:
      return string_repr(v.text);
    case Value::Kind::List:
    case Value::Kind::Tuple: {
      std::string out = v.kind == Value::Kind::List ? "[" : "(";
      for (size_t i = 0; i < v.list->size(); ++i) out += (i ? ", " : "") + repr((*v.list)[i]);
      if (v.kind == Value::Kind::Tuple && v.list->size() == 1) out += ",";
      return out + (v.kind == Value::Kind::List ? "]" : ")");
    }
    case Value::Kind::Dict: {
      std::string out = "{";
      for (size_t i = 0; i < v.object->size(); ++i) {
        out += (i ? ", " : "") + string_repr((*v.object)[i].first) + ": " + repr((*v.object)[i].second);
      }
      return out + "}";
    }
    default:
      return str(v);
  }
}

std::string str(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return "";
    case Value::Kind::None:
      return "None";
    case Value::Kind::Bool:
      return v.boolean ? "True" : "False";
    case Value::Kind::Int:
      return std::to_string(v.integer);
    case Value::Kind::Float:
      return python_float(v.number);
    case Value::Kind::String:
      return v.text;
    case Value::Kind::Namespace:
      return "<Namespace>";
    case Value::Kind::Callable:
      return fmt::format("<function {}>", v.callable->name);
    default:
      return repr(v);
  }
}

Value as_string(const Value& v) { return v.is_string() ? v : Value::of_string(str(v)); }

Value concat(const Value& a, const Value& b) {
  if (a.text.size() + b.text.size() > kMaxString) type_error("a string longer than 64 MiB");
  std::vector<Mark> marks = a.marks;
  const auto at = static_cast<uint32_t>(a.text.size());
  for (const auto& m : b.marks) marks.push_back({m.begin + at, m.end + at, m.tag});
  return Value::of_string(a.text + b.text, std::move(marks));
}

namespace {

Value repeat(const Value& seq, int64_t n) {
  const size_t each = seq.is_string() ? seq.text.size() : seq.list->size() * 16;
  if (n > 0 && each > 0 && static_cast<uint64_t>(n) > kMaxString / each) type_error("a repetition past 64 MiB");
  if (seq.is_string()) {
    std::string out;
    for (int64_t i = 0; i < n; ++i) out += seq.text;
    return Value::of_string(out);
  }
  List out;
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.list->begin(), seq.list->end());
  return Value::of_list(std::move(out), seq.kind);
}

Value numeric(const std::string& op, const Value& a, const Value& b) {
  const bool real = a.kind == Value::Kind::Float || b.kind == Value::Kind::Float || op == "/";
  const double x = as_double(a), y = as_double(b);
  if ((op == "/" || op == "//" || op == "%") && y == 0) type_error("division by zero");
  if (real) {
    if (op == "+") return Value::of_float(x + y);
    if (op == "-") return Value::of_float(x - y);
    if (op == "*") return Value::of_float(x * y);
    if (op == "/") return Value::of_float(x / y);
    if (op == "//") return Value::of_float(std::floor(x / y));
    if (op == "%") return Value::of_float(x - y * std::floor(x / y));
    return Value::of_float(std::pow(x, y));
  }
  // Python's integers are unbounded; herd's are 64-bit and overflow is an error (found by tests/fuzz).
  const int64_t i = as_int(a), j = as_int(b);
  int64_t r = 0;
  auto checked = [&](bool overflowed) {
    if (overflowed) type_error(fmt::format("{} {} {} overflows a 64-bit integer", i, op, j));
    return Value::of_int(r);
  };
  if (op == "+") return checked(__builtin_add_overflow(i, j, &r));
  if (op == "-") return checked(__builtin_sub_overflow(i, j, &r));
  if (op == "*") return checked(__builtin_mul_overflow(i, j, &r));
  if (op == "//" || op == "%") {
    if (i == INT64_MIN && j == -1) return checked(true);
    const int64_t q = i / j - ((i % j != 0 && ((i < 0) != (j < 0))) ? 1 : 0);  // floor division
    r = op == "//" ? q : i - q * j;
    return Value::of_int(r);
  }
  if (j < 0) return Value::of_float(std::pow(x, y));
  if (i == 0 || i == 1) return Value::of_int(j == 0 ? 1 : i);
  if (i == -1) return Value::of_int(j % 2 == 0 ? 1 : -1);
  r = 1;
  for (int64_t k = 0; k < j; ++k) {  // |i| >= 2: at most 63 rounds before an overflow
    if (__builtin_mul_overflow(r, i, &r)) return checked(true);
  }
  return Value::of_int(r);
}

}  // namespace

Value arithmetic(const std::string& op, const Value& a, const Value& b) {
  for (const Value* v : {&a, &b}) {
    if (v->kind == Value::Kind::Undefined && op != "~") type_error(v->text);
  }
  if (op == "~") return concat(as_string(a), as_string(b));
  if (a.is_number() && b.is_number()) return numeric(op, a, b);
  if (op == "+" && a.is_string() && b.is_string()) return concat(a, b);
  if (op == "+" && a.is_sequence() && a.kind == b.kind) {
    List out = *a.list;
    out.insert(out.end(), b.list->begin(), b.list->end());
    return Value::of_list(std::move(out), a.kind);
  }
  if (op == "*" && (a.is_string() || a.is_sequence()) && b.kind == Value::Kind::Int) return repeat(a, b.integer);
  if (op == "*" && (b.is_string() || b.is_sequence()) && a.kind == Value::Kind::Int) return repeat(b, a.integer);
  if (op == "%" && a.is_string()) type_error("string formatting with % is not supported");
  type_error(fmt::format("unsupported operand types for {}: '{}' and '{}'", op, type_name(a), type_name(b)));
}

bool contains(const Value& c, const Value& item) {
  switch (c.kind) {
    case Value::Kind::String:
      if (!item.is_string())
        type_error(fmt::format("'in <string>' requires string as left operand, not {}", type_name(item)));
      return c.text.find(item.text) != std::string::npos;
    case Value::Kind::List:
    case Value::Kind::Tuple:
      return std::any_of(c.list->begin(), c.list->end(), [&](const Value& v) { return equal(v, item); });
    case Value::Kind::Dict:
      return item.is_string() && c.find(item.text) != nullptr;
    case Value::Kind::Undefined:
      return false;
    default:
      type_error(fmt::format("argument of type '{}' is not iterable", type_name(c)));
  }
}

namespace {

// Python's index rules: negative from the end; nullopt when out of range.
std::optional<size_t> index_of(int64_t i, size_t n) {
  if (i < 0) i += static_cast<int64_t>(n);
  if (i < 0 || static_cast<size_t>(i) >= n) return std::nullopt;
  return static_cast<size_t>(i);
}

// Marks inside bytes [b, e), moved to start at 0; a mark that held [b, e) when that is
// empty stays as an empty mark.
std::vector<Mark> clip(const std::vector<Mark>& marks, size_t b, size_t e) {
  std::vector<Mark> out;
  for (const auto& m : marks) {
    const bool overlaps = std::max<size_t>(m.begin, b) < std::min<size_t>(m.end, e);
    const bool holds_empty = b == e && m.begin <= b && e <= m.end;
    if (!overlaps && !holds_empty) continue;
    out.push_back({static_cast<uint32_t>(std::max<size_t>(m.begin, b) - b),
                   static_cast<uint32_t>(std::min<size_t>(m.end, e) - b), m.tag});
    out.back().end = std::max(out.back().end, out.back().begin);
  }
  return out;
}

}  // namespace

Value substring(const Value& s, size_t b, size_t e) {
  return Value::of_string(s.text.substr(b, e - b), clip(s.marks, b, e));
}

Value get_item(const Value& v, const Value& key) {
  if (v.kind == Value::Kind::Undefined) type_error(v.text);
  if (key.kind == Value::Kind::Int && v.is_sequence()) {
    const auto i = index_of(key.integer, v.list->size());
    return i ? (*v.list)[*i] : Value::undefined(fmt::format("{} object has no element {}", type_name(v), key.integer));
  }
  if (key.kind == Value::Kind::Int && v.is_string()) {
    const auto at = code_point_offsets(v.text);
    const auto i = index_of(key.integer, at.size() - 1);
    return i ? substring(v, at[*i], at[*i + 1])
             : Value::undefined(fmt::format("str object has no element {}", key.integer));
  }
  if (key.is_string()) {
    if (const Value* found = v.find(key.text)) return *found;
    return get_attribute(v, key.text);
  }
  return Value::undefined(fmt::format("{} object has no element {}", type_name(v), repr(key)));
}

Value slice(const Value& v, std::optional<int64_t> start, std::optional<int64_t> stop, std::optional<int64_t> step) {
  const int64_t st = step.value_or(1);
  if (st == 0) type_error("slice step cannot be zero");
  std::vector<size_t> at;
  if (v.is_string()) at = code_point_offsets(v.text);
  const auto n = static_cast<int64_t>(v.is_string() ? at.size() - 1 : v.is_sequence() ? v.list->size() : 0);
  if (!v.is_string() && !v.is_sequence()) type_error(fmt::format("'{}' object is not subscriptable", type_name(v)));
  auto bound = [&](std::optional<int64_t> x, int64_t def) {
    if (!x) return def;
    int64_t i = *x < 0 ? *x + n : *x;
    return st > 0 ? std::clamp<int64_t>(i, 0, n) : std::clamp<int64_t>(i, -1, n - 1);
  };
  const int64_t b = bound(start, st > 0 ? 0 : n - 1), e = bound(stop, st > 0 ? n : -1);
  if (v.is_string() && st == 1) {
    return b < e ? substring(v, at[static_cast<size_t>(b)], at[static_cast<size_t>(e)]) : Value::of_string("");
  }
  std::string text;
  List items;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) {
    const auto k = static_cast<size_t>(i);
    if (v.is_string()) {
      text += v.text.substr(at[k], at[k + 1] - at[k]);
    } else {
      items.push_back((*v.list)[k]);
    }
  }
  return v.is_string() ? Value::of_string(text) : Value::of_list(std::move(items), v.kind);
}

std::vector<Value> iterate(const Value& v) {
  switch (v.kind) {
    case Value::Kind::List:
    case Value::Kind::Tuple:
      return *v.list;
    case Value::Kind::Dict: {
      std::vector<Value> keys;
      for (const auto& e : *v.object) keys.push_back(Value::of_string(e.first));
      return keys;
    }
    case Value::Kind::String: {
      std::vector<Value> chars;
      const auto at = code_point_offsets(v.text);
      for (size_t i = 0; i + 1 < at.size(); ++i) chars.push_back(substring(v, at[i], at[i + 1]));
      return chars;
    }
    case Value::Kind::Undefined:
      return {};
    default:
      type_error(fmt::format("'{}' object is not iterable", type_name(v)));
  }
}

}  // namespace herd::jinja
