"""Multi-step arithmetic word problems over the story world, rendered two ways (chain of thought or not).

"Mia had 5 apples. 2 friends gave her 3 each. She ate 1. How many now?" Each problem starts from a count
and applies 1–4 steps (bought more, gave some to a friend, ate some, k friends gave m each, bought k bags
of m). The same problem has two renderings:

- chain of thought (the default): the reply numbers one line per step, each with its arithmetic, and
  ends "Therefore, Mia had 10."
- direct: the prompt ends "Answer only." and the reply is just "Mia had 10."

The seed's phrasing ("Her 2 friends give her some apples. Each friend gives her 3 apples.") is shortened
to the past tense of the pre-training stories, whose words are single tokens of the shipped tokenizer, so
a 4-step problem with its rationale fits the tiny GPT's 128-token context.

Wei et al. (2022), "Chain-of-thought prompting elicits reasoning": writing the intermediate results lets a
model spend one short computation per step instead of doing the whole sum in one token.
"""

from __future__ import annotations

import random
import re

from minillm.data.world import CHARACTERS, OBJECTS, PRONOUNS

DIRECT_SUFFIX = "Answer only."
_COUNTABLE = [o for o in OBJECTS if o not in ("shell", "stone", "flower")]
MAX_COUNT = 20  # default bound on every count in word_problem_dataset (0..20)


def _step(rng: random.Random, name: str, obj: str, count: int, allow_product: bool = True,
          max_count: int | None = None) -> tuple[str, str, int]:
    """One step: (problem sentence, rationale line, new count). Never lets the count go negative, nor
    above ``max_count`` if given (``None`` draws exactly as before the bound existed).

    Phrased in the past tense of the pre-training stories ("She bought 3."), whose words are single
    tokens of the shipped tokenizer, so a 4-step problem and its rationale fit a 128-token context."""
    pr = PRONOUNS[CHARACTERS[name]["pronoun"]]
    she, her = pr["subject"].capitalize(), pr["object"]
    room = None if max_count is None else max_count - count
    kinds = ["buy"] if room is None or room >= 1 else []
    if allow_product and (room is None or room >= 4):
        kinds += ["friends", "bags"]
    if count >= 2:
        kinds += ["give", "eat" if OBJECTS[obj]["food"] else "give"]
    kind = rng.choice(kinds)
    if kind == "buy":
        n = rng.randint(1, 6 if room is None else min(6, room))
        return f"{she} bought {n} more.", f"{count} + {n} = {count + n}.", count + n
    if kind in ("friends", "bags"):
        k = rng.randint(2, 4 if room is None else min(4, room // 2))
        m = rng.randint(2, 5 if room is None else min(5, room // k))
        text = (f"{k} friends gave {her} {m} each." if kind == "friends" else
                f"{she} bought {k} bags of {m}.")
        return text, f"{k} * {m} = {k * m}. {count} + {k * m} = {count + k * m}.", count + k * m
    n = rng.randint(1, count - 1)
    friend = rng.choice([c for c in CHARACTERS if c != name])
    verb = f"gave {n} to {friend}" if kind == "give" else f"ate {n}"
    return f"{she} {verb}.", f"{count} - {n} = {count - n}.", count - n


def make_problem(rng: random.Random, steps: int, max_count: int | None = None) -> dict:
    """One problem with ``steps`` steps: its question, the rationale lines, the answer and the sentence
    stating it ("Mia has 11 apples."). ``max_count``: every count stays at most this (``None``: the
    original unbounded problems, which ``minillm.phases.preferences`` and the shipped ``gpt_sft.npz`` use)."""
    name = rng.choice(list(CHARACTERS))
    obj = rng.choice(_COUNTABLE)
    plural = OBJECTS[obj]["plural"]
    count = rng.randint(2, 9)
    sentences, rationale = [f"{name} had {count} {plural}."], []
    products = 0
    for _ in range(steps):
        s, r, new = _step(rng, name, obj, count, allow_product=products < 2, max_count=max_count)
        products += " * " in r
        count = new
        sentences.append(s)
        rationale.append(r)
    question = " ".join(sentences) + " How many now?"
    return {"question": question, "rationale": rationale, "answer": count, "steps": steps,
            "final": f"{name} had {count}."}


def render_problem(problem: dict, cot: bool) -> list[dict]:
    """The problem as a conversation: with numbered rationale steps (``cot``) or a direct answer."""
    if cot:
        lines = [f"{i}. {r}" for i, r in enumerate(problem["rationale"], 1)]
        reply = "\n".join(lines) + f"\nTherefore, {problem['final']}"
        prompt = problem["question"]
    else:
        reply, prompt = problem["final"], f"{problem['question']} {DIRECT_SUFFIX}"
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


def word_problem_dataset(n: int, seed: int = 0, cot: bool | None = None, max_steps: int = 4,
                         max_count: int | None = MAX_COUNT) -> list[dict]:
    """``n`` examples (1..max_steps steps, evenly spread), as ``{"task", "messages", "meta"}`` dicts.

    ``cot``: True = chain-of-thought renderings only, False = direct only, None = each problem twice
    (both renderings, so 2n examples): the model learns both styles on the same problems.
    ``max_count`` (default 20) bounds every count, so each rationale line is a sum of small numbers that
    the tiny GPT can learn exactly; ``None`` gives the original unbounded problems (counts up to ~50).
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = make_problem(rng, 1 + i % max_steps, max_count=max_count)
        meta = {"answer": p["answer"], "steps": p["steps"], "question": p["question"]}
        for style in ([True, False] if cot is None else [cot]):
            out.append({"task": "cot" if style else "direct", "messages": render_problem(p, style),
                        "meta": dict(meta)})
    return out


_NUMBER = re.compile(r"-?\d+")


def extract_answer(reply: str) -> int | None:
    """The final answer in a reply: the last integer after "Therefore" if present, else the last one."""
    tail = reply.rsplit("Therefore", 1)[-1]
    nums = _NUMBER.findall(tail)
    return int(nums[-1]) if nums else None
