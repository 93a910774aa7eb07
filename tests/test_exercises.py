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


# ------------------------------------------------- lesson 15 (modern decoder): wrong answers a learner writes
def _np_rms_norm(x, weight, eps=1e-6):
    import numpy as np

    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * weight


def _np_rope(x, positions, theta=10000.0, interleaved=False, use_positions=True):
    import numpy as np

    h = x.shape[-1]
    pos = np.asarray(positions, dtype=float) if use_positions else np.arange(x.shape[-2], dtype=float)
    angle = pos[:, None] * theta ** (-2.0 * np.arange(h // 2) / h)
    cos, sin = np.cos(angle), np.sin(angle)
    if interleaved:
        out = np.empty_like(x)
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
        return out
    a, b = x[..., :h // 2], x[..., h // 2:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


def _np_kv_cache_bytes(shape, n_tokens, batch_size=1, bytes_per_value=2):
    return 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * n_tokens * batch_size * bytes_per_value


def _modern_wrong_answers():
    import numpy as np

    def rms_no_eps(x, weight, eps=1e-6):
        with np.errstate(all="ignore"):
            return x / np.sqrt((x * x).mean(axis=-1, keepdims=True)) * weight

    def rms_layernorm_style(x, weight, eps=1e-6):
        return _np_rms_norm(x - x.mean(axis=-1, keepdims=True), weight, eps)

    def rope_interleaved(x, positions, theta=10000.0):
        return _np_rope(x, positions, theta, interleaved=True)

    def rope_positions_ignored(x, positions, theta=10000.0):
        return _np_rope(x, positions, theta, use_positions=False)

    def rope_no_rotation(x, positions, theta=10000.0):
        return x

    return [
        ("15.rms_norm", rms_no_eps, "eps is missing"),
        ("15.rms_norm", rms_layernorm_style, "subtracted the mean"),
        ("15.apply_rope", rope_interleaved, "neighbouring elements"),
        ("15.apply_rope", rope_positions_ignored, "instead of the positions given"),
        ("15.apply_rope", rope_no_rotation, None),
        ("15.repeat_kv", lambda x, n: np.tile(x, (1, n, 1, 1)), "np.tile"),
        ("15.repeat_kv", lambda x, n: np.concatenate([x] * n, axis=1), "np.tile"),
        ("15.repeat_kv", lambda x, n: x, None),
        ("15.kv_cache_bytes", lambda s, t, batch_size=1, bytes_per_value=2:
         _np_kv_cache_bytes(s, t, batch_size, bytes_per_value) // 2, "keys"),
        ("15.kv_cache_bytes", lambda s, t, batch_size=1, bytes_per_value=2:
         2 * s.n_layers * s.n_heads * s.head_dim * t * batch_size * bytes_per_value, "query head"),
    ]


def test_modern_decoder_checks_pass_a_learners_correct_numpy():
    import numpy as np

    right = {"15.rms_norm": _np_rms_norm, "15.apply_rope": _np_rope,
             "15.repeat_kv": lambda x, n: np.repeat(x, n, axis=1), "15.kv_cache_bytes": _np_kv_cache_bytes}
    assert sorted(right) == sorted(ex.name for ex in by_lesson(15))
    for name, fn in right.items():
        result = check(name, fn)
        assert result.passed, result.message
        assert result.function is fn


@pytest.mark.parametrize("case", range(10))
def test_modern_decoder_checks_fail_each_deliberate_wrong_answer(case):
    name, wrong, hint_words = _modern_wrong_answers()[case]
    result = check(name, wrong)
    assert not result.passed and result.message.startswith("✗"), f"{name}: a wrong answer passed"
    assert result.function is EXERCISES[name].reference
    if hint_words:
        assert "Hint:" in result.message and hint_words in result.message, result.message
