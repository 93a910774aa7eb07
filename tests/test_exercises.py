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


# ------------------------------------ lesson 16 (data parallelism and ZeRO): wrong answers a learner writes
def _np_ring_chunk(rank, step, world_size, phase):
    return (rank - step) % world_size if phase == "reduce-scatter" else (rank + 1 - step) % world_size


def _np_zero1_step(params, grads, m, v, step, rank, world_size, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                   weight_decay=0.01, l2=False, offset=True):
    import numpy as np

    s = -(-params.size // world_size)
    lo = rank * s if offset else 0
    p = np.pad(params, (0, s * world_size - params.size))[lo:lo + s]
    g = np.pad(grads, (0, s * world_size - grads.size))[lo:lo + s]
    if l2:
        g = g + weight_decay * p
    m = betas[0] * m + (1 - betas[0]) * g
    v = betas[1] * v + (1 - betas[1]) * g ** 2
    update = (m / (1 - betas[0] ** step)) / (np.sqrt(v / (1 - betas[1] ** step)) + eps)
    return (p if l2 else p * (1 - lr * weight_decay)) - lr * update, m, v


def _np_zero_bytes(n_params, world_size, stage, bytes_per_value=4, shard=None):
    s = -(-n_params // world_size) if shard is None else shard
    return {"params": bytes_per_value * (s if stage == 3 else n_params),
            "grads": bytes_per_value * (s if stage >= 2 else n_params),
            "optimizer": 2 * bytes_per_value * (s if stage >= 1 else n_params)}


def _data_parallel_wrong_answers():
    def ring_counting_up(r, t, n, phase):
        return (r + t) % n if phase == "reduce-scatter" else (r + 1 + t) % n

    def ring_no_mod(r, t, n, phase):
        return r - t if phase == "reduce-scatter" else r + 1 - t

    def zero1_moments_dropped(params, grads, m, v, step, *args, **kwargs):
        return _np_zero1_step(params, grads, m * 0, v * 0, step, *args, **kwargs)

    def bytes_floor(n, w, stage, bytes_per_value=4):
        return _np_zero_bytes(n, w, stage, bytes_per_value, shard=n // w)

    def bytes_one_moment(n, w, stage, bytes_per_value=4):
        out = _np_zero_bytes(n, w, stage, bytes_per_value)
        return {**out, "optimizer": out["optimizer"] // 2}

    def bytes_not_cumulative(n, w, stage, bytes_per_value=4):  # stage k shards only thing k
        s = -(-n // w)
        return {"params": bytes_per_value * (s if stage == 3 else n),
                "grads": bytes_per_value * (s if stage == 2 else n),
                "optimizer": 2 * bytes_per_value * (s if stage == 1 else n)}

    return [
        ("16.ring_chunk", lambda r, t, n, phase: r if phase == "reduce-scatter" else (r + 1) % n,
         "own chunk"),
        ("16.ring_chunk", lambda r, t, n, phase: (r - t) % n, "never finished"),
        ("16.ring_chunk", ring_counting_up, "wrong way round"),
        ("16.ring_chunk", ring_no_mod, None),
        ("16.zero1_step", lambda *a, **k: _np_zero1_step(*a, **k, l2=True), "Adam with L2"),
        ("16.zero1_step", lambda *a, **k: _np_zero1_step(*a, **k, offset=False), "owns [r·s, (r + 1)·s)"),
        ("16.zero1_step", zero1_moments_dropped, None),
        ("16.zero_bytes", bytes_floor, "ceil(Ψ / N)"),
        ("16.zero_bytes", bytes_one_moment, "two moments"),
        ("16.zero_bytes", bytes_not_cumulative, None),
    ]


def test_data_parallel_checks_pass_a_learners_correct_numpy():
    right = {"16.ring_chunk": _np_ring_chunk, "16.zero1_step": _np_zero1_step,
             "16.zero_bytes": _np_zero_bytes}
    assert sorted(right) == sorted(ex.name for ex in by_lesson(16))
    for name, fn in right.items():
        result = check(name, fn)
        assert result.passed, result.message
        assert result.function is fn


def test_the_ring_check_cannot_be_passed_without_the_rings_schedule():
    """The checker runs the ring with the learner's schedule: a consistent ring that starts elsewhere (every
    chunk summed correctly) still fails, and a chunk index out of range is an error that names the call."""
    shifted = check("16.ring_chunk", lambda r, t, n, phase: _np_ring_chunk(r + 1, t, n, phase))
    assert not shifted.passed and "does add up every chunk" in shifted.message, shifted.message
    no_mod = check("16.ring_chunk", lambda r, t, n, phase: r - t)
    assert not no_mod.passed and "returned chunk -1" in no_mod.message, no_mod.message


@pytest.mark.parametrize("case", range(10))
def test_data_parallel_checks_fail_each_deliberate_wrong_answer(case):
    name, wrong, hint_words = _data_parallel_wrong_answers()[case]
    result = check(name, wrong)
    assert not result.passed and result.message.startswith("✗"), f"{name}: a wrong answer passed"
    assert result.function is EXERCISES[name].reference
    if hint_words:
        assert "Hint:" in result.message and hint_words in result.message, result.message
