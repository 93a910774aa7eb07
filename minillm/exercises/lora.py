"""Lesson 12: the LoRA forward (alpha/r), merge and unmerge, the trainable-parameter count."""

from __future__ import annotations

from minillm.exercises.checking import Case, Exercise, seeded
from minillm.peft.lora import (
    LoRAConfig,
    format_trainable_parameters,
    lora_linear_reference,
    lora_param_count_for_shape,
)
from minillm.peft.memory import LLAMA_7B, TransformerShape


# ------------------------------------------------------------------------------------ the forward
def _forward(x, W, b, A, B, alpha, r, dropout_mask=None, *, scale=None, base_dropped=False):
    s = alpha / r if scale is None else scale(alpha, r)
    xd = x if dropout_mask is None else x * dropout_mask
    y = (xd if base_dropped else x) @ W.T + (0 if b is None else b)
    return y + s * ((xd @ A.T) @ B.T)


def lora_forward_reference(x, W, b, A, B, alpha, r, dropout_mask=None):
    """x Wᵀ + b + (α/r)·(dropout(x) Aᵀ) Bᵀ, with dropout given as a mask (already scaled by 1/(1-p)).
    Without a mask it is minillm.peft.lora.lora_linear_reference."""
    if dropout_mask is None:
        return lora_linear_reference(x, W, b, A, B, alpha / r)
    return _forward(x, W, b, A, B, alpha, r, dropout_mask)


def _forward_cases():
    rng = seeded(121)
    for x_shape, d_out, r, alpha, bias, drop, label in [
            ((4, 5), 3, 2, 4, True, False, ""),
            ((2, 3, 6), 6, 4, 16, True, False, "a batch of sequences"),
            ((1, 7), 9, 3, 8, False, False, "no bias"),
            ((3, 8), 5, 2, 6, True, True, "with a dropout mask"),
            ((2, 4, 10), 7, 8, 32, False, True, "a batch of sequences, dropout mask"),
            ((5, 6), 4, 2, 16, True, False, "inputs in the thousands")]:
        d_in = x_shape[-1]
        x = rng.standard_normal(x_shape) * (1e3 if "thousands" in label else 1.0)
        W, A, B = (rng.standard_normal(s) for s in ((d_out, d_in), (r, d_in), (d_out, r)))
        b = rng.standard_normal(d_out) if bias else None
        kwargs = {}
        if drop:  # inverted dropout with p = 0.25: kept inputs are scaled by 1/(1 - p)
            kwargs["dropout_mask"] = (rng.random(x_shape) > 0.25) / 0.75
        yield Case((x, W, b, A, B, alpha, r), kwargs, label=label)


LORA_FORWARD = Exercise(
    name="12.lora_forward", lesson=12,
    task="Write lora_forward(x, W, b, A, B, alpha, r, dropout_mask=None): the output of a LoRA layer on "
         "x (..., d_in). W (d_out, d_in) and the bias b (d_out,) or None are the frozen base; A (r, d_in) "
         "and B (d_out, r) the adapter. Add the base output x Wᵀ + b and the low-rank update (x Aᵀ) Bᵀ "
         "times the scale lora_alpha / r, never forming the d_out × d_in product B A. When dropout_mask "
         "(the shape of x, already scaled by 1/(1-p)) is given, it is LoRA's dropout: multiply it into "
         "the adapter's input only.",
    signature="def lora_forward(x, W, b, A, B, alpha: float, r: int, dropout_mask=None) -> np.ndarray",
    reference=lora_forward_reference,
    cases=_forward_cases,
    mistakes={
        "scaled by alpha": (lambda *a, **k: _forward(*a, **k, scale=lambda al, r: al),
                            "the update is scaled by lora_alpha alone: the scale is lora_alpha divided "
                            "by the rank, so changing r keeps the update's size steady."),
        "no scale": (lambda *a, **k: _forward(*a, **k, scale=lambda al, r: 1.0),
                     "the low-rank update is added unscaled: it is multiplied by lora_alpha / r."),
        "dropout on the base too": (lambda *a, **k: _forward(*a, **k, base_dropped=True),
                                    "the dropout mask also hit the frozen base path: LoRA's dropout acts on "
                                    "the adapter's input only, the base sees x unchanged."),
        "dropout ignored": (lambda x, W, b, A, B, alpha, r, dropout_mask=None:
                            _forward(x, W, b, A, B, alpha, r),
                            "the dropout mask given was never used: multiply it into the input of the "
                            "adapter branch."),
    },
)


# ---------------------------------------------------------------------------- merge and unmerge
def _merge(W, A, B, alpha, r, unmerge=False, *, scale=None, sign=None):
    s = alpha / r if scale is None else scale(alpha, r)
    sign = (-1.0 if unmerge else 1.0) if sign is None else sign
    return W + sign * s * (B @ A)


def merge_reference(W, A, B, alpha, r, unmerge=False):
    """LoRALinear.merge / unmerge on arrays: W ± (α/r)·B A (the update ΔW = s · B A, delta_weight)."""
    return _merge(W, A, B, alpha, r, unmerge)


def _merge_cases():
    rng = seeded(122)
    for (d_out, d_in), r, alpha, unmerge, label in [((3, 5), 2, 4, False, ""), ((6, 6), 4, 16, False, ""),
                                                    ((9, 4), 1, 2, False, "rank 1"),
                                                    ((4, 7), 3, 8, True, "unmerge"),
                                                    ((8, 8), 8, 16, True, "unmerge")]:
        W, A, B = (rng.standard_normal(s) for s in ((d_out, d_in), (r, d_in), (d_out, r)))
        yield Case((W, A, B, alpha, r), {"unmerge": unmerge}, label=label)
    W, A, B = rng.standard_normal((5, 3)), rng.standard_normal((2, 3)), rng.standard_normal((5, 2))
    yield Case((merge_reference(W, A, B, 6, 2), A, B, 6, 2), {"unmerge": True},
               label="unmerge a merged weight: W comes back")


MERGE = Exercise(
    name="12.merge_unmerge", lesson=12,
    task="Write merge_lora_weight(W, A, B, alpha, r, unmerge=False): fold a trained adapter into the frozen "
         "weight W (d_out, d_in), so the layer is one matmul again: W' = W + (alpha / r)·B A with A "
         "(r, d_in) and B (d_out, r). With unmerge=True take the same update back out of a merged weight, "
         "so that unmerging what you merged gives the original W (up to float rounding). Return a new "
         "array of W's shape.",
    signature="def merge_lora_weight(W, A, B, alpha: float, r: int, unmerge: bool = False) -> np.ndarray",
    reference=merge_reference,
    cases=_merge_cases,
    mistakes={
        "scale forgotten": (lambda *a, **k: _merge(*a, **k, scale=lambda al, r: 1.0),
                            "the merged update must be scaled exactly as in the forward pass, or merging "
                            "changes the layer's output."),
        "scaled by alpha": (lambda *a, **k: _merge(*a, **k, scale=lambda al, r: al),
                            "you scaled by lora_alpha; the forward scales by lora_alpha / r, and the "
                            "merge must match it."),
        "scale inverted": (lambda *a, **k: _merge(*a, **k, scale=lambda al, r: r / al),
                           "the scale is upside down: it is lora_alpha over r."),
        "unmerge adds": (lambda *a, **k: _merge(*a, **k, sign=1.0),
                         "with unmerge=True the update is added a second time: unmerging subtracts it."),
    },
)


# ------------------------------------------------------------------------- the trainable count
def trainable_line_reference(shape, r, target_modules):
    """PEFT's print_trainable_parameters line for LoRA rank r on target_modules of every layer of shape
    (a minillm.peft.memory.TransformerShape): trainable = Σ r·(d_in + d_out), all = base + trainable."""
    n = lora_param_count_for_shape(shape, LoRAConfig(r=r, target_modules=tuple(target_modules)))
    return format_trainable_parameters(n, shape.num_parameters() + n)


def _line(shape, r, target_modules, *, per=None, layers=True, count_adapter=True):
    per = per or (lambda d_in, d_out, r: r * (d_in + d_out))
    dims = shape.linear_shapes()
    n = (shape.n_layers if layers else 1) * sum(per(*dims[t], r) for t in target_modules)
    return format_trainable_parameters(n, shape.num_parameters() + (n if count_adapter else 0))


_GPT_SMALL = TransformerShape(n_layers=4, d_model=128, n_heads=4, vocab_size=512, d_ff=512, bias=True,
                              norm="layer", max_positions=128, name="a small GPT")
_ODD = TransformerShape(n_layers=3, d_model=96, n_heads=3, vocab_size=1000, d_ff=344, gated_mlp=True,
                        name="odd sizes")


def _line_cases():
    yield Case((LLAMA_7B, 8, ("q_proj", "v_proj")), label="LLaMA-7B, PEFT's default targets")
    yield Case((LLAMA_7B, 16, ("q_proj", "k_proj", "v_proj", "out_proj", "gate_proj", "up_proj",
                               "down_proj")), label="LLaMA-7B, every projection")
    yield Case((_GPT_SMALL, 4, ("q_proj", "v_proj", "up_proj", "down_proj")), label="a small GPT, MLP too")
    yield Case((_ODD, 2, ("down_proj",)), label="d_ff 344: a non-square matrix")
    yield Case((_GPT_SMALL, 1, ("k_proj",)), label="rank 1")


TRAINABLE_LINE = Exercise(
    name="12.trainable_line", lesson=12,
    task="Write lora_trainable_line(shape, r, target_modules): PEFT's print_trainable_parameters line for "
         "LoRA of rank r on the named projections of every layer, computed from the shape alone (nothing "
         "allocated). shape.linear_shapes() maps each projection name to (d_in, d_out), shape.n_layers is "
         "the number of layers, shape.num_parameters() the base model's size. An adapted d_out × d_in "
         "matrix gets A (r × d_in) and B (d_out × r). As in PEFT, 'all params' includes the adapters. "
         "Format it exactly as 'trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: "
         "0.0622' (thousands separators, 4 decimals).",
    signature="def lora_trainable_line(shape, r: int, target_modules: tuple) -> str",
    reference=trainable_line_reference,
    cases=_line_cases,
    mistakes={
        "A only": (lambda *a: _line(*a, per=lambda i, o, r: r * i),
                   "you counted A only: B (d_out × r) is trained too."),
        "one layer": (lambda *a: _line(*a, layers=False),
                      "you counted the adapters of one layer: every layer gets its own."),
        "adapters left out of all params": (lambda *a: _line(*a, count_adapter=False),
                                            "PEFT's 'all params' is the base model plus the adapters "
                                            "(hence 0.7937 %, not 0.8 %, in section 2)."),
        "square matrices assumed": (lambda *a: _line(*a, per=lambda i, o, r: 2 * r * _square_side(i, o)),
                                    "not every projection is d_model × d_model: the MLP's are d_model × "
                                    "d_ff; use each matrix's own d_in and d_out."),
    },
)


def _square_side(d_in: int, d_out: int) -> int:
    """The 'square matrices' mistake: every adapted matrix taken as d × d with d the smaller side."""
    return min(d_in, d_out)


EXERCISES = [LORA_FORWARD, TRAINABLE_LINE, MERGE]  # the order the lesson meets them
