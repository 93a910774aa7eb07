"""Optimizers and learning-rate schedules.

Optimizer state is created lazily, only for parameters that actually receive a gradient, so frozen
parameters (LoRA's base weights, a frozen reference model) cost no optimizer memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from minillm import backend as B
from minillm.tensor import Tensor, no_grad


def _copy(v):
    """A snapshot of a state value (moment buffers are updated in place, so never hand out a view)."""
    return v.copy() if getattr(v, "ndim", 0) else v


class Optimizer:
    """Parameter groups (dicts with "params" and their own hyper-parameters) and per-parameter state."""

    defaults: dict = {}

    def __init__(self, params: Iterable, **hyper):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for g in groups:
            group = {**self.defaults, **hyper, **g}
            group["params"] = list(group["params"])
            self.param_groups.append(group)
        self.state: dict[int, dict] = {}  # keyed by the parameter's position across groups
        self.step_count = 0

    def _indexed(self):
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield i, group, p
                i += 1

    def zero_grad(self) -> None:
        for _, _, p in self._indexed():
            p.grad = None

    def state_nbytes(self) -> int:
        """Bytes held by optimizer state (moments), for the memory lessons."""
        return sum(v.nbytes for s in self.state.values() for v in s.values() if hasattr(v, "nbytes"))

    def state_dict(self) -> dict:
        return {"step_count": self.step_count,
                "lr": [g["lr"] for g in self.param_groups],
                "state": {str(i): {k: _copy(v) for k, v in s.items()} for i, s in self.state.items()}}

    def load_state_dict(self, sd: dict) -> None:
        self.step_count = int(sd["step_count"])
        for g, lr in zip(self.param_groups, sd["lr"]):
            g["lr"] = float(lr)
        self.state = {int(i): {k: (B.xp.array(v) if getattr(v, "ndim", 0) else v) for k, v in s.items()}
                      for i, s in sd["state"].items()}

    def step(self) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """p ← p - lr·(g + wd·p), with optional momentum buffer b ← μ b + g."""

    defaults = {"lr": 1e-2, "momentum": 0.0, "weight_decay": 0.0}

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def step(self) -> None:
        self.step_count += 1
        with no_grad():
            for i, group, p in self._indexed():
                if p.grad is None or not p.requires_grad:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g + group["weight_decay"] * p.data
                if group["momentum"]:
                    st = self.state.setdefault(i, {})
                    buf = st.get("momentum")
                    st["momentum"] = g.copy() if buf is None else group["momentum"] * buf + g
                    g = st["momentum"]
                p.data -= group["lr"] * g


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019).

    m ← β1 m + (1-β1) g;  v ← β2 v + (1-β2) g²;  p ← p - lr·(m̂ / (√v̂ + ε) + wd·p),
    with bias-corrected m̂ = m/(1-β1ᵗ), v̂ = v/(1-β2ᵗ).
    """

    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def step(self) -> None:
        self.step_count += 1
        with no_grad():
            for i, group, p in self._indexed():
                if p.grad is None or not p.requires_grad:
                    continue
                b1, b2 = group["betas"]
                st = self.state.get(i)
                if st is None:
                    st = self.state[i] = {"t": 0, "m": B.xp.zeros_like(p.data), "v": B.xp.zeros_like(p.data)}
                st["t"] += 1
                g = p.grad
                m, v = st["m"], st["v"]
                m *= b1
                m += (1 - b1) * g
                v *= b2
                v += (1 - b2) * (g * g)
                lr = group["lr"]
                if group["weight_decay"]:
                    p.data *= 1 - lr * group["weight_decay"]
                step = lr / (1 - b1 ** st["t"])
                denom = B.xp.sqrt(v / (1 - b2 ** st["t"]))
                denom += group["eps"]
                p.data -= step * (m / denom)


def clip_grad_norm_(params: Iterable[Tensor], max_norm: float) -> float:
    """Scale gradients so their global L2 norm is at most ``max_norm``; returns the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    total = math.sqrt(sum(float((p.grad.astype("float64") ** 2).sum()) for p in params))
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p in params:
            p.grad = p.grad * scale  # not in place: grads may alias other arrays
    return total


def cosine_with_warmup(step: int, max_lr: float, warmup_steps: int, total_steps: int,
                       min_lr: float = 0.0) -> float:
    """Linear warmup to ``max_lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at the end."""
    if warmup_steps > 0 and step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


class CosineWarmupLR:
    """Sets each group's lr from ``cosine_with_warmup`` every ``step()``; its state is just the step."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1):
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        self.last_step = 0
        self._apply()

    def _apply(self) -> None:
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = cosine_with_warmup(self.last_step, base, self.warmup_steps, self.total_steps,
                                         base * self.min_lr_ratio)

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, sd: dict) -> None:
        self.last_step = int(sd["last_step"])
        self._apply()
