"""How an exercise is checked: the learner's function against a reference on generated inputs.

An ``Exercise`` names the function the learner writes (``signature``), the reference it must agree with,
the inputs to try (``cases``: seeded draws with odd shapes, edge values and large magnitudes), how to
compare two outputs, and ``mistakes``: the usual wrong versions, each with the hint a learner who made it
should read. ``check`` never raises on a wrong answer: it says which case failed (the inputs' shapes, the
expected and received values or the largest error) and, when the wrong output is exactly what a known
mistake produces, that mistake's hint. It never prints the solution.
"""

from __future__ import annotations

import copy
import functools
import re
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy

NOT_ATTEMPTED = "not attempted yet"


@dataclass(frozen=True)
class Case:
    """One call: ``fn(*args, **kwargs)``; ``label`` says what is special about it (shown on failure)."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    label: str = ""


@dataclass(frozen=True)
class Exercise:
    """One task a learner solves in a lesson, with everything needed to check it."""

    name: str                      # "<lesson>.<what>", e.g. "11.dpo_loss"
    lesson: int
    task: str                      # one paragraph: what to write and why
    signature: str                 # the function the learner implements
    reference: Callable            # minillm's own function, or one written for the exercise
    cases: Callable[[], Iterable[Case]]
    mistakes: dict[str, tuple[Callable, str]] = field(default_factory=dict)  # name -> (wrong fn, hint)
    compare: Callable[[Any, Any], str | None] | None = None   # None: `same_values` (rtol 1e-5)
    gradcheck: bool = False        # also check the learner's backward with float64 central differences
    # harness(fn, *args, **kwargs): how a case runs fn, for a function that is one part of a computation the
    # checker carries out (lesson 16's ring runs the learner's chunk schedule). None: fn(*args, **kwargs)
    harness: Callable | None = None

    @property
    def function_name(self) -> str:
        """The name the learner's function has (from ``signature``)."""
        return self.signature.split("def ", 1)[-1].split("(", 1)[0].strip()

    def comparison(self, got: Any, want: Any) -> str | None:
        return (self.compare or same_values)(got, want)


@dataclass(frozen=True)
class CheckResult:
    """``passed``, the ``message`` a learner reads, and ``function``: theirs once it passes, else the
    reference, so the lesson's later cells run either way."""

    passed: bool
    message: str
    function: Callable | None = None

    def __str__(self) -> str:
        return self.message


# ------------------------------------------------------------------------------------------ comparing
def same_values(got: Any, want: Any, rtol: float = 1e-5, atol: float = 1e-6) -> str | None:
    """None when ``got`` equals ``want`` (arrays and numbers within tolerance, containers element by
    element), else a short description of the first difference."""
    if isinstance(want, (tuple, list)) and not _is_array(want):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"expected a sequence of {len(want)} items, got {_describe(got)}"
        for i, (g, w) in enumerate(zip(got, want)):
            why = same_values(g, w, rtol, atol)
            if why:
                return f"output {i + 1} of {len(want)}: {why}"
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return f"expected a dict with keys {sorted(want)}, got {_describe(got)}"
        for k in want:
            why = same_values(got[k], want[k], rtol, atol)
            if why:
                return f"[{k!r}]: {why}"
        return None
    if isinstance(want, (str, bytes, bool)) or want is None:
        return None if got == want and type(got) is type(want) else f"expected {want!r}, got {_short(got)}"
    w = numpy.asarray(_plain(want))
    try:
        g = numpy.asarray(_plain(got))
    except Exception:  # noqa: BLE001 - anything the learner returned
        return f"expected an array of shape {w.shape}, got {_describe(got)}"
    if g.shape != w.shape:
        return f"expected shape {w.shape}, got shape {g.shape}"
    if w.dtype.kind in "iub" or g.dtype.kind not in "fciub":
        if g.dtype.kind not in "iub" or not numpy.array_equal(g, w):
            return f"expected {_short(w)}, got {_short(g)}"
        return None
    g64, w64 = g.astype(numpy.float64), w.astype(numpy.float64)
    if not numpy.isfinite(g64).all() and numpy.isfinite(w64).all():
        return f"got non-finite values (nan/inf) where {_short(w)} was expected"
    with numpy.errstate(invalid="ignore"):  # inf - inf where both overflowed the same way
        err = numpy.abs(g64 - w64)
    bad = err > atol + rtol * numpy.abs(w64)
    if bad.any():
        i = numpy.unravel_index(numpy.argmax(numpy.where(bad, err, -1)), err.shape) if err.ndim else ()
        where = f" at index {tuple(int(j) for j in i)}" if err.ndim else ""
        return (f"max error {float(err.max()):.3g}{where}: expected {float(w64[i]):.6g}, "
                f"got {float(g64[i]):.6g}")
    return None


def same_values_and_nonfinite(got: Any, want: Any) -> str | None:
    """``same_values``, and nan/inf exactly where the expected output has them (so an overflow that the
    reference avoids, or one it shows on purpose, counts)."""
    why = same_values(got, want)
    if why is not None:
        return why
    g, w = numpy.isfinite(numpy.asarray(got, dtype=numpy.float64)), numpy.isfinite(numpy.asarray(want))
    if not numpy.array_equal(g, w):
        i = tuple(int(j) for j in numpy.argwhere(g != w)[0])
        return f"at index {i}: expected {numpy.asarray(want)[i]}, got {numpy.asarray(got)[i]}"
    return None


def quiet(fn: Callable) -> Callable:
    """A registered mistake that overflows on purpose, run without NumPy's warnings in the notebook."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with numpy.errstate(all="ignore"):
            return fn(*args, **kwargs)
    return wrapped


def _plain(x: Any) -> Any:
    """A Tensor's array, a CuPy array on the host, or ``x``."""
    from minillm.backend import to_numpy

    return to_numpy(x) if hasattr(x, "data") or hasattr(x, "get") else x


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _short(x: Any, limit: int = 70) -> str:
    s = numpy.array2string(x, threshold=8, precision=4) if isinstance(x, numpy.ndarray) else repr(x)
    s = " ".join(s.split())
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _describe(x: Any) -> str:
    if _is_array(x):
        return f"{type(x).__name__} of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {_short(x)}"


def describe_inputs(case: Case) -> str:
    """The inputs of a case as a learner can read them: shapes for arrays, values for small things."""
    parts = [_describe(a) if _is_array(a) or hasattr(a, "data") else _short(a, 40) for a in case.args]
    parts += [f"{k}={_short(v, 30)}" for k, v in case.kwargs.items()]
    if not parts:
        return case.label
    return ", ".join(parts) + (f" ({case.label})" if case.label else "")


# --------------------------------------------------------------------------------------------- running
def _call(fn: Callable, case: Case, harness: Callable | None = None) -> Any:
    """``fn`` on a deep copy of the case's inputs, so a function that changes its inputs in place cannot
    change what the reference or the next case sees; through ``harness`` when the exercise has one."""
    args, kwargs = copy.deepcopy((case.args, case.kwargs))
    return fn(*args, **kwargs) if harness is None else harness(fn, *args, **kwargs)


def _observe(exercise: Exercise, fn: Callable, case: Case) -> Any:
    """What ``fn`` does on a case: its output, and for a backward exercise also the gradient its backward
    sends to each input Tensor for a fixed random upstream gradient (so a wrong backward shows)."""
    if not exercise.gradcheck:
        return _call(fn, case, exercise.harness)
    from minillm.tensor import Tensor

    args, kwargs = copy.deepcopy((case.args, case.kwargs))
    out = fn(*args, **kwargs)
    if not isinstance(out, Tensor):
        raise TypeError(f"expected a Tensor back (the engine needs one for backward), got "
                        f"{type(out).__name__}")
    upstream = seeded(1).standard_normal(out.shape)
    (out * Tensor(upstream, dtype=out.dtype)).sum().backward()
    grads = [numpy.zeros(a.shape) if a.grad is None else numpy.asarray(a.grad)
             for a in args if isinstance(a, Tensor)]
    return out.numpy(), grads


def _mistake_hint(exercise: Exercise, failing: list[tuple[Case, Any]]) -> str | None:
    """The hint of the known mistake that produces exactly the learner's outputs on the failing cases."""
    candidates = dict(exercise.mistakes)
    for case, got in failing:
        kept = {}
        for name, (wrong, hint) in candidates.items():
            try:
                with warnings.catch_warnings(), numpy.errstate(all="ignore"):  # the mistakes' own overflows
                    warnings.simplefilter("ignore")
                    if exercise.comparison(got, _observe(exercise, wrong, case)) is None:
                        kept[name] = (wrong, hint)
            except Exception:  # noqa: BLE001 - a mistake that fails on this case does not match
                pass
        candidates = kept
        if len(candidates) <= 1:
            break
    return next(iter(candidates.values()))[1] if candidates else None


def _first_line(e: BaseException) -> str:
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" (line {where.lineno} of your code)" if where and where.filename.startswith("<ipython") else ""
    return f"{type(e).__name__}: {e}{at}"


def run_check(exercise: Exercise, fn: Callable) -> CheckResult:
    """Check ``fn`` against ``exercise``: never raises for what ``fn`` does."""
    fallback = f"(until it passes, the cells below use minillm's {exercise.function_name})"
    cases = list(exercise.cases())
    failing: list[tuple[Case, Any]] = []
    first_why = ""
    for i, case in enumerate(cases, 1):
        want = _observe(exercise, exercise.reference, case)
        try:
            got = _observe(exercise, fn, case)
        except NotImplementedError:
            return CheckResult(False, f"… {exercise.name}: {NOT_ATTEMPTED} {fallback}", exercise.reference)
        except Exception as e:  # noqa: BLE001 - the learner's error is reported, not raised
            where = _case_words(i, len(cases), case)
            return CheckResult(False, f"✗ {exercise.name}: {where} raised {_first_line(e)}\n  {fallback}",
                               exercise.reference)
        why = exercise.comparison(got, want)
        if why is not None and exercise.gradcheck:  # (forward, [grad of each input]) -> words
            why = re.sub(r"^output 2 of 2: output (\d+) of \d+: ",
                         lambda m: f"the gradient sent to input {int(m[1]) - 1}: ", why)
            why = why.replace("output 1 of 2: ", "the forward value: ", 1)
        if why is None and exercise.gradcheck:
            why = _gradient_problem(fn, case)
        if why is not None:
            failing.append((case, got))
            if len(failing) == 1:
                first_why = f"{_case_words(i, len(cases), case)}: {why}"
    if not failing:
        cases_word = "the case agrees" if len(cases) == 1 else f"all {len(cases)} cases agree"
        return CheckResult(True, f"✓ {exercise.name}: {cases_word} with minillm", fn)
    hint = _mistake_hint(exercise, failing)
    more = f"; {len(failing) - 1} more cases fail" if len(failing) > 1 else ""
    msg = f"✗ {exercise.name}: {first_why}{more}." + (f"\n  Hint: {hint}" if hint else "")
    return CheckResult(False, f"{msg}\n  {fallback}", exercise.reference)


def _case_words(i: int, n: int, case: Case) -> str:
    inputs = describe_inputs(case)
    return (f"case {i} of {n}" if n > 1 else "the check") + (f" ({inputs})" if inputs else "")


def _gradient_problem(fn: Callable, case: Case) -> str | None:
    """float64 central differences of ``sum(fn(x) * w)`` against the backward ``fn`` builds."""
    from minillm import GradcheckError, gradcheck

    try:
        gradcheck(lambda *xs: fn(*xs, **case.kwargs), *copy.deepcopy(case.args))
    except GradcheckError as e:
        return f"the backward disagrees with central differences: {str(e).splitlines()[0]}"
    except Exception as e:  # noqa: BLE001
        return f"the backward raised {_first_line(e)}"
    return None


def seeded(seed: int) -> numpy.random.Generator:
    """The generator every exercise draws its cases from (fixed seeds: a learner sees the same cases)."""
    return numpy.random.default_rng(seed)


__all__ = ["NOT_ATTEMPTED", "Case", "CheckResult", "Exercise", "describe_inputs", "quiet", "run_check",
           "same_values", "same_values_and_nonfinite", "seeded"]
