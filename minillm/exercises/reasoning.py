"""Lesson 09: extracting the final answer from a rationale, and scoring a rationale line by line."""

from __future__ import annotations

import random
import re

from minillm.data.word_problems import extract_answer, make_problem, render_problem
from minillm.exercises.checking import Case, Exercise, seeded

_SIGNED, _UNSIGNED = re.compile(r"-?\d+"), re.compile(r"\d+")


# ------------------------------------------------------------------------------------------ final answer
def _answer_cases():
    rng = random.Random(901)
    for steps in (1, 2, 3, 4):
        p = make_problem(rng, steps, max_count=20)
        for cot in (True, False):
            yield Case((render_problem(p, cot)[1]["content"],),
                       label=f"{steps}-step {'chain of thought' if cot else 'direct answer'}")
    yield Case(("",), label="an empty reply")
    yield Case(("I do not know.",), label="no number at all")
    yield Case(("1. 2 + 2 = 4.\nTherefore, I cannot tell.",), label="no number after Therefore")
    yield Case(("1. 3 * 4 = 12.\nTherefore, after 2 steps, Ana had 12 pears.",),
               label="two numbers after Therefore")
    yield Case(("1. 3 - 5 = -2.\nTherefore, the balance was -2.",), label="a negative answer")
    yield Case(("Therefore, 4. No: 2 + 3 = 5. Therefore, Mia had 5.",), label="Therefore twice")
    yield Case(("1. 7 + 5 = 12.\nTherefore, Zoë a 12 pommes 🍎.",), label="unicode text")
    yield Case(("therefore it was 8, or 9 at most",), label="a lowercase 'therefore' is not the marker")
    gen = seeded(902)
    for _ in range(3):
        a, b = (int(x) for x in gen.integers(-50, 50, size=2))
        yield Case((f"1. {a} + {b} = {a + b}.\nTherefore, the total was {a + b}.",), label="drawn numbers")


def _first_number(reply):
    nums = _SIGNED.findall(reply)
    return int(nums[0]) if nums else None


def _first_after_therefore(reply):
    nums = _SIGNED.findall(reply.rsplit("Therefore", 1)[-1])
    return int(nums[0]) if nums else None


def _unsigned(reply):
    nums = _UNSIGNED.findall(reply.rsplit("Therefore", 1)[-1])
    return int(nums[-1]) if nums else None


def _as_text(reply):
    nums = _SIGNED.findall(reply.rsplit("Therefore", 1)[-1])
    return nums[-1] if nums else None


def _zero_if_none(reply):
    answer = extract_answer(reply)
    return 0 if answer is None else answer


EXTRACT = Exercise(
    name="09.extract_answer", lesson=9,
    task="Write extract_answer(reply): the final number of a model's reply as an int, which is what "
         "exact-match accuracy compares with the true answer. A chain-of-thought reply ends 'Therefore, "
         "Mia had 10.' after lines full of intermediate numbers; a direct reply is just 'Mia had 10.'. If "
         "the reply contains 'Therefore', only the text after its last occurrence counts; the answer is "
         "the last integer there (it may be negative: '-3'). Return None when there is no integer to "
         "take.",
    signature="def extract_answer(reply: str) -> int | None",
    reference=extract_answer,
    cases=_answer_cases,
    mistakes={
        "first number": (_first_number, "the first number of a rationale is a step number or an "
                                        "intermediate count; the answer comes at the end."),
        "first number after Therefore": (_first_after_therefore,
                                         "the sentence after 'Therefore' can mention other numbers before "
                                         "the answer: take its last one."),
        "sign dropped": (_unsigned, "a '-' right before the digits belongs to the number: answers can be "
                                    "negative."),
        "returns the text": (_as_text, "return an int, not the matched text: 10 == '10' is False, so an "
                                       "exact match against the true answer would always fail."),
        "0 when there is none": (_zero_if_none, "with no number to take, return None: 0 would be scored "
                                                "as an answer (and could even be right)."),
    },
)


# ------------------------------------------------------------------------------------------ line by line
def lines_right_reference(gold: list[str], got: list[str]) -> tuple[int, int]:
    """(right, tried): lines compared in order, up to and including the first wrong one."""
    right = tried = 0
    for g, o in zip(gold, got):
        tried += 1
        if g != o:
            break
        right += 1
    return right, tried


def _no_stop(gold, got):
    pairs = list(zip(gold, got))
    return sum(g == o for g, o in pairs), len(pairs)


def _wrong_not_tried(gold, got):
    right, _ = lines_right_reference(gold, got)
    return right, right


def _all_gold_tried(gold, got):
    return lines_right_reference(gold, got)[0], len(gold)


def _slip(line: str, rng) -> str:
    """The line with its last number off by one (how a rationale line goes wrong)."""
    nums = list(re.finditer(r"\d+", line))
    m = nums[-1]
    return line[:m.start()] + str(int(m.group()) + int(rng.choice([-1, 1]))) + line[m.end():]


def _lines_cases():
    gold = ["1. 5 + 5 = 10.", "2. 10 - 4 = 6.", "3. 4 * 2 = 8. 6 + 8 = 14."]
    yield Case((gold, list(gold)), label="every line right")
    yield Case((gold, [gold[0], "2. 10 - 4 = 7.", gold[2]]), label="the middle line wrong")
    yield Case((gold, ["1. 5 + 5 = 11.", gold[1], gold[2]]), label="the first line wrong")
    yield Case((gold, gold[:1]), label="the model stopped after one line")
    yield Case((gold, gold + ["4. 14 + 1 = 15."]), label="one extra line")
    yield Case(([], []), label="no lines")
    yield Case((gold, []), label="an empty reply")
    rng = seeded(903)
    prob = random.Random(904)
    for _ in range(6):
        p = make_problem(prob, int(rng.integers(2, 5)), max_count=20)
        lines = [f"{i}. {r}" for i, r in enumerate(p["rationale"], 1)]
        got = list(lines)
        for j in sorted(rng.choice(len(lines), size=int(rng.integers(1, 3)), replace=False)):
            got[j] = _slip(got[j], rng)
        yield Case((lines, got), label="a drawn rationale with slips")


LINES = Exercise(
    name="09.lines_right", lesson=9,
    task="Write lines_right(gold, got): score one generated rationale against the true one, line by line, "
         "as section 3 does to estimate p, the chance that a line is right given that the lines before it "
         "were. Walk the two lists of lines in order (as far as the shorter one goes); each compared line "
         "is 'tried', and it is 'right' if it equals the gold line. Stop after the first wrong line: what "
         "follows it builds on a mistake. Return (right, tried).",
    signature="def lines_right(gold: list[str], got: list[str]) -> tuple[int, int]",
    reference=lines_right_reference,
    cases=_lines_cases,
    mistakes={
        "no stop at the first slip": (_no_stop, "a line after a wrong one starts from a wrong count: stop "
                                                "comparing at the first wrong line."),
        "the wrong line not tried": (_wrong_not_tried, "the line that went wrong was tried too: count it "
                                                       "before you stop."),
        "every gold line tried": (_all_gold_tried, "only compared lines count as tried: nothing after the "
                                                   "first wrong line, nor past the end of the model's "
                                                   "reply."),
    },
)

EXERCISES = [EXTRACT, LINES]
