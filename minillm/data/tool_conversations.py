"""Tool-use conversations over the story world: the assistant calls a tool, reads the result, answers.

Three tools (see ``minillm.chat.tools``): ``get_weather(location, unit)`` answered from the world's WEATHER
table, ``calculator(expression)`` (the safe evaluator) and ``web_search(query)`` over the world's FACTS
(the local document collection). Each conversation is::

    user:      What is the weather in Oakdale in fahrenheit?
    assistant: <|tool_call|>{"tool_call": {"name": "get_weather", "arguments": {...}}}
    tool:      {"result": {"location": "Oakdale", "temperature": 72, ...}}
    assistant: It is 72 degrees and sunny in Oakdale.

Tool results are produced by running the real tools, so the data and the runtime cannot disagree.
"""

from __future__ import annotations

import json
import random

from minillm.data.world import CHARACTERS, OBJECTS, PLACES, WEATHER

_WEATHER_Q = ["What is the weather in {town}?", "How warm is it in {town}?", "Weather in {town}, please."]
_WEATHER_Q_F = ["What is the weather in {town} in fahrenheit?", "How warm is it in {town} in fahrenheit?"]


def _weather(rng: random.Random) -> tuple[str, str, dict, callable]:
    town = rng.choice(list(WEATHER))
    unit = rng.choice(["celsius", "fahrenheit"])
    q = rng.choice(_WEATHER_Q if unit == "celsius" else _WEATHER_Q_F).format(town=town)

    def answer(r):
        return f"It is {r['temperature']} degrees and {r['condition']} in {r['location']}."

    return q, "get_weather", {"location": town, "unit": unit}, answer


def _calculator(rng: random.Random) -> tuple[str, str, dict, callable]:
    kind = rng.randrange(3)
    if kind == 0:
        k = rng.randint(2, 130)
        expr = f"sqrt({k * k})"
    elif kind == 1:
        expr = f"{rng.randint(2, 99)} {rng.choice('+-*')} {rng.randint(2, 99)}"
    else:
        expr = f"({rng.randint(2, 30)} + {rng.randint(2, 30)}) * {rng.randint(2, 9)}"
    q = rng.choice(["What is {e}?", "Compute {e}.", "Calculate {e}."]).format(e=expr)
    return q, "calculator", {"expression": expr}, lambda r: f"{expr} = {r}."


def _search(rng: random.Random) -> tuple[str, str, dict, callable]:
    kind = rng.randrange(3)
    if kind == 0:
        name = rng.choice(list(CHARACTERS))
        q, query = f"What is {name}'s job?", f"{name} job"
    elif kind == 1:
        town = rng.choice(list(WEATHER))
        q, query = f"Who lives in {town}?", f"live in {town}"
    else:
        place = rng.choice(["bakery", "book shop", "toy shop", "market"])
        obj = rng.choice(PLACES[place]["objects"])
        q, query = f"How much is one {obj} at the {place}?", f"{place} {obj} costs"
    return q, "web_search", {"query": query}, lambda r: r


def _unknown_place(rng: random.Random) -> tuple[str, str, dict, callable]:
    """A place the world has no weather for: the tool returns an error, and the assistant says so."""
    town = rng.choice(["Paris", "Atlantis", "Tokyo", "Lima", "Cairo", "Oslo"])
    q = rng.choice(_WEATHER_Q).format(town=town)
    args = {"location": town, "unit": "celsius"}
    return q, "get_weather", args, lambda err: f"Sorry, the tool failed: {err}"


_KINDS = [_weather, _calculator, _search]


def tool_example(rng: random.Random, registry=None) -> dict:
    """One conversation (the tool really runs) with its expected call and answer in ``meta``."""
    from minillm.chat.tools import default_registry

    registry = registry or default_registry()
    failing = rng.random() < 0.08  # some calls fail, so the model learns to read an error result
    q, name, args, answer = (_unknown_place if failing else rng.choice(_KINDS))(rng)
    result = registry.call(name, args)
    if result.ok == failing:  # a clear error if the world's tables change under the generator
        raise RuntimeError(f"tool_example: {name}({args}) gave {result.content}")
    final = answer(result.error if failing else result.value)
    messages = [
        {"role": "user", "content": q},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]},
        {"role": "tool", "tool_call_id": "call_0", "name": name, "content": result.content},
        {"role": "assistant", "content": final},
    ]
    return {"task": "tools", "messages": messages,
            "meta": {"tool": name, "arguments": args, "answer": final, "check": _check_string(name, result)}}


def _check_string(name: str, result) -> str:
    """A string the final answer must contain to count as correct."""
    if not result.ok:
        return "Sorry"
    v = result.value
    if name == "get_weather":
        return f"{v['temperature']} degrees and {v['condition']}"
    if name == "calculator":
        return f"= {v}"
    return v


def tool_dataset(n: int, seed: int = 0) -> list[dict]:
    """``n`` tool-use conversations, deterministic for a seed."""
    from minillm.chat.tools import default_registry

    rng = random.Random(seed)
    reg = default_registry()
    return [tool_example(rng, reg) for _ in range(n)]


__all__ = ["tool_dataset", "tool_example", "OBJECTS"]
