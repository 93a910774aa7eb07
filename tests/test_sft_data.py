"""SFT data: deterministic generators, JSONL round trip, answers that are right, and a code sandbox that
turns hangs and crashes into failed tests."""

import json
import re
import time

import pytest

from minillm.chat.sandbox import run_tests
from minillm.chat.template import render
from minillm.chat.tools import default_registry, parse_tool_call
from minillm.data.code_tasks import FAMILIES, code_dataset
from minillm.data.jsonl import read_jsonl, write_jsonl
from minillm.data.tool_conversations import tool_dataset
from minillm.data.word_problems import DIRECT_SUFFIX, extract_answer, word_problem_dataset
from minillm.tokenizer import load_default_tokenizer


@pytest.mark.parametrize("make", [lambda s: code_dataset(40, s), lambda s: word_problem_dataset(20, s),
                                  lambda s: tool_dataset(30, s)])
def test_generators_are_deterministic_and_round_trip_through_jsonl(make, tmp_path):
    a, b, c = make(0), make(0), make(1)
    assert a == b and a != c
    write_jsonl(a, tmp_path / "d.jsonl")
    assert read_jsonl(tmp_path / "d.jsonl") == a


def test_read_jsonl_names_the_bad_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"messages": []}\n{"messages": [}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_jsonl(p)
    p.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="'messages' list"):
        read_jsonl(p)


def test_every_reference_solution_passes_its_hidden_tests():
    ds = code_dataset(len(FAMILIES), seed=3)
    assert len(FAMILIES) >= 30 and {ex["meta"]["family"] for ex in ds} == {f.key for f in FAMILIES}
    for ex in ds:
        m = ex["meta"]
        r = run_tests(ex["messages"][1]["content"], m["entry_point"], m["tests"])
        assert r.ok, (m["family"], r)


def test_word_problems_have_right_answers_and_both_renderings():
    ds = word_problem_dataset(40, seed=0)
    assert {ex["meta"]["steps"] for ex in ds} == {1, 2, 3, 4}
    for cot, direct in zip(ds[::2], ds[1::2]):
        assert cot["meta"] == direct["meta"]
        assert direct["messages"][0]["content"].endswith(DIRECT_SUFFIX)
        lines = cot["messages"][1]["content"].split("\n")
        assert len(lines) == cot["meta"]["steps"] + 1 and lines[-1].startswith("Therefore, ")
        for i, line in enumerate(lines[:-1], 1):  # every step's arithmetic is right
            assert line.startswith(f"{i}. ")
            for eq in line[len(f"{i}. "):].rstrip(".").split(". "):
                lhs, rhs = eq.split(" = ")
                a, op, b = lhs.split()
                assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(rhs)
        assert extract_answer(cot["messages"][1]["content"]) == cot["meta"]["answer"]
        assert all(0 <= int(n) <= 20 for n in re.findall(r"\d+", cot["messages"][1]["content"]))
        assert extract_answer(direct["messages"][1]["content"]) == cot["meta"]["answer"] >= 0


def test_tool_conversations_use_the_real_tools():
    reg = default_registry()
    for ex in tool_dataset(30, seed=0):
        call = ex["messages"][1]["tool_calls"][0]["function"]
        assert call["name"] == ex["meta"]["tool"]
        r = reg.call(call["name"], json.loads(call["arguments"]))
        assert ex["messages"][2]["content"] == r.content
        assert r.ok or ex["messages"][3]["content"].startswith("Sorry, the tool failed: no weather data")
        assert ex["meta"]["check"] in ex["messages"][3]["content"]
        assert parse_tool_call("<|tool_call|>" + json.dumps(
            {"tool_call": {"name": call["name"], "arguments": json.loads(call["arguments"])}}))[2] is None


def test_sequences_fit_the_tiny_gpt_context():
    tok = load_default_tokenizer()
    for ds in (word_problem_dataset(100, 0), tool_dataset(100, 0)):
        assert max(len(render(ex["messages"], tok)[0]) for ex in ds) <= 129
    fits = [len(render(ex["messages"], tok)[0]) <= 129 for ex in code_dataset(31 * 4, 0)]
    assert sum(fits) / len(fits) > 0.9


TESTS = [{"args": [[1, 2, 3]], "expected": 6}, {"args": [[0]], "expected": 0}]


@pytest.mark.parametrize("code,status", [
    ("def f(xs):\n    return sum(xs)", "passed"),
    ("def f(xs):\n    return 6", "failed"),
    ("def f(xs):\n    raise ValueError('no')", "error"),
    ("def f(xs)\n    return 1", "error"),
    ("def g(xs):\n    return 1", "error"),
    ("import os\nos._exit(3)", "crashed"),
    ("import os\nos.abort()", "crashed"),
    ("def f(xs):\n    return bytearray(8 << 30)", "error"),
])
def test_sandbox_statuses(code, status):
    r = run_tests(code, "f", TESTS, timeout=5)
    assert r.status == status, r
    assert r.ok == (status == "passed") and r.total == 2


def test_sandbox_times_out_an_infinite_loop():
    t0 = time.perf_counter()
    r = run_tests("def f(xs):\n    while True:\n        pass", "f", TESTS, timeout=1.0)
    assert r.status == "timeout" and not r.ok
    assert time.perf_counter() - t0 < 5


def test_sandbox_runs_in_a_temporary_directory_in_isolated_mode(tmp_path):
    code = ("import os, sys\ndef f(xs):\n    return [os.getcwd() != " + repr(str(tmp_path)) +
            ", sys.flags.isolated, 'minillm_sandbox_' in os.getcwd()]")
    r = run_tests(code, "f", [{"args": [[1]], "expected": [True, 1, True]}])
    assert r.ok, r


def test_sandbox_rejects_a_bad_entry_point():
    assert run_tests("x = 1", "f; import os", TESTS).status == "error"
