// Reading a template: jinja2's lexer rules for text and tags (whitespace control,
// trim_blocks, lstrip_blocks), then a recursive-descent parser with jinja2's
// precedence. Every construct the renderer cannot run is refused here.
#include <cstring>

#include <fmt/format.h>
#include <utf8proc.h>

#include "common/jinja_internal.h"

namespace herd::jinja {

namespace {

[[noreturn]] void refuse(int line, const std::string& what) {
  throw TemplateError(fmt::format("line {}: {}", line, what));
}

bool space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

// One piece of the template: text, or a tag's inside ({{ }} or {% %}).
struct Segment {
  enum class Kind { Text, Var, Block } kind;
  std::string text;
  int line;
};

int line_at(std::string_view s, size_t pos) {
  return 1 + static_cast<int>(std::count(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(pos), '\n'));
}

// Where the tag opened at `from` ends: the closing "}}" / "%}" outside strings and
// brackets (jinja2 ignores an end while a bracket is open).
size_t tag_end(std::string_view s, size_t from, std::string_view close, int line) {
  int depth = 0;
  for (size_t i = from; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '\'' || c == '"') {
      for (++i; i < s.size() && s[i] != c; ++i) {
        if (s[i] == '\\') ++i;
      }
      continue;
    }
    if (c == '(' || c == '[' || c == '{') {
      ++depth;
    } else if (depth > 0 && (c == ')' || c == ']' || c == '}')) {
      --depth;
      continue;
    }
    if (depth == 0 && s.compare(i, close.size(), close) == 0) return i;
  }
  refuse(line, fmt::format("a tag is not closed with '{}'", close));
}

// jinja2's lexer with trim_blocks and lstrip_blocks (what transformers configures),
// newlines read as "\n" and one trailing newline dropped (keep_trailing_newline off).
std::vector<Segment> lex(std::string_view raw) {
  std::string s;
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] == '\r') {
      s += '\n';
      if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
    } else {
      s += raw[i];
    }
  }
  if (!s.empty() && s.back() == '\n') s.pop_back();
  std::vector<Segment> out;
  bool line_starting = true;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t open = s.find('{', pos);
    while (open != std::string::npos && open + 1 < s.size() && !std::strchr("{%#", s[open + 1])) {
      open = s.find('{', open + 1);
    }
    if (open == std::string::npos || open + 1 >= s.size()) {
      if (pos < s.size()) out.push_back({Segment::Kind::Text, s.substr(pos), line_at(s, pos)});
      break;
    }
    const char type = s[open + 1];
    const char sign = open + 2 < s.size() ? s[open + 2] : '\0';
    std::string text = s.substr(pos, open - pos);
    if (sign == '-') {
      while (!text.empty() && space(text.back())) text.pop_back();
    } else if (sign != '+' && type != '{') {  // lstrip_blocks: a tag alone on its line takes the line's indent
      const size_t l = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
      if ((l > 0 || line_starting) && text.find_first_not_of(" \t", l) == std::string::npos) text.resize(l);
    }
    if (!text.empty()) out.push_back({Segment::Kind::Text, text, line_at(s, pos)});
    const int line = line_at(s, open);
    const size_t inner = open + 2 + (sign == '-' || sign == '+' ? 1 : 0);
    const std::string_view close = type == '{' ? "}}" : type == '%' ? "%}" : "#}";
    size_t end = type == '#' ? s.find("#}", inner) : tag_end(s, inner, close, line);
    if (end == std::string::npos) refuse(line, "a comment is not closed with '#}'");
    const char end_sign = end > inner ? s[end - 1] : '\0';
    const size_t content_end = end_sign == '-' || end_sign == '+' ? end - 1 : end;
    if (type != '#') {
      out.push_back(
          {type == '{' ? Segment::Kind::Var : Segment::Kind::Block, s.substr(inner, content_end - inner), line});
    }
    pos = end + 2;
    if (end_sign == '-') {
      while (pos < s.size() && space(s[pos])) ++pos;
    } else if (end_sign != '+' && type != '{' && pos < s.size() && s[pos] == '\n') {
      ++pos;  // trim_blocks
    }
    line_starting = pos > 0 && s[pos - 1] == '\n';
  }
  return out;
}

// One level of nesting while it lives: past 64 the template is refused, so that no
// template can exhaust the stack.
class Nesting {
 public:
  Nesting(int& depth, int line, const char* what) : depth_(depth) {
    if (++depth_ > kMaxDepth) refuse(line, fmt::format("{} nested deeper than {}", what, kMaxDepth));
  }
  ~Nesting() { --depth_; }
  Nesting(const Nesting&) = delete;
  Nesting& operator=(const Nesting&) = delete;

 private:
  static constexpr int kMaxDepth = 64;
  int& depth_;
};

struct Token {
  enum class Kind { Name, Int, Float, String, Op, End } kind;
  std::string text;  // Name, String (decoded), Op
  int64_t integer = 0;
  double number = 0;
};

// A \x, \u, \U or octal escape's code point, as UTF-8; Python refuses what is not one.
void append_code_point(std::string& out, uint32_t cp, int line) {
  const auto c = static_cast<utf8proc_int32_t>(cp);
  if (cp > 0x10FFFF || !utf8proc_codepoint_valid(c)) refuse(line, fmt::format("a string literal escapes U+{:X}, not a character", cp));
  utf8proc_uint8_t buf[4];
  out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(utf8proc_encode_char(c, buf)));
}

// A string literal's value, decoded as Python's unicode-escape decodes it (what
// jinja2's lexer does); `i` is at the opening quote and ends past the closing one.
std::string string_literal(std::string_view s, size_t& i, int line) {
  const char quote = s[i++];
  std::string out;
  for (; i < s.size() && s[i] != quote; ++i) {
    if (s[i] != '\\' || i + 1 >= s.size()) {
      out += s[i];
      continue;
    }
    const char e = s[++i];
    static const std::string_view simple = "ntr\\'\"abfv", to = "\n\t\r\\'\"\a\b\f\v";
    if (const size_t k = simple.find(e); k != std::string_view::npos) {
      out += to[k];
    } else if (e == '\n') {
    } else if (e == 'x' || e == 'u' || e == 'U') {
      const size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
      if (i + n >= s.size() || s.substr(i + 1, n).find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
        refuse(line, fmt::format("a string literal has a bad \\{} escape", e));
      }
      append_code_point(out, static_cast<uint32_t>(std::stoul(std::string(s.substr(i + 1, n)), nullptr, 16)), line);
      i += n;
    } else if (e >= '0' && e <= '7') {
      uint32_t v = 0;
      size_t n = 0;
      for (; n < 3 && i < s.size() && s[i] >= '0' && s[i] <= '7'; ++n, ++i)
        v = v * 8 + static_cast<uint32_t>(s[i] - '0');
      --i;
      append_code_point(out, v, line);
    } else {
      out += '\\';
      out += e;
    }
  }
  if (i >= s.size()) refuse(line, "a string literal is not closed");
  ++i;
  return out;
}

std::vector<Token> tokenize(std::string_view s, int line) {
  std::vector<Token> out;
  static const char* const ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "(",
                                    ")",  "[",  "]",  "{",  "}",  ",",  ":", ".", "|", "=", "<", ">"};
  for (size_t i = 0; i < s.size();) {
    const char c = s[i];
    if (space(c)) {
      ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      out.push_back({Token::Kind::Name, std::string(s.substr(i, j - i))});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      bool real = false;
      if (j + 1 < s.size() && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]))) {
        real = true;
        for (++j; j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '_');) ++j;
      }
      if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {
        size_t k = j + 1;
        if (k < s.size() && (s[k] == '+' || s[k] == '-')) ++k;
        if (k < s.size() && std::isdigit(static_cast<unsigned char>(s[k]))) {
          real = true;
          for (j = k; j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]));) ++j;
        }
      }
      std::string digits;
      for (size_t k = i; k < j; ++k) {
        if (s[k] != '_') digits += s[k];
      }
      Token t{real ? Token::Kind::Float : Token::Kind::Int, digits};
      try {
        if (real)
          t.number = std::stod(digits);
        else
          t.integer = std::stoll(digits);
      } catch (const std::exception&) {
        refuse(line, fmt::format("the number {} is out of range", digits));
      }
      out.push_back(t);
      i = j;
    } else if (c == '\'' || c == '"') {
      out.push_back({Token::Kind::String, string_literal(s, i, line)});
    } else {
      const char* op = nullptr;
      for (const char* o : ops) {
        if (s.compare(i, std::strlen(o), o) == 0) {
          op = o;
          break;
        }
      }
      if (!op) refuse(line, fmt::format("unexpected character '{}'", c));
      out.push_back({Token::Kind::Op, op});
      i += std::strlen(op);
    }
  }
  out.push_back({Token::Kind::End, ""});
  return out;
}

// The expression language over one tag's tokens, with jinja2's precedence:
// if-else < or < and < not < comparisons < + - < ~ < * / // % < ** < unary - < filters, tests, calls, [] and .
class Parser {
 public:
  Parser(std::vector<Token> tokens, int line) : t_(std::move(tokens)), line_(line) {}

  ExprPtr expression() {
    const Nesting nest(depth_, line_, "expressions");
    ExprPtr e = parse_or();
    while (name("if")) {
      auto c = make(Expr::Kind::Cond);
      ExprPtr cond = parse_or();
      c->items.push_back(std::move(e));
      c->items.push_back(std::move(cond));
      if (name("else")) c->items.push_back(expression());
      e = std::move(c);
    }
    return e;
  }
  // A tuple without parentheses ("a, b"), as set and for allow.
  ExprPtr tuple_or_expression() {
    ExprPtr first = expression();
    if (!peek_op(",")) return first;
    auto t = make(Expr::Kind::Tuple);
    t->items.push_back(std::move(first));
    while (op(",")) t->items.push_back(expression());
    return t;
  }
  std::string identifier(const char* what) {
    if (t_[i_].kind != Token::Kind::Name) refuse(line_, fmt::format("expected {}, found '{}'", what, t_[i_].text));
    return t_[i_++].text;
  }
  std::vector<std::string> names() {
    std::vector<std::string> out{identifier("a name")};
    while (op(",")) out.push_back(identifier("a name"));
    return out;
  }
  bool name(const char* n) {
    if (t_[i_].kind == Token::Kind::Name && t_[i_].text == n) return ++i_, true;
    return false;
  }
  bool peek_name(const char* n) const { return t_[i_].kind == Token::Kind::Name && t_[i_].text == n; }
  bool op(const char* o) {
    if (peek_op(o)) return ++i_, true;
    return false;
  }
  bool peek_op(const char* o) const { return t_[i_].kind == Token::Kind::Op && t_[i_].text == o; }
  void expect(const char* o) {
    if (!op(o)) refuse(line_, fmt::format("expected '{}', found '{}'", o, t_[i_].text));
  }
  bool at_end() const { return t_[i_].kind == Token::Kind::End; }
  void end() {
    if (!at_end()) refuse(line_, fmt::format("unexpected '{}'", t_[i_].text));
  }
  std::vector<Arg> call_args() {  // after "("
    std::vector<Arg> args;
    while (!op(")")) {
      if (!args.empty()) expect(",");
      if (op(")")) break;
      Arg a;
      if (t_[i_].kind == Token::Kind::Name && t_[i_ + 1].kind == Token::Kind::Op && t_[i_ + 1].text == "=") {
        a.name = t_[i_].text;
        i_ += 2;
      } else if (peek_op("*") || peek_op("**")) {
        refuse(line_, "*args and **kwargs in a call are not supported");
      }
      a.value = expression();
      args.push_back(std::move(a));
    }
    return args;
  }

 private:
  std::vector<Token> t_;
  size_t i_ = 0;
  int line_;
  int depth_ = 0;

  ExprPtr make(Expr::Kind k) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    return e;
  }
  ExprPtr binary(Expr::Kind k, std::string op, ExprPtr a, ExprPtr b) {
    auto e = make(k);
    e->name = std::move(op);
    e->items.push_back(std::move(a));
    e->items.push_back(std::move(b));
    return e;
  }
  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (name("or")) e = binary(Expr::Kind::Or, "or", std::move(e), parse_and());
    return e;
  }
  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (name("and")) e = binary(Expr::Kind::And, "and", std::move(e), parse_not());
    return e;
  }
  ExprPtr parse_not() {
    if (!name("not")) return parse_compare();
    const Nesting nest(depth_, line_, "expressions");
    auto e = make(Expr::Kind::Not);
    e->items.push_back(parse_not());
    return e;
  }
  ExprPtr parse_compare() {
    ExprPtr e = parse_math1();
    bool compared = false;
    for (;;) {
      const char* c = first_op({"==", "!=", "<=", ">=", "<", ">"});
      std::string o = c ? c : "";
      if (o.empty() && name("in")) o = "in";
      if (o.empty() && peek_name("not") && t_[i_ + 1].kind == Token::Kind::Name && t_[i_ + 1].text == "in") {
        i_ += 2;
        o = "not in";
      }
      if (o.empty()) return e;
      if (compared) refuse(line_, "chained comparisons (a < b < c) are not supported");
      compared = true;
      e = binary(Expr::Kind::Compare, o, std::move(e), parse_math1());
    }
  }
  // The first of `ops` that is next (consumed), or null.
  const char* first_op(std::initializer_list<const char*> ops) {
    for (const char* o : ops) {
      if (op(o)) return o;
    }
    return nullptr;
  }
  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (const char* o = first_op({"+", "-"})) e = binary(Expr::Kind::Binary, o, std::move(e), parse_concat());
    return e;
  }
  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (op("~")) e = binary(Expr::Kind::Binary, "~", std::move(e), parse_math2());
    return e;
  }
  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (const char* o = first_op({"//", "/", "*", "%"})) e = binary(Expr::Kind::Binary, o, std::move(e), parse_pow());
    return e;
  }
  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (op("**")) e = binary(Expr::Kind::Binary, "**", std::move(e), parse_unary(true));
    return e;
  }
  ExprPtr parse_unary(bool with_filter) {
    ExprPtr e;
    const Nesting nest(depth_, line_, "expressions");
    if (op("-")) {
      e = make(Expr::Kind::Neg);
      e->items.push_back(parse_unary(false));
    } else if (op("+")) {
      e = parse_unary(false);
    } else {
      e = postfix(primary());
    }
    if (with_filter) e = filters_and_tests(std::move(e));
    return e;
  }
  // jinja2's rule for a test's one argument without parentheses.
  bool test_argument_follows() const {
    const Token& t = t_[i_];
    if (t.kind == Token::Kind::Name) return t.text != "else" && t.text != "or" && t.text != "and";
    return t.kind == Token::Kind::String || t.kind == Token::Kind::Int || t.kind == Token::Kind::Float ||
           peek_op("[") || peek_op("{");
  }
  ExprPtr primary();
  ExprPtr postfix(ExprPtr e);
  ExprPtr filters_and_tests(ExprPtr e);
  ExprPtr subscript(ExprPtr subject);
  ExprPtr bracketed(const char* close, Expr::Kind kind);
};

ExprPtr Parser::primary() {
  const Token& t = t_[i_];
  auto literal = [this](Value v) {
    auto lit = make(Expr::Kind::Literal);
    lit->literal = std::move(v);
    return lit;
  };
  if (t.kind == Token::Kind::Name) {
    ++i_;
    if (t.text == "true" || t.text == "True") return literal(Value::of_bool(true));
    if (t.text == "false" || t.text == "False") return literal(Value::of_bool(false));
    if (t.text == "none" || t.text == "None") return literal(Value::none());
    auto n = make(Expr::Kind::Name);
    n->name = t.text;
    return n;
  }
  if (t.kind == Token::Kind::String) {
    std::string s;
    while (t_[i_].kind == Token::Kind::String) s += t_[i_++].text;  // adjacent literals join, as in Python
    return literal(Value::of_string(s));
  }
  if (t.kind == Token::Kind::Int || t.kind == Token::Kind::Float) {
    ++i_;
    return literal(t.kind == Token::Kind::Int ? Value::of_int(t.integer) : Value::of_float(t.number));
  }
  if (op("(")) {
    if (op(")")) return make(Expr::Kind::Tuple);
    ExprPtr e = expression();
    if (op(")")) return e;
    auto tuple = make(Expr::Kind::Tuple);
    tuple->items.push_back(std::move(e));
    while (op(",") && !peek_op(")")) tuple->items.push_back(expression());
    expect(")");
    return tuple;
  }
  if (op("[")) return bracketed("]", Expr::Kind::List);
  if (op("{")) return bracketed("}", Expr::Kind::Dict);
  refuse(line_, t.kind == Token::Kind::End ? "an expression is missing" : fmt::format("unexpected '{}'", t.text));
}

ExprPtr Parser::bracketed(const char* close, Expr::Kind kind) {
  auto e = make(kind);
  while (!op(close)) {
    if (!e->items.empty()) expect(",");
    if (op(close)) break;
    e->items.push_back(expression());
    if (kind == Expr::Kind::Dict) {
      expect(":");
      e->items.push_back(expression());
    }
  }
  return e;
}

ExprPtr Parser::subscript(ExprPtr subject) {  // after "["
  ExprPtr parts[3];
  size_t n = 0;
  bool sliced = false;
  for (;;) {
    if (!peek_op(":") && !peek_op("]")) parts[n] = expression();
    if (op("]")) break;
    expect(":");
    sliced = true;
    if (++n > 2) refuse(line_, "a slice has at most three parts");
  }
  if (!sliced) {
    if (!parts[0]) refuse(line_, "an empty subscript []");  // found by tests/fuzz
    auto e = make(Expr::Kind::Item);
    e->items.push_back(std::move(subject));
    e->items.push_back(std::move(parts[0]));
    return e;
  }
  auto e = make(Expr::Kind::Slice);
  e->items.push_back(std::move(subject));
  for (auto& p : parts) e->items.push_back(std::move(p));
  return e;
}

ExprPtr Parser::postfix(ExprPtr e) {
  for (;;) {
    if (op(".")) {
      auto a = make(Expr::Kind::Attr);
      if (t_[i_].kind == Token::Kind::Int) {  // x.0 is x[0]
        auto index = make(Expr::Kind::Literal);
        index->literal = Value::of_int(t_[i_++].integer);
        a->kind = Expr::Kind::Item;
        a->items.push_back(std::move(e));
        a->items.push_back(std::move(index));
      } else {
        a->name = identifier("an attribute");
        a->items.push_back(std::move(e));
        if (peek_op("(") && !has_method(a->name)) {
          refuse(line_, fmt::format("the method .{}() is not supported", a->name));
        }
      }
      e = std::move(a);
    } else if (op("[")) {
      e = subscript(std::move(e));
    } else if (op("(")) {
      auto c = make(Expr::Kind::Call);
      c->items.push_back(std::move(e));
      c->args = call_args();
      e = std::move(c);
    } else {
      return e;
    }
  }
}

ExprPtr Parser::filters_and_tests(ExprPtr e) {
  for (;;) {
    if (op("|")) {
      auto f = make(Expr::Kind::Filter);
      f->name = identifier("a filter");
      if (!filters().count(f->name)) refuse(line_, fmt::format("the filter '{}' is not supported", f->name));
      f->items.push_back(std::move(e));
      if (op("(")) f->args = call_args();
      e = std::move(f);
    } else if (name("is")) {
      auto t = make(Expr::Kind::Test);
      t->negated = name("not");
      t->name = identifier("a test");
      if (!tests().count(t->name)) refuse(line_, fmt::format("the test '{}' is not supported", t->name));
      t->items.push_back(std::move(e));
      if (op("(")) {
        t->args = call_args();
      } else if (test_argument_follows()) {
        Arg a;  // "is divisibleby 3": one argument without parentheses
        a.value = postfix(primary());
        t->args.push_back(std::move(a));
      }
      e = std::move(t);
    } else if (op("(")) {
      auto c = make(Expr::Kind::Call);
      c->items.push_back(std::move(e));
      c->args = call_args();
      e = std::move(c);
    } else {
      return e;
    }
  }
}

// The statements, over the lexed segments.
class StatementParser {
 public:
  explicit StatementParser(std::vector<Segment> segments) : s_(std::move(segments)) {}

  Body parse() {
    std::string end;
    Body body = parse_body({}, end);
    return body;
  }

 private:
  std::vector<Segment> s_;
  size_t i_ = 0;
  int depth_ = 0;

  static std::string keyword(const Segment& s) {
    size_t b = s.text.find_first_not_of(" \t\n\r");
    if (b == std::string::npos) return "";
    size_t e = b;
    while (e < s.text.size() && (std::isalnum(static_cast<unsigned char>(s.text[e])) || s.text[e] == '_')) ++e;
    return s.text.substr(b, e - b);
  }
  Parser tag_parser(const Segment& s) {
    Parser p(tokenize(s.text, s.line), s.line);
    p.identifier("a keyword");
    return p;
  }

  // Statements until one of `ends` (its keyword is returned in `end`, its segment consumed).
  Body parse_body(const std::vector<std::string>& ends, std::string& end);
  std::unique_ptr<Node> statement(const Segment& seg, const std::string& kw);
  std::unique_ptr<Node> parse_if(const Segment& seg);
  std::unique_ptr<Node> parse_for(const Segment& seg);
  std::unique_ptr<Node> parse_set(const Segment& seg);
  std::unique_ptr<Node> parse_macro(const Segment& seg);
};

std::unique_ptr<Node> make_node(Node::Kind k, int line) {
  auto n = std::make_unique<Node>();
  n->kind = k;
  n->line = line;
  return n;
}

Body StatementParser::parse_body(const std::vector<std::string>& ends, std::string& end) {
  const Nesting nest(depth_, i_ < s_.size() ? s_[i_].line : 0, "blocks");
  Body body;
  while (i_ < s_.size()) {
    const Segment& seg = s_[i_++];
    if (seg.kind == Segment::Kind::Text) {
      auto n = make_node(Node::Kind::Text, seg.line);
      n->text = seg.text;
      body.push_back(std::move(n));
      continue;
    }
    if (seg.kind == Segment::Kind::Var) {
      auto n = make_node(Node::Kind::Output, seg.line);
      Parser p(tokenize(seg.text, seg.line), seg.line);
      n->expr = p.tuple_or_expression();
      p.end();
      body.push_back(std::move(n));
      continue;
    }
    const std::string kw = keyword(seg);
    if (std::find(ends.begin(), ends.end(), kw) != ends.end()) {
      end = kw;
      return body;
    }
    if (kw == "generation") {  // transformers' assistant tracker: the body, rendered in place
      tag_parser(seg).end();
      std::string e;
      for (auto& n : parse_body({"endgeneration"}, e)) body.push_back(std::move(n));
      if (e.empty()) refuse(seg.line, "{% generation %} is not closed");
      tag_parser(s_[i_ - 1]).end();
      continue;
    }
    body.push_back(statement(seg, kw));
  }
  if (!ends.empty()) end.clear();
  return body;
}

std::unique_ptr<Node> StatementParser::statement(const Segment& seg, const std::string& kw) {
  if (kw == "if") return parse_if(seg);
  if (kw == "for") return parse_for(seg);
  if (kw == "set") return parse_set(seg);
  if (kw == "macro") return parse_macro(seg);
  if (kw == "break" || kw == "continue") {
    tag_parser(seg).end();
    return make_node(kw == "break" ? Node::Kind::Break : Node::Kind::Continue, seg.line);
  }
  static const char* const closers[] = {"endif", "elif", "else", "endfor", "endset", "endmacro", "endgeneration"};
  for (const char* c : closers) {
    if (kw == c) refuse(seg.line, fmt::format("{{% {} %}} without its opening tag", kw));
  }
  refuse(seg.line, fmt::format("the tag {{% {} %}} is not supported", kw.empty() ? seg.text : kw));
}

std::unique_ptr<Node> StatementParser::parse_if(const Segment& seg) {
  auto n = make_node(Node::Kind::If, seg.line);
  const Segment* cur = &seg;
  for (;;) {
    Parser p = tag_parser(*cur);
    ExprPtr cond = p.expression();
    p.end();
    std::string end;
    Body body = parse_body({"elif", "else", "endif"}, end);
    n->branches.emplace_back(std::move(cond), std::move(body));
    if (end.empty()) refuse(seg.line, "{% if %} is not closed with {% endif %}");
    if (end == "else") {
      tag_parser(s_[i_ - 1]).end();
      n->else_body = parse_body({"endif"}, end);
      if (end.empty()) refuse(seg.line, "{% if %} is not closed with {% endif %}");
    }
    if (end == "endif") {
      tag_parser(s_[i_ - 1]).end();
      return n;
    }
    cur = &s_[i_ - 1];
  }
}

std::unique_ptr<Node> StatementParser::parse_for(const Segment& seg) {
  auto n = make_node(Node::Kind::For, seg.line);
  Parser p = tag_parser(seg);
  n->targets = p.names();
  if (!p.name("in")) refuse(seg.line, "expected 'in' in {% for %}");
  n->expr = p.expression();  // "for x in xs if cond": the condition is the for's filter
  if (n->expr->kind == Expr::Kind::Cond && n->expr->items.size() == 2) {
    n->filter = std::move(n->expr->items[1]);
    n->expr = std::move(n->expr->items[0]);
  }
  if (p.name("recursive")) refuse(seg.line, "recursive loops are not supported");
  p.end();
  std::string end;
  n->body = parse_body({"else", "endfor"}, end);
  if (end.empty()) refuse(seg.line, "{% for %} is not closed with {% endfor %}");
  tag_parser(s_[i_ - 1]).end();
  if (end == "else") {
    n->else_body = parse_body({"endfor"}, end);
    if (end.empty()) refuse(seg.line, "{% for %} is not closed with {% endfor %}");
    tag_parser(s_[i_ - 1]).end();
  }
  return n;
}

std::unique_ptr<Node> StatementParser::parse_set(const Segment& seg) {
  Parser p = tag_parser(seg);
  auto n = make_node(Node::Kind::Set, seg.line);
  n->targets = {p.identifier("a name")};
  if (p.op(".")) {
    n->attribute = p.identifier("an attribute");
  } else {
    while (p.op(",")) n->targets.push_back(p.identifier("a name"));
  }
  if (p.at_end()) {  // {% set x %}...{% endset %}
    if (n->targets.size() != 1 || !n->attribute.empty()) refuse(seg.line, "a block set names one variable");
    n->kind = Node::Kind::SetBlock;
    std::string end;
    n->body = parse_body({"endset"}, end);
    if (end.empty()) refuse(seg.line, "{% set %} is not closed with {% endset %}");
    tag_parser(s_[i_ - 1]).end();
    return n;
  }
  if (p.op("|")) refuse(seg.line, "a filtered block set is not supported");
  p.expect("=");
  n->expr = p.tuple_or_expression();
  p.end();
  return n;
}

std::unique_ptr<Node> StatementParser::parse_macro(const Segment& seg) {
  Parser p = tag_parser(seg);
  auto n = make_node(Node::Kind::Macro, seg.line);
  n->targets = {p.identifier("the macro's name")};
  p.expect("(");
  while (!p.op(")")) {
    if (!n->params.empty()) p.expect(",");
    std::string name = p.identifier("a parameter");
    ExprPtr def;
    if (p.op("=")) def = p.expression();
    n->params.emplace_back(std::move(name), std::move(def));
  }
  p.end();
  std::string end;
  n->body = parse_body({"endmacro"}, end);
  if (end.empty()) refuse(seg.line, "{% macro %} is not closed with {% endmacro %}");
  tag_parser(s_[i_ - 1]).end();
  return n;
}

}  // namespace

Body parse_template(std::string_view source) { return StatementParser(lex(source)).parse(); }

}  // namespace herd::jinja
