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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy

from minillm import backend as B
from minillm import nn, optim
from minillm.checkpoint import load, save
from minillm.tensor import Tensor


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

    def __post_init__(self):
        """Reject values that would train nothing or silently wrong (steps 0, a negative or NaN lr...)."""
        whole = {"steps": 1, "warmup": 0, "batch_size": 1, "eval_every": 0, "eval_steps": 1,
                 "checkpoint_every": 0, "seed": 0}
        for name, low in whole.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, numpy.integer)) or v < low:
                raise ValueError(f"TrainConfig: {name} must be a whole number >= {low}, got {v!r}")
        reals = {"lr": (0.0, False), "min_lr_ratio": (0.0, True), "weight_decay": (0.0, True),
                 "grad_clip": (0.0, True)}
        for name, (low, closed) in reals.items():
            v = getattr(self, name)
            ok = isinstance(v, (int, float, numpy.floating)) and math.isfinite(v) and (v >= low if closed
                                                                                      else v > low)
            if not ok:
                raise ValueError(f"TrainConfig: {name} must be a finite number {'>=' if closed else '>'} "
                                 f"{low:g}, got {v!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"TrainConfig: betas must be two numbers in [0, 1), got {self.betas!r}")


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


COUNTS = ("tokens", "mean_over")  # a loss_fn's counts: tokens for tokens/s; what its loss is a mean over


def _numeric_metrics(metrics: dict) -> dict[str, float]:
    """The metrics worth averaging or plotting: numbers, without the "tokens" and "mean_over" counts."""
    return {k: float(v) for k, v in metrics.items() if k not in COUNTS and isinstance(v, (int, float))}


def evaluate(model, loss_fn: Callable, get_batch: Callable, steps: int, seed: int = 1234) -> dict:
    """Mean validation loss over ``steps`` batches drawn from ``get_batch("val", rng)`` with a fixed seed
    (the same batches every time), and its perplexity exp(loss)."""
    rng = numpy.random.default_rng(seed)
    total, extra = 0.0, {}
    with nn.evaluating(model):
        for _ in range(steps):
            loss, metrics = _split_loss(loss_fn(model, get_batch("val", rng)))
            total += float(loss.item())
            for k, v in _numeric_metrics(metrics).items():
                extra[k] = extra.get(k, 0.0) + v / steps
    val = total / max(1, steps)
    ppl = math.exp(min(val, 700.0))
    return {"val_loss": val, "val_ppl": ppl, **{f"val_{k}": v for k, v in extra.items()}}


# ------------------------------------------------------------------ one step
def train_step(model, loss_fn: Callable, batch, opt: optim.AdamW, sched: optim.CosineWarmupLR,
               grad_clip: float = 0.0, step: int = 0, last_checkpoint: str | None = None,
               distributed=None) -> tuple[float, dict, float, float]:
    """One optimizer step: batch → loss → backward → clip → AdamW step → schedule.

    Returns (loss, metrics, lr used, gradient norm before clipping). Raises ``TrainingError`` (naming
    ``step`` and ``last_checkpoint``) on a non-finite loss or gradient, before the weights change.
    ``distributed`` (a ``minillm.distributed`` strategy): the loss is averaged over the ranks and the
    gradients reduced, so the norm is the global one. A loss that is a mean over a number of items that
    differs between ranks (masked SFT: the assistant's tokens) reports it as the "mean_over" metric; each
    rank's loss is weighted by it, so the result is the global batch's mean. Without it the ranks' rows
    count equally (right for equal-shaped rows: LM windows, preference pairs).
    """
    params = [p for g in opt.param_groups for p in g["params"]]
    loss, metrics = _split_loss(loss_fn(model, batch))
    if distributed is not None:
        weight = distributed.loss_weight(metrics.get("mean_over"))
        loss = loss if weight == 1.0 else loss * weight
    loss_val = float(loss.item()) if distributed is None else distributed.mean(float(loss.item()))
    loss_val = _finite_or_stop(loss_val, "loss", step, last_checkpoint)
    opt.zero_grad()
    loss.backward()
    if distributed is not None:
        norm = distributed.reduce_gradients(grad_clip)
    else:
        norm = optim.clip_grad_norm_(params, grad_clip) if grad_clip else _grad_norm(params)
    _finite_or_stop(norm, "gradient norm", step, last_checkpoint)
    lr = opt.param_groups[0]["lr"]  # the rate this step uses; the schedule moves on after it
    opt.step()
    sched.step()
    if not all(bool(B.xp.isfinite(p.data).all()) for p in params):  # an update can overflow by itself
        raise TrainingError(f"train: step {step}: the weights are not finite after the update (lr {lr:g}); "
                            f"training stopped; {_last_good(last_checkpoint)}. Try a lower lr.")
    return loss_val, metrics, lr, float(norm)


def _grad_norm(params) -> float:
    return math.sqrt(sum(float((p.grad.astype("float64") ** 2).sum()) for p in params if p.grad is not None))


def _finite_or_stop(value: float, what: str, step: int, ckpt: str | None, when: str = " before updating "
                    "the weights") -> float:
    """``value`` if finite; else stop training with a message naming the step and the last checkpoint."""
    if math.isfinite(value):
        return value
    raise TrainingError(f"train: step {step}: the {what} is {value} (not finite); training stopped{when}; "
                        f"{_last_good(ckpt)}. Try a lower lr, a smaller grad_clip, or check the data.")


def _last_good(ckpt: str | None) -> str:
    return f"the last good checkpoint is {ckpt} (untouched)" if ckpt else "no checkpoint was written yet"


# ------------------------------------------------------------------ the loop's bookkeeping
def _new_history() -> dict[str, Any]:
    return {"step": [], "loss": [], "lr": [], "grad_norm": [], "tokens_per_s": [],
            "val_step": [], "val_loss": [], "val_ppl": [], "checkpoint": None}


def _record_step(history: dict, step: int, loss: float, lr: float, norm: float, tps: float,
                 metrics: dict) -> None:
    row = {"step": step, "loss": loss, "lr": lr, "grad_norm": norm, "tokens_per_s": tps}
    for key, value in row.items():
        history[key].append(value)
    for k, v in _numeric_metrics(metrics).items():
        history.setdefault(k, []).append(v)


def _make_optimizer(model, config: TrainConfig, optimizer_params: list | None
                    ) -> tuple[optim.AdamW, optim.CosineWarmupLR]:
    """AdamW on ``optimizer_params`` (parameters or groups; default ``param_groups``) and its schedule."""
    if optimizer_params is None:
        groups = param_groups(model, config.weight_decay)
    else:
        groups = list(optimizer_params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": [p for p in groups if p.requires_grad]}]
    opt = optim.AdamW(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    return opt, optim.CosineWarmupLR(opt, config.warmup, config.steps, config.min_lr_ratio)


def _checkpoint_path(config: TrainConfig) -> Path | None:
    path = Path(config.out_dir) / "checkpoint.npz" if config.out_dir else None
    if config.checkpoint_every and path is None:
        raise ValueError("train: checkpoint_every needs config.out_dir")
    return path


@dataclass
class _Run:
    """Everything a run carries besides the step itself, i.e. what a checkpoint saves and restores."""

    model: Any
    opt: optim.AdamW
    sched: optim.CosineWarmupLR
    data_rng: numpy.random.Generator
    history: dict
    config: TrainConfig
    checkpoint_extra: dict | None = None
    ckpt_path: Path | None = None
    is_main: bool = True  # distributed: only rank 0 writes (every rank builds the state: it gathers)

    def restore(self, path: str | Path) -> int:
        """Load weights, optimizer, schedule, both RNGs and the history from ``path``; returns its step."""
        state = load(path)
        missing = [k for k in ("model", "optimizer", "scheduler", "rng", "history", "step")
                   if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"resume: {path} is not a training checkpoint (no {', '.join(missing)}): resume "
                             "takes the checkpoint.npz a run writes; to start from a model's weights, load "
                             "them (minillm pretrain --init)")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.data_rng.bit_generator.state = state["rng"]["data"]
        B.set_rng_state(state["rng"]["global"])
        self.history.update(state["history"])
        return int(state["step"])

    def state(self, step: int) -> dict:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "step": step,
            "rng": {"data": self.data_rng.bit_generator.state, "global": B.get_rng_state()},
            "history": self.history,
            "train_config": {k: v for k, v in asdict(self.config).items() if k != "extra"},
        }
        cfg = getattr(self.model, "config", None)
        if is_dataclass(cfg):
            state["config"] = asdict(cfg)
            state["kind"] = type(self.model).__name__.lower()
        state.update(self.checkpoint_extra or {})
        return state

    def evaluate_and_checkpoint(self, done: int, eval_fn: Callable) -> None:
        """After step ``done``: validate every ``eval_every`` steps, save every ``checkpoint_every``
        steps; both at the last step too."""
        cfg, last = self.config, done == self.config.steps
        if cfg.eval_every and (done % cfg.eval_every == 0 or last):
            for k, v in eval_fn(self.model).items():
                self.history.setdefault(k, []).append(float(v))
            self.history["val_step"].append(done)
            self.model.train()
            if "val_loss" in self.history and self.history["val_loss"]:
                _finite_or_stop(self.history["val_loss"][-1], "validation loss", done,
                                self.history["checkpoint"], when=" before saving")
        due = (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or last
        if self.ckpt_path is not None and due:
            state = self.state(done)
            if self.is_main:
                save(state, self.ckpt_path)
            self.history["checkpoint"] = str(self.ckpt_path)


@contextmanager
def _progress(config: TrainConfig, start: int, main: bool = True) -> Iterator[Callable]:
    """Yields ``show(loss, tokens_per_s, history)``, which advances a tqdm bar (a no-op with the bar off,
    and on every distributed rank but rank 0)."""
    if not (config.progress and main and start < config.steps):
        yield lambda loss, tps, history: None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=start, desc="train", dynamic_ncols=True)

    def show(loss: float, tps: float, history: dict) -> None:
        post = {"loss": f"{loss:.3f}", "tok/s": f"{tps:,.0f}"}
        if history["val_loss"]:
            post["val"] = f"{history['val_loss'][-1]:.3f}"
        bar.set_postfix(post, refresh=False)
        bar.update(1)

    try:
        yield show
    finally:
        bar.close()


# ------------------------------------------------------------------ the loop
def train(model, loss_fn: Callable, get_batch: Callable, config: TrainConfig, eval_fn: Callable | None = None,
          resume: str | Path | None = None, optimizer_params: list | None = None,
          checkpoint_extra: dict | None = None, distributed=None) -> dict:
    """Train ``model`` for ``config.steps`` optimizer steps; returns the history (lists, for plotting).

    loss_fn(model, batch) -> loss Tensor, or (loss, metrics dict); a "tokens" metric sets the tokens/s count
        (default: the size of the batch's first array).
    get_batch(split, rng) -> batch, split "train" or "val", rng a NumPy Generator the loop owns (so the
        data order is saved in checkpoints and resumes exactly).
    eval_fn(model) -> dict of validation metrics (default: ``evaluate`` on the "val" split).
    resume: a checkpoint written by this loop; training continues from its step.
    optimizer_params: parameters or groups for AdamW (default: ``param_groups(model)``; frozen ones skipped).
    checkpoint_extra: more entries for every checkpoint (e.g. the tokenizer).
    distributed: a ``minillm.distributed`` strategy (``make_strategy("ddp"|"zero1"|"zero2"|"zero3")``):
        each rank trains on its B/N rows of every global batch (same data order as one process) and runs
        the same validation; rank 0 alone shows progress and writes checkpoints.

    history: "step", "loss", "lr", "grad_norm", "tokens_per_s" per step; "val_step", "val_loss",
    "val_ppl" per evaluation; "checkpoint" (path of the last one written).
    """
    opt, sched = _make_optimizer(model, config, optimizer_params)
    if distributed is not None:  # rank 0's weights everywhere; ZeRO swaps in its sharded optimizer
        opt = distributed.setup(model, opt, config.batch_size)
    main = distributed is None or distributed.is_main
    data_rng = numpy.random.default_rng(config.seed)
    run = _Run(model, opt, sched, data_rng, _new_history(), config, checkpoint_extra, is_main=main)
    start = 0 if resume is None else run.restore(resume)
    run.ckpt_path = _checkpoint_path(config)
    if eval_fn is None:
        eval_fn = lambda m: evaluate(m, loss_fn, get_batch, config.eval_steps)
    model.train()
    with _progress(config, start, main) as show:
        for step in range(start, config.steps):
            t0 = time.perf_counter()
            batch = get_batch("train", data_rng)
            if distributed is not None:
                batch = distributed.local_batch(batch)
            loss, metrics, lr, norm = train_step(model, loss_fn, batch, opt, sched, config.grad_clip,
                                                 step + 1, run.history["checkpoint"], distributed)
            tps = _tokens_in(batch, metrics) / max(time.perf_counter() - t0, 1e-9)
            _record_step(run.history, step + 1, loss, lr, norm, tps, metrics)
            run.evaluate_and_checkpoint(step + 1, eval_fn)
            show(loss, tps, run.history)
    # measured: with PEFT only the trainable parameters have optimizer state
    run.history["optimizer_state_bytes"] = opt.state_nbytes()
    return run.history


def lm_loss(model, batch) -> tuple[Tensor, dict]:
    """Next-token cross-entropy for a GPT-style ``model(x, y) -> (logits, loss)`` on a batch (x, y)."""
    x, y = batch
    _, loss = model(x, y)
    return loss, {"tokens": int(numpy.size(x))}
