// The part of Jinja that chat templates are written in, rendered as transformers'
// apply_chat_template renders them: jinja2 3.1 with trim_blocks and lstrip_blocks,
// Python's values and their printing, transformers' tojson, raise_exception,
// strftime_now and namespace, and {% generation %} blocks (rendered in place).
//
// What is supported (docs/data-format.md lists it): if/elif/else, for (several
// targets, a filter, else, loop.*, break and continue), set (names, namespace
// attributes, blocks), macro; expressions with Python's operators, slices, calls with
// keyword arguments; the filters, tests and string/dict methods in jinja_builtins.cc.
// Anything else (include, extends, call blocks, an unknown filter, test or method) is
// refused when the template is read, naming the construct and its line.
//
// Strings carry marks: byte ranges tagged with a number (a message's index). A marked
// string keeps its marks through concatenation, slicing, trimming, `string` and
// `join`, and where it is output they land in the output's marks, so a caller knows
// which bytes of the text came from which message.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace herd::jinja {

// A template that cannot be read: the construct and its line.
class TemplateError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A template that fails on its input: raise_exception's message, an undefined value
// used, a type error; with the line.
class RenderError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Mark {
  uint32_t begin, end;  // bytes [begin, end)
  int32_t tag;
};

struct Value;
using List = std::vector<Value>;
using Object = std::vector<std::pair<std::string, Value>>;  // in insertion order, as a Python dict
struct Callable;

struct Value {
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Tuple, Dict, Namespace, Callable };
  Kind kind = Kind::Undefined;
  bool boolean = false;
  int64_t integer = 0;
  double number = 0;
  std::string text;                          // String; Undefined: why (the error when it is used)
  std::vector<Mark> marks;                   // String
  std::shared_ptr<const List> list;          // List, Tuple
  std::shared_ptr<Object> object;            // Dict (never changed once made), Namespace (set ns.x changes it)
  std::shared_ptr<const Callable> callable;  // Callable

  static Value none();
  static Value of_bool(bool b);
  static Value of_int(int64_t i);
  static Value of_float(double d);
  static Value of_string(std::string s, std::vector<Mark> marks = {});
  static Value of_list(List items, Kind kind = Kind::List);
  static Value of_dict(Object entries);
  static Value undefined(std::string why);

  bool is_string() const { return kind == Kind::String; }
  bool is_sequence() const { return kind == Kind::List || kind == Kind::Tuple; }
  bool is_number() const { return kind == Kind::Int || kind == Kind::Float || kind == Kind::Bool; }
  const Value* find(std::string_view key) const;  // a Dict's or Namespace's entry
};

// Output text and where the marked bytes landed.
struct Output {
  std::string text;
  std::vector<Mark> marks;
  void append(const std::string& s, const std::vector<Mark>& m);
};

class Template {
 public:
  explicit Template(std::string_view source);  // throws TemplateError
  ~Template();
  Template(Template&&) noexcept;
  // Renders with `variables` (messages, add_generation_prompt, bos_token, ...).
  Output render(const Object& variables) const;  // throws RenderError

  struct Program;

 private:
  std::unique_ptr<Program> program_;
};

}  // namespace herd::jinja
