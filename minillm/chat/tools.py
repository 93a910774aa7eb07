"""Tool (function) calling: a registry of tools with JSON-schema signatures, a safe calculator, and the
agent loop that pauses generation on a tool call, runs the tool and feeds its result back.

The model writes a call as JSON, ``{"tool_call": {"name": "calculator", "arguments": {"expression":
"sqrt(15625)"}}}`` (after the ``<|tool_call|>`` token, see ``minillm.chat.template``). Everything the model
writes is untrusted: malformed JSON, an unknown tool, a missing or ill-typed argument and an exception
inside a tool all become an ``{"error": ...}`` result that goes back to the model as a tool turn, never an
exception that ends the chat. The calculator walks a parsed AST with an allow-list of node types; nothing
the model writes ever reaches ``eval``/``exec``.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_TOKEN = "<|tool_call|>"
MAX_CALL_CHARS = 20_000  # a tool call the model writes fits its context many times over
MAX_CALL_DEPTH = 16      # arguments nested deeper are refused before anything walks them


class ToolError(Exception):
    """Raised by a tool (or by argument validation) with a message that is shown to the model."""


# ----------------------------------------------------------------------------------------------------
# The safe calculator
# ----------------------------------------------------------------------------------------------------

class CalculatorError(ToolError):
    """The expression is not allowed or cannot be evaluated (the message says why)."""


MAX_EXPRESSION_CHARS = 200
MAX_NODES = 100
MAX_MAGNITUDE = 1e15
MAX_EXPONENT = 64

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "abs": abs, "round": lambda x, n=0: round(x, max(-15, min(15, int(n)))),
    "floor": math.floor, "ceil": math.ceil,
    "log": math.log, "log10": math.log10, "exp": math.exp, "sin": math.sin, "cos": math.cos,
    "tan": math.tan, "min": min, "max": max,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}


def _check_magnitude(x, what: str):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        raise CalculatorError(f"{what} is not a finite number")
    if abs(x) > MAX_MAGNITUDE:
        raise CalculatorError(f"{what} is too large (limit {MAX_MAGNITUDE:g})")
    return x


def _power(a, b):
    if abs(b) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {b:g} is too large (limit {MAX_EXPONENT})")
    if a == 0 and b < 0:
        raise CalculatorError("zero cannot be raised to a negative power")
    if abs(a) > 1 and b > 0 and b * math.log10(abs(a)) > math.log10(MAX_MAGNITUDE):
        raise CalculatorError(f"{a:g} ** {b:g} is too large (limit {MAX_MAGNITUDE:g})")
    if a < 0 and not float(b).is_integer():
        raise CalculatorError("a negative number cannot be raised to a fractional power")
    return a ** b


def _eval_node(node: ast.AST):
    if isinstance(node, ast.Expression):
        return _eval_node(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"only numbers are allowed, got {node.value!r}")
        return _check_magnitude(node.value, "a number")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and b == 0:
            raise CalculatorError("division by zero")
        op = _power if isinstance(node.op, ast.Pow) else _BINOPS[type(node.op)]
        try:
            return _check_magnitude(op(a, b), "the result")
        except ArithmeticError as e:  # 1e-15 ** -64 overflows a float
            raise CalculatorError(f"cannot compute the result: {e}") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval_node(node.operand))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            what = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__.lower()
            raise CalculatorError(f"function {what!r} is not allowed; allowed: {', '.join(_FUNCTIONS)}")
        if node.keywords:
            raise CalculatorError("keyword arguments are not allowed")
        args = [_eval_node(a) for a in node.args]
        try:
            return _check_magnitude(_FUNCTIONS[node.func.id](*args), "the result")
        except (ArithmeticError, ValueError, TypeError) as e:  # log(2, 1) divides by zero, exp(1e3) ...
            raise CalculatorError(f"{node.func.id}: {e}") from None
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise CalculatorError(f"unknown name {node.id!r}; only numbers, pi and e are allowed")
    raise CalculatorError(f"{type(node).__name__} is not allowed in a calculator expression")


def calculate(expression: str) -> int | float:
    """Evaluate an arithmetic expression safely: numbers, ``+ - * / // % **``, unary minus, parentheses,
    ``pi``, ``e`` and a few math functions (``sqrt``, ``abs``, ``round``, ``floor``, ``ceil``, ``log``,
    ``log10``, ``exp``, ``sin``, ``cos``, ``tan``, ``min``, ``max``).

    Raises ``CalculatorError`` with a message for anything else (names, attributes, calls to other
    functions, lambdas, comprehensions, strings), for inputs longer than 200 characters or 100 AST nodes,
    and for results or exponents past the limits (``9**9**9`` is refused before it is computed).
    """
    if not isinstance(expression, str):
        raise CalculatorError(f"expression must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression is too long ({len(expression)} > {MAX_EXPRESSION_CHARS} chars)")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"cannot parse {expression!r}: {e.msg}") from None
    except (ValueError, UnicodeError):  # a NUL byte, a lone surrogate
        raise CalculatorError(f"cannot parse {expression!r}: not plain text") from None
    n_nodes = sum(1 for _ in ast.walk(tree))
    if n_nodes > MAX_NODES:
        raise CalculatorError(f"expression is too complex ({n_nodes} > {MAX_NODES} nodes)")
    try:
        value = _eval_node(tree)
    except RecursionError:
        raise CalculatorError("expression is nested too deeply") from None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return int(value)
    if isinstance(value, float):
        return float(f"{value:.10g}")
    return value


# ----------------------------------------------------------------------------------------------------
# Tools and the registry
# ----------------------------------------------------------------------------------------------------

_JSON_TYPES = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,), "object": (dict,),
    "array": (list,),
}


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlevel = 3


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters (error messages go back into the model's short context)."""
    return _SHORT.repr(value)[:limit]


@dataclass
class Tool:
    """A callable the model may use: a name, a description, and a JSON-schema ``parameters`` object
    (``{"type": "object", "properties": {...}, "required": [...]}``) checked before ``fn`` runs."""

    name: str
    description: str
    parameters: dict
    fn: Callable[..., Any]

    def schema(self) -> dict:
        """The OpenAI ``tools`` entry for this tool."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description,
                             "parameters": self.parameters}}

    def validate(self, arguments: Any) -> dict:
        """Return the arguments with defaults filled in, or raise ``ToolError`` saying what is wrong."""
        if not isinstance(arguments, dict):
            raise ToolError(f"{self.name}: arguments must be a JSON object, got {type(arguments).__name__}")
        props = self.parameters.get("properties", {})
        missing = [k for k in self.parameters.get("required", []) if k not in arguments]
        if missing:
            raise ToolError(f"{self.name}: missing required argument(s) {', '.join(missing)}")
        unknown = [k for k in arguments if k not in props]
        if unknown:
            raise ToolError(f"{self.name}: unknown argument(s) {', '.join(unknown)}; "
                            f"expected {', '.join(props)}")
        out = {}
        for key, spec in props.items():
            if key not in arguments:
                if "default" in spec:
                    out[key] = spec["default"]
                continue
            value = arguments[key]
            typ = spec.get("type")
            ok = typ is None or (isinstance(value, _JSON_TYPES[typ])
                                 and not (typ in ("number", "integer") and isinstance(value, bool)))
            if not ok:
                raise ToolError(f"{self.name}: argument {key!r} must be {typ}, got {type(value).__name__} "
                                f"{short_repr(value)}")
            if "enum" in spec and value not in spec["enum"]:
                raise ToolError(f"{self.name}: argument {key!r} must be one of {spec['enum']}, "
                                f"got {short_repr(value)}")
            out[key] = value
        return out


@dataclass
class ToolResult:
    """What a tool call produced: ``content`` is the JSON text fed back to the model."""

    name: str | None
    arguments: dict | None
    ok: bool
    value: Any = None
    error: str | None = None

    @property
    def content(self) -> str:
        return json.dumps({"result": self.value} if self.ok else {"error": self.error})


@dataclass
class ToolRegistry:
    """The tools a chat may use, by name."""

    tools: dict[str, Tool] = field(default_factory=dict)

    def register(self, tool: Tool) -> Tool:
        if tool.name in self.tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self.tools[tool.name] = tool
        return tool

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def names(self) -> list[str]:
        return list(self.tools)

    def schemas(self) -> list[dict]:
        return [t.schema() for t in self.tools.values()]

    def call(self, name: Any, arguments: Any) -> ToolResult:
        """Validate and run one call. Never raises: every failure is a ``ToolResult`` with ``error``."""
        if not isinstance(name, str) or name not in self.tools:
            return ToolResult(name if isinstance(name, str) else None, None, False,
                              error=f"unknown tool {short_repr(name)}; available: {', '.join(self.tools)}")
        tool = self.tools[name]
        try:
            args = tool.validate(arguments)
            return ToolResult(name, args, True, value=tool.fn(**args))
        except ToolError as e:
            return ToolResult(name, arguments if isinstance(arguments, dict) else None, False, error=str(e))
        except Exception as e:  # a bug or bad input inside a tool must not end the chat
            return ToolResult(name, arguments if isinstance(arguments, dict) else None, False,
                              error=f"{name} failed: {type(e).__name__}: {e}")


def parse_tool_call(text: str) -> tuple[str | None, Any, str | None]:
    """Parse the model's ``{"tool_call": {"name": ..., "arguments": {...}}}`` (optionally after the
    ``<|tool_call|>`` token). Returns ``(name, arguments, error)``; ``error`` is None when it parsed."""
    body = text.strip()
    if body.startswith(TOOL_CALL_TOKEN):
        body = body[len(TOOL_CALL_TOKEN):].strip()
    if len(body) > MAX_CALL_CHARS:
        return None, None, f"tool call is too long ({len(body)} > {MAX_CALL_CHARS} characters)"
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return None, None, f"malformed tool call JSON ({e.msg} at char {e.pos}): {body[:80]!r}"
    except (ValueError, RecursionError) as e:  # a number of over 4300 digits, nesting past the stack
        return None, None, f"unreadable tool call JSON ({type(e).__name__}): {body[:80]!r}"
    if json_depth(obj) > MAX_CALL_DEPTH:
        return None, None, f"tool call is nested more than {MAX_CALL_DEPTH} levels deep"
    if not isinstance(obj, dict) or not isinstance(obj.get("tool_call"), dict):
        return None, None, 'a tool call must look like {"tool_call": {"name": ..., "arguments": {...}}}'
    call = obj["tool_call"]
    if not isinstance(call.get("name"), str):
        return None, None, "tool call has no 'name' string"
    args = call.get("arguments", {})
    if isinstance(args, str):  # OpenAI puts arguments in a JSON string; accept that too
        try:
            args = json.loads(args)
        except json.JSONDecodeError as e:
            return call["name"], None, f"malformed arguments JSON ({e.msg}): {args[:80]!r}"
        except (ValueError, RecursionError) as e:
            return call["name"], None, f"unreadable arguments JSON ({type(e).__name__}): {args[:80]!r}"
        if json_depth(args) > MAX_CALL_DEPTH:
            return call["name"], None, f"arguments are nested more than {MAX_CALL_DEPTH} levels deep"
    return call["name"], args, None


def json_depth(obj: Any) -> int:
    """How deeply lists and dicts nest in a decoded JSON value (iterative: any depth is safe)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def is_tool_call(text: str) -> bool:
    """Whether an assistant output is an attempt at a tool call (even a malformed one)."""
    body = text.strip()
    return body.startswith(TOOL_CALL_TOKEN) or body.startswith("{")


def format_tool_call(name: str, arguments: dict) -> str:
    """The canonical JSON text of a call, exactly as the model is taught to write it."""
    return json.dumps({"tool_call": {"name": name, "arguments": arguments}})


# ----------------------------------------------------------------------------------------------------
# The three built-in tools
# ----------------------------------------------------------------------------------------------------

def calculator_tool() -> Tool:
    return Tool("calculator", "Evaluate an arithmetic expression, e.g. sqrt(15625) or 3*(4+5).",
                {"type": "object", "properties": {"expression": {"type": "string"}},
                 "required": ["expression"]},
                calculate)


def weather_tool(table: dict[str, tuple[int, str]]) -> Tool:
    """``get_weather(location, unit)`` answered from ``table``: place -> (temperature in °C, condition)."""
    by_lower = {k.lower(): k for k in table}

    def get_weather(location: str, unit: str = "celsius") -> dict:
        key = by_lower.get(location.strip().lower())
        if key is None:
            raise ToolError(f"no weather data for {location!r}")
        celsius, condition = table[key]
        temp = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
        return {"location": key, "temperature": temp, "unit": unit, "condition": condition}

    return Tool("get_weather", "Current weather for a place in the world.",
                {"type": "object", "properties": {
                    "location": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}},
                 "required": ["location"]}, get_weather)


_WORD = re.compile(r"[a-z0-9]+")


def search_tool(documents: list[dict]) -> Tool:
    """``web_search(query)`` over a local document collection (``{"title", "text"}`` dicts): the best
    document by word overlap with the query (nothing leaves the machine)."""
    stop = {"the", "a", "an", "of", "is", "what", "who", "where", "in", "to", "does", "do", "did", "and"}
    index = [(set(_WORD.findall((d["title"] + " " + d["text"]).lower())) - stop, d) for d in documents]

    def web_search(query: str) -> str:
        words = set(_WORD.findall(query.lower())) - stop
        if not words:
            raise ToolError("empty search query")
        score, best = max(((len(words & ws), -i), d) for i, (ws, d) in enumerate(index))
        if score[0] == 0:
            return "no results"
        return best["text"]

    return Tool("web_search", "Search the local document collection and return the best passage.",
                {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
                web_search)


def default_registry(weather: dict | None = None, documents: list[dict] | None = None) -> ToolRegistry:
    """calculator, get_weather and web_search, with the world's weather table and documents by default."""
    if weather is None or documents is None:
        from minillm.data.world import fact_documents, weather_table

        weather = weather_table() if weather is None else weather
        documents = fact_documents() if documents is None else documents
    reg = ToolRegistry()
    reg.register(calculator_tool())
    reg.register(weather_tool(weather))
    reg.register(search_tool(documents))
    return reg


# ----------------------------------------------------------------------------------------------------
# The agent loop
# ----------------------------------------------------------------------------------------------------

@dataclass
class AgentStep:
    """One event of a traced turn: what the model wrote, and (for a call) what was parsed and returned."""

    output: str
    name: str | None = None
    arguments: Any = None
    result: ToolResult | None = None


def run_agent_turn(generate: Callable[[list[dict]], str], messages: list[dict], registry: ToolRegistry,
                   max_calls: int = 3) -> tuple[list[dict], list[AgentStep]]:
    """Let the model answer the last user message, running the tools it calls.

    ``generate(messages) -> str`` produces one assistant output (the text up to ``<|end|>``, with the
    ``<|tool_call|>`` token first when the model opened a call). When the output is a tool call, it is
    parsed and validated, the tool runs, an assistant ``tool_calls`` message and a ``tool`` message are
    appended, and the model is asked again. At most ``max_calls`` calls run per turn; a call past that gets
    an error result, and a model that still insists ends the turn. Returns the new message list and a trace.
    """
    messages = list(messages)
    trace: list[AgentStep] = []
    calls = 0
    for _ in range(max_calls + 2):
        out = generate(messages)
        if not is_tool_call(out):
            messages.append({"role": "assistant", "content": out.strip()})
            trace.append(AgentStep(out))
            return messages, trace
        name, args, err = parse_tool_call(out)
        call_id = f"call_{calls}"
        if err is not None:
            result = ToolResult(name, None, False, error=err)
            messages.append({"role": "assistant", "content": None, "raw_tool_call": out.strip()})
        else:
            if calls >= max_calls:
                result = ToolResult(name, args, False,
                                    error=f"too many tool calls (at most {max_calls} per turn); answer now")
            else:
                result = registry.call(name, args)
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": name, "arguments": json.dumps(args)}}]})
        calls += 1
        messages.append({"role": "tool", "tool_call_id": call_id, "name": name, "content": result.content})
        trace.append(AgentStep(out, name, args, result))
    messages.append({"role": "assistant", "content": f"(stopped: more than {max_calls} tool calls)"})
    trace.append(AgentStep("", None, None, None))
    return messages, trace
