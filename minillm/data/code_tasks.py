"""Instruction → Python function pairs over a few dozen task families, each with hidden unit tests.

"Write a Python function total(nums) that returns the sum of nums." → ``def total(nums):\\n    return
sum(nums)``. Each family varies the function name, the argument names and the instruction's wording, so
held-out prompts are new combinations the model must follow (copy the names, pick the body). The hidden
tests are computed by a reference implementation in this file and run against generated code by
``minillm.chat.sandbox`` in a separate process.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CodeFamily:
    key: str
    names: tuple[str, ...]       # function names to choose from
    kind: str                    # argument kind: "list", "list+item", "int", "int2", "str", "sorted+item"
    what: str                    # what the function returns ({a}, {b} are the argument names)
    body: str                    # the solution's body ({a}, {b}); indented 4 spaces per line
    ref: Callable[..., Any]      # reference implementation for the hidden tests


def _fizzbuzz(n):
    return "FizzBuzz" if n % 15 == 0 else "Fizz" if n % 3 == 0 else "Buzz" if n % 5 == 0 else str(n)


def _bsearch(xs, t):
    return xs.index(t) if t in xs else -1


def _fact(n):
    r = 1
    for i in range(2, n + 1):
        r *= i
    return r


def _gcd(a, b):
    while b:
        a, b = b, a % b
    return a


FAMILIES: list[CodeFamily] = [
    CodeFamily("sum", ("total", "sum_all", "add_up"), "list", "the sum of {a}", "return sum({a})", sum),
    CodeFamily("max", ("largest", "biggest", "top"), "list", "the largest number in {a}", "return max({a})",
               max),
    CodeFamily("min", ("smallest", "least", "lowest"), "list", "the smallest number in {a}",
               "return min({a})", min),
    CodeFamily("len", ("size", "count_all", "length"), "list", "the number of items in {a}",
               "return len({a})", len),
    CodeFamily("reverse", ("reverse", "flip", "backwards"), "list", "{a} reversed", "return {a}[::-1]",
               lambda a: a[::-1]),
    CodeFamily("evens", ("evens", "keep_even", "only_even"), "list", "the even numbers in {a}",
               "return [x for x in {a} if x % 2 == 0]", lambda a: [x for x in a if x % 2 == 0]),
    CodeFamily("odds", ("odds", "keep_odd", "only_odd"), "list", "the odd numbers in {a}",
               "return [x for x in {a} if x % 2 == 1]", lambda a: [x for x in a if x % 2 == 1]),
    CodeFamily("positive", ("positives", "keep_positive", "above_zero"), "list",
               "the positive numbers in {a}",
               "return [x for x in {a} if x > 0]", lambda a: [x for x in a if x > 0]),
    CodeFamily("squares", ("squares", "square_all", "squared"), "list", "the square of each number in {a}",
               "return [x * x for x in {a}]", lambda a: [x * x for x in a]),
    CodeFamily("double", ("doubled", "double_all", "twice"), "list", "each number in {a} doubled",
               "return [x * 2 for x in {a}]", lambda a: [x * 2 for x in a]),
    CodeFamily("count", ("count_of", "how_many", "occurrences"), "list+item",
               "how many times {b} is in {a}",
               "return {a}.count({b})", lambda a, b: a.count(b)),
    CodeFamily("contains", ("contains", "has_item", "includes"), "list+item", "True if {b} is in {a}",
               "return {b} in {a}", lambda a, b: b in a),
    CodeFamily("first", ("first", "head", "front"), "list", "the first item of {a}", "return {a}[0]",
               lambda a: a[0]),
    CodeFamily("last", ("last", "tail_item", "final"), "list", "the last item of {a}", "return {a}[-1]",
               lambda a: a[-1]),
    CodeFamily("mean", ("mean", "average", "avg"), "list", "the mean of {a}", "return sum({a}) / len({a})",
               lambda a: sum(a) / len(a)),
    CodeFamily("product", ("product", "multiply_all", "prod"), "list", "the product of {a}",
               "p = 1\n    for x in {a}:\n        p *= x\n    return p", lambda a: _fact_list(a)),
    CodeFamily("spread", ("spread", "value_range", "span"), "list", "the largest minus the smallest of {a}",
               "return max({a}) - min({a})", lambda a: max(a) - min(a)),
    CodeFamily("sorted", ("sort_up", "in_order", "ascending"), "list", "{a} sorted in ascending order",
               "return sorted({a})", sorted),
    CodeFamily("distinct", ("distinct", "unique_count", "n_unique"), "list",
               "the number of distinct items in {a}",
               "return len(set({a}))", lambda a: len(set(a))),
    CodeFamily("is_even", ("is_even", "even", "check_even"), "int", "True if {a} is even",
               "return {a} % 2 == 0", lambda n: n % 2 == 0),
    CodeFamily("square", ("square", "sq", "times_self"), "int", "{a} squared", "return {a} * {a}",
               lambda n: n * n),
    CodeFamily("absolute", ("absolute", "magnitude", "abs_value"), "int", "the absolute value of {a}",
               "return abs({a})", abs),
    CodeFamily("factorial", ("factorial", "fact", "fac"), "nat", "the factorial of {a}",
               "r = 1\n    for i in range(2, {a} + 1):\n        r *= i\n    return r", _fact),
    CodeFamily("fizzbuzz", ("fizzbuzz", "fizz_buzz", "fb"), "nat",
               "Fizz if {a} divides by 3, Buzz by 5, FizzBuzz by both, else str({a})",
               "if {a} % 15 == 0:\n        return 'FizzBuzz'\n    if {a} % 3 == 0:\n        return 'Fizz'\n"
               "    if {a} % 5 == 0:\n        return 'Buzz'\n    return str({a})", _fizzbuzz),
    CodeFamily("upper", ("shout", "to_upper", "caps"), "str", "{a} in upper case", "return {a}.upper()",
               str.upper),
    CodeFamily("words", ("word_count", "n_words", "count_words"), "str", "the number of words in {a}",
               "return len({a}.split())", lambda s: len(s.split())),
    CodeFamily("palindrome", ("is_palindrome", "palindrome", "reads_same"), "str",
               "True if {a} reads the same backwards", "return {a} == {a}[::-1]", lambda s: s == s[::-1]),
    CodeFamily("add", ("add", "plus", "sum_two"), "int2", "the sum of {a} and {b}", "return {a} + {b}",
               lambda a, b: a + b),
    CodeFamily("larger", ("larger", "bigger", "max_two"), "int2", "the larger of {a} and {b}",
               "return max({a}, {b})", max),
    CodeFamily("gcd", ("gcd", "common_divisor", "hcf"), "int2",
               "the greatest common divisor of {a} and {b}",
               "while {b}:\n        {a}, {b} = {b}, {a} % {b}\n    return {a}", _gcd),
    CodeFamily("bsearch", ("binary_search", "bsearch", "find_index"), "sorted+item",
               "the index of {b} in sorted {a} by binary search, or -1",
               "lo, hi = 0, len({a}) - 1\n    while lo <= hi:\n        m = (lo + hi) // 2\n"
               "        if {a}[m] == {b}:\n            return m\n"
               "        if {a}[m] < {b}:\n            lo = m + 1\n"
               "        else:\n            hi = m - 1\n    return -1", _bsearch),
]


def _fact_list(a):
    p = 1
    for x in a:
        p *= x
    return p


_ARG_NAMES = {
    "list": ("nums", "xs", "values", "items", "data", "arr"),
    "int": ("n", "x", "k", "num"),
    "nat": ("n", "k", "num"),
    "str": ("s", "text", "word"),
    "int2": (("a", "b"), ("x", "y"), ("m", "n")),
    "item": ("target", "item", "key", "v"),
}
_TEMPLATES = (
    "Write a Python function {f}({sig}) that returns {what}.",
    "Write {f}({sig}) in Python. It returns {what}.",
    "Define a function {f}({sig}) returning {what}.",
)
_WORDS = ["mia", "tom", "anna", "level", "noon", "kite", "a b c", "cake and tea", "racecar", "sun", "x y"]


def _inputs(kind: str, rng: random.Random) -> list:
    if kind in ("list", "list+item"):
        xs = [rng.randint(-5, 9) for _ in range(rng.randint(1, 6))]
        return [xs, rng.choice(xs + [rng.randint(-5, 9)])] if kind == "list+item" else [xs]
    if kind == "sorted+item":
        xs = sorted(rng.sample(range(-9, 20), rng.randint(1, 7)))
        return [xs, rng.choice(xs + [rng.randint(-9, 20)])]
    if kind == "int":
        return [rng.randint(-20, 20)]
    if kind == "nat":
        return [rng.randint(1, 15) if rng.random() < 0.5 else rng.choice([3, 5, 15, 30, 9, 10])]
    if kind == "int2":
        return [rng.randint(1, 40), rng.randint(1, 40)]
    return [rng.choice(_WORDS)]


def make_code_task(family: CodeFamily, rng: random.Random, n_tests: int = 6) -> dict:
    """One task of a family: instruction, reference solution, entry point and hidden tests."""
    if family.kind == "int2":
        a, b = rng.choice(_ARG_NAMES["int2"])
    else:
        a = rng.choice(_ARG_NAMES["list" if family.kind in ("list+item", "sorted+item") else family.kind])
        b = rng.choice(_ARG_NAMES["item"]) if "item" in family.kind else None
    f = rng.choice(family.names)
    sig = a if b is None else f"{a}, {b}"
    what = family.what.format(a=a, b=b)
    instruction = rng.choice(_TEMPLATES).format(f=f, sig=sig, what=what)
    solution = f"def {f}({sig}):\n    " + family.body.format(a=a, b=b)
    tests = []
    for _ in range(n_tests):
        args = _inputs(family.kind, rng)
        tests.append({"args": args, "expected": family.ref(*[list(x) if isinstance(x, list) else x
                                                              for x in args])})
    return {"family": family.key, "entry_point": f, "instruction": instruction, "solution": solution,
            "tests": tests}


def code_dataset(n: int, seed: int = 0, families: list[CodeFamily] | None = None) -> list[dict]:
    """``n`` examples cycling through the families (``{"task": "code", "messages", "meta"}``)."""
    rng = random.Random(seed)
    fams = families or FAMILIES
    out = []
    for i in range(n):
        t = make_code_task(fams[i % len(fams)], rng)
        out.append({"task": "code", "messages": [{"role": "user", "content": t["instruction"]},
                                                 {"role": "assistant", "content": t["solution"]}],
                    "meta": {k: t[k] for k in ("family", "entry_point", "tests", "solution")}})
    return out
