"""Gradient checking: the engine's gradients against float64 central differences.

For f: inputs → output, project the output on fixed random weights R (so every output element matters),
L = Σ R ⊙ f(x), and compare dL/dx from backward() with (L(x + ε) - L(x - ε)) / 2ε, element by element.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy

from minillm import backend as B
from minillm.tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """The analytic gradient disagrees with the numerical one; the message names the worst element."""


def _project(out: Tensor, R) -> float:
    return float((B.to_numpy(out.data).astype(numpy.float64) * R).sum())


def gradcheck(fn: Callable[..., Tensor], *inputs: Tensor, eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, seed: int = 0, name: str | None = None) -> bool:
    """True if ``fn``'s gradients w.r.t. every input that requires grad match central differences.

    Inputs that require grad must be float64. Raises GradcheckError with the op/input name, the worst
    element's index and both values.
    """
    name = name or getattr(fn, "__name__", "fn")
    checked = [(i, x) for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError(f"gradcheck({name}): no input requires grad")
    for i, x in checked:
        if x.dtype != numpy.float64:
            raise TypeError(f"gradcheck({name}): input {i} is {x.dtype}; central differences need float64")
    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck({name}): fn must return a Tensor, got {type(out).__name__}")
    R = numpy.random.default_rng(seed).standard_normal(out.shape)
    for _, x in checked:
        x.grad = None
    if not out.requires_grad:
        raise GradcheckError(f"gradcheck({name}): output does not depend on any input that requires grad")
    out.backward(B.asarray(R, dtype=out.dtype))
    for i, x in checked:
        analytic = numpy.zeros(x.shape) if x.grad is None else B.to_numpy(x.grad).astype(numpy.float64)
        numeric = numpy.zeros(x.shape)
        if not x.data.flags.c_contiguous:  # reshape(-1) must be a view for the perturbation to reach x
            x.data = B.xp.ascontiguousarray(x.data)
        flat = x.data.reshape(-1)  # a view: perturbing it perturbs x
        with no_grad():
            for j in range(flat.size):
                orig = flat[j].item()
                flat[j] = orig + eps
                plus = _project(fn(*inputs), R)
                flat[j] = orig - eps
                minus = _project(fn(*inputs), R)
                flat[j] = orig
                numeric.reshape(-1)[j] = (plus - minus) / (2 * eps)
        err = numpy.abs(analytic - numeric) - (atol + rtol * numpy.abs(numeric))
        if (err > 0).any() or not numpy.isfinite(analytic).all():
            bad = numpy.unravel_index(int(numpy.nanargmax(numpy.where(numpy.isfinite(err), err, numpy.inf))),
                                      x.shape)
            raise GradcheckError(
                f"gradcheck({name}) failed for input {i} of shape {x.shape}: "
                f"worst element {tuple(map(int, bad))} analytic {analytic[bad]:.6g} "
                f"vs numeric {numeric[bad]:.6g} "
                f"(atol={atol}, rtol={rtol}); {int((err > 0).sum())} of {err.size} elements off")
    return True
