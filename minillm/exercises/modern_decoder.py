"""Lesson 15: RMSNorm, rotary position embeddings, grouped-query attention's head sharing, and the size
of a KV cache, each checked against the op a Llama in minillm runs."""

from __future__ import annotations

import numpy

from minillm.exercises.checking import Case, Exercise, quiet, same_values_and_nonfinite, seeded
from minillm.peft.memory import LLAMA_7B, TransformerShape


def _tensor(a):
    from minillm.tensor import Tensor

    a = numpy.asarray(a)
    return Tensor(a, dtype=a.dtype if a.dtype.kind == "f" else numpy.float64)


# ------------------------------------------------------------------------------------------- RMSNorm
def rms_norm_reference(x, weight, eps=1e-6):
    """minillm's F.rms_norm on NumPy arrays: x / √(mean(x²) + eps) · weight over the last axis."""
    from minillm import F

    return F.rms_norm(_tensor(x), _tensor(weight), eps=eps).numpy()


def _rms_cases():
    rng = seeded(151)
    for shape, scale, eps, label in [((4, 8), 1.0, 1e-6, ""),
                                     ((2, 3, 16), 3.0, 1e-6, "a batch of sequences"),
                                     ((5, 6), 1.0, 1e-5, "eps 1e-5"),
                                     ((3, 32), 1e-4, 1e-6, "tiny activations (|x| ~ 1e-4): eps matters"),
                                     ((2, 10), 1e3, 1e-6, "activations in the thousands"),
                                     ((4, 12), 1.0, 0.5, "a large eps")]:
        x = rng.standard_normal(shape) * scale + (2.0 * scale if "batch" in label else 0.0)  # non-zero mean
        yield Case((x, rng.uniform(0.5, 1.5, shape[-1])), {"eps": eps}, label=label)
    x = rng.standard_normal((3, 8))
    x[1] = 0.0
    yield Case((x, rng.uniform(0.5, 1.5, 8)), {"eps": 1e-6}, label="an all-zero row")
    yield Case((rng.standard_normal((4, 8)) + 5.0, rng.uniform(0.5, 1.5, 8)), {"eps": 1e-6},
               label="rows with mean 5: RMSNorm keeps the mean")


def _rms(x, weight, eps=1e-6, *, centre=False, where="inside", scaled=True):
    if centre:
        x = x - x.mean(axis=-1, keepdims=True)
    ms = (x * x).mean(axis=-1, keepdims=True)
    if where == "inside":
        y = x / numpy.sqrt(ms + eps)
    elif where == "outside":
        y = x / (numpy.sqrt(ms) + eps)
    else:
        y = x / numpy.sqrt(ms)
    return y * weight if scaled else y


RMS_NORM = Exercise(
    name="15.rms_norm", lesson=15,
    task="Write rms_norm(x, weight, eps=1e-6): RMSNorm over the last axis of x (..., d). Divide x by its "
         "root mean square √(mean(x²) + eps), with eps inside the root, and multiply by the learned "
         "weight (d,). Unlike LayerNorm there is no mean subtracted and no bias: a row keeps its mean "
         "direction, only its length is normalised. eps keeps an all-zero row at 0 instead of 0/0.",
    signature="def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6) -> np.ndarray",
    reference=rms_norm_reference,
    cases=_rms_cases,
    compare=same_values_and_nonfinite,
    mistakes={
        "no eps": (quiet(lambda x, w, eps=1e-6: _rms(x, w, eps, where="none")),
                   "eps is missing: an all-zero row gives 0/0 = nan, and tiny activations are blown up to "
                   "unit size. Add eps to the mean square, inside the square root."),
        "eps outside the root": (lambda x, w, eps=1e-6: _rms(x, w, eps, where="outside"),
                                 "eps was added after the square root: it belongs inside, √(mean(x²) + "
                                 "eps), as in Zhang & Sennrich (2019) and every Llama implementation."),
        "mean subtracted": (lambda x, w, eps=1e-6: _rms(x, w, eps, centre=True),
                            "you subtracted the mean first: that is LayerNorm without its bias. RMSNorm "
                            "only rescales: x / rms(x) · weight."),
        "weight forgotten": (lambda x, w, eps=1e-6: _rms(x, w, eps, scaled=False),
                             "the learned weight (one gain per feature) was never applied: multiply the "
                             "normalised x by it."),
    },
)


# --------------------------------------------------------------------------------------------- RoPE
def apply_rope_reference(x, positions, theta=10000.0):
    """minillm's F.rope with F.rope_angles: pair i = (element i, element i + hs/2) of each head turned by
    angle position · θ^(−2i/hs)."""
    from minillm import F

    x = numpy.asarray(x, dtype=numpy.float64)
    cos, sin = F.rope_angles(x.shape[-1], numpy.asarray(positions), theta, dtype=numpy.float64)
    return F.rope(_tensor(x), cos, sin).numpy()


def _rope(x, positions, theta=10000.0, *, interleaved=False, ignore_positions=False, sign=1.0, two=2.0):
    x = numpy.asarray(x, dtype=numpy.float64)
    hs = x.shape[-1]
    pos = numpy.arange(x.shape[-2]) if ignore_positions else numpy.asarray(positions, dtype=numpy.float64)
    inv_freq = theta ** (-two * numpy.arange(hs // 2) / hs)              # (hs/2,)
    ang = sign * numpy.outer(pos, inv_freq)                              # (T, hs/2)
    c, s = numpy.cos(ang), numpy.sin(ang)
    if interleaved:  # pairs (0, 1), (2, 3), ...: the original paper's layout, not Llama's in minillm
        a, b = x[..., 0::2], x[..., 1::2]
        out = numpy.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
        return out
    a, b = x[..., :hs // 2], x[..., hs // 2:]
    return numpy.concatenate([a * c - b * s, a * s + b * c], axis=-1)


def _rope_cases():
    rng = seeded(152)
    for shape, positions, theta, label in [
            ((5, 8), numpy.arange(5), 10000.0, "positions 0..4"),
            ((2, 4, 6, 16), numpy.arange(6), 10000.0, "(batch, heads, T, head size)"),
            ((4, 8), numpy.arange(10, 14), 10000.0, "positions 10..13 (a continuation after a cache)"),
            ((3, 12), numpy.array([0, 7, 100]), 10000.0, "positions 0, 7, 100"),
            ((6, 4), numpy.arange(6), 100.0, "theta 100"),
            ((1, 32), numpy.array([1000]), 10000.0, "one token at position 1000"),
            ((2, 3, 2), numpy.arange(3) + 2, 10000.0, "head size 2: a single pair")]:
        yield Case((rng.standard_normal(shape), positions), {"theta": theta}, label=label)


APPLY_ROPE = Exercise(
    name="15.apply_rope", lesson=15,
    task="Write apply_rope(x, positions, theta=10000.0): rotary position embedding on x (..., T, hs), "
         "token t at position positions[t]. Split the head into halves a = x[..., :hs/2], b = x[..., hs/2:]; "
         "pair i is (a_i, b_i) (Llama's 'rotate_half' layout) and turns by angle positions[t] · "
         "theta^(−2i/hs): a' = a cos − b sin, b' = a sin + b cos. Return the array of x's shape.",
    signature="def apply_rope(x: np.ndarray, positions: np.ndarray, theta: float = 10000.0) -> np.ndarray",
    reference=apply_rope_reference,
    cases=_rope_cases,
    mistakes={
        "interleaved pairs": (lambda x, p, theta=10000.0: _rope(x, p, theta, interleaved=True),
                              "you rotated neighbouring elements (0, 1), (2, 3), ...: the layout here pairs "
                              "element i with element i + hs/2 (the two halves of the head)."),
        "positions ignored": (lambda x, p, theta=10000.0: _rope(x, p, theta, ignore_positions=True),
                              "the angles use 0, 1, ..., T−1 instead of the positions given: after a KV "
                              "cache the new tokens sit at later positions, so use positions[t]."),
        "rotated backwards": (lambda x, p, theta=10000.0: _rope(x, p, theta, sign=-1.0),
                              "the rotation goes the wrong way: a' = a cos − b sin, b' = a sin + b cos "
                              "(a turn by +angle)."),
        "frequency exponent without the 2": (lambda x, p, theta=10000.0: _rope(x, p, theta, two=1.0),
                                             "the frequencies fall too slowly: pair i's is theta^(−2i/hs), "
                                             "so the last pair's is close to 1/theta, not 1/√theta."),
    },
)


# ------------------------------------------------------------------------------------------ repeat_kv
def repeat_kv_reference(x, n_rep):
    """minillm's F.repeat_kv: (B, n_kv, T, hs) → (B, n_kv·n_rep, T, hs), key/value head j serving query
    heads j·n_rep ... j·n_rep + n_rep − 1."""
    from minillm import F

    return F.repeat_kv(_tensor(x), n_rep).numpy()


def _repeat_cases():
    rng = seeded(153)
    for shape, n_rep, label in [((1, 2, 3, 4), 2, "2 key/value heads for 4 query heads"),
                                ((2, 4, 5, 2), 2, "a batch of 2"),
                                ((1, 3, 2, 4), 4, "3 groups of 4"),
                                ((2, 1, 4, 3), 6, "multi-query: one head for all"),
                                ((1, 2, 3, 2), 1, "n_rep 1: plain multi-head attention")]:
        yield Case((rng.standard_normal(shape), n_rep), label=label)


REPEAT_KV = Exercise(
    name="15.repeat_kv", lesson=15,
    task="Write repeat_kv(x, n_rep): grouped-query attention's head sharing. x holds the keys (or values) "
         "of n_kv heads, shape (B, n_kv, T, hs); return (B, n_kv·n_rep, T, hs) where key/value head j is "
         "used by the n_rep consecutive query heads j·n_rep ... j·n_rep + n_rep − 1 (heads 0, 0, 1, 1 for "
         "n_kv = 2, n_rep = 2), so the query heads of one group read the same keys.",
    signature="def repeat_kv(x: np.ndarray, n_rep: int) -> np.ndarray",
    reference=repeat_kv_reference,
    cases=_repeat_cases,
    mistakes={
        "tiled instead of repeated": (lambda x, n: numpy.tile(x, (1, n, 1, 1)),
                                      "the heads come out in the order 0, 1, 0, 1: that is np.tile. Each "
                                      "key/value head serves consecutive query heads: 0, 0, 1, 1."),
        "repeated along time": (lambda x, n: numpy.repeat(x, n, axis=2),
                                "you repeated along the time axis (2): the heads are axis 1."),
        "repeated along the batch": (lambda x, n: numpy.repeat(x, n, axis=0),
                                     "you repeated along the batch axis (0): the heads are axis 1."),
    },
)


# ------------------------------------------------------------------------------------ KV-cache bytes
def kv_cache_bytes_reference(shape, n_tokens, batch_size=1, bytes_per_value=2):
    """minillm's TransformerShape.kv_cache_bytes (the count Llama.kv_cache_bytes makes):
    2 (k and v) · n_layers · n_kv_heads · head_dim · n_tokens · batch_size · bytes_per_value."""
    return shape.kv_cache_bytes(n_tokens, batch_size, bytes_per_value)


_LLAMA3_8B = TransformerShape(n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8, vocab_size=128256,
                              d_ff=14336, gated_mlp=True,
                              name="a Llama-3-8B-like shape (GQA, 8 key/value heads)")
_MQA = TransformerShape(n_layers=6, d_model=384, n_heads=6, n_kv_heads=1, vocab_size=1000, d_ff=1024,
                        gated_mlp=True, name="a small multi-query model")
_ODD = TransformerShape(n_layers=3, d_model=96, n_heads=12, n_kv_heads=4, vocab_size=500,
                        name="12 query heads, 4 key/value heads, head size 8")


def _bytes_cases():
    yield Case((LLAMA_7B, 4096), label="LLaMA-7B (no GQA), 4096 tokens, float16")
    yield Case((_LLAMA3_8B, 8192), label="GQA, 8192 tokens, float16")
    yield Case((_LLAMA3_8B, 1000), {"batch_size": 8, "bytes_per_value": 1}, label="a batch of 8, int8")
    yield Case((_MQA, 300), {"batch_size": 3, "bytes_per_value": 4}, label="multi-query, float32")
    yield Case((_ODD, 77), {"batch_size": 2}, label="odd sizes")


def _bytes(shape, n_tokens, batch_size=1, bytes_per_value=2, *, heads=None, kv=2, layers=True):
    heads = shape.n_kv_heads if heads is None else heads(shape)
    L = shape.n_layers if layers else 1
    return kv * L * heads * shape.head_dim * n_tokens * batch_size * bytes_per_value


KV_CACHE_BYTES = Exercise(
    name="15.kv_cache_bytes", lesson=15,
    task="Write kv_cache_bytes(shape, n_tokens, batch_size=1, bytes_per_value=2): the bytes a KV cache "
         "holds for batch_size sequences of n_tokens, from the shape alone (nothing allocated). Every "
         "layer (shape.n_layers) keeps a key AND a value vector per token for each of its "
         "shape.n_kv_heads key/value heads, each shape.head_dim numbers of bytes_per_value bytes.",
    signature="def kv_cache_bytes(shape, n_tokens: int, batch_size: int = 1, bytes_per_value: int = 2) "
              "-> int",
    reference=kv_cache_bytes_reference,
    cases=_bytes_cases,
    mistakes={
        "query heads counted": (lambda *a, **k: _bytes(*a, **k, heads=lambda s: s.n_heads),
                                "you counted every query head: only the n_kv_heads key/value heads are "
                                "cached, which is the whole saving of grouped-query attention."),
        "keys only": (lambda *a, **k: _bytes(*a, **k, kv=1),
                      "half of it is missing: the cache keeps the values as well as the keys."),
        "one layer": (lambda *a, **k: _bytes(*a, **k, layers=False),
                      "you counted one layer: every layer caches its own keys and values."),
    },
)

EXERCISES = [RMS_NORM, APPLY_ROPE, REPEAT_KV, KV_CACHE_BYTES]  # the order the lesson meets them
