"""LoRA: low-rank adaptation of frozen Linear layers (Hu et al. 2021, arXiv:2106.09685).

A frozen weight W (d_out × d_in) gets a trainable low-rank update ΔW = s · B A with A (r × d_in),
B (d_out × r) and s = lora_alpha / r (rsLoRA, Kalajdzievski 2023: s = lora_alpha / √r):

    h = W x + b + s · B (A x)                                                      (Hu et al., eq. 3)

A starts random and B starts at zero, so ΔW = 0 and the wrapped model computes exactly what the
pre-trained one did at step 0. Only A and B train: r·(d_in + d_out) numbers instead of d_in·d_out,
e.g. one 1000×1000 layer with r=4 trains 8,000 of its 1,000,000 weights (0.8%). Every other parameter
of the model is frozen, which also limits how much of the pre-trained behaviour fine-tuning can erase.

Names follow Hugging Face PEFT (``LoraConfig``'s r, lora_alpha, lora_dropout, target_modules; a wrapped
layer holds ``base_layer``, ``lora_A``, ``lora_B``), so ``q_proj.lora_A.weight`` means the same thing here.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

from minillm import backend as B
from minillm import nn
from minillm.peft.surgery import (
    check_partial_state,
    find_modules,
    is_linear_like,
    is_quantized_linear,
    replace_module,
    switched_off,
)
from minillm.tensor import Tensor


@dataclass
class LoRAConfig:
    """What to adapt and how (PEFT's ``LoraConfig`` names).

    ``target_modules`` are name suffixes: ``"q_proj"`` matches ``blocks.0.attn.q_proj`` and every other
    Linear whose dotted name ends in ``.q_proj``. ``init`` chooses A's initialisation: ``"gaussian"``
    (N(0, 1/r), PEFT's ``init_lora_weights="gaussian"``) or ``"kaiming"`` (Kaiming-uniform with a=√5,
    PyTorch's Linear default and PEFT's default). B is always zero.
    """

    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: tuple = ("q_proj", "v_proj")
    use_rslora: bool = False
    init: str = "gaussian"

    def __post_init__(self):
        if int(self.r) != self.r or self.r < 1:
            raise ValueError(f"LoRAConfig: r must be a positive integer, got {self.r!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoRAConfig: lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.init not in ("gaussian", "kaiming"):
            raise ValueError(f"LoRAConfig: init must be 'gaussian' or 'kaiming', got {self.init!r}")
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)

    @property
    def scaling(self) -> float:
        """s = lora_alpha / r, or lora_alpha / √r with rsLoRA."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: h = base(x) + s · B A dropout(x).

    ``base_layer`` is an ``nn.Linear`` (LoRA) or a ``QuantizedLinear`` (QLoRA): any Linear-like layer
    (``surgery.is_linear_like``: ``in_features``, ``out_features``, a forward). After ``merge()`` the
    update is folded into the base weight and forward is the base layer alone (one matmul); ``unmerge()``
    takes it out again.
    """

    def __init__(self, base_layer: nn.Module, r: int = 8, lora_alpha: float = 16, lora_dropout: float = 0.0,
                 use_rslora: bool = False, init: str = "gaussian"):
        super().__init__()
        cfg = LoRAConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, use_rslora=use_rslora,
                         init=init)
        d_in, d_out = base_layer.in_features, base_layer.out_features
        self.in_features, self.out_features = d_in, d_out
        self.r, self.lora_alpha, self.use_rslora = int(r), lora_alpha, use_rslora
        self.scaling = cfg.scaling
        self.base_layer = base_layer.requires_grad_(False)
        self.lora_dropout = nn.Dropout(lora_dropout)
        self.lora_A = nn.Linear(d_in, r, bias=False)   # weight (r, d_in)
        self.lora_B = nn.Linear(r, d_out, bias=False)  # weight (d_out, r)
        if init == "gaussian":
            self.lora_A.weight.data = B.randn(r, d_in) * (1.0 / r)  # std 1/r, as PEFT's gaussian init
        else:  # Kaiming-uniform, a=√5: bound = √(6 / ((1 + a²) d_in)) = 1/√d_in
            self.lora_A.weight.data = (B.rand(r, d_in) * 2 - 1) * (1.0 / math.sqrt(d_in))
        self.lora_B.weight.data = B.xp.zeros((d_out, r), dtype=B.default_dtype)
        self.merged = False
        self.disabled = False  # True: behave as the base layer alone (see ``lora_disabled``)

    def forward(self, x: Tensor) -> Tensor:
        h = self.base_layer(x)
        if self.merged or self.disabled:
            return h
        # (..., d_in) → (..., r) → (..., d_out): never forms the d_out × d_in product
        return h + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self):
        """ΔW = s · B A as an array of the base weight's shape (d_out, d_in)."""
        return self.scaling * (self.lora_B.weight.data @ self.lora_A.weight.data)

    def merge(self) -> None:
        """Fold ΔW into the base weight: W ← W + s·BA (base must be a float Linear)."""
        if self.merged:
            return
        w = self._float_weight("merge")
        w.data = (w.data + self.delta_weight()).astype(w.dtype)
        self.merged = True

    def unmerge(self) -> None:
        """Take ΔW back out: W ← W − s·BA (equal to the original within float rounding)."""
        if not self.merged:
            return
        w = self._float_weight("unmerge")
        w.data = (w.data - self.delta_weight()).astype(w.dtype)
        self.merged = False

    def _float_weight(self, what: str) -> nn.Parameter:
        w = getattr(self.base_layer, "weight", None)
        if not isinstance(w, Tensor):
            raise TypeError(f"LoRALinear.{what}: base layer {type(self.base_layer).__name__} has no float "
                            "weight to fold into (a quantized base cannot be merged in place; "
                            "use merge_and_unload, which dequantizes)")
        return w

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, r={self.r}, lora_alpha={self.lora_alpha}, "
                f"scaling={self.scaling:.4g}, merged={self.merged}")


# ------------------------------------------------------------------ applying to a model
def apply_lora(model: nn.Module, config: LoRAConfig | None = None) -> nn.Module:
    """Wrap every Linear whose name ends in one of ``config.target_modules`` in a ``LoRALinear``, in place.

    Every other parameter of the model (embeddings, feed-forward, LayerNorm, ...) is frozen, so only the
    LoRA matrices train and only they get gradients and optimizer state. Returns the model.
    Raises ValueError naming the model's Linear layers if no target matches.
    """
    config = config or LoRAConfig()
    model.requires_grad_(False)
    hits = [(name, m) for name, m in find_modules(model, config.target_modules,
                                                   lambda m: is_linear_like(m) or isinstance(m, LoRALinear))
            if not name.endswith((".lora_A", ".lora_B"))]
    if not hits:
        linears = [n for n, m in model.named_modules() if is_linear_like(m)]
        raise ValueError(f"apply_lora: no Linear layer matches target_modules={config.target_modules}; "
                         f"the model's Linear layers are {linears[:12]}{' ...' if len(linears) > 12 else ''}")
    for name, m in hits:
        if isinstance(m, LoRALinear):  # already wrapped: apply_lora is idempotent
            for p in (m.lora_A.weight, m.lora_B.weight):
                p.requires_grad = True
            continue
        wrapped = LoRALinear(m, r=config.r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                             use_rslora=config.use_rslora, init=config.init)
        replace_module(model, name, wrapped)
    return model


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """(name, layer) for every LoRALinear in the model."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


@contextmanager
def lora_disabled(model: nn.Module):
    """Inside this block every LoRALinear computes its base layer alone: the pre-trained model, exactly
    (PEFT's ``disable_adapter()``). Merged layers are unmerged for the block and merged again after."""
    layers = [m for _, m in lora_layers(model)]
    merged = [m for m in layers if m.merged]
    for m in merged:
        m.unmerge()
    try:
        with switched_off(model, LoRALinear):
            yield model
    finally:
        for m in merged:
            m.merge()


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W + s·BA): inference costs one matmul per layer again."""
    for _, m in lora_layers(model):
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo ``merge_lora``: subtract s·BA again, so training can continue on A and B."""
    for _, m in lora_layers(model):
        m.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by one plain ``nn.Linear`` holding W + s·BA (a QuantizedLinear base is
    dequantized first). The result has no LoRA left: the plain architecture, ready to ship."""
    for name, m in lora_layers(model):
        base = m.base_layer
        if isinstance(base, nn.Linear):
            w = base.weight.data + (0 if m.merged else m.delta_weight())
        else:  # a quantized base (surgery.is_quantized_linear)
            w = base.dequantize() + m.delta_weight()
        bias = base.bias
        lin = nn.Linear(m.in_features, m.out_features, bias=bias is not None)
        lin.weight.data = B.asarray(w, dtype=B.default_dtype)
        if bias is not None:
            lin.bias.data = bias.data.copy()
        lin.requires_grad_(False)
        replace_module(model, name, lin)
    return model


# ------------------------------------------------------------------ adapter-only state
def lora_state_dict(model: nn.Module) -> OrderedDict:
    """Only the LoRA matrices (``...lora_A.weight``, ``...lora_B.weight``): a few KB to ship per task."""
    return OrderedDict((k, v) for k, v in model.state_dict().items()
                       if k.endswith((".lora_A.weight", ".lora_B.weight")))


def load_lora_state_dict(model: nn.Module, state: dict) -> None:
    """Load adapter matrices saved by ``lora_state_dict`` into a model that ``apply_lora`` has wrapped.

    Raises ``nn.StateDictError`` naming missing/unexpected/mis-shaped keys. Merged layers are unmerged
    first so the new adapter is not added on top of the old one.
    """
    own = lora_state_dict(model)
    if not own:
        raise nn.StateDictError("load_lora_state_dict: the model has no LoRA layers; call apply_lora first")
    check_partial_state("load_lora_state_dict", own, state)
    was_merged = [m for _, m in lora_layers(model) if m.merged]
    for m in was_merged:
        m.unmerge()
    model.load_state_dict(state, strict=False)
    for m in was_merged:
        m.merge()


# ------------------------------------------------------------------ counting
def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts; a quantized layer's frozen weight (a QuantizedLinear's 4-bit codes,
    which are buffers, not parameters) counts as its d_out·d_in."""
    trainable = sum(p.size for p in model.parameters() if p.requires_grad)
    total = sum(p.size for p in model.parameters())
    total += sum(m.in_features * m.out_features for m in model.modules() if is_quantized_linear(m))
    return trainable, total


def format_trainable_parameters(trainable: int, total: int) -> str:
    """PEFT's exact line: 'trainable params: X || all params: Y || trainable%: Z'."""
    pct = 100 * trainable / total
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {pct:.4f}"


def print_trainable_parameters(model: nn.Module) -> str:
    """Print (and return) PEFT's line for this model. As in PEFT, "all params" includes the adapters."""
    line = format_trainable_parameters(*trainable_parameters(model))
    print(line)
    return line


def lora_param_count(d_in: int, d_out: int, r: int) -> int:
    """Trainable numbers LoRA adds to one d_out × d_in layer: A (r × d_in) + B (d_out × r) = r(d_in + d_out).

    The seed's arithmetic: lora_param_count(1000, 1000, 4) = 8,000, i.e. 0.8% of the layer's 1,000,000.
    """
    for n, v in (("d_in", d_in), ("d_out", d_out), ("r", r)):
        if int(v) != v or v < 1:
            raise ValueError(f"lora_param_count: {n} must be a positive integer, got {v!r}")
    return int(r) * (int(d_in) + int(d_out))


def lora_param_count_for_shape(shape, config: LoRAConfig) -> int:
    """LoRA parameters for a whole transformer described by a ``memory.TransformerShape`` (not allocated):
    Σ over layers and targeted projections of r(d_in + d_out)."""
    per_layer = shape.linear_shapes()
    unknown = [t for t in config.target_modules if t not in per_layer]
    if unknown:
        raise ValueError(f"lora_param_count_for_shape: unknown target(s) {unknown}; a layer has "
                         f"{sorted(per_layer)}")
    return shape.n_layers * sum(lora_param_count(*per_layer[t], config.r) for t in config.target_modules)


def lora_linear_reference(x, W, b, A, Bm, scaling: float):
    """The formula in plain arrays (for tests and lessons): x Wᵀ + b + s · (x Aᵀ) Bᵀ."""
    y = x @ W.T + (0 if b is None else b)
    return y + scaling * ((x @ A.T) @ Bm.T)


__all__ = [
    "LoRAConfig", "LoRALinear", "apply_lora", "format_trainable_parameters", "load_lora_state_dict",
    "lora_disabled", "lora_layers", "lora_linear_reference", "lora_param_count", "lora_param_count_for_shape",
    "lora_state_dict", "merge_and_unload", "merge_lora", "print_trainable_parameters", "trainable_parameters",
    "unmerge_lora",
]
