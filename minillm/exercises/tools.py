"""Lesson 10: parsing a tool call robustly and one step of the agent loop."""

from __future__ import annotations

import json
from typing import Any

from minillm.chat.tools import (
    MAX_CALL_DEPTH,
    TOOL_CALL_TOKEN,
    ToolResult,
    default_registry,
    format_tool_call,
    is_tool_call,
    json_depth,
    parse_tool_call,
)
from minillm.exercises.checking import Case, Exercise, _describe, same_values, seeded


# ------------------------------------------------------------------------------------------ parsing
def _parse(text: str, strip_token: bool = True, decode_strings: bool = True, report_malformed: bool = True,
           depth_limit: bool = True, missing_as_none: bool = False) -> tuple[str | None, Any, str | None]:
    """The parser with one safeguard switched off at a time (the usual wrong versions); never raises."""
    body = text.strip()
    if strip_token and body.startswith(TOOL_CALL_TOKEN):
        body = body[len(TOOL_CALL_TOKEN):].strip()
    try:
        obj = json.loads(body)
    except ValueError:
        return (None, None, "malformed") if report_malformed else (None, {}, None)
    if depth_limit and json_depth(obj) > MAX_CALL_DEPTH:
        return None, None, "too deep"
    if not isinstance(obj, dict) or not isinstance(obj.get("tool_call"), dict):
        return None, None, "not a tool call"
    call = obj["tool_call"]
    if not isinstance(call.get("name"), str):
        return None, None, "no name"
    args = call.get("arguments", None if missing_as_none else {})
    if decode_strings and isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return (call["name"], None, "bad arguments") if report_malformed else (call["name"], {}, None)
        if depth_limit and json_depth(args) > MAX_CALL_DEPTH:
            return call["name"], None, "too deep"
    return call["name"], args, None


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return value


def _parse_cases():
    calc = format_tool_call("calculator", {"expression": "sqrt(15625)"})
    yield Case((calc,), label="a valid call")
    yield Case((TOOL_CALL_TOKEN + calc,), label="after the <|tool_call|> token")
    yield Case((f"  {TOOL_CALL_TOKEN} {calc}\n",), label="token and whitespace around")
    yield Case((json.dumps({"tool_call": {"name": "get_weather",
                                          "arguments": json.dumps({"location": "Riverton"})}}),),
               label="arguments as a JSON string (OpenAI style)")
    yield Case((json.dumps({"tool_call": {"name": "web_search"}}),), label="no arguments key")
    yield Case((TOOL_CALL_TOKEN + '{"tool_call": {"name": "calculator", "argu',), label="malformed JSON")
    yield Case(("",), label="an empty output")
    yield Case((json.dumps({"tool_call": {"arguments": {"expression": "1+1"}}}),), label="missing name")
    yield Case((json.dumps({"tool_call": {"name": 42, "arguments": {}}}),), label="name is not a string")
    yield Case(("[1, 2, 3]",), label="JSON, but not an object")
    yield Case((json.dumps({"tool_call": "calculator"}),), label="tool_call is not an object")
    yield Case((json.dumps({"tool_call": {"name": "calculator", "arguments": '{"expression": "1+'}}),),
               label="malformed arguments string")
    yield Case((json.dumps({"tool_call": {"name": "calculator", "arguments": {"x": _nested(20)}}}),),
               label="arguments nested 20 levels deep")
    deep = json.dumps({"x": _nested(20)})
    yield Case((json.dumps({"tool_call": {"name": "calculator", "arguments": deep}}),),
               label="an arguments string nested 20 levels deep")
    yield Case((TOOL_CALL_TOKEN + json.dumps({"tool_call": {"name": "web_search",
                                                            "arguments": {"query": "Zoë's café ☕"}}},
                                             ensure_ascii=False),), label="unicode arguments")
    rng = seeded(1001)
    for _ in range(4):
        a, b = (int(x) for x in rng.integers(0, 999, size=2))
        text = format_tool_call("calculator", {"expression": f"{a} * {b}"})
        yield Case(((TOOL_CALL_TOKEN if rng.random() < 0.5 else "") + text,), label="a drawn call")


def _same_call(got, want) -> str | None:
    """(name, arguments, error): names and arguments equal; error None where minillm's is None, else any
    non-empty message (the wording is the learner's)."""
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return f"expected a tuple (name, arguments, error), got {_describe(got)}"
    name, args, err = got
    want_name, want_args, want_err = want
    if want_err is None and err is not None:
        return f"expected error None (this call parses), got error {err!r}"
    if want_err is not None and not (isinstance(err, str) and err):
        return f"expected an error message (this call must be refused), got error {err!r}"
    why = same_values(name, want_name)
    if why:
        return f"the name: {why}"
    why = same_values(args, want_args)
    return f"the arguments: {why}" if why else None


PARSE = Exercise(
    name="10.parse_tool_call", lesson=10,
    task="Write parse_tool_call(text) for what the model writes: optionally the <|tool_call|> token, then "
         "JSON {\"tool_call\": {\"name\": ..., \"arguments\": {...}}}, with whitespace anywhere around. "
         "Return (name, arguments, error), and never raise: everything the model writes is untrusted. On "
         "success error is None; a missing arguments key means {}, and arguments given as a JSON string "
         "(OpenAI's way) are decoded. Otherwise return an error message: (None, None, message) for broken "
         "JSON, anything but an object with a 'tool_call' object, a name that is not a string, or JSON "
         "nested more than 16 levels deep (json_depth measures it); (name, None, message) when only the "
         "arguments string is broken or too deep.",
    signature="def parse_tool_call(text: str) -> tuple[str | None, Any, str | None]",
    reference=parse_tool_call,
    cases=_parse_cases,
    compare=_same_call,
    mistakes={
        "token kept": (lambda text: _parse(text, strip_token=False),
                       "a call usually starts with the <|tool_call|> token, which is not JSON: remove it "
                       "(and the whitespace around it) first."),
        "string arguments not decoded": (lambda text: _parse(text, decode_strings=False),
                                         "arguments may arrive as a JSON string ('{\"location\": ...}'): "
                                         "decode that string too."),
        "silent on malformed JSON": (lambda text: _parse(text, report_malformed=False),
                                     "broken JSON must come back with an error message (not None), so the "
                                     "loop can show the model what went wrong."),
        "no depth limit": (lambda text: _parse(text, depth_limit=False),
                           "deeply nested JSON is refused before anything walks it: check the depth of "
                           "the decoded call (and of decoded string arguments)."),
        "no arguments is None": (lambda text: _parse(text, missing_as_none=True),
                                 "a call without 'arguments' has no arguments, which is {}: a tool whose "
                                 "parameters all have defaults can still run."),
    },
)


# ------------------------------------------------------------------------------------------ agent step
def _step(output: str, registry, call_id: str = "call_0", record_call: bool = True,
          malformed_is_answer: bool = False, args_as_dict: bool = False, bare_result: bool = False
          ) -> list[dict]:
    """One step of minillm.chat.tools.run_agent_turn, with one part done wrong at a time."""
    if not is_tool_call(output):
        return [{"role": "assistant", "content": output.strip()}]
    name, args, err = parse_tool_call(output)
    if err is not None:
        if malformed_is_answer:
            return [{"role": "assistant", "content": output.strip()}]
        result = ToolResult(name, None, False, error=err)
        said = {"role": "assistant", "content": None, "raw_tool_call": output.strip()}
    else:
        result = registry.call(name, args)
        said = {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": name, "arguments": args if args_as_dict else json.dumps(args)}}]}
    content = str(result.value if result.ok else result.error) if bare_result else result.content
    tool = {"role": "tool", "tool_call_id": call_id, "name": name, "content": content}
    return [said, tool] if record_call else [tool]


def agent_step_reference(output: str, registry, call_id: str = "call_0") -> list[dict]:
    """The messages to append for one model output (what run_agent_turn appends)."""
    return _step(output, registry, call_id)


def _agent_cases():
    registry = default_registry()
    call = lambda name, args: TOOL_CALL_TOKEN + format_tool_call(name, args)
    yield Case(("  The weather in Riverton is sunny.\n", registry), label="a final answer")
    yield Case((call("calculator", {"expression": "sqrt(15625)"}), registry), label="a calculator call")
    yield Case((call("get_weather", {"location": "Riverton", "unit": "fahrenheit"}), registry, "call_2"),
               label="a weather call, the third of the turn")
    yield Case((call("web_search", {"query": "What is Zoe's job?"}), registry), label="a search")
    yield Case((call("teleport", {}), registry), label="an unknown tool")
    yield Case((call("calculator", {}), registry), label="a missing argument")
    yield Case((call("calculator", {"expression": "1/0"}), registry), label="the tool fails")
    yield Case((TOOL_CALL_TOKEN + '{"tool_call": {"name": "calculator", "argu', registry),
               label="malformed JSON")
    broken = json.dumps({"tool_call": {"name": "calculator", "arguments": '{"expression": "2+'}})
    yield Case((broken, registry, "call_1"), label="a malformed arguments string, no token")
    yield Case(("Zoë est médecin ☕.", registry), label="a unicode answer")
    yield Case(("", registry), label="an empty answer")
    rng = seeded(1002)
    for i in range(3):
        a, b = (int(x) for x in rng.integers(2, 99, size=2))
        yield Case((call("calculator", {"expression": f"{a} * {b}"}), registry, f"call_{i}"),
                   label="a drawn call")


def _plain_messages(messages: Any) -> Any:
    """Messages with what may be worded differently made comparable: a call's JSON-string arguments decoded,
    a tool result's JSON decoded and any error message replaced by a marker."""
    if not isinstance(messages, list):
        return messages
    out = []
    for m in messages:
        if not isinstance(m, dict):
            out.append(m)
            continue
        m = dict(m)
        if m.get("role") == "tool" and isinstance(m.get("content"), str):
            try:
                content = json.loads(m["content"])
            except ValueError:
                content = None
            if isinstance(content, dict) and isinstance(content.get("error"), str) and content["error"]:
                content = {"error": "(an error message)"}
            m["content"] = ("JSON", content) if content is not None else ("text", m["content"])
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            m["tool_calls"] = [_plain_call(c) for c in calls]
        out.append(m)
    return out


def _plain_call(call: Any) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    fn = dict(call["function"])
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            fn["arguments"] = ("JSON string", json.loads(args))
        except ValueError:
            fn["arguments"] = ("text", args)
    else:
        fn["arguments"] = ("not a JSON string", args)
    return {**call, "function": fn}


def _same_messages(got, want) -> str | None:
    return same_values(_plain_messages(got), _plain_messages(want))


AGENT_STEP = Exercise(
    name="10.agent_step", lesson=10,
    task="Write agent_step(output, registry, call_id='call_0'): the messages the agent loop appends for "
         "one model output. An output that is not a tool call (is_tool_call) is the final answer: one "
         "assistant message with the stripped text. A call that parses is run with registry.call(name, "
         "arguments), and two messages follow: the assistant's {'content': None, 'tool_calls': [{'id': "
         "call_id, 'type': 'function', 'function': {'name': name, 'arguments': the arguments as a JSON "
         "string}}]} and the tool's {'role': 'tool', 'tool_call_id': call_id, 'name': name, 'content': "
         "the result's JSON (ToolResult.content)}. A call that does not parse is answered too: the "
         "assistant message keeps what the model wrote ({'content': None, 'raw_tool_call': the stripped "
         "output}) and the tool message carries ToolResult(name, None, False, error=...).content.",
    signature="def agent_step(output: str, registry: ToolRegistry, call_id: str = 'call_0') -> list[dict]",
    reference=agent_step_reference,
    cases=_agent_cases,
    compare=_same_messages,
    mistakes={
        "the call not recorded": (lambda *a: _step(*a, record_call=False),
                                  "append what the assistant asked for before the tool's result: the next "
                                  "prompt must show the call that the result answers."),
        "a malformed call taken as the answer": (lambda *a: _step(*a, malformed_is_answer=True),
                                                 "a call that does not parse is still a call: keep it "
                                                 "(raw_tool_call) and answer it with an error, so the "
                                                 "model sees its mistake and the turn goes on."),
        "arguments as a dict": (lambda *a: _step(*a, args_as_dict=True),
                                "in OpenAI-style messages a call's arguments are a JSON string "
                                "(json.dumps), not a dict."),
        "the bare result": (lambda *a: _step(*a, bare_result=True),
                            "the tool message's content is JSON, {\"result\": ...} or {\"error\": ...} "
                            "(ToolResult.content), so the model reads results and errors the same way."),
    },
)

EXERCISES = [PARSE, AGENT_STEP]
