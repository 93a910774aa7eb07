"""A reverse-mode autograd engine on NumPy/CuPy arrays.

Each operation computes its output array and, right beside it, a ``backward(g)`` closure that receives
dLoss/dOutput and adds dLoss/dInput (the local gradient times ``g``) into each input's ``.grad``.
``Tensor.backward()`` orders the graph topologically and calls those closures in reverse.
That is all of backprop; everything else in minillm is built from these pieces.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy

from minillm import backend as B

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Inside this block operations record no graph (inference, evaluation, optimizer updates)."""
    global _grad_enabled
    prev, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = prev


def is_grad_enabled() -> bool:
    return _grad_enabled


def unbroadcast(grad, shape: tuple):
    """Sum ``grad`` back down to ``shape``: the gradient of NumPy broadcasting.

    Broadcasting copies an input along new leading axes and along size-1 axes, so each copy's gradient
    must be summed into the one element it came from.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def _is_array(x) -> bool:
    return isinstance(x, numpy.ndarray) or type(x).__module__.startswith("cupy")


class Tensor:
    """An n-dimensional array that remembers how it was computed, so gradients can flow back."""

    __array_priority__ = 1000  # make ndarray * Tensor call Tensor.__rmul__

    def __init__(self, data: Any, requires_grad: bool = False, dtype=None, _op: str = ""):
        if isinstance(data, Tensor):
            data = data.data
        if isinstance(data, numpy.generic):  # a NumPy scalar (e.g. from a full .sum()) keeps its dtype
            data = numpy.asarray(data)
        if _is_array(data):
            arr = data if dtype is None else data.astype(dtype, copy=False)
            if type(arr).__module__.startswith("numpy") and B.name == "cupy":
                arr = B.xp.asarray(arr)
        else:
            arr = numpy.asarray(data)
            if dtype is None and arr.dtype.kind == "f" or arr.dtype == object:
                dtype = B.default_dtype
            arr = B.xp.asarray(arr, dtype=dtype)
        if requires_grad and arr.dtype.kind != "f":
            raise TypeError(f"only floating tensors can require grad, got dtype {arr.dtype}")
        self.data = arr
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._prev: tuple[Tensor, ...] = ()
        self._backward: Callable | None = None
        self._op = _op
        self._retain = False
        self._freed = False  # set when backward() frees the graph that produced this tensor

    # ------------------------------------------------------------------ basics
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        rg = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({B.to_numpy(self.data)!r}{rg})"

    def numpy(self) -> numpy.ndarray:
        """The values as a host NumPy array."""
        return B.to_numpy(self.data)

    def item(self) -> float:
        return self.data.item()

    def tolist(self):
        return self.numpy().tolist()

    def detach(self) -> Tensor:
        """Same values, cut from the graph."""
        return Tensor(self.data)

    def astype(self, dtype) -> Tensor:
        out = self._result(self.data.astype(dtype), (self,), "astype")
        if out.requires_grad:
            out._backward = lambda g: self._accum(g.astype(self.dtype))
        return out

    def retain_grad(self) -> Tensor:
        """Keep ``.grad`` on this intermediate tensor after backward (leaves always keep theirs)."""
        self._retain = True
        return self

    def requires_grad_(self, flag: bool = True) -> Tensor:
        self.requires_grad = flag
        return self

    # ------------------------------------------------------------------ graph plumbing
    @staticmethod
    def _result(data, parents: tuple, op: str) -> Tensor:
        """Output tensor of an op; it joins the graph only when grads are on and a parent needs one."""
        out = Tensor(data, _op=op)
        if _grad_enabled and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._prev = parents
        return out

    def _accum(self, g) -> None:
        """Add an incoming gradient, summed back to this tensor's shape (never in place: grads may alias)."""
        if not self.requires_grad:
            return
        g = unbroadcast(g, self.shape)
        self.grad = g if self.grad is None else self.grad + g

    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Backpropagate from this tensor. A non-scalar needs ``grad`` (dLoss/dThis) of its shape."""
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad (no input requires grad, "
                               "or it was computed under no_grad())")
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward: output has shape {self.shape}; pass grad= of that shape "
                                   "(only a scalar's gradient can be implied)")
            grad = B.xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else B.xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad has shape {grad.shape}, tensor has shape {self.shape}")
        topo = topological_order(self)
        # an intermediate's .grad is this pass's buffer: set aside what a retained one kept from earlier
        earlier = {id(n): n.grad for n in topo if n._prev and n.grad is not None}
        for n in topo:
            if id(n) in earlier:
                n.grad = None
        self._accum(grad)
        for node in reversed(topo):
            if node._backward is not None and node.grad is not None:
                node._backward(node.grad)
            if node._prev:  # an intermediate result
                if not node._retain:
                    node.grad = None
                elif id(node) in earlier:  # retained grads accumulate across passes, like a leaf's
                    node.grad = earlier[id(node)] if node.grad is None else earlier[id(node)] + node.grad
                if not retain_graph:
                    node._backward, node._prev, node._freed = None, (), True

    # ------------------------------------------------------------------ elementwise arithmetic
    def _lift(self, other) -> Tensor:
        if isinstance(other, Tensor):
            return other
        if isinstance(other, numbers.Number):  # a Python number takes a float tensor's dtype (no upcast)...
            if self.dtype.kind == "f":
                return Tensor(B.xp.asarray(other, dtype=self.dtype))
            return Tensor(B.xp.asarray(other))  # ...but never truncates: int_tensor * 0.5 is a float
        return Tensor(other)

    def __add__(self, other) -> Tensor:
        other = self._lift(other)
        out = self._result(self.data + other.data, (self, other), "add")
        if out.requires_grad:
            def backward(g):  # d(a+b)/da = d(a+b)/db = 1
                self._accum(g)
                other._accum(g)
            out._backward = backward
        return out

    def __mul__(self, other) -> Tensor:
        other = self._lift(other)
        out = self._result(self.data * other.data, (self, other), "mul")
        if out.requires_grad:
            def backward(g):  # d(ab)/da = b, d(ab)/db = a
                if self.requires_grad:
                    self._accum(g * other.data)
                if other.requires_grad:
                    other._accum(g * self.data)
            out._backward = backward
        return out

    def __truediv__(self, other) -> Tensor:
        other = self._lift(other)
        out = self._result(self.data / other.data, (self, other), "div")
        if out.requires_grad:
            def backward(g):  # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
                if self.requires_grad:
                    self._accum(g / other.data)
                if other.requires_grad:
                    other._accum(-g * self.data / (other.data * other.data))
            out._backward = backward
        return out

    def __pow__(self, p) -> Tensor:
        if isinstance(p, Tensor):
            return (self.log() * p).exp()  # a^b = exp(b log a), for a > 0
        out = self._result(self.data ** p, (self,), "pow")
        if out.requires_grad:
            out._backward = lambda g: self._accum(g * p * self.data ** (p - 1))  # d(a^p)/da = p a^(p-1)
        return out

    def __neg__(self) -> Tensor:
        out = self._result(-self.data, (self,), "neg")
        if out.requires_grad:
            out._backward = lambda g: self._accum(-g)
        return out

    def __sub__(self, other) -> Tensor:
        other = self._lift(other)
        out = self._result(self.data - other.data, (self, other), "sub")
        if out.requires_grad:
            def backward(g):  # d(a-b)/da = 1, d(a-b)/db = -1
                self._accum(g)
                if other.requires_grad:
                    other._accum(-g)
            out._backward = backward
        return out

    def __radd__(self, other) -> Tensor:
        return self + other

    def __rmul__(self, other) -> Tensor:
        return self * other

    def __rsub__(self, other) -> Tensor:
        return self._lift(other) - self

    def __rtruediv__(self, other) -> Tensor:
        return self._lift(other) / self

    def __matmul__(self, other) -> Tensor:
        other = self._lift(other)
        a, b = self.data, other.data
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: scalars are not allowed, got shapes {a.shape} and {b.shape}")
        if a.shape[-1] != b.shape[0 if b.ndim == 1 else -2]:
            k2 = b.shape[0 if b.ndim == 1 else -2]
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} don't align ({a.shape[-1]} != {k2})")
        # promote vectors to matrices so one rule serves every case; squeeze afterwards
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        if b2.ndim == 2 and a2.ndim > 2:  # (..., K) @ (K, N): one big GEMM over the flattened batch
            out_data = B.matmul(a2.reshape(-1, a2.shape[-1]), b2).reshape(*a2.shape[:-1], b2.shape[-1])
        else:
            out_data = B.matmul(a2, b2)
        res = out_data
        if a.ndim == 1:
            res = res[..., 0, :]
        if b.ndim == 1:
            res = res[..., 0]
        out = self._result(res, (self, other), "matmul")
        if out.requires_grad:
            def backward(g):  # C = A B:  dA = dC Bᵀ,  dB = Aᵀ dC
                g2 = g.reshape(out_data.shape)
                if self.requires_grad:
                    if b2.ndim == 2 and g2.ndim > 2:
                        ga = B.matmul_nt(g2.reshape(-1, g2.shape[-1]), b2).reshape(a2.shape)
                    else:
                        ga = B.matmul_nt(g2, b2)
                    self._accum(ga.reshape(*ga.shape[:-2], -1) if a.ndim == 1 else ga)
                if other.requires_grad:
                    if b2.ndim == 2 and a2.ndim > 2:
                        gb = B.matmul_tn(a2.reshape(-1, a2.shape[-1]), g2.reshape(-1, g2.shape[-1]))
                    else:
                        gb = B.matmul_tn(a2, g2)
                    gb = unbroadcast(gb, b2.shape)
                    other._accum(gb[:, 0] if b.ndim == 1 else gb)
            out._backward = backward
        return out

    def __rmatmul__(self, other) -> Tensor:
        return self._lift(other) @ self

    # comparisons give plain boolean arrays (no gradient)
    def __lt__(self, o): return Tensor(self.data < B.unwrap(o))  # noqa: E704
    def __le__(self, o): return Tensor(self.data <= B.unwrap(o))  # noqa: E704
    def __gt__(self, o): return Tensor(self.data > B.unwrap(o))  # noqa: E704
    def __ge__(self, o): return Tensor(self.data >= B.unwrap(o))  # noqa: E704

    # ------------------------------------------------------------------ unary math
    def exp(self) -> Tensor:
        e = B.xp.exp(self.data)
        out = self._result(e, (self,), "exp")
        if out.requires_grad:
            out._backward = lambda g: self._accum(g * e)  # d(e^x)/dx = e^x
        return out

    def log(self) -> Tensor:
        out = self._result(B.xp.log(self.data), (self,), "log")
        if out.requires_grad:
            out._backward = lambda g: self._accum(g / self.data)  # d(ln x)/dx = 1/x
        return out

    def sqrt(self) -> Tensor:
        s = B.xp.sqrt(self.data)
        out = self._result(s, (self,), "sqrt")
        if out.requires_grad:
            out._backward = lambda g: self._accum(g * 0.5 / s)  # d(√x)/dx = 1/(2√x)
        return out

    def tanh(self) -> Tensor:
        t = B.xp.tanh(self.data)
        out = self._result(t, (self,), "tanh")
        if out.requires_grad:
            out._backward = lambda g: self._accum(g * (1 - t * t))  # d(tanh x)/dx = 1 - tanh²x
        return out

    def abs(self) -> Tensor:
        out = self._result(B.xp.abs(self.data), (self,), "abs")
        if out.requires_grad:
            out._backward = lambda g: self._accum(g * B.xp.sign(self.data))
        return out

    def sigmoid(self) -> Tensor:
        s = 0.5 * (B.xp.tanh(0.5 * self.data) + 1)  # stable for large |x|
        out = self._result(s.astype(self.dtype, copy=False), (self,), "sigmoid")
        if out.requires_grad:
            out._backward = lambda g: self._accum(g * s * (1 - s))  # σ' = σ(1-σ)
        return out

    def clip(self, lo=None, hi=None) -> Tensor:
        out = self._result(B.xp.clip(self.data, lo, hi), (self,), "clip")
        if out.requires_grad:
            inside = B.xp.ones(self.shape, dtype=bool)
            if lo is not None:
                inside &= self.data >= lo
            if hi is not None:
                inside &= self.data <= hi
            out._backward = lambda g: self._accum(g * inside)
        return out

    # ------------------------------------------------------------------ reductions
    def _reduced_shape(self, axis) -> tuple:
        """Shape of a reduction over ``axis`` with keepdims=True."""
        axes = self._axes(axis)
        return tuple(1 if i in axes else n for i, n in enumerate(self.shape))

    def _axes(self, axis) -> set:
        if axis is None:
            return set(range(self.ndim))
        return {a % self.ndim for a in (axis if isinstance(axis, (tuple, list)) else (axis,))}

    def sum(self, axis=None, keepdims: bool = False) -> Tensor:
        out = self._result(self.data.sum(axis=axis, keepdims=keepdims), (self,), "sum")
        if out.requires_grad:
            kshape = self._reduced_shape(axis)
            # every input element contributed with weight 1
            out._backward = lambda g: self._accum(B.xp.broadcast_to(g.reshape(kshape), self.shape))
        return out

    def mean(self, axis=None, keepdims: bool = False) -> Tensor:
        n = self.size // max(1, int(numpy.prod(self._reduced_shape(axis))))
        return self.sum(axis=axis, keepdims=keepdims) * (1.0 / n)

    def var(self, axis=None, keepdims: bool = False, unbiased: bool = False) -> Tensor:
        """Variance (population by default, as LayerNorm uses it)."""
        d = self - self.mean(axis=axis, keepdims=True)
        n = self.size // max(1, int(numpy.prod(self._reduced_shape(axis))))
        return (d * d).sum(axis=axis, keepdims=keepdims) * (1.0 / (n - 1 if unbiased else n))

    def max(self, axis=None, keepdims: bool = False) -> Tensor:
        m = self.data.max(axis=axis, keepdims=True)
        dropped = tuple(n for i, n in enumerate(self.shape) if i not in self._axes(axis))
        out = self._result(m if keepdims else m.reshape(dropped), (self,), "max")
        if out.requires_grad:
            def backward(g):  # the gradient goes to the maximum (split evenly between ties)
                mask = (self.data == m).astype(self.dtype)
                mask /= mask.sum(axis=axis, keepdims=True)
                self._accum(mask * g.reshape(m.shape))
            out._backward = backward
        return out

    # ------------------------------------------------------------------ shape
    def reshape(self, *shape) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        try:
            data = self.data.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape shape {self.shape} ({self.size} elements) "
                             f"into {shape}") from None
        out = self._result(data, (self,), "reshape")
        if out.requires_grad:
            out._backward = lambda g: self._accum(g.reshape(self.shape))
        return out

    view = reshape

    def transpose(self, *axes) -> Tensor:
        """``transpose(i, j)`` swaps two axes (PyTorch); ``transpose()`` reverses them all (NumPy, ``.T``)."""
        if len(axes) == 2 and self.ndim >= 2 and all(isinstance(a, numbers.Integral) for a in axes):
            perm = list(range(self.ndim))
            i, j = (a % self.ndim for a in axes)
            perm[i], perm[j] = perm[j], perm[i]
            return self.permute(perm)
        return self.permute(*axes)

    def permute(self, *axes) -> Tensor:
        """Reorder the axes: output axis k is input axis ``axes[k]`` (no axes: reverse them)."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        axes = tuple(int(a) % self.ndim for a in axes) or tuple(reversed(range(self.ndim)))
        out = self._result(B.xp.transpose(self.data, axes), (self,), "transpose")
        if out.requires_grad:
            inv = tuple(int(i) for i in numpy.argsort(axes))
            out._backward = lambda g: self._accum(B.xp.transpose(g, inv))
        return out

    @property
    def T(self) -> Tensor:
        return self.transpose()

    def __getitem__(self, idx) -> Tensor:
        if isinstance(idx, Tensor):
            idx = idx.data
        elif isinstance(idx, tuple):
            idx = tuple(i.data if isinstance(i, Tensor) else i for i in idx)
        out = self._result(self.data[idx], (self,), "getitem")
        if out.requires_grad:
            def backward(g):  # scatter-add: an element picked twice gets both gradients
                full = B.xp.zeros(self.shape, dtype=g.dtype)
                B.scatter_add(full, idx, g)
                self._accum(full)
            out._backward = backward
        return out

    def masked_fill(self, mask, value: float) -> Tensor:
        """Replace elements where ``mask`` is True by ``value`` (no gradient flows to them)."""
        mask = mask.data if isinstance(mask, Tensor) else B.xp.asarray(mask)
        out = self._result(B.xp.where(mask, B.xp.asarray(value, dtype=self.dtype), self.data),
                           (self,), "masked_fill")
        if out.requires_grad:
            out._backward = lambda g: self._accum(B.xp.where(mask, 0, g))
        return out


# -------------------------------------------------------------------- functions over several tensors
def topological_order(root: Tensor) -> list[Tensor]:
    """Every tensor ``root`` was computed from, each listed after its inputs (``root`` last).

    ``backward()`` walks this list in reverse, so a node's gradient is complete before it is passed on.
    Depth-first and iterative: a deep graph would overflow Python's recursion limit.
    """
    topo, seen, stack = [], set(), [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            topo.append(node)
            continue
        if id(node) in seen:
            continue
        if node._freed:
            raise RuntimeError(f"backward: the graph behind this {node._op!r} result was freed by an "
                               "earlier backward(); pass retain_graph=True to the first call to "
                               "backpropagate twice")
        seen.add(id(node))
        stack.append((node, True))
        stack.extend((p, False) for p in reversed(node._prev) if id(p) not in seen)
    return topo


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def concat(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join along an existing axis; the gradient is split back into the pieces."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    out = Tensor._result(B.xp.concatenate([t.data for t in tensors], axis=axis), tuple(tensors), "concat")
    if out.requires_grad:
        bounds = numpy.cumsum([t.shape[axis] for t in tensors])[:-1]
        def backward(g):
            for t, piece in zip(tensors, B.xp.split(g, [int(b) for b in bounds], axis=axis)):
                t._accum(piece)
        out._backward = backward
    return out


cat = concat


def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join along a new axis."""
    return concat([t.reshape(*t.shape[:axis % (t.ndim + 1)], 1, *t.shape[axis % (t.ndim + 1):])
                   for t in tensors], axis=axis)


def where(cond, a, b) -> Tensor:
    """Elementwise choice: ``a`` where ``cond`` else ``b``; each side gets the gradient where chosen."""
    c = cond.data if isinstance(cond, Tensor) else B.xp.asarray(cond)
    ref = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else Tensor(a)
    a, b = ref._lift(a), ref._lift(b)
    out = Tensor._result(B.xp.where(c, a.data, b.data), (a, b), "where")
    if out.requires_grad:
        def backward(g):
            a._accum(B.xp.where(c, g, 0))
            b._accum(B.xp.where(c, 0, g))
        out._backward = backward
    return out


def zeros(*shape, requires_grad: bool = False, dtype=None) -> Tensor:
    return Tensor(B.xp.zeros(shape, dtype=dtype or B.default_dtype), requires_grad=requires_grad)


def ones(*shape, requires_grad: bool = False, dtype=None) -> Tensor:
    return Tensor(B.xp.ones(shape, dtype=dtype or B.default_dtype), requires_grad=requires_grad)


def randn(*shape, requires_grad: bool = False, dtype=None) -> Tensor:
    return Tensor(B.randn(*shape, dtype=dtype), requires_grad=requires_grad)


def arange(n: int) -> Tensor:
    return Tensor(B.xp.arange(n))
