"""Exercises the learner writes in the lessons, and the checker that grades them.

``EXERCISES`` maps a name such as ``"11.dpo_loss"`` to its :class:`Exercise`; ``check(name, fn)`` runs the
learner's ``fn`` against minillm's reference on generated inputs and returns a :class:`CheckResult`
(``passed``, a ``message`` naming the first failing case with a hint for the likely mistake, and the
``function`` the lesson's later cells should use: the learner's once it passes, else minillm's).

In a lesson, the solution sits between nbgrader's markers (``### BEGIN SOLUTION`` / ``### END SOLUTION``);
``minillm workshop`` writes the student copies, where each is replaced by ``raise NotImplementedError()``,
which the checker reads as "not attempted yet".
"""

from __future__ import annotations

from collections.abc import Callable

from minillm.exercises import (
    attention,
    autograd,
    data_parallel,
    dpo,
    kernels,
    lora,
    modern_decoder,
    objectives,
    pretraining,
    quantization,
    reasoning,
    sft,
    tokenizer,
    tools,
    transfer,
)
from minillm.exercises.checking import NOT_ATTEMPTED, Case, CheckResult, Exercise, run_check

_MODULES = (autograd, tokenizer, attention, pretraining, objectives, transfer, sft, reasoning, tools, dpo,
            lora, quantization, kernels, modern_decoder, data_parallel)  # lessons 01 ... 16 in order
EXERCISES: dict[str, Exercise] = {ex.name: ex for m in _MODULES for ex in m.EXERCISES}


def check(name: str, fn: Callable) -> CheckResult:
    """Check the learner's ``fn`` for exercise ``name``; never raises for a wrong or unfinished answer."""
    if name not in EXERCISES:
        raise KeyError(f"no exercise {name!r}; the exercises are {sorted(EXERCISES)}")
    return run_check(EXERCISES[name], fn)


def by_lesson(lesson: int) -> list[Exercise]:
    """The exercises of one lesson, in the order the lesson meets them."""
    return [ex for ex in EXERCISES.values() if ex.lesson == lesson]


__all__ = ["EXERCISES", "NOT_ATTEMPTED", "Case", "CheckResult", "Exercise", "by_lesson", "check"]
