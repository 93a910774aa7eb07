"""Every differentiable op against float64 central differences, on hypothesis-generated inputs.

One table, ``OPS``: each row names an op, the function to check and a strategy that draws its inputs
(``args`` with the float64 tensors that require grad, and constant ``kwargs`` such as an axis or a mask).
Adding an op to the table is all it takes to gradient-check it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from strategies import (
    arrays,
    axes,
    broadcastable_shapes,
    broadcastable_to,
    class_targets,
    float64_module,
    index_keys,
    masks,
    matmul_shapes,
    positive_arrays,
    shapes,
    tensor64,
)

import minillm
from minillm import F, GradcheckError, Tensor, gradcheck, nn
from minillm.tensor import concat, stack, where


@dataclass(frozen=True)
class Op:
    """One row of the table: ``fn(*args, **kwargs)`` with (args, kwargs) drawn from ``inputs``."""

    name: str
    fn: Callable[..., Tensor]
    inputs: st.SearchStrategy  # draws (args: tuple, kwargs: dict)
    tol: dict = field(default_factory=dict)  # eps / atol / rtol passed to gradcheck

    def __repr__(self) -> str:
        return self.name


# ------------------------------------------------------------------------------------ input strategies
T = tensor64


@st.composite
def one(draw, min_dims: int = 0, max_dims: int = 3, positive: bool = False, **values):
    """A single float64 tensor; ``positive`` for log/sqrt/pow, ``values`` go to ``arrays``."""
    shape = draw(shapes(min_dims, max_dims))
    x = draw(positive_arrays(shape) if positive else arrays(shape, **values))
    return (T(x),), {}


@st.composite
def two(draw, a: dict | None = None, b: dict | None = None, positive_a: bool = False):
    """Two tensors of mutually broadcastable shapes (different ranks and size-1 dims included)."""
    sa, sb = draw(broadcastable_shapes())
    xa = draw(positive_arrays(sa) if positive_a else arrays(sa, **(a or {})))
    return (T(xa), T(draw(arrays(sb, **(b or {}))))), {}


@st.composite
def with_constant(draw, const: st.SearchStrategy, **values):
    """A tensor and a constant (Python number or broadcastable ndarray) for the reflected operators."""
    (x,), _ = draw(one(**values))
    return (x,), {"c": draw(const)}


@st.composite
def reduction(draw, unbiased: bool = False, **values):
    """A tensor plus ``axis`` (None, int or tuple) and ``keepdims``."""
    shape = draw(shapes(1, 3))
    kw = {"axis": draw(axes(len(shape))), "keepdims": draw(st.booleans())}
    if unbiased:  # n - 1 in the denominator needs at least two reduced elements
        kw["unbiased"] = draw(st.booleans()) and _reduced_count(shape, kw["axis"]) > 1
    return (T(draw(arrays(shape, **values))),), kw


def _axes_set(axis, ndim: int) -> set:
    if axis is None:
        return set(range(ndim))
    return {a % ndim for a in (axis if isinstance(axis, tuple) else (axis,))}


def _reduced_count(shape, axis) -> int:
    return math.prod(shape[i] for i in _axes_set(axis, len(shape)))


@st.composite
def last_axis(draw, min_dims: int = 1, keepdims: bool = False, **values):
    """A tensor and an ``axis`` (softmax-style functions), optionally ``keepdims``."""
    shape = draw(shapes(min_dims, 3))
    kw = {"axis": draw(st.integers(-len(shape), len(shape) - 1))}
    if keepdims:
        kw["keepdims"] = draw(st.booleans())
    return (T(draw(arrays(shape, **values))),), kw


@st.composite
def reshape_input(draw):
    shape = draw(shapes(0, 3))
    size = math.prod(shape)
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    d = draw(st.sampled_from(divisors))
    new = draw(st.sampled_from([(size,), (d, size // d), (size // d, 1, d), (-1, d), tuple(reversed(shape))]))
    return (T(draw(arrays(shape))),), {"shape": new}


@st.composite
def permutation(draw, min_dims: int = 0):
    shape = draw(shapes(min_dims, 3))
    return (T(draw(arrays(shape))),), {"perm": tuple(draw(st.permutations(range(len(shape)))))}


@st.composite
def swap(draw):
    shape = draw(shapes(2, 3))
    i, j = (draw(st.integers(-len(shape), len(shape) - 1)) for _ in range(2))
    return (T(draw(arrays(shape))),), {"i": i, "j": j}


@st.composite
def indexed(draw):
    shape = draw(shapes(1, 3))
    return (T(draw(arrays(shape))),), {"key": draw(index_keys(shape))}


@st.composite
def pieces(draw, same_shape: bool = False):
    """1-3 tensors that agree on every axis except ``axis`` (or on all axes, for stack)."""
    shape = draw(shapes(1, 3))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    n = draw(st.integers(1, 3))
    ts = []
    for _ in range(n):
        s = list(shape)
        if not same_shape:
            s[axis] = draw(st.integers(1, 3))
        ts.append(T(draw(arrays(tuple(s)))))
    if same_shape:
        axis = draw(st.integers(-len(shape) - 1, len(shape)))
    return tuple(ts), {"axis": axis}


@st.composite
def chosen(draw, scalar_b: bool = False):
    """where(cond, a, b): a boolean condition broadcastable with a and b."""
    sc, sa, sb = draw(broadcastable_shapes(3))
    cond = draw(masks(sc))
    a = T(draw(arrays(sa)))
    if scalar_b:
        return (a,), {"cond": cond, "b": draw(st.floats(-2, 2))}
    return (a, T(draw(arrays(sb)))), {"cond": cond}


@st.composite
def masked(draw):
    shape = draw(shapes(0, 3))
    mshape = draw(broadcastable_to(shape))
    return (T(draw(arrays(shape))),), {"mask": draw(masks(mshape)),
                                       "value": draw(st.floats(-1e4, 1e4))}


@st.composite
def logits_targets(draw, ignore: bool = True, reductions: bool = True, smoothing: bool = True):
    """Logits (..., C) and integer targets (...), some ignored; reduction and label_smoothing."""
    lead = draw(shapes(0, 2))
    C = draw(st.integers(2, 5))
    kw = {"targets": draw(class_targets(lead, C, ignore_index=-100 if ignore else None))}
    if reductions:
        kw["reduction"] = draw(st.sampled_from(["mean", "sum", "none"]))
    if smoothing:
        kw["label_smoothing"] = draw(st.sampled_from([0.0, 0.1, 0.3]))
    return (T(draw(arrays((*lead, C), low=-4, high=4))),), kw


@st.composite
def normed(draw, affine: str = "both"):
    """x (..., D) and, depending on ``affine``, a weight and a bias of shape (D,)."""
    shape = draw(shapes(1, 3, min_side=1))
    D = shape[-1]
    args = [T(draw(arrays(shape)))]
    use_w = affine in ("both", "weight") or (affine == "any" and draw(st.booleans()))
    use_b = affine == "both" or (affine == "any" and draw(st.booleans()))
    args.append(T(draw(arrays((D,), low=0.5, high=2))) if use_w else None)
    if affine != "weight":
        args.append(T(draw(arrays((D,)))) if use_b else None)
    return tuple(args), {}


@st.composite
def embedding_input(draw):
    V, D = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    ids = draw(hnp.arrays(np.int64, draw(shapes(0, 2)), elements=st.integers(0, V - 1)))  # repeats welcome
    return (T(draw(arrays((V, D)))),), {"ids": ids}


@st.composite
def attention_input(draw):
    """q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv) with Tq != Tk allowed; mask, is_causal, bias, scale."""
    batch = draw(shapes(0, 2, max_side=2))
    Tq, Tk, d, dv = (draw(st.integers(1, 4)) for _ in range(4))
    q, k, v = (T(draw(arrays((*batch, *s)))) for s in ((Tq, d), (Tk, d), (Tk, dv)))
    kw = {"is_causal": draw(st.booleans()), "scale": draw(st.sampled_from([None, 0.5]))}
    if draw(st.booleans()):
        kw["mask"] = draw(masks(draw(broadcastable_to((*batch, Tq, Tk)))))
    args = (q, k, v)
    if draw(st.booleans()):  # an additive bias that also gets a gradient (T5 relative positions)
        args += (T(draw(arrays(draw(broadcastable_to((*batch, Tq, Tk)))))),)
    return args, kw


@st.composite
def rope_input(draw):
    """x (..., T, hs) with hs even, and the (cos, sin) of T positions starting anywhere (a cached call)."""
    batch = draw(shapes(0, 2, max_side=2))
    T_, hs = draw(st.integers(1, 4)), 2 * draw(st.integers(1, 3))
    start, theta = draw(st.integers(0, 50)), draw(st.sampled_from([10.0, 10000.0]))
    cos, sin = F.rope_angles(hs, np.arange(start, start + T_), theta)
    return (T(draw(arrays((*batch, T_, hs)))),), {"cos": cos, "sin": sin}


@st.composite
def gqa_input(draw):
    """q (B, nh, Tq, d) and k, v (B, nkv, Tk, d) with nkv dividing nh (multi-query at nkv = 1)."""
    Bsz, nkv, rep = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    Tq, Tk, d = (draw(st.integers(1, 3)) for _ in range(3))
    q, k, v = (T(draw(arrays(s))) for s in ((Bsz, nkv * rep, Tq, d), (Bsz, nkv, Tk, d), (Bsz, nkv, Tk, d)))
    return (q, k, v), {"is_causal": draw(st.booleans()), "enable_gqa": True}


@st.composite
def repeat_input(draw):
    (x,), _ = draw(one(min_dims=4, max_dims=4))
    return (x,), {"n_rep": draw(st.integers(1, 3))}


@st.composite
def llama_block_input(draw):
    """A float64 Llama block (RMSNorm, RoPE attention with shared kv heads, SwiGLU), x (B, T, C), and its
    parameters as checked inputs."""
    from minillm.models.llama import LlamaBlock, LlamaConfig

    n_heads, n_kv = draw(st.sampled_from([(1, 1), (2, 1), (2, 2)]))
    c = LlamaConfig(vocab_size=5, context_length=8, d_model=2 * n_heads, n_heads=n_heads, n_kv_heads=n_kv,
                    n_layers=1, d_ff=3, rms_norm_eps=0.1)  # near-0 residual: tiny eps is too curved
    block = float64_module(LlamaBlock(c))
    for p in block.parameters():
        p.data = draw(arrays(p.shape, low=-1.5, high=1.5))
    x = T(draw(arrays((draw(st.integers(1, 2)), draw(st.integers(1, 3)), c.d_model))))
    return (x, *block.parameters()), {"layer": block}


def llama_block_fn(x, *params, layer):
    cos, sin = F.rope_angles(layer.attn.head_dim, np.arange(x.shape[-2]))
    return layer(x, cos, sin)[0]


@st.composite
def linear_input(draw, bias: bool = True):
    lead = draw(shapes(0, 2))
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    args = (T(draw(arrays((*lead, n_in)))), T(draw(arrays((n_out, n_in)))))
    if bias:
        args += (T(draw(arrays((n_out,)))),)
    return args, {}


@st.composite
def layer_input(draw, make: Callable[[int], nn.Module], ids: bool = False):
    """A float64 layer built by ``make(dim)``, an input for it, and its parameters as checked inputs."""
    dim = draw(st.integers(1, 4))
    layer = float64_module(make(dim))
    for p in layer.parameters():  # non-trivial weights (LayerNorm starts at exactly 1 and 0)
        p.data = draw(arrays(p.shape, low=-1.5, high=1.5))
    lead = draw(shapes(0, 2))
    if ids:
        x = draw(hnp.arrays(np.int64, lead, elements=st.integers(0, dim - 1)))
    else:
        x = T(draw(arrays((*lead, dim))))
    return (x, *layer.parameters()), {"layer": layer}


# ------------------------------------------------------------------------------------ the functions
def pow_fn(x, p):
    return x ** p


def dropout_fn(x, p, seed):
    minillm.manual_seed(seed)  # the same mask on every call, so the function is differentiable
    return F.dropout(x, p, training=True)


def cross_entropy_fn(logits, targets, **kw):
    return F.cross_entropy(logits, targets, **kw)


def attention_fn(q, k, v, bias=None, **kw):
    return F.scaled_dot_product_attention(q, k, v, bias=bias, **kw)


def attention_dropout_fn(q, k, v, bias=None, p=0.3, seed=0, **kw):
    minillm.manual_seed(seed)  # the same dropped probabilities on every call
    return F.scaled_dot_product_attention(q, k, v, bias=bias, dropout_p=p, **kw)


def layer_fn(x, *params, layer):
    return layer(x)


NONZERO = {"away_from": (0.0,), "margin": 0.5}  # |x| >= 0.5: denominators
KINK0 = {"away_from": (0.0,), "margin": 0.01}  # keep eps-perturbations on one side of a kink at 0
SCALARS = st.floats(-3, 3, allow_nan=False).filter(lambda c: abs(c) > 1e-3)

OPS = [
    # ---- arithmetic, with broadcasting
    Op("add", lambda a, b: a + b, two()),
    Op("sub", lambda a, b: a - b, two()),
    Op("mul", lambda a, b: a * b, two()),
    Op("truediv", lambda a, b: a / b, two(b=NONZERO)),
    Op("pow_scalar", pow_fn, one(positive=True).flatmap(
        lambda ak: st.floats(-2.5, 2.5).map(lambda p: (ak[0], {"p": p})))),
    Op("pow_int_signed_base", pow_fn, one().flatmap(
        lambda ak: st.sampled_from([1, 2, 3]).map(lambda p: (ak[0], {"p": p})))),
    Op("pow_tensor_exponent", lambda a, b: a ** b, two(positive_a=True)),
    Op("neg", lambda x: -x, one()),
    Op("radd", lambda x, c: c + x, with_constant(SCALARS)),
    Op("rsub", lambda x, c: c - x, with_constant(SCALARS)),
    Op("rmul", lambda x, c: c * x, with_constant(SCALARS)),
    Op("rtruediv", lambda x, c: c / x, with_constant(SCALARS, **NONZERO)),
    Op("ndarray_minus_tensor", lambda x, c: c - x, with_constant(arrays((2, 1, 1, 1)))),
    Op("matmul", lambda a, b: a @ b, matmul_shapes().flatmap(
        lambda s: st.tuples(arrays(s[0]), arrays(s[1])).map(lambda ab: ((T(ab[0]), T(ab[1])), {})))),
    Op("rmatmul_ndarray", lambda b, a: a @ b, matmul_shapes(vectors=False).flatmap(
        lambda s: st.tuples(arrays(s[0]), arrays(s[1])).map(lambda ab: ((T(ab[1]),), {"a": ab[0]})))),
    # ---- reductions
    Op("sum", lambda x, **kw: x.sum(**kw), reduction()),
    Op("mean", lambda x, **kw: x.mean(**kw), reduction()),
    Op("max", lambda x, **kw: x.max(**kw), reduction(distinct=True)),
    Op("var", lambda x, **kw: x.var(**kw), reduction(unbiased=True)),
    # ---- elementwise
    Op("exp", lambda x: x.exp(), one()),
    Op("log", lambda x: x.log(), one(positive=True)),
    Op("sqrt", lambda x: x.sqrt(), one(positive=True)),
    Op("tanh", lambda x: x.tanh(), one()),
    Op("abs", lambda x: x.abs(), one(**KINK0)),
    Op("sigmoid", lambda x: x.sigmoid(), one(low=-8, high=8)),
    Op("clip", lambda x: x.clip(-0.5, 0.75), one(away_from=(-0.5, 0.75), margin=0.01)),
    Op("clip_lower_only", lambda x: x.clip(0.25, None), one(away_from=(0.25,), margin=0.01)),
    # ---- shape
    Op("reshape", lambda x, shape: x.reshape(shape), reshape_input()),
    Op("view", lambda x, shape: x.view(*shape), reshape_input()),
    Op("transpose_permutation", lambda x, perm: x.transpose(perm), permutation()),
    Op("transpose_swap_two_axes", lambda x, i, j: x.transpose(i, j), swap()),
    Op(".T", lambda x: x.T, one()),
    Op("permute", lambda x, perm: x.permute(*perm), permutation(min_dims=1)),
    Op("getitem", lambda x, key: x[key], indexed()),
    Op("concat", lambda *ts, axis: concat(ts, axis=axis), pieces()),
    Op("stack", lambda *ts, axis: stack(ts, axis=axis), pieces(same_shape=True)),
    Op("where", lambda a, b, cond: where(cond, a, b), chosen()),
    Op("where_scalar_branch", lambda a, cond, b: where(cond, a, b), chosen(scalar_b=True)),
    Op("masked_fill", lambda x, mask, value: x.masked_fill(mask, value), masked()),
    Op("astype_float64", lambda x: x.astype(np.float64) * 1.0, one()),
    Op("astype_float32_round_trip", lambda x: x.astype(np.float32).astype(np.float64), one(),
       tol={"eps": 1e-2, "atol": 1e-4, "rtol": 1e-3}),
    # ---- functional
    Op("F.relu", lambda x: F.relu(x), one(**KINK0)),
    Op("F.gelu", lambda x: F.gelu(x), one(low=-4, high=4)),
    Op("F.silu", lambda x: F.silu(x), one(low=-4, high=4)),
    Op("F.swiglu", lambda g, u: F.swiglu(g, u), two(a={"low": -4, "high": 4})),
    Op("F.sigmoid", lambda x: F.sigmoid(x), one()),
    Op("F.tanh", lambda x: F.tanh(x), one()),
    Op("F.matmul", lambda a, b: F.matmul(a, b), matmul_shapes().flatmap(
        lambda s: st.tuples(arrays(s[0]), arrays(s[1])).map(lambda ab: ((T(ab[0]), T(ab[1])), {})))),
    Op("F.softmax", lambda x, axis: F.softmax(x, axis), last_axis(low=-5, high=5)),
    Op("F.log_softmax", lambda x, axis: F.log_softmax(x, axis), last_axis(low=-5, high=5)),
    Op("F.logsumexp", lambda x, **kw: F.logsumexp(x, **kw), last_axis(keepdims=True, low=-5, high=5)),
    Op("F.cross_entropy", cross_entropy_fn, logits_targets()),
    Op("F.take_along_last", lambda x, idx: F.take_along_last(x, idx), logits_targets(
        ignore=False, reductions=False, smoothing=False).map(lambda ak: (ak[0], {"idx": ak[1]["targets"]}))),
    Op("F.nll_loss", lambda x, targets: F.nll_loss(x, targets),
       logits_targets(reductions=False, smoothing=False)),
    Op("F.mse_loss", lambda a, b: F.mse_loss(a, b), two()),
    Op("F.layer_norm", lambda x, w, b: F.layer_norm(x, w, b), normed("any")),
    Op("F.rms_norm", lambda x, w: F.rms_norm(x, w), normed("weight")),
    Op("F.embedding", lambda w, ids: F.embedding(ids, w), embedding_input()),
    Op("F.dropout", dropout_fn, one().flatmap(lambda ak: st.tuples(st.sampled_from([0.1, 0.5]),
                                                                  st.integers(0, 2**31)).map(
        lambda ps: (ak[0], {"p": ps[0], "seed": ps[1]})))),
    Op("F.scaled_dot_product_attention", attention_fn, attention_input()),
    Op("F.scaled_dot_product_attention (dropout_p)", attention_dropout_fn, attention_input().flatmap(
        lambda ak: st.tuples(st.sampled_from([0.2, 0.5]), st.integers(0, 2**31)).map(
            lambda ps: (ak[0], {**ak[1], "p": ps[0], "seed": ps[1]})))),
    Op("F.scaled_dot_product_attention (enable_gqa)", attention_fn, gqa_input()),
    Op("F.rope", lambda x, cos, sin: F.rope(x, cos, sin), rope_input()),
    Op("F.repeat_kv", lambda x, n_rep: F.repeat_kv(x, n_rep), repeat_input()),
    Op("F.linear", lambda x, w, b: F.linear(x, w, b), linear_input()),
    Op("F.linear_no_bias", lambda x, w: F.linear(x, w), linear_input(bias=False)),
    # ---- layers (their parameters are checked inputs too)
    Op("nn.Linear", layer_fn, layer_input(lambda d: nn.Linear(d, 3))),
    Op("nn.LayerNorm", layer_fn, layer_input(lambda d: nn.LayerNorm(d))),
    Op("nn.RMSNorm", layer_fn, layer_input(lambda d: nn.RMSNorm(d))),
    Op("nn.Embedding", layer_fn, layer_input(lambda d: nn.Embedding(d, 3), ids=True)),
    Op("models.llama.LlamaBlock", llama_block_fn, llama_block_input()),
    Op("nn.Sequential MLP", layer_fn, layer_input(lambda d: nn.Sequential(nn.Linear(d, 4), nn.GELU(),
                                                                          nn.Linear(4, 2), nn.Tanh()))),
]


def test_table_names_are_unique():
    names = [op.name for op in OPS]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
@given(data=st.data())
def test_gradcheck(op: Op, data):
    args, kwargs = data.draw(op.inputs, label="args, kwargs")
    fn = functools.partial(op.fn, **kwargs)
    assert gradcheck(fn, *args, name=op.name, **op.tol)


# ------------------------------------------------------------------------------------ the check can fail
def square_with_wrong_backward(x: Tensor) -> Tensor:
    """x², but its backward forgets the factor 2 on elements past the first: a planted bug."""
    out = Tensor._result(x.data ** 2, (x,), "bad_square")
    if out.requires_grad:
        def backward(g):
            local = x.data.copy()  # should be 2x
            local.reshape(-1)[0] *= 2
            x._accum(g * local)
        out._backward = backward
    return out


def test_gradcheck_catches_a_wrong_backward():
    x = tensor64(np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]]))
    with pytest.raises(GradcheckError) as e:
        gradcheck(square_with_wrong_backward, x)
    msg = str(e.value)
    assert "square_with_wrong_backward" in msg and "input 0" in msg and "(2, 3)" in msg
    # every element but the first is off by half; the worst is where |R·x| is largest
    m = re.search(r"worst element \((\d), (\d)\) analytic (\S+) vs numeric (\S+) ", msg)
    assert m, msg
    (i, j), analytic, numeric = map(int, m.group(1, 2)), float(m.group(3)), float(m.group(4))
    assert (i, j) != (0, 0) and numeric == pytest.approx(2 * analytic, rel=1e-4)
    assert "5 of 6 elements off" in msg


def test_gradcheck_catches_a_wrong_backward_in_the_second_input():
    a = tensor64(np.array([1.0, 2.0]))
    b = tensor64(np.array([3.0, -1.0]))

    def mul_forgetting_b(a, b):
        out = Tensor._result(a.data * b.data, (a, b), "bad_mul")
        out._backward = lambda g: (a._accum(g * b.data), b._accum(g * b.data))  # should be g * a
        return out

    with pytest.raises(GradcheckError, match=r"input 1 of shape \(2,\)"):
        gradcheck(mul_forgetting_b, a, b)


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
@settings(max_examples=3)
@given(data=st.data())
def test_every_row_can_fail(op: Op, data):
    """With every gradient scaled by 1.1 inside the engine, each row's check must fail (unless the true
    gradient is about zero everywhere, e.g. every target ignored): no row of the table passes vacuously."""
    args, kwargs = data.draw(op.inputs, label="args, kwargs")
    fn = functools.partial(op.fn, **kwargs)
    assert gradcheck(fn, *args, name=op.name, **op.tol)
    checked = [a for a in args if isinstance(a, Tensor) and a.requires_grad]
    largest = max((float(np.abs(a.grad).max()) for a in checked if a.grad is not None and a.grad.size),
                  default=0.0)
    true_accum = Tensor._accum
    with mock.patch.object(Tensor, "_accum", lambda self, g: true_accum(self, g * 1.1)):
        if largest > 1e-3:
            with pytest.raises(GradcheckError):
                gradcheck(fn, *args, name=op.name, **op.tol)
