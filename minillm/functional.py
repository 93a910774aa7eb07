"""Neural-network functions (imported as ``F``), each with its gradient written by hand.

Where composing primitives would be slower or less stable (softmax, log-softmax + NLL, layer norm,
attention), the forward and a fused backward are written together here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy

from minillm import backend as B
from minillm.tensor import Tensor, is_grad_enabled


def _t(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def matmul(a: Tensor, b: Tensor) -> Tensor:
    return _t(a) @ b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + b with W of shape (out_features, in_features), as in PyTorch."""
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input shape {x.shape} has {x.shape[-1]} features, "
                         f"weight {weight.shape} expects {weight.shape[1]}")
    y = x @ weight.T
    return y + bias if bias is not None else y


def relu(x: Tensor) -> Tensor:
    x = _t(x)
    out = Tensor._result(B.xp.maximum(x.data, 0), (x,), "relu")
    if out.requires_grad:
        out._backward = lambda g: x._accum(g * (x.data > 0))  # 1 where x > 0, else 0
    return out


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu(x: Tensor) -> Tensor:
    """GELU, tanh approximation (Hendrycks & Gimpel 2016), as in GPT-2 and BERT."""
    x = _t(x)
    xd = x.data
    u = xd * xd  # u = c(x + 0.044715x³), built in place (not xd ** 3: NumPy's float pow is 20x slower)
    u *= 0.044715 * xd
    u += xd
    u *= _GELU_C
    t = B.xp.tanh(u)
    y = t + 1
    y *= xd
    y *= 0.5
    out = Tensor._result(y, (x,), "gelu")
    if out.requires_grad:
        def backward(g):  # d/dx = ½(1+t) + ½x(1-t²)·c(1 + 3·0.044715x²)
            d = xd * xd  # built in place: fresh temporaries of activation size cost more than the math
            d *= 3 * 0.044715 * _GELU_C
            d += _GELU_C
            d *= xd
            d *= 1 - t * t
            d += 1 + t
            d *= 0.5
            d *= g
            x._accum(d)
        out._backward = backward
    return out


def sigmoid(x: Tensor) -> Tensor:
    return _t(x).sigmoid()


def tanh(x: Tensor) -> Tensor:
    return _t(x).tanh()


def silu(x: Tensor) -> Tensor:
    """x·σ(x) (the "swish"), composed from differentiable pieces."""
    x = _t(x)
    return x * x.sigmoid()


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """SwiGLU's gating, silu(gate) ⊙ up (Shazeer 2020), in one op: Llama's feed-forward is
    down_proj(swiglu(gate_proj(x), up_proj(x)))."""
    gate, up = _t(gate), _t(up)
    s = 1.0 / (1.0 + B.xp.exp(-gate.data))  # σ(gate)
    act = gate.data * s                     # silu(gate)
    out = Tensor._result(act * up.data, (gate, up), "swiglu")
    if out.requires_grad:
        def backward(g):
            if gate.requires_grad:  # d silu(a)/da = σ(a)·(1 + a·(1 − σ(a)))
                gate._accum(g * up.data * s * (1.0 + gate.data * (1.0 - s)))
            if up.requires_grad:
                up._accum(g * act)
        out._backward = backward
    return out


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    x = _t(x)
    e = B.xp.exp(x.data - x.data.max(axis=axis, keepdims=True))
    s = e / e.sum(axis=axis, keepdims=True)
    out = Tensor._result(s, (x,), "softmax")
    if out.requires_grad:
        # Jacobian-vector product: dx = s ⊙ (g - Σ g·s)
        out._backward = lambda g: x._accum(s * (g - (g * s).sum(axis=axis, keepdims=True)))
    return out


def _logsumexp(a, axis: int):
    m = a.max(axis=axis, keepdims=True)
    return m + B.xp.log(B.xp.exp(a - m).sum(axis=axis, keepdims=True))


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    x = _t(x)
    out_data = x.data - _logsumexp(x.data, axis)
    out = Tensor._result(out_data, (x,), "log_softmax")
    if out.requires_grad:
        # dx = g - softmax(x) · Σ g
        out._backward = lambda g: x._accum(g - B.xp.exp(out_data) * g.sum(axis=axis, keepdims=True))
    return out


def logsumexp(x: Tensor, axis: int = -1, keepdims: bool = False) -> Tensor:
    x = _t(x)
    lse = _logsumexp(x.data, axis)
    out = Tensor._result(lse if keepdims else B.xp.squeeze(lse, axis=axis), (x,), "logsumexp")
    if out.requires_grad:
        def backward(g):  # d lse / dx = softmax(x)
            gk = g if keepdims else B.xp.expand_dims(g, axis)
            x._accum(gk * B.xp.exp(x.data - lse))
        out._backward = backward
    return out


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Fused, stable softmax cross-entropy over the last axis.

    ``logits`` (..., C), integer ``targets`` (...). Positions whose target is ``ignore_index`` contribute
    nothing; ``mean`` averages over the others. Gradient: (softmax - onehot) / n_valid.
    """
    logits = _t(logits)
    t = B.xp.asarray(_raw(targets))
    C = logits.shape[-1]
    if t.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: logits {logits.shape} need targets of shape {logits.shape[:-1]}, "
                         f"got {t.shape}")
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: targets must be integer class ids, got dtype {t.dtype}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= C))
    if bool(bad.any()):
        raise ValueError(f"cross_entropy: target {int(t[bad].ravel()[0])} out of range for {C} classes")
    x2 = logits.data.reshape(-1, C)
    tv = B.xp.where(valid, t, 0).reshape(-1)
    logp = x2 - _logsumexp(x2, -1)
    rows = B.xp.arange(tv.shape[0])
    nll = -logp[rows, tv]
    if label_smoothing:
        nll = (1 - label_smoothing) * nll - label_smoothing * logp.mean(axis=-1)
    v = valid.reshape(-1).astype(logits.dtype)
    losses = nll * v
    n_valid = max(1.0, float(v.sum())) if reduction == "mean" else 1.0
    if reduction == "none":
        data = losses.reshape(t.shape)
    else:
        data = losses.sum() / n_valid
    out = Tensor._result(B.xp.asarray(data, dtype=logits.dtype), (logits,), "cross_entropy")
    if out.requires_grad:
        def backward(g):
            d = B.xp.exp(logp)  # softmax
            d[rows, tv] -= 1 - label_smoothing
            if label_smoothing:
                d -= label_smoothing / C
            scale = (g.reshape(-1) if reduction == "none" else g) * v / n_valid  # (N,)
            logits._accum((d * scale[:, None]).reshape(logits.shape))
        out._backward = backward
    return out


def nll_loss(logp: Tensor, targets, ignore_index: int = -100) -> Tensor:
    """Mean negative log-likelihood of integer ``targets`` under log-probabilities ``logp``."""
    t = B.xp.asarray(_raw(targets))
    valid = t != ignore_index
    idx = B.xp.where(valid, t, 0)
    picked = take_along_last(logp, idx)
    v = Tensor(valid.astype(logp.dtype))
    return -(picked * v).sum() / max(1.0, float(valid.sum()))


def take_along_last(x: Tensor, idx) -> Tensor:
    """x[..., idx[...]]: pick one entry of the last axis per position (gather)."""
    x = _t(x)
    idx = B.xp.asarray(_raw(idx))
    picked = B.xp.take_along_axis(x.data, idx[..., None], axis=-1)[..., 0]
    out = Tensor._result(picked, (x,), "gather")
    if out.requires_grad:
        def backward(g):
            full = B.xp.zeros(x.shape, dtype=g.dtype)
            B.xp.put_along_axis(full, idx[..., None], g[..., None], axis=-1)
            x._accum(full)
        out._backward = backward
    return out


def mse_loss(a: Tensor, b) -> Tensor:
    d = _t(a) - b
    return (d * d).mean()


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """Normalise the last axis to zero mean, unit variance, then scale and shift (Ba et al. 2016)."""
    x = _t(x)
    mu = x.data.mean(axis=-1, keepdims=True)
    xc = x.data - mu
    rstd = 1.0 / B.xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    xhat = xc * rstd
    y = xhat
    if weight is not None:
        y = y * weight.data
    if bias is not None:
        y = y + bias.data
    parents = tuple(p for p in (x, weight, bias) if p is not None)
    out = Tensor._result(y, parents, "layer_norm")
    if out.requires_grad:
        def backward(g):
            gx = g * weight.data if weight is not None else g
            if x.requires_grad:  # dx = rstd · (ĝ - mean(ĝ) - x̂ · mean(ĝ x̂)),  ĝ = g·w
                x._accum(rstd * (gx - gx.mean(axis=-1, keepdims=True)
                                 - xhat * (gx * xhat).mean(axis=-1, keepdims=True)))
            if weight is not None and weight.requires_grad:
                weight._accum((g * xhat).reshape(-1, x.shape[-1]).sum(axis=0))
            if bias is not None and bias.requires_grad:
                bias._accum(g.reshape(-1, x.shape[-1]).sum(axis=0))
        out._backward = backward
    return out


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """Scale by the root mean square of the last axis, no centring, no bias (T5's LayerNorm)."""
    x = _t(x)
    rstd = 1.0 / B.xp.sqrt((x.data * x.data).mean(axis=-1, keepdims=True) + eps)
    xhat = x.data * rstd
    y = xhat * weight.data if weight is not None else xhat
    out = Tensor._result(y, tuple(p for p in (x, weight) if p is not None), "rms_norm")
    if out.requires_grad:
        def backward(g):
            gx = g * weight.data if weight is not None else g
            if x.requires_grad:  # dx = rstd · (ĝ - x̂ · mean(ĝ x̂))
                x._accum(rstd * (gx - xhat * (gx * xhat).mean(axis=-1, keepdims=True)))
            if weight is not None and weight.requires_grad:
                weight._accum((g * xhat).reshape(-1, x.shape[-1]).sum(axis=0))
        out._backward = backward
    return out


def rope_angles(head_dim: int, positions, theta: float = 10000.0, dtype=None) -> tuple[Any, Any]:
    """(cos, sin), each (T, head_dim), of rotary embeddings at integer ``positions``: pair i of a head
    (elements i and i + head_dim/2, HF's "rotate_half" layout) turns by angle pos · θ^(−2i/head_dim).
    Computed in float64, returned in ``dtype`` (default: the backend's default dtype)."""
    if head_dim % 2:
        raise ValueError(f"rope: head_dim must be even, got {head_dim}")
    inv_freq = 1.0 / theta ** (numpy.arange(0, head_dim, 2, dtype=numpy.float64) / head_dim)  # (hs/2,)
    pos = numpy.asarray(B.to_numpy(_raw(positions)), dtype=numpy.float64)
    ang = numpy.outer(pos, inv_freq)                # (T, hs/2)
    ang = numpy.concatenate([ang, ang], axis=-1)    # (T, hs): both halves of a pair share an angle
    dt = B.default_dtype if dtype is None else dtype
    return B.xp.asarray(numpy.cos(ang), dtype=dt), B.xp.asarray(numpy.sin(ang), dtype=dt)


def _rotate_half(a, sign: float = 1.0):
    """(−a₂, a₁) for a = (a₁, a₂) split on the last axis; sign −1 gives its transpose (a₂, −a₁)."""
    h = a.shape[-1] // 2
    return B.xp.concatenate([-sign * a[..., h:], sign * a[..., :h]], axis=-1)


def rope(x: Tensor, cos, sin) -> Tensor:
    """Rotary position embedding (Su et al. 2021): x ⊙ cos + rotate_half(x) ⊙ sin, x (..., T, hs), cos and
    sin (T, hs) from ``rope_angles``. Each pair is rotated by its position's angle, so q·k after rotation
    depends only on the positions' difference. The backward rotates back: dx = g ⊙ cos + Rᵀ(g ⊙ sin)."""
    x = _t(x)
    c, s = _raw(cos).astype(x.dtype, copy=False), _raw(sin).astype(x.dtype, copy=False)
    out = Tensor._result(x.data * c + _rotate_half(x.data) * s, (x,), "rope")
    if out.requires_grad:
        out._backward = lambda g: x._accum(g * c + _rotate_half(g * s, sign=-1.0))
    return out


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Grouped-query attention's head sharing: (B, n_kv, T, hs) → (B, n_kv·n_rep, T, hs), each key/value
    head used by n_rep consecutive query heads. The backward sums each group's gradients."""
    x = _t(x)
    if n_rep == 1:
        return x
    Bsz, nkv, T, hs = x.shape
    y = B.xp.broadcast_to(x.data[:, :, None], (Bsz, nkv, n_rep, T, hs)).reshape(Bsz, nkv * n_rep, T, hs)
    out = Tensor._result(y, (x,), "repeat_kv")
    if out.requires_grad:
        out._backward = lambda g: x._accum(g.reshape(Bsz, nkv, n_rep, T, hs).sum(axis=2))
    return out


def embedding(ids, weight: Tensor) -> Tensor:
    """Rows of ``weight`` picked by integer ``ids``; the backward scatter-adds into those rows."""
    ids = B.xp.asarray(_raw(ids))
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be integers, got dtype {ids.dtype}")
    V = weight.shape[0]
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= V):
        bad = int(ids.max()) if int(ids.max()) >= V else int(ids.min())
        raise IndexError(f"embedding: token id {bad} out of range for a vocabulary of {V} "
                         f"(valid: 0..{V - 1})")
    out = Tensor._result(weight.data[ids], (weight,), "embedding")
    if out.requires_grad:
        def backward(g):
            full = B.xp.zeros(weight.shape, dtype=g.dtype)
            B.scatter_add(full, ids.reshape(-1), g.reshape(-1, weight.shape[1]))
            weight._accum(full)
        out._backward = backward
    return out


def dropout(x: Tensor, p: float = 0.1, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout)."""
    x = _t(x)
    if not training or p == 0.0:
        return x
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    keep = (B.rand(*x.shape, dtype=x.dtype) >= p).astype(x.dtype) / (1.0 - p)
    out = Tensor._result(x.data * keep, (x,), "dropout")
    if out.requires_grad:
        out._backward = lambda g: x._accum(g * keep)
    return out


def causal_mask(Tq: int, Tk: int | None = None):
    """Boolean (Tq, Tk) mask, True where query i may attend to key j (j ≤ i + Tk - Tq)."""
    Tk = Tq if Tk is None else Tk
    return B.xp.tril(B.xp.ones((Tq, Tk), dtype=bool), k=Tk - Tq)


def _attention_setup(q: Tensor, k: Tensor, v: Tensor | None, mask, is_causal: bool, scale: float | None,
                     dropout_p: float, who: str) -> tuple[float, object]:
    """Check the operands; the scale and the boolean allowed mask (or None) attention uses."""
    if q.shape[-1] != k.shape[-1] or (v is not None and k.shape[-2] != v.shape[-2]):
        raise ValueError(f"{who}: q {q.shape}, k {k.shape}" + ("" if v is None else f", v {v.shape}")
                         + " don't fit (need q[-1] == k[-1] and k[-2] == v[-2])")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{who}: dropout_p must be in [0, 1), got {dropout_p}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    allowed = None if mask is None else B.xp.asarray(_raw(mask), dtype=bool)
    if is_causal:
        cm = causal_mask(q.shape[-2], k.shape[-2])
        allowed = cm if allowed is None else (allowed & cm)
    return scale, allowed


def _attention_probs(q: Tensor, k: Tensor, allowed, scale: float, bias, dropout_p: float):
    """Raw arrays (P, P̃, keep): softmax(q kᵀ · scale + bias, masked) (..., Tq, Tk), the probabilities after
    inverted dropout, and the dropout's keep mask (None without dropout)."""
    s = B.matmul_nt(q.data, k.data)  # (..., Tq, Tk); updated in place below (it is a fresh array)
    s *= scale
    if bias is not None:
        s = s + _raw(bias)
    if allowed is not None:
        s = B.xp.where(allowed, s, B.xp.asarray(-1e9, dtype=s.dtype))
    s -= s.max(axis=-1, keepdims=True)
    p = B.xp.exp(s, out=s)
    p /= p.sum(axis=-1, keepdims=True)
    keep = None
    if dropout_p > 0.0:  # P̃ = P ⊙ keep, keep ∈ {0, 1/(1-p)}
        keep = (B.rand(*p.shape, dtype=p.dtype) >= dropout_p).astype(p.dtype) / (1.0 - dropout_p)
    return p, (p if keep is None else p * keep), keep


def attention_probs(q: Tensor, k: Tensor, mask=None, is_causal: bool = False, scale: float | None = None,
                    bias: Tensor | None = None, dropout_p: float = 0.0, enable_gqa: bool = False) -> Tensor:
    """The attention probabilities softmax(q kᵀ · scale + bias, masked), (..., Tq, Tk), for plotting (no
    gradient). Arguments as ``scaled_dot_product_attention``; with ``dropout_p`` the dropped, rescaled
    probabilities, the same draw that function makes after the same ``minillm.manual_seed``."""
    q, k = _t(q), _t(k)
    k, _ = _grouped_kv(q, k, None, enable_gqa)
    scale, allowed = _attention_setup(q, k, None, mask, is_causal, scale, dropout_p, "attention_probs")
    return Tensor(_attention_probs(q, k, allowed, scale, bias, dropout_p)[1])


def _grouped_kv(q: Tensor, k: Tensor, v: Tensor | None, enable_gqa: bool) -> tuple[Tensor, Tensor | None]:
    """k and v with their heads repeated to q's (grouped-query attention), or as given without
    ``enable_gqa``; heads on axis -3."""
    if not enable_gqa or q.ndim < 3 or k.shape[-3] == q.shape[-3]:
        return k, v
    nq, nkv = q.shape[-3], k.shape[-3]
    if nq % nkv:
        raise ValueError(f"attention: {nq} query heads can't share {nkv} key/value heads (enable_gqa needs "
                         f"n_heads divisible by n_kv_heads)")
    return repeat_kv(k, nq // nkv), (None if v is None else repeat_kv(v, nq // nkv))


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask=None, is_causal: bool = False,
                                 scale: float | None = None, bias: Tensor | None = None,
                                 dropout_p: float = 0.0, enable_gqa: bool = False) -> Tensor:
    """softmax(q kᵀ · scale + bias, masked) v over the last two axes, with a fused backward.

    q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv) → (..., Tq, dv). ``mask`` is boolean, broadcastable to
    (..., Tq, Tk), True where attention is allowed (PyTorch's convention). ``is_causal`` adds the causal
    mask aligned to the end (so a query block can attend to a longer cached past). ``bias`` is an additive
    score bias (T5's relative positions) that also receives a gradient. ``dropout_p`` drops attention
    probabilities (inverted dropout, mask drawn from ``minillm.manual_seed``'s generator) before they weigh
    v, as PyTorch's ``dropout_p``; pass 0 outside training. ``enable_gqa`` (PyTorch's name): k and v may
    have fewer heads (axis -3) than q, each shared by a group of query heads (``repeat_kv``).
    ``attention_probs`` gives the probabilities.
    """
    q, k, v = _t(q), _t(k), _t(v)
    k, v = _grouped_kv(q, k, v, enable_gqa)
    scale, allowed = _attention_setup(q, k, v, mask, is_causal, scale, dropout_p, "attention")

    fused = getattr(B, "fused_attention", None)
    if (fused is not None and bias is None and dropout_p == 0.0
            and fused.supports(q.data, k.data, v.data, mask, is_causal)):
        o, ctx = fused.forward(q.data, k.data, v.data, _raw(mask), is_causal, scale)
        out = Tensor._result(o, (q, k, v), "attention")
        if out.requires_grad:
            def fused_backward(g):
                dq, dk, dv = fused.backward(g, ctx)
                q._accum(dq)
                k._accum(dk)
                v._accum(dv)
            out._backward = fused_backward
        return out

    p, pd, keep = _attention_probs(q, k, allowed, scale, bias, dropout_p)
    o = B.xp.matmul(pd, v.data)  # (..., Tq, dv)
    parents = (q, k, v) + ((bias,) if isinstance(bias, Tensor) else ())
    out = Tensor._result(o, parents, "attention")
    if out.requires_grad and is_grad_enabled():
        def backward(g):
            # O = P̃ V:  dV = P̃ᵀ dO,  dP̃ = dO Vᵀ,  dP = dP̃ ⊙ keep;
            # P = softmax(S):  dS = P ⊙ (dP - Σ dP⊙P);  S = q kᵀ·scale
            if v.requires_grad:
                v._accum(B.matmul_tn(pd, g))
            ds = B.matmul_nt(g, v.data)  # dP, turned into dS in place
            if keep is not None:
                ds *= keep
            ds -= (ds * p).sum(axis=-1, keepdims=True)
            ds *= p
            if allowed is not None:  # masked scores are constants (a fully masked row has p > 0 there)
                ds = B.xp.where(allowed, ds, 0)
            if q.requires_grad:
                dq = B.xp.matmul(ds, k.data)
                dq *= scale
                q._accum(dq)
            if k.requires_grad:
                dk = B.matmul_tn(ds, q.data)
                dk *= scale
                k._accum(dk)
            if isinstance(bias, Tensor) and bias.requires_grad:
                bias._accum(ds)
        out._backward = backward
    return out
