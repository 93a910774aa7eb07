"""Lesson 01's exercises: a new op's backward (exp, tanh) and broadcasting's sum-back."""

from __future__ import annotations

import numpy

from minillm.exercises.checking import Case, Exercise, seeded
from minillm.tensor import Tensor, unbroadcast


def _leaf(a) -> Tensor:
    return Tensor(numpy.asarray(a, dtype=numpy.float64), requires_grad=True, dtype=numpy.float64)


def _op_cases(low: float, high: float, seed: int):
    """Odd shapes (a scalar, a single element, ragged matrices) and both ends of the range."""
    def cases():
        rng = seeded(seed)
        for shape in [(), (1,), (7,), (3, 5), (2, 3, 4)]:
            yield Case((_leaf(rng.uniform(low, high, shape)),))
        yield Case((_leaf(numpy.array([low, 0.0, high])),), label="the ends of the range and 0")
    return cases


def _unary(forward, local_grad, op: str):
    """An op built the engine's way: the forward value and, right beside it, its backward."""
    def fn(x: Tensor) -> Tensor:
        y = forward(x.data)
        out = Tensor._result(y, (x,), op)
        if out.requires_grad:
            out._backward = lambda g: x._accum(g * local_grad(x.data, y))
        return out
    return fn


EXP = Exercise(
    name="01.exp_backward", lesson=1,
    task="Write exp(x) as a new engine op: compute e^x from x.data, make the output with "
         "Tensor._result(value, (x,), 'exp'), and give it a backward that adds the upstream gradient g "
         "times the local derivative into x (x._accum). The derivative of e^x is e^x itself.",
    signature="def exp(x: Tensor) -> Tensor",
    reference=lambda x: x.exp(),
    cases=_op_cases(-5.0, 5.0, seed=101),
    gradcheck=True,
    mistakes={
        "no local gradient": (_unary(numpy.exp, lambda x, y: 1.0, "exp"),
                              "the backward passes g through unchanged: multiply it by d(e^x)/dx."),
        "derivative of x": (_unary(numpy.exp, lambda x, y: x, "exp"),
                            "the backward multiplies g by x; the derivative of e^x is e^x (the output)."),
        "exp of the gradient": (_unary(numpy.exp, lambda x, y: numpy.exp(y), "exp"),
                                "the backward takes e^(e^x); the local derivative is the output y itself."),
    },
)

TANH = Exercise(
    name="01.tanh_backward", lesson=1,
    task="Write tanh(x) as an engine op whose backward uses the output t = tanh(x): "
         "d tanh(x)/dx = 1 - t². Test the ends of the range: for |x| = 10 the gradient is almost 0.",
    signature="def tanh(x: Tensor) -> Tensor",
    reference=lambda x: x.tanh(),
    cases=_op_cases(-10.0, 10.0, seed=102),
    gradcheck=True,
    mistakes={
        "1 - t": (_unary(numpy.tanh, lambda x, y: 1 - y, "tanh"),
                  "the local derivative is 1 - t² (t squared), not 1 - t."),
        "1 - x²": (_unary(numpy.tanh, lambda x, y: 1 - x * x, "tanh"),
                   "the local derivative 1 - t² uses the output t = tanh(x), not the input x."),
        "sign flipped": (_unary(numpy.tanh, lambda x, y: y * y - 1, "tanh"),
                         "the sign is flipped: tanh rises everywhere, so its derivative is positive."),
    },
)


def _unbroadcast_cases():
    rng = seeded(103)
    pairs = [((3, 4), (4,)), ((3, 4), (3, 1)), ((3, 4), (1, 4)), ((3, 4), ()), ((2, 3, 4), (3, 1)),
             ((2, 3, 4), (1, 1, 4)), ((2, 3, 4), (2, 1, 1)), ((5, 2), (5, 2)), ((4, 1, 3), (1,))]
    for grad_shape, shape in pairs:
        yield Case((rng.standard_normal(grad_shape), shape), label=f"{grad_shape} -> {shape}")


def _leading_only(grad, shape):
    extra = grad.ndim - len(shape)
    return grad.sum(axis=tuple(range(extra))) if extra else grad


def _mean_back(grad, shape):
    extra = grad.ndim - len(shape)
    g = grad.mean(axis=tuple(range(extra))) if extra else grad
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.mean(axis=axes, keepdims=True) if axes else g


UNBROADCAST = Exercise(
    name="01.unbroadcast", lesson=1,
    task="Write unbroadcast(grad, shape): sum grad back to shape. Broadcasting copies an input along new "
         "leading axes and along its size-1 axes, so sum over the extra leading axes, then over every axis "
         "where shape has a 1 (keeping it as size 1).",
    signature="def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray",
    reference=unbroadcast,
    cases=_unbroadcast_cases,
    mistakes={
        "leading axes only": (_leading_only, "you summed the new leading axes; also sum every axis where "
                                             "the target shape has a 1 (keepdims=True)."),
        "mean instead of sum": (_mean_back, "each copy's gradient adds up: sum, don't average."),
    },
)

EXERCISES = [EXP, TANH, UNBROADCAST]
