"""Lesson 03: attention with the causal mask and √d scaling, splitting and merging heads."""

from __future__ import annotations

import numpy

from minillm.exercises.checking import Case, Exercise, quiet, same_values_and_nonfinite, seeded


# -------------------------------------------------------------------------------------------- softmax
def softmax_reference(s: numpy.ndarray) -> numpy.ndarray:
    """minillm's softmax over the last axis (F.softmax), on a NumPy array."""
    from minillm import F
    from minillm.tensor import Tensor

    a = numpy.asarray(s)
    a = a if a.dtype.kind == "f" else a.astype(numpy.float64)  # float32 stays float32, as in the lesson
    return F.softmax(Tensor(a, dtype=a.dtype)).numpy()


def _softmax_cases():
    rng = seeded(301)
    for shape in [(1,), (7,), (3, 5), (2, 3, 4), (4, 1)]:
        yield Case((rng.standard_normal(shape) * 3,), label="scores of a few units")
    yield Case((rng.uniform(800, 1000, (3, 6)),), label="large scores: every row near +1000")
    big = numpy.stack([rng.uniform(900, 1000, 5), rng.uniform(-1000, -900, 5), rng.standard_normal(5)])
    yield Case((big,), label="rows at +1000, -1000 and 0")
    yield Case((numpy.zeros((2, 4)),), label="all equal")
    yield Case((numpy.array([[0.0, -numpy.inf, 1.0], [2.0, 2.0, -numpy.inf]]),), label="masked (-inf) scores")


@quiet
def _softmax_no_shift(s):
    e = numpy.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


@quiet
def _softmax_global_max(s):
    e = numpy.exp(s - s.max())
    return e / e.sum(axis=-1, keepdims=True)


@quiet
def _softmax_whole_array(s):
    e = numpy.exp(s - s.max())
    return e / e.sum()


SOFTMAX = Exercise(
    name="03.softmax", lesson=3,
    task="Write softmax(s) over the last axis of a NumPy array: e^s divided by its sum along that axis, so "
         "each row is a distribution. Scores can be large (|s| ~ 1000, where e^s overflows to inf), so first "
         "subtract each row's maximum: softmax(s - c) = softmax(s) for any constant c per row, and the "
         "largest exponent is then e^0 = 1. Masked scores of -inf must get weight exactly 0.",
    signature="def softmax(s: np.ndarray) -> np.ndarray",
    reference=softmax_reference,
    cases=_softmax_cases,
    compare=same_values_and_nonfinite,
    mistakes={
        "no max shift": (_softmax_no_shift,
                         "e^s overflows to inf for large scores (e^1000): subtract each row's max before "
                         "exponentiating; the result does not change."),
        "global max": (_softmax_global_max,
                       "subtract each row's own max (axis=-1, keepdims=True), not the max of the whole "
                       "array: a row far below it underflows to 0/0."),
        "whole-array sum": (_softmax_whole_array,
                            "each row is its own distribution: divide by the sum over the last axis only "
                            "(keepdims=True), so every row sums to 1."),
    },
)


# ------------------------------------------------------------------------------------ causal attention
def causal_attention_reference(q, k, v):
    """minillm's F.scaled_dot_product_attention(q, k, v, is_causal=True) on NumPy arrays."""
    from minillm import F
    from minillm.tensor import Tensor

    dtype = numpy.result_type(q, k, v)
    dtype = dtype if dtype.kind == "f" else numpy.dtype(numpy.float64)
    t = [Tensor(numpy.asarray(a, dtype=dtype), dtype=dtype) for a in (q, k, v)]
    return F.scaled_dot_product_attention(*t, is_causal=True).numpy()


def _attention_cases():
    rng = seeded(302)
    shapes = [((5, 4), 4), ((1, 3), 3), ((7, 3), 2), ((2, 6, 8), 5), ((2, 3, 5, 4), 4), ((9, 16), 16)]
    for (qk_shape, dv) in shapes:
        q, k = rng.standard_normal(qk_shape), rng.standard_normal(qk_shape)
        v = rng.standard_normal(qk_shape[:-1] + (dv,))
        yield Case((q, k, v), label=f"head size {qk_shape[-1]}")
    q, k, v = (rng.standard_normal((6, 4)) * 30 for _ in range(3))
    yield Case((q, k, v), label="large queries and keys (scores ~ 1000)")


def _attention(q, k, v, scale, mask_fn, after=False):
    s = q @ numpy.swapaxes(k, -1, -2) * scale
    T = s.shape[-1]
    allowed = mask_fn(T)
    if after:
        e = numpy.exp(s - s.max(axis=-1, keepdims=True))
        w = e / e.sum(axis=-1, keepdims=True) * allowed
    else:
        s = numpy.where(allowed, s, -1e9)
        e = numpy.exp(s - s.max(axis=-1, keepdims=True))
        w = e / e.sum(axis=-1, keepdims=True)
    return w @ v


def _causal(T):
    return numpy.tril(numpy.ones((T, T), dtype=bool))


def _attention_scale_d(q, k, v):
    return _attention(q, k, v, 1 / q.shape[-1], _causal)


def _attention_no_scale(q, k, v):
    return _attention(q, k, v, 1.0, _causal)


def _attention_no_diagonal(q, k, v):
    return _attention(q, k, v, 1 / numpy.sqrt(q.shape[-1]), lambda T: _causal(T) & ~numpy.eye(T, dtype=bool))


def _attention_one_future(q, k, v):
    return _attention(q, k, v, 1 / numpy.sqrt(q.shape[-1]), lambda T: numpy.tril(numpy.ones((T, T), bool), 1))


def _attention_mask_after(q, k, v):
    return _attention(q, k, v, 1 / numpy.sqrt(q.shape[-1]), _causal, after=True)


ATTENTION = Exercise(
    name="03.causal_attention", lesson=3,
    task="Write causal_attention(q, k, v) for NumPy arrays q, k (..., T, d) and v (..., T, dv): the scores "
         "q kᵀ / √d (transpose only the last two axes of k), then -inf (or -1e9) wherever key j comes after "
         "query i (j > i), a softmax over the keys, and the weighted sum of the values. Any leading axes "
         "(batch, heads) just come along.",
    signature="def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray",
    reference=causal_attention_reference,
    cases=_attention_cases,
    mistakes={
        "scale by d": (_attention_scale_d,
                       "the scores are divided by √d, the square root of the head size, not by d."),
        "no scaling": (_attention_no_scale,
                       "the scores are not scaled: divide q kᵀ by √d so their variance stays near 1."),
        "diagonal masked": (_attention_no_diagonal,
                            "a position may attend to itself: keep the diagonal (allow j ≤ i, np.tril with "
                            "k=0)."),
        "one future token": (_attention_one_future,
                             "query i can see key i+1: mask every j > i (the diagonal is the last allowed "
                             "key)."),
        "mask after softmax": (_attention_mask_after,
                               "mask the scores before the softmax (set them to -inf), so the weights that "
                               "remain still sum to 1."),
    },
)


# ------------------------------------------------------------------------------------ splitting heads
def split_heads_reference(x, n_heads: int):
    """(B, T, C) -> (B, nh, T, hs), as nn.MultiHeadAttention splits its projections."""
    B, T, C = x.shape
    return x.reshape(B, T, n_heads, C // n_heads).transpose(0, 2, 1, 3)


def merge_heads_reference(y):
    """(B, nh, T, hs) -> (B, T, nh·hs): the heads' outputs side by side again."""
    B, nh, T, hs = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)


def _split_cases():
    rng = seeded(303)
    for (B, T, C), nh in [((2, 6, 8), 2), ((1, 5, 12), 3), ((3, 4, 8), 4), ((2, 7, 6), 2), ((1, 3, 10), 5)]:
        yield Case((rng.standard_normal((B, T, C)), nh), label=f"{nh} heads of size {C // nh}")


def _merge_cases():
    rng = seeded(304)
    for shape in [(2, 2, 6, 4), (1, 3, 5, 4), (3, 4, 4, 2), (2, 5, 3, 2)]:
        yield Case((rng.standard_normal(shape),), label=f"{shape[1]} heads of size {shape[3]}")


def _split_no_transpose(x, n_heads):
    B, T, C = x.shape
    return x.reshape(B, n_heads, T, C // n_heads)


def _split_interleaved(x, n_heads):
    B, T, C = x.shape
    return x.reshape(B, T, C // n_heads, n_heads).transpose(0, 3, 1, 2)


def _merge_no_transpose(y):
    B, nh, T, hs = y.shape
    return y.reshape(B, T, nh * hs)


def _merge_interleaved(y):
    B, nh, T, hs = y.shape
    return y.transpose(0, 2, 3, 1).reshape(B, T, nh * hs)


SPLIT = Exercise(
    name="03.split_heads", lesson=3,
    task="Write split_heads(x, n_heads): (B, T, C) -> (B, nh, T, hs) with hs = C // nh. Head h owns the "
         "contiguous channels h·hs … (h+1)·hs - 1 of every position, so first reshape C into (nh, hs), then "
         "move the head axis in front of the time axis so each head is a (T, hs) matrix attention can use.",
    signature="def split_heads(x: np.ndarray, n_heads: int) -> np.ndarray",
    reference=split_heads_reference,
    cases=_split_cases,
    mistakes={
        "reshape only": (_split_no_transpose,
                         "a reshape alone to (B, nh, T, hs) cuts the sequence, not the channels: reshape to "
                         "(B, T, nh, hs), then swap the T and nh axes."),
        "interleaved channels": (_split_interleaved,
                                 "each head takes every nh-th channel here: split C as (nh, hs), not "
                                 "(hs, nh), so a head's channels are contiguous."),
    },
)

MERGE = Exercise(
    name="03.merge_heads", lesson=3,
    task="Write merge_heads(y), the inverse of split_heads: (B, nh, T, hs) -> (B, T, nh·hs), each position's "
         "head outputs side by side (head 0's hs values, then head 1's, ...). Bring the time axis back in "
         "front of the head axis first, then reshape.",
    signature="def merge_heads(y: np.ndarray) -> np.ndarray",
    reference=merge_heads_reference,
    cases=_merge_cases,
    mistakes={
        "reshape only": (_merge_no_transpose,
                         "a reshape alone mixes positions of different heads: move the T axis in front of "
                         "the head axis (transpose(0, 2, 1, 3)) before reshaping."),
        "interleaved channels": (_merge_interleaved,
                                 "the channels come out interleaved (one value of each head in turn): keep "
                                 "each head's hs values together, the head axis just before hs."),
    },
)

EXERCISES = [SOFTMAX, ATTENTION, SPLIT, MERGE]
