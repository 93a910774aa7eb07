"""Every exercise's check can fail: the reference passes, an unfinished stub reads "not attempted yet",
and each registered mistake fails with its own hint. The checker never raises for what a learner wrote."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from minillm.exercises import EXERCISES, NOT_ATTEMPTED, by_lesson, check

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
NAMES = sorted(EXERCISES)
MISTAKES = [(name, m) for name in NAMES for m in EXERCISES[name].mistakes]


def _stub(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize("name", NAMES)
def test_the_reference_passes(name):
    from minillm.cuda.emulator import have_compiler

    if name == "14.tiled_matmul_cuda" and not have_compiler():
        pytest.skip("the CUDA exercise runs its kernel on the CPU emulator, which needs g++")
    result = check(name, EXERCISES[name].reference)
    assert result.passed, result.message
    assert result.function is EXERCISES[name].reference


@pytest.mark.parametrize("name", NAMES)
def test_a_stub_is_not_attempted_and_falls_back_to_minillm(name):
    result = check(name, _stub)
    assert not result.passed and NOT_ATTEMPTED in result.message
    assert result.function is EXERCISES[name].reference


@pytest.mark.parametrize("name,mistake", MISTAKES, ids=[f"{n}: {m}" for n, m in MISTAKES])
def test_each_registered_mistake_fails_with_its_own_hint(name, mistake):
    wrong, hint = EXERCISES[name].mistakes[mistake]
    result = check(name, wrong)
    assert not result.passed, f"{mistake!r} passes the check: the check cannot catch it"
    assert f"Hint: {hint}" in result.message, result.message
    assert result.function is EXERCISES[name].reference


@pytest.mark.parametrize("name", NAMES)
def test_a_crashing_or_odd_answer_is_reported_not_raised(name):
    def crashes(*args, **kwargs):
        raise ZeroDivisionError("boom")

    result = check(name, crashes)
    assert not result.passed and "raised ZeroDivisionError: boom" in result.message
    result = check(name, lambda *a, **k: object())
    assert not result.passed and result.message.startswith("✗")


def test_every_exercise_has_a_task_a_signature_and_mistakes():
    for name, ex in EXERCISES.items():
        assert re.fullmatch(r"\d\d\.[a-z0-9_]+", name) and int(name[:2]) == ex.lesson, name
        assert len(ex.task) > 40 and ex.signature.startswith("def "), name
        assert ex.mistakes, f"{name} registers no common mistake"
        assert len({hint for _, hint in ex.mistakes.values()}) == len(ex.mistakes), f"{name}: hints repeat"


def test_an_unknown_name_says_which_exist():
    with pytest.raises(KeyError, match="no exercise"):
        check("99.nothing", _stub)


def _exercise_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"
            and "### BEGIN SOLUTION" in "".join(c["source"])]


@pytest.mark.parametrize("lesson", sorted({ex.lesson for ex in EXERCISES.values()}))
def test_each_exercise_is_in_its_lesson_between_nbgrader_markers(lesson):
    path = next(LESSONS.glob(f"{lesson:02d}_*.ipynb"))
    cells = _exercise_cells(path)
    checked = [n for c in cells for n in re.findall(r'check\("([^"]+)"', c)]
    assert sorted(checked) == sorted(ex.name for ex in by_lesson(lesson)), path.name
    for cell in cells:
        assert cell.count("### BEGIN SOLUTION") == cell.count("### END SOLUTION") >= 1, path.name
        after = cell.split("### END SOLUTION")[-1]
        assert "check(" in after, f"{path.name}: a check must follow the solution"
