"""ZeRO (Rajbhandari et al. 2020): data parallelism that shards the training state instead of copying it.

The trainable parameters, flattened in ``model.parameters()`` order into one buffer of Ψ elements and
zero-padded to a multiple of N, split into N contiguous shards of s = ceil(Ψ/N) elements: rank r owns
[r·s, (r+1)·s) (the rule ``minillm.peft.memory.zero_bytes_per_rank`` counts).

* stage 1: each rank keeps AdamW's moments (m, v) only for its shard: 8·s bytes instead of 8Ψ. Gradients
  are all-reduced as in DDP; each rank updates its shard of the parameters, then an all-gather gives
  every rank the whole updated model.
* stage 2: the gradients are reduce-scattered instead, so a rank keeps only its shard of the averaged
  gradient (4·s bytes); the full gradient exists only transiently after backward (the autograd here
  has no per-parameter hooks to reduce buckets during backward). Clipping uses the global norm: each
  rank's sum of squares, all-reduced.

The update on the shard is minillm's own ``optim.AdamW``, stepping Parameters that are views of this
rank's slices of the real parameters, with moments that are views of the flat (s,) m and v buffers: the
same arithmetic, element by element, as one process.
"""

from __future__ import annotations

import math

import numpy

from minillm import backend as B
from minillm import nn, optim
from minillm.distributed.comm import Comm
from minillm.distributed.ddp import DataParallel


class Layout:
    """Where each parameter sits in the padded flat buffer, and which elements are ``rank``'s shard."""

    def __init__(self, params: list, world_size: int, rank: int):
        self.shapes = [p.shape for p in params]
        self.offsets = numpy.cumsum([0] + [p.size for p in params]).tolist()
        self.numel = self.offsets[-1]                # Ψ
        self.shard = -(-self.numel // world_size)    # s = ceil(Ψ / N)
        self.padded = self.shard * world_size        # N·s ≥ Ψ
        self.start = rank * self.shard               # this rank owns [start, start + s)

    def flatten(self, arrays: list):
        """The arrays, raveled and concatenated in order, zero-padded: (N·s,)."""
        flat = B.xp.zeros(self.padded, dtype=arrays[0].dtype)
        for a, lo, hi in zip(arrays, self.offsets, self.offsets[1:]):
            flat[lo:hi] = a.reshape(-1)
        return flat

    def unflatten(self, flat) -> list:
        """Views of ``flat`` with the parameters' shapes."""
        bounds = zip(self.offsets, self.offsets[1:], self.shapes)
        return [flat[lo:hi].reshape(shape) for lo, hi, shape in bounds]

    def pieces(self) -> list[tuple[int, int, int, int]]:
        """(i, lo, hi, a): elements [lo, hi) of parameter i are shard elements [a, a + hi - lo)."""
        out, end = [], self.start + self.shard
        for i, (p0, p1) in enumerate(zip(self.offsets, self.offsets[1:])):
            lo, hi = max(p0, self.start), min(p1, end)
            if lo < hi:
                out.append((i, lo - p0, hi - p0, lo - self.start))
        return out


class ShardedAdamW:
    """AdamW on this rank's shard, with the optimizer interface the training loop uses (``param_groups``
    shared with the full AdamW it replaces, so the lr schedule reaches it; ``state_dict`` gathers the
    moments into the same format as ``optim.AdamW``'s, so checkpoints do not depend on N)."""

    def __init__(self, opt: optim.AdamW, params: list, comm: Comm):
        self.param_groups, self.params, self.comm = opt.param_groups, params, comm
        self.layout = lay = Layout(params, comm.world_size, comm.rank)
        self.index = {id(p): i for i, _, p in opt._indexed()}  # AdamW's numbering, for state_dict
        self.step_count = 0
        self.grad_shard = None  # stages 2-3: this rank's (s,) averaged gradient
        self.param_shard = None  # stage 3: this rank's (s,) parameters (stages 1-2 update p.data in place)
        self.m = B.xp.zeros(lay.shard, dtype=params[0].dtype)  # (s,) first moment
        self.v = B.xp.zeros(lay.shard, dtype=params[0].dtype)  # (s,) second moment
        self.pieces = lay.pieces()
        self.slices = [nn.Parameter(params[i].data.reshape(-1)[lo:hi]) for i, lo, hi, _ in self.pieces]
        self.inner = self._inner_adamw(opt) if self.pieces else None

    def _inner_adamw(self, opt: optim.AdamW) -> optim.AdamW:
        """``optim.AdamW`` over this rank's slices, one group per outer group, moments views of m and v."""
        group_of = {id(p): gi for gi, g in enumerate(opt.param_groups) for p in g["params"]}
        groups = [{**g, "params": []} for g in opt.param_groups]
        for piece, slice_ in zip(self.pieces, self.slices):
            groups[group_of[id(self.params[piece[0]])]]["params"].append(slice_)
        outer = [g for g, mine in zip(opt.param_groups, groups) if mine["params"]]
        inner = optim.AdamW([g for g in groups if g["params"]])
        self.pairs = list(zip(inner.param_groups, outer))  # AdamW copies the group dicts it is given
        piece_of = {id(s): k for k, s in enumerate(self.slices)}
        self.state_piece = {}  # inner AdamW's state index → piece index
        for j, _, s in inner._indexed():
            k = self.state_piece[j] = piece_of[id(s)]
            _, lo, hi, a = self.pieces[k]
            inner.state[j] = {"t": 0, "m": self.m[a:a + hi - lo], "v": self.v[a:a + hi - lo]}
        return inner

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update this rank's shard with AdamW; stages 1-2 then all-gather the shards into every parameter
        (stage 3 keeps only its shard: ``ZeRO3`` gathers each block when it is needed)."""
        self.step_count += 1
        if self.inner is not None:
            for inner, outer in self.pairs:  # the schedule sets the outer groups' lr
                inner.update({k: v for k, v in outer.items() if k != "params"})
            self._point_slices()
            self.inner.step()
        if self.param_shard is None:
            send = B.xp.zeros(self.layout.shard, dtype=self.m.dtype)  # (s,) this rank's updated shard
            for s, (_, lo, hi, a) in zip(self.slices, self.pieces):
                send[a:a + hi - lo] = s.data
            for p, new in zip(self.params, self.layout.unflatten(self.comm.all_gather(send))):
                p.data[...] = new

    def _point_slices(self) -> None:
        """Each slice's data and grad: views of this rank's part of the parameters and gradients,
        re-pointed every step (a model's load_state_dict replaces p.data)."""
        for s, (i, lo, hi, a) in zip(self.slices, self.pieces):
            p, b = self.params[i], a + hi - lo
            s.data = p.data.reshape(-1)[lo:hi] if self.param_shard is None else self.param_shard[a:b]
            s.grad = p.grad.reshape(-1)[lo:hi] if self.grad_shard is None else self.grad_shard[a:b]

    def reduce_scatter_gradients(self, max_norm: float = 0.0) -> float:
        """Stage 2: this rank's shard of the averaged gradient; the full gradients are dropped. Clips to
        the global norm (``max_norm`` 0: no clipping) and returns the norm before clipping."""
        grads = [B.xp.zeros(shape, dtype=self.m.dtype) if p.grad is None else p.grad
                 for p, shape in zip(self.params, self.layout.shapes)]
        self.grad_shard = self.comm.reduce_scatter(self.layout.flatten(grads))  # (s,) sum over ranks
        self.zero_grad()
        return self.average_and_clip(max_norm)

    def average_and_clip(self, max_norm: float = 0.0) -> float:
        """Divide the summed gradient shard by N and clip it to the global norm ``max_norm`` (0: no
        clipping), from every rank's sum of squares; returns the norm before clipping."""
        self.grad_shard /= self.comm.world_size
        sq = numpy.array([float((self.grad_shard.astype("float64") ** 2).sum())])
        norm = math.sqrt(float(self.comm.all_reduce(sq, op="sum")[0]))
        if max_norm and norm > max_norm:
            self.grad_shard *= max_norm / (norm + 1e-6)  # as optim.clip_grad_norm_
        return norm

    # ------------------------------------------------------------------ state
    def state_nbytes(self) -> int:
        """Bytes of this rank's moments: 2 · s · itemsize."""
        return self.m.nbytes + self.v.nbytes

    def state_dict(self) -> dict:
        """``optim.AdamW.state_dict()`` of the whole model (moments all-gathered: every rank must call)."""
        sd = {"step_count": self.step_count, "lr": [g["lr"] for g in self.param_groups], "state": {}}
        if self.step_count:
            m, v = (self.layout.unflatten(self.comm.all_gather(x)) for x in (self.m, self.v))
            for p, mi, vi in zip(self.params, m, v):
                sd["state"][str(self.index[id(p)])] = {"t": self.step_count, "m": mi.copy(), "v": vi.copy()}
        return sd

    def load_state_dict(self, sd: dict) -> None:
        """Load a full ``optim.AdamW`` state dict (from any N) and keep this rank's shard of the moments."""
        self.step_count = int(sd["step_count"])
        for g, lr in zip(self.param_groups, sd["lr"]):
            g["lr"] = float(lr)
        states = [sd["state"].get(str(self.index[id(p)])) for p in self.params]
        if any(s is None for s in states):
            self.m[...], self.v[...] = 0, 0
            return
        shard = slice(self.layout.start, self.layout.start + self.layout.shard)
        self.m[...] = self.layout.flatten([B.xp.asarray(s["m"]) for s in states])[shard]
        self.v[...] = self.layout.flatten([B.xp.asarray(s["v"]) for s in states])[shard]
        if self.inner is not None:
            for j, k in self.state_piece.items():
                self.inner.state[j]["t"] = int(states[self.pieces[k][0]]["t"])


class ZeRO(DataParallel):
    """ZeRO stage 1 (sharded optimizer state) or 2 (+ sharded gradients) over ``comm``."""

    def __init__(self, comm: Comm | None = None, stage: int = 1, bucket_bytes: int = 1 << 22):
        if stage not in (1, 2):
            raise ValueError(f"ZeRO: stage must be 1 or 2, got {stage!r} (DDP is stage 0, ZeRO3 stage 3)")
        super().__init__(comm, bucket_bytes)
        self.stage = stage

    def _optimizer(self, opt: optim.AdamW) -> ShardedAdamW:
        return ShardedAdamW(opt, self.params, self.comm)

    def reduce_gradients(self, max_norm: float = 0.0) -> float:
        if self.stage == 1:
            return super().reduce_gradients(max_norm)
        return self.opt.reduce_scatter_gradients(max_norm)

    def bytes_per_rank(self) -> dict:
        grads = sum(p.grad.nbytes for p in self.params if p.grad is not None)
        if self.opt.grad_shard is not None:
            grads += self.opt.grad_shard.nbytes
        return {"params": sum(p.data.nbytes for p in self.params), "grads": grads,
                "optimizer": self.opt.state_nbytes()}

