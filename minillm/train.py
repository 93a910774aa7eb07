"""One training loop for every phase: pre-training, fine-tuning, SFT, DPO, PEFT.

The objective plugs in as ``loss_fn(model, batch) -> (loss, metrics)`` and the data as
``get_batch(split, rng) -> batch``; the loop owns everything else: AdamW with decoupled weight decay on
matrices only, linear warmup + cosine decay, gradient clipping, periodic validation (loss and
perplexity), a tqdm bar with loss and tokens/s, a loss history for plotting, atomic checkpoints, exact
resumption, and a stop with a clear message on a NaN/inf loss.

Resumption is exact on NumPy: a checkpoint holds the weights, the optimizer moments, the schedule's
step, the data RNG, the global RNG (dropout) and the history, so a resumed run produces the same losses,
bit for bit, as one that never stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy

from minillm import backend as B
from minillm import optim
from minillm.checkpoint import load, save
from minillm.tensor import Tensor, no_grad


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient); the message names the step and checkpoint."""


@dataclass
class TrainConfig:
    steps: int = 1000
    lr: float = 1e-3
    warmup: int = 100            # linear warmup steps
    min_lr_ratio: float = 0.1    # cosine decays to lr · min_lr_ratio at the last step
    weight_decay: float = 0.1    # on weight matrices only (biases, norms: none)
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0       # max global grad norm (0 = off)
    batch_size: int = 16         # for the caller's get_batch; recorded in checkpoints
    eval_every: int = 100        # validate every N steps and at the end (0 = never)
    eval_steps: int = 10         # validation batches per evaluation
    checkpoint_every: int = 0    # save every N steps (0 = only at the end); needs out_dir
    out_dir: str | None = None   # checkpoints go to out_dir/checkpoint.npz
    seed: int = 0                # seeds the data RNG handed to get_batch
    progress: bool = True        # tqdm bar
    extra: dict = field(default_factory=dict)  # anything the caller wants recorded


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: trainable tensors with ≥ 2 dims decay; biases and norm scales (1-D) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train: the model has no trainable parameters (all frozen?)")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _split_loss(out) -> tuple[Tensor, dict]:
    if isinstance(out, tuple):
        loss, metrics = out
        return loss, dict(metrics or {})
    return out, {}


def _tokens_in(batch, metrics: dict) -> int:
    if "tokens" in metrics:
        return int(metrics["tokens"])
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(getattr(first, "size", 0))


def evaluate(model, loss_fn: Callable, get_batch: Callable, steps: int, seed: int = 1234) -> dict:
    """Mean validation loss over ``steps`` batches drawn from ``get_batch("val", rng)`` with a fixed seed
    (the same batches every time), and its perplexity exp(loss)."""
    rng = numpy.random.default_rng(seed)
    was_training = model.training
    model.eval()
    total, extra = 0.0, {}
    try:
        with no_grad():
            for _ in range(steps):
                loss, metrics = _split_loss(loss_fn(model, get_batch("val", rng)))
                total += float(loss.item())
                for k, v in metrics.items():
                    if k != "tokens" and isinstance(v, (int, float)):
                        extra[k] = extra.get(k, 0.0) + float(v) / steps
    finally:
        model.train(was_training)
    val = total / max(1, steps)
    ppl = math.exp(min(val, 700.0))
    return {"val_loss": val, "val_ppl": ppl, **{f"val_{k}": v for k, v in extra.items()}}


def _checkpoint_state(model, opt, sched, step: int, data_rng, history: dict, config: TrainConfig,
                      extra: dict | None) -> dict:
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "step": step,
        "rng": {"data": data_rng.bit_generator.state, "global": B.get_rng_state()},
        "history": history,
        "train_config": {k: v for k, v in asdict(config).items() if k != "extra"},
    }
    cfg = getattr(model, "config", None)
    if is_dataclass(cfg):
        state["config"] = asdict(cfg)
        state["kind"] = type(model).__name__.lower()
    state.update(extra or {})
    return state


def train(model, loss_fn: Callable, get_batch: Callable, config: TrainConfig, eval_fn: Callable | None = None,
          resume: str | Path | None = None, optimizer_params: list | None = None,
          checkpoint_extra: dict | None = None) -> dict:
    """Train ``model`` for ``config.steps`` optimizer steps; returns the history (lists, for plotting).

    loss_fn(model, batch) -> loss Tensor, or (loss, metrics dict); a "tokens" metric sets the tokens/s count
        (default: the size of the batch's first array).
    get_batch(split, rng) -> batch, split "train" or "val", rng a NumPy Generator the loop owns (so the
        data order is saved in checkpoints and resumes exactly).
    eval_fn(model) -> dict of validation metrics (default: ``evaluate`` on the "val" split).
    resume: a checkpoint written by this loop; training continues from its step.
    optimizer_params: parameters or groups for AdamW (default: ``param_groups(model)``; frozen ones skipped).
    checkpoint_extra: more entries for every checkpoint (e.g. the tokenizer).

    history: "step", "loss", "lr", "grad_norm", "tokens_per_s" per step; "val_step", "val_loss",
    "val_ppl" per evaluation; "checkpoint" (path of the last one written).
    """
    if optimizer_params is None:
        groups = param_groups(model, config.weight_decay)
    else:
        groups = list(optimizer_params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": [p for p in groups if p.requires_grad]}]
    opt = optim.AdamW(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    sched = optim.CosineWarmupLR(opt, config.warmup, config.steps, config.min_lr_ratio)
    data_rng = numpy.random.default_rng(config.seed)
    history: dict[str, Any] = {"step": [], "loss": [], "lr": [], "grad_norm": [], "tokens_per_s": [],
                               "val_step": [], "val_loss": [], "val_ppl": [], "checkpoint": None}
    start = 0
    if resume is not None:
        state = load(resume)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        data_rng.bit_generator.state = state["rng"]["data"]
        B.set_rng_state(state["rng"]["global"])
        history.update(state["history"])
        start = int(state["step"])
    ckpt_path = Path(config.out_dir) / "checkpoint.npz" if config.out_dir else None
    if config.checkpoint_every and ckpt_path is None:
        raise ValueError("train: checkpoint_every needs config.out_dir")
    if eval_fn is None:
        eval_fn = lambda m: evaluate(m, loss_fn, get_batch, config.eval_steps)

    def checkpoint(step: int) -> None:
        if ckpt_path is not None:
            save(_checkpoint_state(model, opt, sched, step, data_rng, history, config, checkpoint_extra),
                 ckpt_path)
            history["checkpoint"] = str(ckpt_path)

    bar = None
    if config.progress and start < config.steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start, desc="train", dynamic_ncols=True)
    params = [p for g in opt.param_groups for p in g["params"]]
    model.train()
    try:
        for step in range(start, config.steps):
            t0 = time.perf_counter()
            batch = get_batch("train", data_rng)
            loss, metrics = _split_loss(loss_fn(model, batch))
            loss_val = float(loss.item())
            if not math.isfinite(loss_val):
                raise TrainingError(_nan_message(step + 1, "loss", loss_val, history["checkpoint"]))
            opt.zero_grad()
            loss.backward()
            norm = optim.clip_grad_norm_(params, config.grad_clip) if config.grad_clip else _grad_norm(params)
            if not math.isfinite(norm):
                raise TrainingError(_nan_message(step + 1, "gradient norm", norm, history["checkpoint"]))
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            dt = time.perf_counter() - t0
            tps = _tokens_in(batch, metrics) / max(dt, 1e-9)
            done = step + 1
            history["step"].append(done)
            history["loss"].append(loss_val)
            history["lr"].append(lr)
            history["grad_norm"].append(float(norm))
            history["tokens_per_s"].append(tps)
            for k, v in metrics.items():
                if k != "tokens" and isinstance(v, (int, float)):
                    history.setdefault(k, []).append(float(v))
            last = done == config.steps
            if config.eval_every and (done % config.eval_every == 0 or last):
                for k, v in eval_fn(model).items():
                    history.setdefault(k, []).append(float(v))
                history["val_step"].append(done)
                model.train()
            if ckpt_path is not None and ((config.checkpoint_every and done % config.checkpoint_every == 0)
                                          or last):
                checkpoint(done)
            if bar is not None:
                post = {"loss": f"{loss_val:.3f}", "tok/s": f"{tps:,.0f}"}
                if history["val_loss"]:
                    post["val"] = f"{history['val_loss'][-1]:.3f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    history["optimizer_state_bytes"] = opt.state_nbytes()  # measured (PEFT: only trainable params have state)
    return history


def _grad_norm(params) -> float:
    return math.sqrt(sum(float((p.grad.astype("float64") ** 2).sum()) for p in params if p.grad is not None))


def _nan_message(step: int, what: str, value: float, ckpt: str | None) -> str:
    keep = (f"the last good checkpoint is {ckpt} (untouched)" if ckpt else
            "no checkpoint was written yet")
    return (f"train: step {step}: the {what} is {value} (not finite); training stopped before updating the "
            f"weights; {keep}. Try a lower lr, a smaller grad_clip, or check the data.")


def lm_loss(model, batch) -> tuple[Tensor, dict]:
    """Next-token cross-entropy for a GPT-style ``model(x, y) -> (logits, loss)`` on a batch (x, y)."""
    x, y = batch
    _, loss = model(x, y)
    return loss, {"tokens": int(numpy.size(x))}
