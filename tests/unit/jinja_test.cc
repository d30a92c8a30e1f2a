// The template engine on constructs the real templates use; each expected string is
// what jinja2 3.1 renders with transformers' settings (tests/oracle/test_chat_template.py
// checks whole templates against transformers itself).
#include "common/jinja.h"

#include <gtest/gtest.h>

#include "common/chat_template.h"

namespace herd::jinja {
namespace {

std::string render(const std::string& source, const Object& vars = {}) { return Template(source).render(vars).text; }

TEST(Jinja, WhitespaceControlTrimBlocksAndLstripBlocks) {
  EXPECT_EQ(render("a\n  {% if true %}\n  b\n  {% endif %}\nc\n"), "a\n  b\nc");
  EXPECT_EQ(render("a  {%- if true -%}  b  {%- endif %}  c"), "ab  c");
  EXPECT_EQ(render("{{ 'x' }}\n{# note #}\ny"), "x\ny");
  EXPECT_EQ(render("  {%+ if true %}z{% endif %}"), "  z");
  EXPECT_EQ(render("{{ {'a': {'b': 1}}}}|{% set d = {'k': [1]} %}{{ d.k }}"), "{'a': {'b': 1}}|[1]");
}

TEST(Jinja, PythonValuesPrintAsPythonDoes) {
  EXPECT_EQ(render("{{ [1, 'a', none, true, 1.5, {'k': [2]}] }}|{{ none }}|{{ 1e20 }}|{{ 1.0 }}|{{ 3/2 }}"),
            "[1, 'a', None, True, 1.5, {'k': [2]}]|None|1e+20|1.0|1.5");
  EXPECT_EQ(render("{{ 7 // 2 }}|{{ -7 % 3 }}|{{ \"a'b\" }}|{{ [\"a'b\"] }}|{{ (1, 2) }}"), "3|2|a'b|[\"a'b\"]|(1, 2)");
  EXPECT_EQ(render("{{ {'b': 1, 'a': [true, none]} | tojson }}|{{ {'a': 'é\n'} | tojson(indent=2) }}"),
            "{\"b\": 1, \"a\": [true, null]}|{\n  \"a\": \"é\\n\"\n}");
}

TEST(Jinja, LoopsScopeEachIterationAndNamespacesCarryOut) {
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = x + 1 %}{{ x }}{% endfor %}{{ x }}"),
            "12121");
  EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for i in range(4) if i is odd %}{% set ns.n = ns.n + i %}"
                   "{{ loop.index }}/{{ loop.length }}{% endfor %}={{ ns.n }}"),
            "1/22/2=4");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2} | items %}{{ k }}{{ v }}{% if loop.first %},{% endif %}"
                   "{% else %}none{% endfor %}{% for x in [] %}{% else %}empty{% endfor %}"),
            "a1,b2empty");
  EXPECT_EQ(render("{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{% if i == 1 %}{% continue %}"
                   "{% endif %}{{ i }}{% endfor %}"),
            "02");
}

TEST(Jinja, FiltersTestsMethodsAndMacros) {
  const Object vars = {{"m", Value::of_list({Value::of_dict({{"role", Value::of_string("user")}}),
                                             Value::of_dict({{"role", Value::of_string("assistant")}})})}};
  EXPECT_EQ(render("{{ m | selectattr('role', 'equalto', 'user') | list | length }}"
                   "{{ m | map(attribute='role') | join(',') }}{{ m[-1].role | upper }}{{ m[5] is defined }}",
                   vars),
            "1user,assistantASSISTANTFalse");
  EXPECT_EQ(render("{{ m | map(attribute='99999999999999999999') | list }}", vars),  // found by tests/fuzz
            "[Undefined, Undefined]");
  EXPECT_EQ(render("{{ '  a b  '.strip() }}|{{ 'a,b,,c'.split(',') }}|{{ 'abc'[1:] }}{{ 'abc'[::-1] }}|"
                   "{{ 'Hi'.startswith(('x', 'H')) }}|{{ 'x' ~ 1 ~ none }}"),
            "a b|['a', 'b', '', 'c']|bccba|True|x1None");
  EXPECT_EQ(render("{% macro f(a, b=2) %}[{{ a }}{{ b }}]{% endmacro %}{{ f(1) }}{{ f(1, b=3) }}"), "[12][13]");
  EXPECT_EQ(render("{% set t %}in {{ 'block' }}{% endset %}{{ t | trim }}|{{ undefined_name | default('d') }}"),
            "in block|d");
}

TEST(Jinja, MarksFollowAStringThroughTrimConcatenationSlicesAndJoin) {
  const Object vars = {{"c", Value::of_string("  reply \n", {{0, 9, 7}})}};
  const Output out = Template("<{{ 'x' + c | trim + '|' }}{{ [c[2:4], 'y'] | join('-') }}>").render(vars);
  EXPECT_EQ(out.text, "<xreply|re-y>");
  ASSERT_EQ(out.marks.size(), 2u);
  EXPECT_EQ(out.text.substr(out.marks[0].begin, out.marks[0].end - out.marks[0].begin), "reply");
  EXPECT_EQ(out.text.substr(out.marks[1].begin, out.marks[1].end - out.marks[1].begin), "re");
  EXPECT_EQ(out.marks[0].tag, 7);
  // tojson makes a new string: its bytes are not the content's
  EXPECT_TRUE(Template("{{ c | tojson }}").render(vars).marks.empty());
}

TEST(Jinja, ConstructsHerdCannotRenderAreRefusedByNameWhenRead) {
  auto refusal = [](const std::string& source) {
    try {
      Template t(source);
    } catch (const TemplateError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(refusal("a\n{{ x | from_json }}"), "line 2: the filter 'from_json' is not supported");
  EXPECT_EQ(refusal("{% include 'other.jinja' %}"), "line 1: the tag {% include %} is not supported");
  EXPECT_EQ(refusal("{{ x.append(1) }}"), "line 1: the method .append() is not supported");
  EXPECT_EQ(refusal("{% if x is frobnicated %}{% endif %}"), "line 1: the test 'frobnicated' is not supported");
  EXPECT_EQ(refusal("{% if x %}no end"), "line 1: {% if %} is not closed with {% endif %}");
  EXPECT_EQ(refusal("{{ 'open }}"), "line 1: a tag is not closed with '}}'");
  EXPECT_EQ(refusal("{{ messages[0][] }}"), "line 1: an empty subscript []");  // found by tests/fuzz
  EXPECT_EQ(refusal("{{ '\\U00110000' }}"), "line 1: a string literal escapes U+110000, not a character");
  EXPECT_EQ(refusal("{{ 'caf\xC3' }}"), "invalid UTF-8 at byte 7");  // found by tests/fuzz
}

TEST(Jinja, RenderErrorsNameTheLineAndTheCause) {
  EXPECT_THROW(render("{{ raise_exception('no system role') }}"), RenderError);
  try {
    render("\n\n{{ 1 + 'a' }}");
    FAIL();
  } catch (const RenderError& e) {
    EXPECT_STREQ(e.what(), "line 3: unsupported operand types for +: 'int' and 'str'");
  }
  try {
    render("{{ x.y.z }}", {{"x", Value::of_dict({})}});
    FAIL();
  } catch (const RenderError& e) {
    EXPECT_STREQ(e.what(), "line 1: 'dict object' has no attribute 'y'");
  }
}

TEST(Jinja, AnUntrustedTemplateCannotRecurseLoopOrGrowWithoutBound) {
  auto render_error = [](const std::string& source) {
    try {
      render(source);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("rendered");
  };
  EXPECT_EQ(render_error("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"),
            "line 1: macro 'f': calls nested deeper than 64");
  EXPECT_EQ(render_error("{% for i in range(100000) %}{% for j in range(100) %}{% endfor %}{% endfor %}"),
            "line 1: the template ran more than 1000000 steps");
  EXPECT_EQ(render_error("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
                         "{% endfor %}"),
            "line 1: a string longer than 64 MiB");
  // Found by the fuzzer: a namespace set into itself would be a cycle never freed.
  EXPECT_EQ(render_error("{% set ns = namespace(n=1) %}{% set ns.me = ns %}"),
            "line 1: set ns.me: a namespace cannot hold itself");
  EXPECT_EQ(render_error("{% set ns = namespace(n=1) %}{% set ns.me = [1, {'k': ns}] %}"),
            "line 1: set ns.me: a namespace cannot hold itself");
  EXPECT_EQ(render_error("{{ 'x' * 100000000 }}"), "line 1: a repetition past 64 MiB");
  // Found by tests/fuzz: an indent of 10^14 spaces was one allocation of that size.
  EXPECT_EQ(render_error("{{ [1] | tojson(indent=111111111111111) }}"), "line 1: tojson: an indent past 4096 characters");
  EXPECT_EQ(render_error("{% set ns = namespace(s='x') %}{% for i in range(13) %}{% set ns.s = ns.s ~ ns.s %}"
                         "{% endfor %}{{ [[[[1, 2]]]] | tojson(indent=ns.s) }}"),
            "line 1: tojson: an indent past 4096 characters");
  EXPECT_EQ(render_error("{{ 200000000000 * 200000000000 }}"),  // found by tests/fuzz
            "line 1: 200000000000 * 200000000000 overflows a 64-bit integer");
  EXPECT_EQ(render("{{ 2 ** 62 }}|{{ (-1) ** 7 }}|{{ -7 // 2 }}|{{ 0 ** 0 }}"), "4611686018427387904|-1|-4|1");
  EXPECT_THROW(Template("{{ " + std::string(200, '(') + "1" + std::string(200, ')') + " }}"), TemplateError);
  std::string nested;
  for (int i = 0; i < 100; ++i) nested += "{% if true %}";
  EXPECT_THROW(Template{nested}, TemplateError);
}

TEST(ChatTemplateSpans, EachAssistantContentAsRenderedEvenWhenTrimmedOrRepeatedElsewhere) {
  // The reply "4" also appears in the user's text: the spans come from where the content was output.
  ChatTemplate t(
      "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}{% if m.role == 'assistant' %}"
      "{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
      {{"bos_token", "<s>"}, {"eos_token", "</s>"}}, "test");
  const auto r = t.render({{"user", "is it 4?"}, {"assistant", " 4 "}, {"user", "and?"}, {"assistant", ""}}, true);
  EXPECT_EQ(r.text, "<s><user>is it 4?<assistant>4</s><user>and?<assistant></s><assistant>");
  ASSERT_EQ(r.assistant.size(), 2u);
  EXPECT_EQ(r.text.substr(r.assistant[0].first, r.assistant[0].second - r.assistant[0].first), "4");
  EXPECT_EQ(r.assistant[0].first, 28u);
  EXPECT_EQ(r.assistant[1], (std::pair<uint32_t, uint32_t>{54, 54}));  // empty content: an empty span before </s>
}

TEST(ChatTemplateSpans, AReplyTheTemplateDoesNotRenderAsItIsIsAnError) {
  ChatTemplate t("{% for m in messages %}{{ m.content | tojson }}{% endfor %}", {}, "test");
  EXPECT_THROW(t.render({{"user", "q"}, {"assistant", "a"}}, false), ChatTemplateError);
}

}  // namespace
}  // namespace herd::jinja
