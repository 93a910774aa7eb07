"""Lesson 13: the NF4 levels, blockwise absmax quantise/dequantise, the memory bill of a config."""

from __future__ import annotations

import numpy

from minillm import backend
from minillm.exercises.checking import Case, Exercise, seeded
from minillm.peft import qlora
from minillm.peft.memory import predicted_training_bytes
from minillm.peft.qlora import INT4_CODE, NF4_CODE, nf4_code_values, norm_ppf

# ------------------------------------------------------------------------------------ the NF4 levels
_DELTA = 1 - 0.5 * (1 / 30 + 1 / 32)


def _halves(n_neg: int = 7):
    pos = norm_ppf(numpy.linspace(_DELTA, 0.5, 9)[:-1])
    neg = -norm_ppf(numpy.linspace(_DELTA, 0.5, n_neg + 1)[:-1])
    return pos, neg


def _levels(*, symmetric=False, normalise=True, zero=True, sort=True):
    pos, neg = _halves()
    if symmetric:
        pos, neg, zero = pos, -pos, False
    v = numpy.concatenate([pos, [0.0], neg] if zero else [pos, neg])
    v = numpy.sort(v) if sort else v
    return (v / v.max() if normalise else v).astype(numpy.float32)


NF4_LEVELS = Exercise(
    name="13.nf4_levels", lesson=13,
    task="Write nf4_levels(): the 16 NF4 code values, sorted, as in QLoRA. Use the normal quantile function "
         "norm_ppf (Φ⁻¹). The positive half is Φ⁻¹ at the first 8 of 9 points evenly spaced from "
         "δ = 1 − ½(1/30 + 1/32) down to ½; the negative half is −Φ⁻¹ at the first 7 of 8 points evenly "
         "spaced over the same range; together with one exact 0 that makes 16. Divide by the largest "
         "value so the levels run from −1 to 1.",
    signature="def nf4_levels() -> np.ndarray",
    reference=nf4_code_values,
    cases=lambda: [Case(())],
    mistakes={
        "evenly spaced": (lambda: numpy.linspace(-1, 1, 16).astype(numpy.float32),
                          "evenly spaced levels are int4's; NF4 puts its levels at quantiles of the normal "
                          "distribution (norm_ppf)."),
        "symmetric halves": (lambda: _levels(symmetric=True),
                             "your code is symmetric (8 and 8) and has no level at 0: NF4 has 8 positive "
                             "levels, 7 negative ones and an exact zero."),
        "not normalised": (lambda: _levels(normalise=False),
                           "the levels are raw normal quantiles (the largest is about 1.85): scale them so "
                           "the largest is exactly 1."),
        "missing zero": (lambda: _levels(zero=False),
                         "only 15 levels: the 16th is an exact 0, shared by both halves."),
        "unsorted": (lambda: _levels(sort=False),
                     "the levels are all there but out of order: return them sorted, smallest first."),
    },
)


# --------------------------------------------------------------------- blockwise absmax quantisation
def blockwise_reference(w, code, block_size=64):
    """minillm.peft.qlora's quantize_blockwise + dequantize_blockwise: (codes (w.size,), absmax
    (n_blocks,), dequantised w.shape)."""
    w = numpy.asarray(w)
    codes, absmax = qlora.quantize_blockwise(w, code, block_size)
    deq = qlora.dequantize_blockwise(codes, absmax, code, w.shape, block_size)
    return backend.to_numpy(codes)[:w.size], backend.to_numpy(absmax), backend.to_numpy(deq)


def _blockwise(w, code, block_size=64, *, scale="absmax", by_index=False, drop_last=False):
    w = numpy.asarray(w, dtype=numpy.float32)
    code = numpy.asarray(code, dtype=numpy.float32)
    flat = w.reshape(-1)
    n_blocks = flat.size // block_size if drop_last else -(-flat.size // block_size)
    padded = numpy.zeros(n_blocks * block_size, dtype=numpy.float32)
    kept = min(flat.size, padded.size)
    padded[:kept] = flat[:kept]
    blocks = padded.reshape(n_blocks, block_size)
    if scale == "global":
        absmax = numpy.full(n_blocks, numpy.abs(flat).max(), dtype=numpy.float32)
    elif scale == "max":
        absmax = blocks.max(axis=1)
    else:
        absmax = numpy.abs(blocks).max(axis=1)
    safe = numpy.where(absmax != 0, absmax, 1.0).astype(numpy.float32)
    x = blocks / safe[:, None]
    if by_index:
        idx = numpy.clip(numpy.rint((x + 1) / 2 * (code.size - 1)), 0, code.size - 1).astype(numpy.int64)
    else:
        idx = numpy.searchsorted((code[1:] + code[:-1]) / 2, x, side="left")
    deq = (code[idx] * absmax[:, None]).reshape(-1)
    codes = idx.reshape(-1)
    if not drop_last:
        codes, deq = codes[:flat.size], deq[:flat.size].reshape(w.shape)
    elif deq.size == flat.size:
        deq = deq.reshape(w.shape)
    return codes, absmax, deq


def _blockwise_cases():
    rng = seeded(131)
    for shape, block, code, scale, label in [((64,), 64, NF4_CODE, 1.0, "one whole block"),
                                             ((100,), 64, NF4_CODE, 1.0, "a partial last block"),
                                             ((3, 50), 16, NF4_CODE, 1.0, "150 = 9 blocks of 16 + 6"),
                                             ((7,), 4, INT4_CODE, 1.0, "int4's code, blocks of 4"),
                                             ((2, 3, 40), 32, NF4_CODE, 1.0, "240 = 7 blocks of 32 + 16"),
                                             ((130,), 64, NF4_CODE, 1e4, "values in the tens of thousands")]:
        w = (rng.standard_normal(shape) * scale).astype(numpy.float32)
        yield Case((w, code, block), label=label)
    w = rng.standard_normal(40).astype(numpy.float32)
    w[3] = 25.0                       # one outlier: it should only coarsen its own block
    w[16:32] = 0.0                    # a block of zeros (absmax 0)
    w[32:36] = -numpy.abs(w[32:36])   # a block of negative numbers only
    yield Case((w, NF4_CODE, 16), label="an outlier, a block of zeros, a negative block")


BLOCKWISE = Exercise(
    name="13.blockwise_absmax", lesson=13,
    task="Write blockwise_absmax(w, code, block_size=64): quantise w to the sorted codebook code (NF4's 16 "
         "levels, or int4's 15) and back. Flatten w and cut it into blocks of block_size; the last block "
         "may be shorter (pad it with zeros). Each block's scale is its absolute maximum (a block of zeros "
         "divides by 1 instead); every weight divided by its block's scale becomes the index of the code "
         "value nearest to it (ties to the lower index). Return (codes (w.size,) integers, absmax "
         "(n_blocks,), dequantised: code[codes] · absmax in w's shape).",
    signature="def blockwise_absmax(w: np.ndarray, code: np.ndarray, block_size: int = 64) "
              "-> tuple[np.ndarray, np.ndarray, np.ndarray]",
    reference=blockwise_reference,
    cases=_blockwise_cases,
    mistakes={
        "one absmax for the whole tensor": (lambda *a: _blockwise(*a, scale="global"),
                                            "every block got the same scale (the whole tensor's): each "
                                            "block is scaled by its own absolute maximum, so one outlier "
                                            "only coarsens its own block."),
        "max, not absmax": (lambda *a: _blockwise(*a, scale="max"),
                            "the scale is the block's largest value, not its largest magnitude: a block "
                            "whose biggest weight is negative must still land in [-1, 1]."),
        "nearest by index": (lambda *a: _blockwise(*a, by_index=True),
                             "you rounded as if the levels were evenly spaced; NF4's are not: pick the code "
                             "whose value is nearest."),
        "last partial block dropped": (lambda *a: _blockwise(*a, drop_last=True),
                                       "the weights after the last whole block were lost: count the "
                                       "blocks rounding up and pad the last one."),
    },
)


# --------------------------------------------------------------------------------- the memory bill
def _bill(n_params, n_trainable, bytes_per_value=4, *, grads_for=None, moments=2, bpv=None):
    b = bytes_per_value if bpv is None else bpv
    grads = n_params if grads_for == "all" else n_trainable
    opt = n_params if grads_for == "all-opt" else n_trainable
    return {"weights": int(b * n_params), "gradients": int(b * grads), "optimizer": int(moments * b * opt)}


def _bill_cases():
    yield Case((929_152, 929_152), label="full fine-tuning of the lesson GPT")
    yield Case((945_536, 16_384), label="LoRA r=8 on q, v of the lesson GPT")
    yield Case((1_008_000, 8_000), label="one 1000 × 1000 layer with LoRA r=4")
    yield Case((6_742_609_920, 4_194_304), {"bytes_per_value": 2}, label="LLaMA-7B + LoRA, 16-bit values")
    yield Case((7_000_000_000, 7_000_000_000), {"bytes_per_value": 2}, label="7B, all trainable, 16-bit")
    yield Case((5_000, 0), label="everything frozen")


MEMORY_BILL = Exercise(
    name="13.training_bytes", lesson=13,
    task="Write training_bytes(n_params, n_trainable, bytes_per_value=4): the bytes minillm holds while "
         "training with AdamW, as a dict of integers {'weights', 'gradients', 'optimizer'}. Every "
         "parameter is stored (bytes_per_value each, 4 for float32); only trainable parameters get a "
         "gradient and AdamW's state (a first and a second moment, each bytes_per_value). Full fine-tuning "
         "is n_trainable = n_params; LoRA trains the adapters only.",
    signature="def training_bytes(n_params: int, n_trainable: int, bytes_per_value: int = 4) -> dict",
    reference=predicted_training_bytes,
    cases=_bill_cases,
    mistakes={
        "Adam as one moment": (lambda *a, **k: _bill(*a, **k, moments=1),
                               "AdamW keeps two numbers per trainable parameter, the running mean of the "
                               "gradient and of its square."),
        "master copy counted": (lambda *a, **k: _bill(*a, **k, moments=3),
                                "12 bytes of optimizer state is mixed precision's (a float32 master copy + m "
                                "+ v); training in one precision has no separate master copy."),
        "gradients for frozen weights": (lambda *a, **k: _bill(*a, **k, grads_for="all"),
                                         "frozen weights get no gradient: only the trainable parameters' "
                                         "gradients are stored."),
        "optimizer state for frozen weights": (lambda *a, **k: _bill(*a, **k, grads_for="all-opt"),
                                               "the optimizer only sees the trainable parameters: frozen "
                                               "weights have no optimizer state."),
        "bytes_per_value ignored": (lambda *a, **k: _bill(*a, **k, bpv=4),
                                    "you assumed 4 bytes per value: use bytes_per_value (2 for 16-bit)."),
    },
)

EXERCISES = [NF4_LEVELS, BLOCKWISE, MEMORY_BILL]
