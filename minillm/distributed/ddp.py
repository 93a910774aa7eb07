"""Distributed data parallelism (DDP, ZeRO stage 0): every rank holds the whole model and optimizer.

Each rank takes its slice of the global batch, runs forward and backward, and then the gradients are
averaged over the ranks (all-reduce, in flat buckets), so every rank takes the same AdamW step and the
weights stay equal everywhere. N ranks with B/N rows each compute what one process does with B rows.
"""

from __future__ import annotations

import math

import numpy

from minillm import backend as B
from minillm import optim
from minillm.distributed.comm import Comm, init_comm


def flat_params(model, opt: optim.Optimizer) -> list:
    """The optimizer's parameters in ``model.parameters()`` order: the order of the flat buffer."""
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    params = [p for p in model.parameters() if id(p) in ids]
    if len(params) != len(ids):
        raise ValueError("distributed: the optimizer holds parameters that are not the model's")
    return params


def check_batch_size(batch_size: int, world_size: int) -> int:
    """Rows per rank, B / N; ValueError when B does not split evenly."""
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} is not divisible by world size {world_size}: "
                         f"choose a multiple of {world_size}")
    return batch_size // world_size


class DataParallel:
    """DDP: average gradients over ranks after backward; the optimizer stays minillm's ``optim.AdamW``.

    ``train(..., distributed=DataParallel())`` calls ``setup`` once, ``local_batch`` on every batch,
    ``mean`` on the loss and ``reduce_gradients`` between backward and the optimizer step.
    """

    stage = 0

    def __init__(self, comm: Comm | None = None, bucket_bytes: int = 1 << 22):
        self.comm = comm if comm is not None else init_comm()
        self.bucket_bytes = int(bucket_bytes)
        self.params: list = []
        self.opt = None

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def world_size(self) -> int:
        return self.comm.world_size

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes checkpoints."""
        return self.comm.rank == 0

    def setup(self, model, opt: optim.AdamW, batch_size: int | None = None):
        """Check B % N, give every rank rank 0's weights, and return the optimizer to step."""
        if batch_size is not None:
            check_batch_size(batch_size, self.world_size)
        self.params = flat_params(model, opt)
        for p in model.parameters():  # frozen ones too: the same model everywhere
            p.data = self.comm.broadcast(p.data, root=0)
        self.opt = self._optimizer(opt)
        return self.opt

    def _optimizer(self, opt: optim.AdamW):
        return opt

    def unshard(self, model) -> None:
        """After training: make ``model`` whole and ordinary again on every rank (a no-op but for ZeRO-3;
        a collective: every rank calls it)."""

    # ------------------------------------------------------------------ per step
    def local_batch(self, batch):
        """This rank's rows [r·B/N, (r+1)·B/N) of every array in ``batch`` (an array, tuple, list or dict)."""
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.local_batch(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self.local_batch(v) for k, v in batch.items()}
        if getattr(batch, "ndim", 0) == 0:
            return batch  # a scalar or a non-array: the same on every rank
        rows = check_batch_size(batch.shape[0], self.world_size)
        return batch[self.rank * rows:(self.rank + 1) * rows]

    def loss_weight(self, mean_over: int | None) -> float:
        """n_r · N / Σ n for a loss that is a mean over this rank's n_r items (1 when ``mean_over`` is None).
        Scaled by it, the ranks' average of their losses is the mean over every item of the global batch,
        as one process computes it, even when the ranks hold different numbers (masked SFT's tokens)."""
        if mean_over is None:
            return 1.0
        total = float(self.comm.all_reduce(numpy.array([mean_over], dtype=numpy.float64), op="sum")[0])
        return mean_over * self.world_size / total if total else 1.0

    def mean(self, value: float) -> float:
        """The average of a number (the loss) over the ranks."""
        return float(self.comm.all_reduce(numpy.array([value], dtype=numpy.float64), op="mean")[0])

    def reduce_gradients(self, max_norm: float = 0.0) -> float:
        """Average every gradient over the ranks (one all-reduce per bucket), then clip them to the global
        norm ``max_norm`` (0: no clipping). Returns the norm before clipping."""
        for bucket in self._buckets():
            grads = [B.xp.zeros_like(p.data) if p.grad is None else p.grad for p in bucket]
            flat = self.comm.all_reduce(B.xp.concatenate([g.reshape(-1) for g in grads]), op="mean")
            start = 0
            for p in bucket:  # views into the averaged bucket
                p.grad = flat[start:start + p.size].reshape(p.shape)
                start += p.size
        if max_norm:
            return optim.clip_grad_norm_(self.params, max_norm)
        return math.sqrt(sum(float((p.grad.astype("float64") ** 2).sum()) for p in self.params))

    def _buckets(self) -> list[list]:
        """Consecutive parameters in groups of about ``bucket_bytes`` (fewer, larger messages)."""
        buckets, size = [[]], 0
        for p in self.params:
            if buckets[-1] and size + p.data.nbytes > self.bucket_bytes:
                buckets.append([])
                size = 0
            buckets[-1].append(p)
            size += p.data.nbytes
        return buckets

    # ------------------------------------------------------------------ memory
    def bytes_per_rank(self) -> dict:
        """Bytes this rank holds in the trainable parameters, their gradients and the optimizer state,
        measured from the arrays (compare ``minillm.peft.memory.zero_bytes_per_rank``)."""
        return {"params": sum(p.data.nbytes for p in self.params),
                "grads": sum(p.grad.nbytes for p in self.params if p.grad is not None),
                "optimizer": self.opt.state_nbytes()}


DDP = DataParallel
