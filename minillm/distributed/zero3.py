"""ZeRO stage 3: the parameters are sharded too; each transformer block is gathered only while it runs.

Between steps a rank holds just its (s,) shard of the flat parameters, gradients and moments: 16·s bytes
of float32 instead of 16Ψ. Every trainable parameter's ``data`` is an empty placeholder until needed:

* forward: the parameters outside the blocks (embeddings, final norm) are gathered when the model's
  forward starts; each block's are gathered just before it runs and freed right after;
* backward: an identity node on the block's output gathers the block again before its backward starts,
  and one on its input, when the block's backward is done, reduce-scatters the block's gradients into
  this rank's gradient shard and frees the block's parameters and gradients;
* after backward the remaining gradients (embeddings, final norm) are reduce-scattered the same way and
  everything gathered is freed.

Blocks are ``model.blocks`` (GPT, LLaMA); a model without them is gathered whole for its forward. Only
``forward``, ``state_dict`` and ``load_state_dict`` gather; call ``unshard(model)`` after training to use
the model otherwise (generation, saving on rank 0 alone).

A block straddles shard boundaries: rank r owns one part of the block's flat range. Gathering, every rank
sends its part (padded to the longest part, so the all-gather moves equal sizes) and the parts, in rank
order, are the block; reducing, every rank sends the whole block's gradient cut into those N padded parts
and the reduce-scatter hands rank r the sum of part r.
The autograd here keeps the forward's arrays in its closures until backward, so the true peak is larger
than one block in this teaching version; what a rank *holds* between steps is what ``bytes_per_rank`` shows.
"""

from __future__ import annotations

from minillm import backend as B
from minillm import optim
from minillm.distributed.comm import Comm
from minillm.distributed.ddp import DataParallel
from minillm.distributed.zero import Layout, ShardedAdamW, ZeRO
from minillm.tensor import Tensor, is_grad_enabled


def on_backward(x: Tensor, fn) -> Tensor:
    """x itself, with ``fn()`` called when the gradient reaches this point of the graph."""
    out = Tensor._result(x.data, (x,), "zero3_hook")
    if out.requires_grad:
        def backward(g):
            fn()
            x._accum(g)
        out._backward = backward
    return out


def runs(idx) -> list[list[int]]:
    """Sorted indices in runs of consecutive ones: [0, 1, 2, 5, 6] → [[0, 1, 2], [5, 6]]."""
    out: list[list[int]] = []
    for i in sorted(idx):
        if out and i == out[-1][-1] + 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def my_shard(lay: Layout, arrays: list):
    """This rank's (s,) slice of the flat, padded buffer of ``arrays``."""
    return lay.flatten(arrays)[lay.start:lay.start + lay.shard]


class ZeRO3(ZeRO):
    """ZeRO stage 3 over ``comm``: parameters, gradients and optimizer state all sharded."""

    def __init__(self, comm: Comm | None = None, bucket_bytes: int = 1 << 22):
        super().__init__(comm, stage=2, bucket_bytes=bucket_bytes)
        self.stage = 3
        self.reduced: set[int] = set()  # parameters whose gradients this step already reduced

    def _optimizer(self, opt: optim.AdamW) -> ShardedAdamW:
        sharded = ShardedAdamW(opt, self.params, self.comm)
        sharded.param_shard = my_shard(sharded.layout, [p.data for p in self.params]).copy()
        return sharded

    def setup(self, model, opt: optim.AdamW, batch_size: int | None = None) -> ShardedAdamW:
        opt = super().setup(model, opt, batch_size)
        index = {id(p): i for i, p in enumerate(self.params)}
        in_blocks = set()
        for block in getattr(model, "blocks", []):  # GPT, LLaMA: a ModuleList of transformer blocks
            idx = [index[id(p)] for p in block.parameters() if id(p) in index]
            if idx:
                self._wrap_block(block, idx)
                in_blocks.update(idx)
        self._wrap_model(model, [i for i in range(len(self.params)) if i not in in_blocks])
        self.free(range(len(self.params)))
        return opt

    # ------------------------------------------------------------------ gather and free
    def gather(self, idx) -> None:
        """Give parameters ``idx`` (indices into the flat order) their full data, one all-gather per run of
        consecutive indices."""
        lay = self.opt.layout
        for run in runs(idx):
            lo, hi = lay.offsets[run[0]], lay.offsets[run[-1] + 1]
            flat = self._gather_range(lo, hi)  # (hi - lo,)
            for i in run:
                a, b = lay.offsets[i] - lo, lay.offsets[i + 1] - lo
                self.params[i].data = flat[a:b].reshape(lay.shapes[i])

    def _parts(self, lo: int, hi: int) -> tuple[list[tuple[int, int]], int]:
        """Each rank's part [a, b) of the flat range [lo, hi) (empty: a >= b), and the longest part's size."""
        s = self.opt.layout.shard
        parts = [(max(lo, r * s), min(hi, (r + 1) * s)) for r in range(self.world_size)]
        return parts, max(max(b - a, 0) for a, b in parts)

    def _gather_range(self, lo: int, hi: int):
        """Elements [lo, hi) of the flat parameters, assembled from every rank's shard."""
        lay = self.opt.layout
        parts, longest = self._parts(lo, hi)
        a, b = parts[self.rank]
        send = B.xp.zeros(longest, dtype=self.opt.m.dtype)  # (L,) this rank's part, padded
        if a < b:
            send[:b - a] = self.opt.param_shard[a - lay.start:b - lay.start]
        got = self.comm.all_gather(send)  # (N·L,)
        return B.xp.concatenate([got[r * longest:r * longest + max(0, e - s)]
                                 for r, (s, e) in enumerate(parts)])

    def reduce_scatter(self, idx) -> None:
        """Add the gradients of parameters ``idx``, summed over ranks, into this rank's gradient shard and
        drop them: one reduce-scatter per run of consecutive indices."""
        lay, opt = self.opt.layout, self.opt
        if not self.reduced:  # the step's first reduction starts a new sum
            opt.grad_shard = B.xp.zeros(lay.shard, dtype=opt.m.dtype)  # (s,)
        for run in runs(idx):
            lo, hi = lay.offsets[run[0]], lay.offsets[run[-1] + 1]
            grads = [B.xp.zeros(lay.shapes[i], dtype=opt.m.dtype) if self.params[i].grad is None
                     else self.params[i].grad for i in run]
            flat = B.xp.concatenate([g.reshape(-1) for g in grads])  # (hi - lo,)
            parts, longest = self._parts(lo, hi)
            send = B.xp.zeros(self.world_size * longest, dtype=flat.dtype)  # (N·L,) part r in slot r
            for r, (a, b) in enumerate(parts):
                if a < b:
                    send[r * longest:r * longest + b - a] = flat[a - lo:b - lo]
            got = self.comm.reduce_scatter(send)  # (L,) the sum of this rank's part
            a, b = parts[self.rank]
            if a < b:
                opt.grad_shard[a - lay.start:b - lay.start] += got[:b - a]
            for i in run:
                self.params[i].grad = None
        self.reduced.update(idx)

    def free(self, idx) -> None:
        """Drop the full data of parameters ``idx``: an empty placeholder until the next gather."""
        for i in idx:
            self.params[i].data = B.xp.empty(0, dtype=self.opt.m.dtype)

    # ------------------------------------------------------------------ hooks
    def _wrap_block(self, block, idx: list) -> None:
        forward = block.forward

        def gathered_forward(x, *args, **kwargs):
            if is_grad_enabled() and isinstance(x, Tensor):
                x = on_backward(x, lambda: self._done(idx))  # its backward is the block's last
            self.gather(idx)
            out = forward(x, *args, **kwargs)
            self.free(idx)
            if not is_grad_enabled():
                return out
            if isinstance(out, tuple):  # a block returns (x, present_kv)
                return (on_backward(out[0], lambda: self.gather(idx)), *out[1:])
            return on_backward(out, lambda: self.gather(idx))

        block.forward = gathered_forward

    def _done(self, idx: list) -> None:
        """A block's backward is complete: reduce its gradients and free it."""
        self.reduce_scatter(idx)
        self.free(idx)

    def _wrap_model(self, model, rest: list) -> None:
        """The parameters outside the blocks live from the forward to the gradient reduction; a model's
        state_dict gathers everything and load_state_dict re-shards what it loads."""
        forward, state_dict, load_state_dict = model.forward, model.state_dict, model.load_state_dict
        everything = range(len(self.params))

        def gathered_forward(*args, **kwargs):
            self.gather(rest)
            out = forward(*args, **kwargs)
            if not is_grad_enabled():
                self.free(rest)
            return out

        def gathered_state_dict():
            self.gather(everything)
            sd = state_dict()
            self.free(everything)
            return sd

        def resharding_load_state_dict(state: dict, strict: bool = True):
            self.gather(everything)  # the right shapes for load_state_dict's checks
            out = load_state_dict(state, strict)
            self.opt.param_shard[...] = my_shard(self.opt.layout, [p.data for p in self.params])
            self.free(everything)
            return out

        model.forward, model.state_dict = gathered_forward, gathered_state_dict
        model.load_state_dict = resharding_load_state_dict

    def unshard(self, model) -> None:
        """Gather every parameter for good and remove the hooks: a plain model again, e.g. to save or
        sample from it on rank 0 alone."""
        self.gather(range(len(self.params)))
        for m in [model, *getattr(model, "blocks", [])]:
            for name in ("forward", "state_dict", "load_state_dict"):
                m.__dict__.pop(name, None)

    # ------------------------------------------------------------------ per step
    def reduce_gradients(self, max_norm: float = 0.0) -> float:
        """Reduce what the blocks' backward hooks did not (the rest; a block whose input needs no
        gradient), average, clip to the global norm, free everything; the next step starts a new sum."""
        self.reduce_scatter([i for i in range(len(self.params)) if i not in self.reduced])
        norm = self.opt.average_and_clip(max_norm)
        self.free(range(len(self.params)))
        self.reduced = set()
        return norm

    def bytes_per_rank(self) -> dict:
        out = super().bytes_per_rank()
        out["params"] += self.opt.param_shard.nbytes
        return out


STRATEGIES = ("ddp", "zero1", "zero2", "zero3")


def make_strategy(name: str, comm: Comm | None = None) -> DataParallel:
    """``"ddp"`` (ZeRO stage 0), ``"zero1"``, ``"zero2"`` or ``"zero3"`` over ``comm`` (default:
    ``init_comm()``), to pass as ``train(..., distributed=...)``."""
    if name not in STRATEGIES:
        raise ValueError(f"distributed: expected one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "ddp":
        return DataParallel(comm)
    return ZeRO3(comm) if name == "zero3" else ZeRO(comm, stage=int(name[-1]))
