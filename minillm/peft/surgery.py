"""Model surgery shared by the PEFT methods: find sub-modules by name, and swap one for another in place.

LoRA, QLoRA and bottleneck adapters all do the same three things: pick the sub-modules whose dotted
name ends in a target (``"q_proj"`` matches ``blocks.0.attn.q_proj``), find the module that holds each
one, and set a new module in its place. This module does those once, and depends on no PEFT method, so
the methods can import it (and each other) in one direction only: surgery ← lora ← qlora.

It also defines what counts as a *Linear-like* layer, so LoRA can wrap a quantised base without knowing
its class: an ``nn.Linear``, or any module with ``in_features``, ``out_features`` and ``dequantize()``
(returning the (out_features, in_features) float weight), such as QLoRA's ``QuantizedLinear``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

from minillm import nn


def matches(name: str, targets: tuple) -> bool:
    """True if the dotted ``name`` is one of ``targets`` or ends in ``"." + target`` for one of them."""
    return any(name == t or name.endswith("." + t) for t in targets)


def find_modules(model: nn.Module, targets: tuple,
                 accept: Callable[[nn.Module], bool] = lambda m: True) -> list[tuple[str, nn.Module]]:
    """(name, module) for every sub-module (not the model itself) whose name ``matches`` a target and that
    ``accept`` takes, in ``named_modules`` order."""
    return [(name, m) for name, m in model.named_modules() if name and matches(name, targets) and accept(m)]


def parent_and_name(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    """The module holding ``dotted`` and the attribute name it holds it under: "a.b.c" → (model.a.b, "c")."""
    parent = model
    *path, last = dotted.split(".")
    for part in path:
        parent = parent._modules[part]
    return parent, last


def replace_module(model: nn.Module, dotted: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where the sub-module named ``dotted`` is, in place; returns ``new``."""
    parent, last = parent_and_name(model, dotted)
    setattr(parent, last, new)
    return new


def is_quantized_linear(m: nn.Module) -> bool:
    """A Linear-like layer that stores its weight in another form: ``in_features``, ``out_features`` and
    ``dequantize()``, and not an ``nn.Linear`` (its weight is no parameter)."""
    return (not isinstance(m, nn.Linear) and hasattr(m, "in_features") and hasattr(m, "out_features")
            and callable(getattr(m, "dequantize", None)))


def is_linear_like(m: nn.Module) -> bool:
    """What LoRA can wrap: an ``nn.Linear`` or a quantized linear layer (see ``is_quantized_linear``)."""
    return isinstance(m, nn.Linear) or is_quantized_linear(m)


@contextmanager
def switched_off(model: nn.Module, module_type: type):
    """Inside this block every ``module_type`` in ``model`` has ``disabled = True`` (its forward then runs
    the frozen part alone: PEFT's ``disable_adapter()``), and ``False`` again after, even on an error."""
    found = [m for m in model.modules() if isinstance(m, module_type)]
    for m in found:
        m.disabled = True
    try:
        yield model
    finally:
        for m in found:
            m.disabled = False


def check_partial_state(who: str, own: dict, state: dict) -> None:
    """Raise ``nn.StateDictError`` unless ``state`` has exactly the keys and shapes of ``own`` (an add-on's
    part of a state dict: LoRA matrices, adapters, a prefix), naming what is missing, extra or mis-shaped."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mis = [f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
           for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mis:
        raise nn.StateDictError(f"{who}: missing {missing}, unexpected {unexpected}, shape mismatch {mis}")


__all__ = ["check_partial_state", "find_modules", "is_linear_like", "is_quantized_linear", "matches",
           "parent_and_name", "replace_module", "switched_off"]
