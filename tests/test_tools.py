"""Tools: the safe calculator refuses hostile input, the registry validates arguments, and the agent loop
turns every failure (malformed JSON, unknown tool, bad arguments, a tool that raises, too many calls) into
an error result fed back to the model, never an exception that ends the chat."""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minillm.chat.tools import (
    CalculatorError,
    Tool,
    ToolError,
    ToolRegistry,
    calculate,
    calculator_tool,
    default_registry,
    format_tool_call,
    parse_tool_call,
    run_agent_turn,
    search_tool,
    weather_tool,
)

HOSTILE = [
    "__import__('os')",
    "__import__('os').system('echo hi')",
    "os.system('ls')",
    "(1).__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "x",
    "open('/etc/passwd')",
    "eval('1+1')",
    "exec('x=1')",
    "lambda: 1",
    "(lambda x: x)(1)",
    "[x for x in range(10)]",
    "{x: 1 for x in range(3)}",
    "sum(x for x in range(10**9))",
    "9**9**9",
    "10**100",
    "2**1000000",
    "(-8)**0.5",
    "'a' * 10",
    "[1, 2, 3]",
    "1 if 1 else 2",
    "a := 1",
    "1; 2",
    "sqrt(-1)",
    "1/0",
    "5 % 0",
    "exp(1000)",
    "1e308 * 10",
    "True + 1",
    "1 < 2",
    "round(1.5, n)",
    "sqrt(x=4)",
    "1 +",
    "",
    "(" * 150 + "1" + ")" * 150,
    "1+" * 150 + "1",
    "-" * 199 + "1",
    "9" * 300,
    "1e-15**-64",     # a float power that overflows
    "log(2, 1)",      # log base 1 divides by zero
    "exp(1000)",
    "\ud800",         # a lone surrogate
    "1\x00",
]


@pytest.mark.parametrize("expr", HOSTILE)
def test_calculator_refuses_hostile_input_with_a_message(expr):
    with pytest.raises(CalculatorError) as e:
        calculate(expr)
    assert str(e.value)


@pytest.mark.parametrize("expr,want", [
    ("sqrt(15625)", 125), ("3*(4+5)", 27), ("-2**2", -4), ("7 // 2", 3), ("7 % 4", 3), ("1/4", 0.25),
    ("2**10", 1024), ("max(3, 9, 4)", 9), ("abs(-5)", 5), ("round(2.567, 2)", 2.57), ("floor(2.5)", 2),
    ("pi", math.pi), ("log10(1000)", 3),
    ("round(5, -10**9)", 0),  # ndigits is clamped: CPython would build 10**(10**9) and hang
])
def test_calculator_computes(expr, want):
    assert calculate(expr) == pytest.approx(want)


@given(st.integers(-1000, 1000), st.integers(-1000, 1000), st.sampled_from("+-*"))
def test_calculator_matches_python_on_integer_arithmetic(a, b, op):
    want = {"+": a + b, "-": a - b, "*": a * b}[op]
    assert calculate(f"{a} {op} ({b})") == want


def test_calculator_never_uses_eval_or_exec():
    import inspect

    import minillm.chat.tools as T

    src = inspect.getsource(T)
    assert "eval(" not in src.replace("_eval_node(", "") and "exec(" not in src


def _registry():
    reg = ToolRegistry()
    reg.register(calculator_tool())
    reg.register(weather_tool({"Oakdale": (22, "sunny")}))
    reg.register(search_tool([{"title": "a", "text": "Mia is a baker."},
                              {"title": "b", "text": "Tom farms."}]))

    def boom(x: str):
        raise RuntimeError("disk on fire")

    reg.register(Tool("boom", "always fails", {"type": "object", "properties": {"x": {"type": "string"}},
                                               "required": ["x"]}, boom))
    return reg


def test_registry_schema_and_duplicate_names():
    reg = _registry()
    s = reg.schemas()[1]
    assert s["type"] == "function" and s["function"]["name"] == "get_weather"
    assert s["function"]["parameters"]["properties"]["unit"]["enum"] == ["celsius", "fahrenheit"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register(calculator_tool())


@pytest.mark.parametrize("name,args,msg", [
    ("get_weather", {}, "missing required argument"),
    ("get_weather", {"location": 5}, "must be string"),
    ("get_weather", {"location": "Oakdale", "unit": "kelvin"}, "must be one of"),
    ("get_weather", {"location": "Oakdale", "when": "now"}, "unknown argument"),
    ("get_weather", {"location": "Atlantis"}, "no weather data"),
    ("get_weather", ["Oakdale"], "must be a JSON object"),
    ("calculator", {"expression": "__import__('os')"}, "not allowed"),
    ("calculator", {"expression": True}, "must be string"),
    ("nope", {}, "unknown tool"),
    ("boom", {"x": "y"}, "RuntimeError: disk on fire"),
])
def test_registry_call_reports_errors_instead_of_raising(name, args, msg):
    r = _registry().call(name, args)
    assert not r.ok and msg in r.error
    assert json.loads(r.content) == {"error": r.error}


def test_registry_call_fills_defaults_and_runs():
    reg = _registry()
    r = reg.call("get_weather", {"location": "oakdale"})
    assert r.ok and r.arguments == {"location": "oakdale", "unit": "celsius"}
    assert r.value == {"location": "Oakdale", "temperature": 22, "unit": "celsius", "condition": "sunny"}
    assert reg.call("get_weather", {"location": "Oakdale", "unit": "fahrenheit"}).value["temperature"] == 72
    assert reg.call("web_search", {"query": "who is a baker"}).value == "Mia is a baker."
    assert reg.call("calculator", {"expression": "sqrt(15625)"}).content == '{"result": 125}'


def test_parse_tool_call():
    text = "<|tool_call|>" + format_tool_call("calculator", {"expression": "1+1"})
    assert parse_tool_call(text) == ("calculator", {"expression": "1+1"}, None)
    bad_args = '{"tool_call": {"name": "calculator", "arguments": "{\\"expression\\": "}}'
    name, args, err = parse_tool_call(bad_args)
    assert name == "calculator" and "malformed arguments" in err
    assert "malformed tool call JSON" in parse_tool_call('{"tool_call": {"name": "calc')[2]
    assert "must look like" in parse_tool_call('{"name": 3}')[2]
    assert "no 'name'" in parse_tool_call('{"tool_call": {"arguments": {}}}')[2]


class ScriptedModel:
    """A fake model that replays fixed outputs and records the messages it was shown."""

    def __init__(self, outputs):
        self.outputs, self.seen = list(outputs), []

    def __call__(self, messages):
        self.seen.append(list(messages))
        return self.outputs.pop(0)


CALC = "<|tool_call|>" + format_tool_call("calculator", {"expression": "sqrt(15625)"})
USER = [{"role": "user", "content": "What is sqrt(15625)?"}]


def test_agent_loop_runs_the_tool_and_feeds_the_result_back():
    model = ScriptedModel([CALC, "sqrt(15625) = 125."])
    msgs, trace = run_agent_turn(model, USER, _registry())
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
    assert msgs[1]["tool_calls"][0]["function"]["name"] == "calculator"
    assert msgs[2]["content"] == '{"result": 125}'
    assert model.seen[1][-1]["content"] == '{"result": 125}'  # the model saw the result before answering
    assert msgs[-1]["content"] == "sqrt(15625) = 125." and trace[0].result.ok


@pytest.mark.parametrize("bad,msg", [
    ('<|tool_call|>{"tool_call": {"name": "calculator", "argu', "malformed tool call JSON"),
    ("<|tool_call|>" + format_tool_call("teleport", {"to": "Mars"}), "unknown tool"),
    ("<|tool_call|>" + format_tool_call("get_weather", {"unit": "celsius"}), "missing required"),
    ("<|tool_call|>" + format_tool_call("get_weather", {"location": 3}), "must be string"),
    ("<|tool_call|>" + format_tool_call("boom", {"x": "1"}), "disk on fire"),
    ("<|tool_call|>" + format_tool_call("calculator", {"expression": "9**9**9"}), "too large"),
    ('{"tool_call": {"name": "calculator", "arguments": ' + "[" * 5000 + "]" * 5000 + "}}", "unreadable"),
    ('{"tool_call": {"name": "calculator", "arguments": {"expression": ' + "9" * 4301 + "}}}", "unreadable"),
    ('{"tool_call": {"name": "calculator", "arguments": {"expression": "1+1"}, "x": ' + "[" * 40
     + "]" * 40 + "}}", "nested more than"),
    ('{"tool_call": {"name": "calculator", "arguments": "' + "[" * 40 + "]" * 40 + '"}}', "nested more than"),
    ('{"tool_call": {"name": ["calculator"], "arguments": {}}}', "no 'name' string"),
    ('{"tool_call": {"name": "' + "x" * 5000 + '", "arguments": {}}}', "unknown tool"),
    ('{"tool_call": {"name": "calculator", "arguments": {"expression": "' + "1+" * 12_000 + '1"}}}',
     "too long"),
])
def test_agent_loop_feeds_errors_back_and_the_chat_goes_on(bad, msg):
    model = ScriptedModel([bad, "Sorry, I could not do that."])
    msgs, trace = run_agent_turn(model, USER, _registry())
    err = json.loads(msgs[2]["content"])["error"]
    assert msg in err and msgs[2]["role"] == "tool"
    assert len(err) < 300  # the error goes back into a short context: never the whole hostile input
    assert model.seen[1][-1]["role"] == "tool"  # the model was shown the error
    assert msgs[-1] == {"role": "assistant", "content": "Sorry, I could not do that."}


def test_agent_loop_enforces_max_calls_and_always_terminates():
    model = ScriptedModel([CALC] * 10)
    msgs, trace = run_agent_turn(model, USER, _registry(), max_calls=2)
    results = [s.result for s in trace if s.result is not None]
    assert [r.ok for r in results][:2] == [True, True]
    assert all("too many tool calls" in r.error for r in results[2:])
    assert msgs[-1]["role"] == "assistant" and "stopped" in msgs[-1]["content"]
    assert len(model.seen) == 4  # max_calls + 2 generations at most


def test_default_registry_uses_the_world():
    reg = default_registry()
    assert set(reg.names()) == {"calculator", "get_weather", "web_search"}
    assert reg.call("get_weather", {"location": "Snowfield"}).value["condition"] == "snowy"
    assert "Riverton" in reg.call("web_search", {"query": "live in Riverton"}).value


def test_tool_error_is_a_tool_error():
    assert issubclass(CalculatorError, ToolError)
