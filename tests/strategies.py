"""Hypothesis strategies shared by minillm's tests: shapes, well-conditioned float64 values, tensors.

Import what you need (pytest puts ``tests/`` on ``sys.path``, beside ``conftest.py``)::

    from hypothesis import given
    from strategies import arrays, broadcastable_shapes, shapes, tensor64

    @given(arrays(shapes(max_dims=3)))
    def test_something(x): ...

Values are bounded and, where an op asks for it, kept away from the places where a function is not
smooth (``away_from=(0.0,)`` for relu/abs, ``distinct=True`` for max), so a central-difference gradient
check at eps=1e-6 measures the derivative rather than a kink. Sizes are small on purpose: every element of
every input costs two forward passes in ``minillm.gradcheck``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minillm
from minillm import Tensor

__all__ = [
    "MAX_SIDE", "arrays", "axes", "broadcastable_shapes", "broadcastable_to", "class_targets",
    "float64_module", "index_keys", "masks", "matmul_shapes", "positive_arrays", "shapes", "tensor64",
    "tensors",
]

MAX_SIDE = 4  # largest side of a generated array (sizes stay tiny: gradcheck is O(size) forward passes)


# ---------------------------------------------------------------------------------------------- shapes
def shapes(min_dims: int = 0, max_dims: int = 3, min_side: int = 1, max_side: int = MAX_SIDE
           ) -> st.SearchStrategy[tuple[int, ...]]:
    """Array shapes, size-1 dims included (they are where broadcasting bugs hide)."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(num_shapes: int = 2, min_dims: int = 0, max_dims: int = 3, max_side: int = MAX_SIDE
                         ) -> st.SearchStrategy[tuple[tuple[int, ...], ...]]:
    """``num_shapes`` shapes that broadcast together under NumPy's rules (different ranks, size-1 dims)."""
    return hnp.mutually_broadcastable_shapes(num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims,
                                             min_side=1, max_side=max_side).map(lambda b: b.input_shapes)


@st.composite
def broadcastable_to(draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts *to* ``shape`` without growing it (leading dims dropped, some set to 1)."""
    keep = draw(st.integers(0, len(shape)))
    tail = shape[len(shape) - keep:]
    return tuple(1 if draw(st.booleans()) else n for n in tail)


@st.composite
def matmul_shapes(draw, max_batch_dims: int = 2, vectors: bool = True) -> tuple[tuple, tuple]:
    """Shapes (a, b) valid for ``a @ b``: broadcast batch dims, and 1-D vectors on either side."""
    n, k, m = (draw(st.integers(1, MAX_SIDE)) for _ in range(3))
    batch_a, batch_b = draw(hnp.mutually_broadcastable_shapes(
        num_shapes=2, min_dims=0, max_dims=max_batch_dims, max_side=3)).input_shapes
    a = (k,) if vectors and draw(st.booleans()) and not batch_a else (*batch_a, n, k)
    b = (k,) if vectors and draw(st.booleans()) and not batch_b else (*batch_b, k, m)
    return a, b


def axes(ndim: int, allow_none: bool = True, allow_tuple: bool = True) -> st.SearchStrategy:
    """A reduction ``axis`` for an array of rank ``ndim``: None, an int (maybe negative), or a tuple."""
    options = [st.none()] if allow_none or ndim == 0 else []
    if ndim > 0:
        options.append(st.integers(-ndim, ndim - 1))
        if allow_tuple:
            options.append(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True)
                           .map(tuple))
    return st.one_of(*options)


# ---------------------------------------------------------------------------------------------- values
def _push_away(x: np.ndarray, points: Sequence[float], margin: float) -> np.ndarray:
    """Move values closer than ``margin`` to any of ``points`` out to exactly ``margin`` away."""
    for p in points:
        near = np.abs(x - p) < margin
        x = np.where(near, p + margin * np.where(x >= p, 1.0, -1.0), x)
    return x


def arrays(shape, low: float = -2.0, high: float = 2.0, away_from: Sequence[float] = (), margin: float = 0.05,
           distinct: bool = False) -> st.SearchStrategy[np.ndarray]:
    """float64 arrays with values in [low, high].

    ``shape`` is a tuple or a strategy of tuples. ``away_from`` lists points to keep clear of by ``margin``
    (kinks such as 0 for relu/abs or clip's bounds); ``distinct`` makes all values differ by at least
    (high - low) / 1000, so a max has no ties.
    """
    shape_st = shape if isinstance(shape, st.SearchStrategy) else st.just(tuple(shape))
    if distinct:
        grid = 1000
        elements = st.integers(0, grid)
        out = shape_st.flatmap(lambda s: hnp.arrays(np.int64, s, elements=elements, unique=True)).map(
            lambda a: low + (high - low) * a.astype(np.float64) / grid)
        # unique needs enough grid points; shapes here are tiny (<= 4**3 elements)
    else:
        elements = st.floats(low, high, allow_nan=False, allow_infinity=False, allow_subnormal=False)
        # fill=nothing: every element is drawn on its own (not mostly one repeated value)
        out = shape_st.flatmap(lambda s: hnp.arrays(np.float64, s, elements=elements, fill=st.nothing()))
    if away_from:
        out = out.map(lambda a: _push_away(a, away_from, margin))
    return out


def positive_arrays(shape, low: float = 0.5, high: float = 2.0) -> st.SearchStrategy[np.ndarray]:
    """float64 arrays in [low, high] with low > 0: inputs for log, sqrt, x**p and denominators."""
    if low <= 0:
        raise ValueError(f"positive_arrays: low must be > 0, got {low}")
    return arrays(shape, low, high)


def tensor64(a, requires_grad: bool = True) -> Tensor:
    """A float64 Tensor (a contiguous copy of ``a``) that requires grad: what ``gradcheck`` needs."""
    return Tensor(np.array(a, dtype=np.float64, order="C", copy=True), requires_grad=requires_grad)


def tensors(shape, requires_grad: bool = True, **value_kwargs) -> st.SearchStrategy[Tensor]:
    """float64 Tensors that require grad; ``value_kwargs`` go to :func:`arrays`."""
    return arrays(shape, **value_kwargs).map(lambda a: tensor64(a, requires_grad))


def float64_module(module: minillm.nn.Module) -> minillm.nn.Module:
    """Cast every parameter of ``module`` to float64 in place (for gradient checks); returns it."""
    for p in module.parameters():
        p.data = p.data.astype(np.float64)
    return module


# ---------------------------------------------------------------------------------------------- indices
def masks(shape) -> st.SearchStrategy[np.ndarray]:
    """Boolean arrays of ``shape`` (a tuple or a strategy of tuples), each element drawn on its own."""
    shape_st = shape if isinstance(shape, st.SearchStrategy) else st.just(tuple(shape))
    return shape_st.flatmap(lambda s: hnp.arrays(np.bool_, s, elements=st.booleans(), fill=st.nothing()))


def class_targets(shape, num_classes: int, ignore_index: int | None = None) -> st.SearchStrategy[np.ndarray]:
    """Integer class ids of ``shape`` in [0, num_classes), some set to ``ignore_index`` when given."""
    values = st.integers(0, num_classes - 1)
    if ignore_index is not None:
        values = st.one_of(values, st.just(ignore_index))
    return hnp.arrays(np.int64, shape, elements=values, fill=st.nothing())


@st.composite
def index_keys(draw, shape: tuple[int, ...]):
    """A key for ``x[key]`` on an array of ``shape``: ints (negative too), slices, integer arrays with
    repeated entries (their gradient must scatter-add), a boolean mask, or a tuple mixing them."""
    if not shape:
        return ()
    kind = draw(st.sampled_from(["int", "slice", "int_array", "bool_mask", "tuple"]))
    n = shape[0]
    if kind == "int":
        return draw(st.integers(-n, n - 1))
    if kind == "slice":
        return draw(st.slices(n))
    if kind == "int_array":  # may repeat indices
        return np.array(draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=2 * n)))
    if kind == "bool_mask":
        return draw(masks(shape[:1]))
    parts = []
    for side in shape[:draw(st.integers(1, len(shape)))]:
        parts.append(draw(st.one_of(st.integers(-side, side - 1), st.slices(side),
                                    st.lists(st.integers(0, side - 1), min_size=1, max_size=3)
                                    .map(np.array))))
    # NumPy puts all-advanced-index dims first when they are separated by slices; keep at most one array
    arrays_seen = [i for i, p in enumerate(parts) if isinstance(p, np.ndarray)]
    for i in arrays_seen[1:]:
        parts[i] = slice(None)
    return tuple(parts)
