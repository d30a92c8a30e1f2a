// The template engine's insides, shared by its three files: the syntax tree
// (jinja_parse.cc builds it), Python's value semantics and the builtins
// (jinja_builtins.cc), the renderer (jinja_render.cc).
#pragma once

#include <functional>
#include <map>
#include <optional>

#include "common/jinja.h"

namespace herd::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Arg {
  std::string name;  // empty: positional
  ExprPtr value;
};

struct Expr {
  enum class Kind {
    Literal,
    Name,
    Attr,
    Item,
    Slice,
    Call,
    Filter,
    Test,
    Neg,
    Not,
    And,
    Or,
    Binary,
    Compare,
    Cond,
    List,
    Tuple,
    Dict,
  };
  Kind kind;
  Value literal;               // Literal
  std::string name;            // Name, Attr, Filter, Test; Binary and Compare: the operator
  bool negated = false;        // Test: "is not"
  std::vector<ExprPtr> items;  // the operands, the subject first (Slice: subject, start, stop, step; null: left out)
  std::vector<Arg> args;       // Call, Filter, Test
};

struct Node;
using Body = std::vector<std::unique_ptr<Node>>;

struct Node {
  enum class Kind { Text, Output, If, For, Set, SetBlock, Macro, Break, Continue };
  Kind kind;
  int line = 0;
  std::string text;                                     // Text
  ExprPtr expr;                                         // Output, Set: the value; For: what it iterates
  std::vector<std::pair<ExprPtr, Body>> branches;       // If: each condition and its body
  Body body, else_body;                                 // For, SetBlock, Macro; If and For: else
  std::vector<std::string> targets;                     // For, Set: the names; Macro: its name
  std::string attribute;                                // Set: ns.attribute
  ExprPtr filter;                                       // For ... if
  std::vector<std::pair<std::string, ExprPtr>> params;  // Macro: each parameter and its default (or null)
};

struct Template::Program {
  Body body;
};

Body parse_template(std::string_view source);

// A call's arguments, evaluated.
struct Args {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> named;
  // The argument at `index`, or named `name`, or nullopt.
  std::optional<Value> get(size_t index, std::string_view name) const;
};

class Renderer;

struct Callable {
  std::string name;
  // A builtin: bound to `self` (a method) or not (a global function).
  std::function<Value(const Value& self, const Args&)> builtin;
  Value self;
  const Node* macro = nullptr;  // a macro: rendered by the renderer
};

// Python semantics (jinja_builtins.cc).
bool truthy(const Value& v);
bool equal(const Value& a, const Value& b);
int compare(const Value& a, const Value& b, const std::string& op);  // <0, 0, >0; throws RenderError
std::string str(const Value& v);                                     // Python's str()
std::string repr(const Value& v);                                    // Python's repr()
std::string type_name(const Value& v);
Value as_string(const Value& v);               // str(), keeping a string's marks
Value concat(const Value& a, const Value& b);  // strings, keeping marks
constexpr size_t kMaxString = 64u << 20;        // a longer string is a RenderError
Value arithmetic(const std::string& op, const Value& a, const Value& b);
bool contains(const Value& container, const Value& item);
Value get_item(const Value& v, const Value& key);
Value get_attribute(const Value& v, const std::string& name);
Value substring(const Value& s, size_t begin, size_t end);  // bytes, keeping marks
Value slice(const Value& v, std::optional<int64_t> start, std::optional<int64_t> stop, std::optional<int64_t> step);
std::vector<Value> iterate(const Value& v);  // what a for loop goes through

// The builtins, by name. A filter gets its subject and arguments; `apply` lets a
// filter (map, select) run other filters and tests.
using Filter = std::function<Value(const Value&, const Args&, Renderer&)>;
using Test = std::function<bool(const Value&, const Args&, Renderer&)>;
const std::map<std::string, Filter, std::less<>>& filters();
const std::map<std::string, Test, std::less<>>& tests();
const std::map<std::string, Callable, std::less<>>& global_functions();
bool has_method(std::string_view name);  // a str or dict method herd implements

class Renderer {
 public:
  explicit Renderer(const Object& variables);
  void render(const Body& body, Output& out);
  Value eval(const Expr& e);
  Value call(const Value& callee, const Args& args);
  Value apply_filter(const std::string& name, const Value& subject, const Args& args);
  bool apply_test(const std::string& name, const Value& subject, const Args& args);

 private:
  const Object& variables_;
  std::vector<std::map<std::string, Value, std::less<>>> scopes_;
  int loop_control_ = 0;  // 1: break, 2: continue
  // A template from the hub is untrusted: its work and its macros' recursion are bounded.
  static constexpr uint64_t kMaxSteps = 1'000'000;  // statements and loop iterations
  static constexpr int kMaxMacroDepth = 64;
  uint64_t steps_ = 0;
  int macro_depth_ = 0;
  void step();  // one statement or loop iteration more; throws past kMaxSteps
  void render_node(const Node& n, Output& out);
  void render_for(const Node& n, Output& out);
  void render_if(const Node& n, Output& out);
  void assign(const Node& n, Value v);
  Value lookup(const std::string& name);
  Value eval_operator(const Expr& e);
  Value eval_access(const Expr& e);
  Args eval_args(const std::vector<Arg>& args);
  Value call_macro(const Callable& c, const Args& args);
};

[[noreturn]] void fail(int line, const std::string& what);  // throws RenderError

}  // namespace herd::jinja
