// Rendering: statements in order with jinja2's scoping (a for loop's body gets a
// fresh scope each iteration; if and set do not make one; a macro sees the
// template's top-level names and its parameters), expressions with Python's
// semantics (jinja_values.cc) and the builtins (jinja_builtins.cc, jinja_filters.cc).
#include <fmt/format.h>

#include "common/jinja_internal.h"
#include "common/text.h"

namespace herd::jinja {

Template::Template(std::string_view source) : program_(std::make_unique<Program>()) {
  // Strings are walked by code point: the text must be UTF-8 (found by tests/fuzz).
  if (const size_t bad = invalid_utf8(source); bad != std::string_view::npos) {
    throw TemplateError(fmt::format("invalid UTF-8 at byte {}", bad));
  }
  program_->body = parse_template(source);
}
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;

Output Template::render(const Object& variables) const {
  Renderer r(variables);
  Output out;
  r.render(program_->body, out);
  return out;
}

Renderer::Renderer(const Object& variables) : variables_(variables), scopes_(1) {}

void Renderer::render(const Body& body, Output& out) {
  for (const auto& n : body) {
    render_node(*n, out);
    if (loop_control_ != 0) return;
  }
}

void Renderer::render_node(const Node& n, Output& out) {
  try {
    step();
    switch (n.kind) {
      case Node::Kind::Text:
        out.text += n.text;
        break;
      case Node::Kind::Output: {
        const Value v = as_string(eval(*n.expr));
        out.append(v.text, v.marks);
        break;
      }
      case Node::Kind::If:
        render_if(n, out);
        break;
      case Node::Kind::For:
        render_for(n, out);
        break;
      case Node::Kind::Set:
        assign(n, eval(*n.expr));
        break;
      case Node::Kind::SetBlock: {
        Output inner;
        render(n.body, inner);
        assign(n, Value::of_string(inner.text, inner.marks));
        break;
      }
      case Node::Kind::Macro: {
        auto c = std::make_shared<Callable>();
        c->name = n.targets[0];
        c->macro = &n;
        Value v;
        v.kind = Value::Kind::Callable;
        v.callable = std::move(c);
        scopes_.back()[n.targets[0]] = v;
        break;
      }
      case Node::Kind::Break:
        loop_control_ = 1;
        break;
      case Node::Kind::Continue:
        loop_control_ = 2;
        break;
    }
  } catch (const RenderError& e) {
    if (std::string_view(e.what()).substr(0, 5) == "line ") throw;
    fail(n.line, e.what());
  }
}

void Renderer::step() {
  if (++steps_ > kMaxSteps) throw RenderError(fmt::format("the template ran more than {} steps", kMaxSteps));
}

void Renderer::render_if(const Node& n, Output& out) {
  for (const auto& [cond, body] : n.branches) {
    if (truthy(eval(*cond))) return render(body, out);
  }
  render(n.else_body, out);
}

namespace {
// `item` spread over `names` ("for k, v in ...", "set a, b = ...").
std::vector<Value> unpack(const Value& item, size_t names) {
  if (names == 1) return {item};
  auto parts = iterate(item);
  if (parts.size() != names) {
    throw RenderError(fmt::format("cannot unpack {} values into {} names", parts.size(), names));
  }
  return parts;
}
}  // namespace

void Renderer::render_for(const Node& n, Output& out) {
  std::vector<Value> items;
  for (Value& item : iterate(eval(*n.expr))) {
    if (n.filter) {
      scopes_.emplace_back();
      const auto parts = unpack(item, n.targets.size());
      for (size_t k = 0; k < parts.size(); ++k) scopes_.back()[n.targets[k]] = parts[k];
      const bool keep = truthy(eval(*n.filter));
      scopes_.pop_back();
      if (!keep) continue;
    }
    items.push_back(std::move(item));
  }
  if (items.empty()) return render(n.else_body, out);
  const auto count = static_cast<int64_t>(items.size());
  for (int64_t i = 0; i < count; ++i) {
    step();
    scopes_.emplace_back();
    auto& scope = scopes_.back();
    const auto parts = unpack(items[static_cast<size_t>(i)], n.targets.size());
    for (size_t k = 0; k < parts.size(); ++k) scope[n.targets[k]] = parts[k];
    Object loop = {{"index", Value::of_int(i + 1)},
                   {"index0", Value::of_int(i)},
                   {"revindex", Value::of_int(count - i)},
                   {"revindex0", Value::of_int(count - i - 1)},
                   {"first", Value::of_bool(i == 0)},
                   {"last", Value::of_bool(i == count - 1)},
                   {"length", Value::of_int(count)},
                   {"depth", Value::of_int(1)},
                   {"depth0", Value::of_int(0)}};
    if (i > 0) loop.emplace_back("previtem", items[static_cast<size_t>(i - 1)]);
    if (i + 1 < count) loop.emplace_back("nextitem", items[static_cast<size_t>(i + 1)]);
    scope["loop"] = Value::of_dict(std::move(loop));
    render(n.body, out);
    scopes_.pop_back();
    const int control = loop_control_;
    loop_control_ = 0;
    if (control == 1) break;
  }
}

namespace {

// Whether v holds `object`, itself or inside a list or dict: a namespace set into itself would
// never be freed (values share their parts).
bool holds(const Value& v, const void* object) {
  if (v.object.get() == object) return true;
  if (v.object) {
    for (const auto& kv : *v.object) {
      if (holds(kv.second, object)) return true;
    }
  }
  if (v.list) {
    for (const auto& x : *v.list) {
      if (holds(x, object)) return true;
    }
  }
  return false;
}

}  // namespace

void Renderer::assign(const Node& n, Value v) {
  if (!n.attribute.empty()) {
    Value ns = lookup(n.targets[0]);
    if (ns.kind != Value::Kind::Namespace) {
      throw RenderError(fmt::format("set {}.{}: {} is not a namespace", n.targets[0], n.attribute, n.targets[0]));
    }
    if (holds(v, ns.object.get())) {
      throw RenderError(fmt::format("set {}.{}: a namespace cannot hold itself", n.targets[0], n.attribute));
    }
    for (auto& [k, x] : *ns.object) {
      if (k == n.attribute) return void(x = std::move(v));
    }
    ns.object->emplace_back(n.attribute, std::move(v));
    return;
  }
  const auto parts = unpack(v, n.targets.size());
  for (size_t k = 0; k < parts.size(); ++k) scopes_.back()[n.targets[k]] = parts[k];
}

Value Renderer::lookup(const std::string& name) {
  for (auto s = scopes_.rbegin(); s != scopes_.rend(); ++s) {
    if (auto it = s->find(name); it != s->end()) return it->second;
  }
  for (const auto& [k, v] : variables_) {
    if (k == name) return v;
  }
  const auto& g = global_functions();
  if (auto it = g.find(name); it != g.end()) {
    Value v;
    v.kind = Value::Kind::Callable;
    v.callable = std::make_shared<Callable>(it->second);
    return v;
  }
  return Value::undefined(fmt::format("'{}' is undefined", name));
}

Args Renderer::eval_args(const std::vector<Arg>& args) {
  Args out;
  for (const auto& a : args) {
    if (a.name.empty()) {
      if (!out.named.empty()) throw RenderError("a positional argument follows a keyword argument");
      out.positional.push_back(eval(*a.value));
    } else {
      out.named.emplace_back(a.name, eval(*a.value));
    }
  }
  return out;
}

Value Renderer::call(const Value& callee, const Args& args) {
  if (callee.kind == Value::Kind::Undefined) throw RenderError(callee.text);
  if (callee.kind != Value::Kind::Callable) {
    throw RenderError(fmt::format("'{}' object is not callable", type_name(callee)));
  }
  if (callee.callable->macro) return call_macro(*callee.callable, args);
  return callee.callable->builtin(callee.callable->self, args);
}

Value Renderer::call_macro(const Callable& c, const Args& args) {
  const Node& m = *c.macro;
  if (macro_depth_ >= kMaxMacroDepth) {
    throw RenderError(fmt::format("macro '{}': calls nested deeper than {}", c.name, kMaxMacroDepth));
  }
  if (args.positional.size() > m.params.size()) {
    throw RenderError(
        fmt::format("macro '{}' takes {} arguments, given {}", c.name, m.params.size(), args.positional.size()));
  }
  std::map<std::string, Value, std::less<>> bound;
  for (const auto& arg : args.named) {
    if (std::none_of(m.params.begin(), m.params.end(), [&](const auto& p) { return p.first == arg.first; })) {
      throw RenderError(fmt::format("macro '{}' has no parameter '{}'", c.name, arg.first));
    }
    bound[arg.first] = arg.second;
  }
  ++macro_depth_;  // a throw ends the render: nothing to restore
  // The macro sees the template's top level and its parameters, not the caller's loops.
  std::vector<std::map<std::string, Value, std::less<>>> saved(scopes_.begin() + 1, scopes_.end());
  scopes_.resize(1);
  scopes_.emplace_back();
  for (size_t i = 0; i < m.params.size(); ++i) {
    const auto& [name, def] = m.params[i];
    if (i < args.positional.size()) {
      scopes_.back()[name] = args.positional[i];
    } else if (auto it = bound.find(name); it != bound.end()) {
      scopes_.back()[name] = it->second;
    } else {
      scopes_.back()[name] = def ? eval(*def) : Value::undefined(fmt::format("'{}' is undefined", name));
    }
  }
  Output out;
  render(m.body, out);
  --macro_depth_;
  loop_control_ = 0;
  scopes_.resize(1);
  scopes_.insert(scopes_.end(), saved.begin(), saved.end());
  return Value::of_string(out.text, out.marks);
}

Value Renderer::apply_filter(const std::string& name, const Value& subject, const Args& args) {
  const auto& f = filters();
  const auto it = f.find(name);
  if (it == f.end()) throw RenderError(fmt::format("the filter '{}' is not supported", name));
  return it->second(subject, args, *this);
}

bool Renderer::apply_test(const std::string& name, const Value& subject, const Args& args) {
  const auto& t = tests();
  const auto it = t.find(name);
  if (it == t.end()) throw RenderError(fmt::format("the test '{}' is not supported", name));
  return it->second(subject, args, *this);
}

namespace {
std::optional<int64_t> slice_bound(const Value& v) {
  if (v.kind == Value::Kind::None || v.kind == Value::Kind::Undefined) return std::nullopt;
  if (v.kind != Value::Kind::Int) throw RenderError("slice indices must be integers or None");
  return v.integer;
}
}  // namespace

Value Renderer::eval_access(const Expr& e) {
  const Value subject = eval(*e.items[0]);
  switch (e.kind) {
    case Expr::Kind::Attr:
      return get_attribute(subject, e.name);
    case Expr::Kind::Item:
      return get_item(subject, eval(*e.items[1]));
    case Expr::Kind::Slice: {
      std::optional<int64_t> b[3];
      for (size_t i = 0; i < 3; ++i) {
        if (e.items[i + 1]) b[i] = slice_bound(eval(*e.items[i + 1]));
      }
      return slice(subject, b[0], b[1], b[2]);
    }
    case Expr::Kind::Call:
      return call(subject, eval_args(e.args));
    case Expr::Kind::Filter:
      return apply_filter(e.name, subject, eval_args(e.args));
    default:
      return Value::of_bool(apply_test(e.name, subject, eval_args(e.args)) != e.negated);
  }
}

Value Renderer::eval_operator(const Expr& e) {
  const Value a = eval(*e.items[0]);
  switch (e.kind) {
    case Expr::Kind::Neg:
      if (!a.is_number()) throw RenderError(fmt::format("bad operand type for unary -: '{}'", type_name(a)));
      if (a.kind == Value::Kind::Float) return Value::of_float(-a.number);
      return arithmetic("-", Value::of_int(0), a);  // as 0 - a: an overflow is an error
    case Expr::Kind::Not:
      return Value::of_bool(!truthy(a));
    case Expr::Kind::And:
      return truthy(a) ? eval(*e.items[1]) : a;
    case Expr::Kind::Or:
      return truthy(a) ? a : eval(*e.items[1]);
    case Expr::Kind::Binary:
      return arithmetic(e.name, a, eval(*e.items[1]));
    default:
      break;
  }
  const Value b = eval(*e.items[1]);  // Compare
  if (e.name == "==") return Value::of_bool(equal(a, b));
  if (e.name == "!=") return Value::of_bool(!equal(a, b));
  if (e.name == "in") return Value::of_bool(contains(b, a));
  if (e.name == "not in") return Value::of_bool(!contains(b, a));
  const int c = compare(a, b, e.name);
  const std::string& o = e.name;
  return Value::of_bool(o == "<" ? c < 0 : o == "<=" ? c <= 0 : o == ">" ? c > 0 : c >= 0);
}

Value Renderer::eval(const Expr& e) {
  switch (e.kind) {
    case Expr::Kind::Literal:
      return e.literal;
    case Expr::Kind::Name:
      return lookup(e.name);
    case Expr::Kind::Cond:
      if (truthy(eval(*e.items[1]))) return eval(*e.items[0]);
      return e.items.size() > 2 ? eval(*e.items[2]) : Value::undefined("the conditional expression has no else");
    case Expr::Kind::List:
    case Expr::Kind::Tuple: {
      List items;
      for (const auto& x : e.items) items.push_back(eval(*x));
      return Value::of_list(std::move(items), e.kind == Expr::Kind::List ? Value::Kind::List : Value::Kind::Tuple);
    }
    case Expr::Kind::Dict: {
      Object entries;
      for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
        const Value k = eval(*e.items[i]);
        if (!k.is_string()) throw RenderError("dict keys must be strings");
        entries.emplace_back(k.text, eval(*e.items[i + 1]));
      }
      return Value::of_dict(std::move(entries));
    }
    case Expr::Kind::Attr:
    case Expr::Kind::Item:
    case Expr::Kind::Slice:
    case Expr::Kind::Call:
    case Expr::Kind::Filter:
    case Expr::Kind::Test:
      return eval_access(e);
    default:
      return eval_operator(e);
  }
}

}  // namespace herd::jinja
