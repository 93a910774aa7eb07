"""Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", §2.1, Fig. 2).

A small module after each attention and each feed-forward sub-layer of a frozen transformer:

    h ← h + W_up · act(W_down · h + b_down) + b_up,        W_down (m × d), W_up (d × m), m ≪ d

With W_up and b_up zero the adapter is the identity at step 0, so fine-tuning starts from exactly the
pre-trained model. Each adapter trains 2·d·m + d + m numbers. Unlike LoRA it cannot be folded away
after training (the nonlinearity sits between the two projections): it adds a little inference cost.
"""

from __future__ import annotations

from minillm import backend as B
from minillm import functional as F
from minillm import nn
from minillm.peft.surgery import find_modules, parent_and_name, switched_off
from minillm.tensor import Tensor


class Adapter(nn.Module):
    """h + up(act(down(h))): down-project d → m, nonlinearity, up-project m → d (zero at init), residual."""

    def __init__(self, d_model: int, bottleneck: int = 16, activation: str = "gelu"):
        super().__init__()
        if bottleneck < 1 or d_model < 1:
            raise ValueError(f"Adapter: d_model and bottleneck must be positive, got {d_model}, {bottleneck}")
        acts = {"gelu": F.gelu, "relu": F.relu}
        if activation not in acts:
            raise ValueError(f"Adapter: activation must be one of {sorted(acts)}, got {activation!r}")
        self.d_model, self.bottleneck = d_model, bottleneck
        self.activation, self._act = activation, acts[activation]
        self.down_proj = nn.Linear(d_model, bottleneck)
        self.up_proj = nn.Linear(bottleneck, d_model)
        # zero up-projection (its bias starts at 0 too): the adapter is the identity at step 0
        self.up_proj.weight.data = B.xp.zeros((d_model, bottleneck), dtype=B.default_dtype)

    def forward(self, h: Tensor) -> Tensor:
        if h.shape[-1] != self.d_model:
            raise ValueError(f"Adapter: expected (..., {self.d_model}) input, got {h.shape}")
        return h + self.up_proj(self._act(self.down_proj(h)))  # (..., m) inside

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, bottleneck={self.bottleneck}, activation={self.activation}"


def adapter_param_count(d_model: int, bottleneck: int) -> int:
    """Numbers one adapter trains: W_down (m·d) + b_down (m) + W_up (d·m) + b_up (d)."""
    return 2 * d_model * bottleneck + bottleneck + d_model


class AdaptedSublayer(nn.Module):
    """A frozen sub-layer followed by an adapter on its output; keyword arguments pass straight through, and a
    tuple output (attention, a block: (y, present_kv)) gets the adapter on its first element."""

    def __init__(self, base_layer: nn.Module, adapter: Adapter):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.disabled = False  # True: the base sub-layer alone (see ``adapters_disabled``)

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        if self.disabled:
            return out
        if isinstance(out, tuple):
            return (self.adapter(out[0]),) + out[1:]
        return self.adapter(out)


def _output_dim(m: nn.Module) -> int:
    for name in ("out_proj", "down_proj"):
        sub = getattr(m, name, None)
        if sub is not None:
            return sub.out_features
    if hasattr(m, "out_features"):
        return m.out_features
    raise ValueError(f"apply_adapters: cannot tell the output width of {type(m).__name__} "
                     "(expected out_proj, down_proj or out_features)")


def apply_adapters(model: nn.Module, bottleneck: int = 16, target_modules: tuple = ("attn", "mlp"),
                   activation: str = "gelu") -> nn.Module:
    """Insert an adapter after every sub-layer whose name ends in ``target_modules`` (a TransformerBlock's
    ``attn`` and ``mlp``), in place; freeze every other parameter. Returns the model."""
    model.requires_grad_(False)
    hits = find_modules(model, tuple(target_modules), lambda m: not isinstance(m, (AdaptedSublayer, Adapter)))
    if not hits:
        raise ValueError(f"apply_adapters: no sub-module name ends in {tuple(target_modules)}")
    for name, m in hits:
        parent, last = parent_and_name(model, name)
        if isinstance(parent, AdaptedSublayer):
            continue
        setattr(parent, last, AdaptedSublayer(m, Adapter(_output_dim(m), bottleneck, activation)))
    return model


def adapters_disabled(model: nn.Module):
    """A ``with`` block in which every adapter is skipped: each sub-layer returns its frozen output, the
    pre-trained model exactly (like ``lora.lora_disabled``; PEFT's ``disable_adapter()``)."""
    return switched_off(model, AdaptedSublayer)


def adapter_state_dict(model: nn.Module) -> dict:
    """Only the adapters' weights (what one ships per task)."""
    return {k: v for k, v in model.state_dict().items() if ".adapter." in f".{k}"}


__all__ = ["AdaptedSublayer", "Adapter", "adapter_param_count", "adapter_state_dict", "adapters_disabled",
           "apply_adapters"]
