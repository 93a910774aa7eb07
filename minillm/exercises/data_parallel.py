"""Lesson 16: the ring all-reduce's chunk schedule, one rank's ZeRO-1 AdamW step on its shard, and the bytes
each rank holds at ZeRO stages 0-3, each checked against what minillm's data parallelism does.

``16.ring_chunk`` is checked by running the ring: the learner's function says which chunk a rank sends at
each step, and ``run_ring`` (the exercise's harness) carries out the reduce-scatter and the all-gather with
that schedule on N simulated ranks. The check compares the schedule with the ring's and the N results with
the sums, so summing the arrays another way cannot pass it.
"""

from __future__ import annotations

import operator

import numpy

from minillm.exercises.checking import Case, Exercise, quiet, same_values, seeded
from minillm.peft.memory import LLAMA_7B, zero_bytes_per_rank

PHASES = ("reduce-scatter", "all-gather")


# ------------------------------------------------------------------------------------- the ring's schedule
def ring_chunk_reference(rank, step, world_size, phase):
    """The chunk rank r sends to rank r + 1 at step t (0 … N − 2) of a ring all-reduce.

    reduce-scatter: (r − t) mod N, the partial sum that just arrived from rank r − 1 (at step 0 its own
    chunk r); the receiver adds its own copy of that chunk to it. After N − 1 steps rank r holds the whole
    sum of chunk (r + 1) mod N. all-gather: (r + 1 − t) mod N, first that finished chunk, then the one that
    just arrived; the receiver keeps it as it is."""
    if phase == "reduce-scatter":
        return (rank - step) % world_size
    if phase == "all-gather":
        return (rank + 1 - step) % world_size
    raise ValueError(f"ring_chunk: phase must be one of {PHASES}, got {phase!r}")


def run_ring(ring_chunk, arrays):
    """A ring all-reduce over ``len(arrays)`` simulated ranks (``arrays[r]``: rank r's array; a list, or one
    array with a row per rank), with ``ring_chunk`` choosing what each rank sends. Returns {"schedule":
    (2, N − 1, N) chunk indices per phase, step and rank, "results": each rank's array at the end}.

    Each rank's array is flattened and zero-padded to N·s elements (s = ceil(n / N)), chunk c being elements
    [c·s, (c + 1)·s). In a step every rank sends one chunk to rank r + 1 at the same time (all messages are
    read before any is applied)."""
    n_ranks = len(arrays)
    shape = numpy.shape(arrays[0])
    n = int(numpy.prod(shape))
    s = -(-n // n_ranks)  # chunk size: ceil(n / N)
    buf = numpy.zeros((n_ranks, n_ranks * s), dtype=numpy.result_type(*arrays, numpy.float64))
    for r, a in enumerate(arrays):
        buf[r, :n] = numpy.asarray(a).reshape(-1)
    schedule = numpy.zeros((2, max(n_ranks - 1, 0), n_ranks), dtype=numpy.int64)
    for k, phase in enumerate(PHASES):
        for t in range(n_ranks - 1):
            messages = []
            for r in range(n_ranks):
                c = operator.index(ring_chunk(r, t, n_ranks, phase))
                if not 0 <= c < n_ranks:
                    raise IndexError(f"ring_chunk({r}, {t}, {n_ranks}, {phase!r}) returned chunk {c}: the "
                                     f"chunks are 0 … {n_ranks - 1} (take the index mod world_size)")
                schedule[k, t, r] = c
                messages.append((c, buf[r, c * s:(c + 1) * s].copy()))
            for r, (c, data) in enumerate(messages):
                dest = buf[(r + 1) % n_ranks, c * s:(c + 1) * s]
                if phase == "reduce-scatter":
                    dest += data   # add what arrived to my own copy of the chunk
                else:
                    dest[...] = data  # a finished sum: keep it
    return {"schedule": schedule, "results": [buf[r, :n].reshape(shape) for r in range(n_ranks)]}


def _same_ring(got, want) -> str | None:
    """The first step where the schedules differ, and how many ranks end without the sums."""
    n_ranks = len(want["results"])
    wrong = [(r, why) for r, (g, w) in enumerate(zip(got["results"], want["results"]))
             if (why := same_values(g, w)) is not None]
    diff = numpy.argwhere(got["schedule"] != want["schedule"])
    if len(diff):
        k, t, r = (int(i) for i in diff[0])
        sent, ring = int(got["schedule"][k, t, r]), int(want["schedule"][k, t, r])
        what = f"{PHASES[k]} step {t}: rank {r} of {n_ranks} sent chunk {sent}, the ring sends chunk {ring}"
        if not wrong:
            return (f"{what}; your schedule does add up every chunk, but the task fixes the start: at step 0 "
                    "of the reduce-scatter rank r sends its own chunk r")
        return f"{what}, and {len(wrong)} of {n_ranks} ranks end with wrong sums"
    if wrong:
        return f"rank {wrong[0][0]} ends with the wrong sum: {wrong[0][1]}"
    return None


def _ring_cases():
    rng = seeded(161)
    for n_ranks, shape, label in [(2, (8,), "2 ranks"),
                                  (4, (4, 5), "4 ranks, (4, 5) arrays: chunks of 5"),
                                  (3, (10,), "ragged: 10 elements in chunks of 4 (2 of padding)"),
                                  (5, (7,), "ragged: 7 elements in chunks of 2 (3 of padding)"),
                                  (8, (3,), "8 ranks, 3 elements: 5 chunks are all padding"),
                                  (6, (2, 3, 4), "6 ranks, values near 1e6")]:
        scale = 1e6 if "1e6" in label else 1.0
        yield Case((rng.standard_normal((n_ranks, *shape)) * scale + scale,), label=label)
    yield Case((rng.standard_normal((1, 5)),), label="a world of one: nothing to send")


def _schedule(rs, ag):
    """A ring_chunk from the two phases' formulas of (rank, step, N)."""
    return lambda rank, step, world_size, phase: (rs if phase == "reduce-scatter" else ag)(
        rank, step, world_size) % world_size


RING_CHUNK = Exercise(
    name="16.ring_chunk", lesson=16,
    task="Write ring_chunk(rank, step, world_size, phase): the chunk index (0 … N − 1) rank r sends to "
         "rank (r + 1) mod N at step t = 0 … N − 2 of a ring all-reduce over N ranks, each rank's array "
         "cut into N chunks. phase 'reduce-scatter': at step 0 rank r sends its own chunk r; at every later "
         "step it passes on the partial sum it received in the step before (the receiver adds its own copy "
         "of that chunk to it). After N − 1 steps rank r holds the complete sum of one chunk. Phase "
         "'all-gather': rank r first sends that complete chunk, then, step by step, the complete chunk it "
         "just received (the receiver keeps it as it is). The checker runs the ring with your schedule.",
    signature="def ring_chunk(rank: int, step: int, world_size: int, phase: str) -> int",
    reference=ring_chunk_reference,
    cases=_ring_cases,
    compare=_same_ring,
    harness=run_ring,
    mistakes={
        "own chunk every step": (_schedule(lambda r, t, n: r, lambda r, t, n: r + 1),
                                 "each rank keeps sending its own chunk: from step 1 on, pass on the partial "
                                 "sum that just arrived from rank r − 1, chunk (r − t) mod N."),
        "counting up": (_schedule(lambda r, t, n: r + t, lambda r, t, n: r + 1 + t),
                        "the chunk index goes the wrong way round the ring: what arrives from rank r − 1 at "
                        "step t is the chunk it sent, so the index counts down with t, (r − t) mod N."),
        "all-gather starts from chunk r": (_schedule(lambda r, t, n: r - t, lambda r, t, n: r - t),
                                           "the all-gather sends chunk r first, which rank r never finished: "
                                           "after the reduce-scatter rank r holds the complete sum of chunk "
                                           "(r + 1) mod N, so start the all-gather with that one."),
        "steps counted from 1": (_schedule(lambda r, t, n: r - t - 1, lambda r, t, n: r - t),
                                 "your schedule is shifted by one step: steps are numbered from 0, and at "
                                 "step 0 of the reduce-scatter rank r sends its own chunk r."),
    },
)


# ---------------------------------------------------------------------------------- ZeRO-1: one rank's step
class _OneRankOfN:
    """Rank ``rank`` of a world of ``world_size``, alone in this process: all_gather returns a buffer with
    this rank's shard in its place and zeros elsewhere (all that one rank's update needs)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def all_gather(self, shard):
        out = numpy.zeros(shard.size * self.world_size, dtype=shard.dtype)
        out[self.rank * shard.size:(self.rank + 1) * shard.size] = shard
        return out


def zero1_step_reference(params, grads, m, v, step, rank, world_size, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                         weight_decay=0.01):
    """minillm's ``ShardedAdamW`` (ZeRO stage 1) on rank ``rank`` of ``world_size``: the AdamW update of this
    rank's shard [r·s, (r + 1)·s) of the zero-padded flat buffer, s = ceil(Ψ / N), with the shard's moments
    m, v (s,) as they were after step − 1. Returns (updated shard, m, v), each (s,); padding stays 0."""
    from minillm import nn, optim
    from minillm.distributed.zero import ShardedAdamW

    p = nn.Parameter(numpy.array(params, dtype=numpy.float64))
    opt = optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    sharded = ShardedAdamW(opt, [p], _OneRankOfN(rank, world_size))
    lay = sharded.layout
    if step > 1:  # the moments so far, in optim.AdamW's format (the other ranks' parts: zeros)
        full_m, full_v = numpy.zeros(lay.padded), numpy.zeros(lay.padded)
        full_m[lay.start:lay.start + lay.shard], full_v[lay.start:lay.start + lay.shard] = m, v
        sharded.load_state_dict({"step_count": step - 1, "lr": [lr], "state": {"0": {
            "t": step - 1, "m": full_m[:lay.numel], "v": full_v[:lay.numel]}}})
    p.grad = numpy.array(grads, dtype=numpy.float64)
    sharded.step()
    shard = lay.flatten([p.data])[lay.start:lay.start + lay.shard]
    return shard, sharded.m.copy(), sharded.v.copy()


def _zero1(params, grads, m, v, step, rank, world_size, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
           weight_decay=0.01, *, correct=True, decoupled=True, offset=True, eps_inside=False):
    s = -(-params.size // world_size)
    pad = lambda a: numpy.concatenate([a, numpy.zeros(s * world_size - a.size)])
    lo = rank * s if offset else 0
    p, g = pad(params)[lo:lo + s], pad(grads)[lo:lo + s]
    b1, b2 = betas
    if not decoupled:
        g = g + weight_decay * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = (m / (1 - b1 ** step), v / (1 - b2 ** step)) if correct else (m, v)
    denom = numpy.sqrt(v_hat + eps) if eps_inside else numpy.sqrt(v_hat) + eps
    p = p * (1 - lr * weight_decay) if decoupled else p
    return p - lr * m_hat / denom, m, v


def _zero1_cases():
    rng = seeded(162)
    for n, world, rank, step, kw, gscale, label in [
            (10, 4, 1, 1, {}, 1.0, "ragged: 10 elements over 4 ranks, shards of 3; the first step"),
            (10, 4, 3, 3, {"weight_decay": 0.1}, 1.0, "the last rank: 1 element and 2 of padding"),
            (12, 3, 2, 10, {"lr": 1e-2}, 1.0, "12 over 3: no padding; step 10"),
            (7, 2, 0, 2, {}, 1e-6, "tiny gradients (1e-6): eps matters"),
            (5, 4, 3, 4, {}, 1.0, "5 over 4: the last rank owns only padding"),
            (1000, 8, 5, 20, {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.0}, 1e3,
             "1000 over 8, gradients near 1e3, betas (0.8, 0.99), no weight decay"),
            (9, 1, 0, 2, {"weight_decay": 0.05}, 1.0, "a world of one: the whole buffer")]:
        s = -(-n // world)
        real = max(0, min(s, n - rank * s))  # the shard's elements that are not padding
        m, v = numpy.zeros(s), numpy.zeros(s)
        if step > 1:
            m[:real] = rng.standard_normal(real) * 0.1 * gscale
            v[:real] = rng.uniform(0.5, 1.5, real) * 0.01 * gscale ** 2
        args = (rng.standard_normal(n), rng.standard_normal(n) * gscale, m, v, step, rank, world)
        yield Case(args, kw, label=label)


ZERO1_STEP = Exercise(
    name="16.zero1_step", lesson=16,
    task="Write zero1_step(params, grads, m, v, step, rank, world_size, lr=1e-3, betas=(0.9, 0.999), "
         "eps=1e-8, weight_decay=0.01): rank r's part of a ZeRO stage-1 AdamW step. params and grads are "
         "the whole flat buffers (Ψ,) every rank holds (the gradient already averaged over the ranks). Pad "
         "both with zeros to N·s elements, s = ceil(Ψ / N); rank r owns elements [r·s, (r + 1)·s). Update "
         "that shard with AdamW, whose moments m and v (s,) this rank alone keeps: m ← β1·m + (1 − β1)·g, "
         "v ← β2·v + (1 − β2)·g², p ← p·(1 − lr·wd) − lr·m̂ / (√v̂ + eps), m̂ = m / (1 − β1^step), "
         "v̂ = v / (1 − β2^step) (step = 1 for the first update). Return (shard, m, v), each (s,).",
    signature="def zero1_step(params: np.ndarray, grads: np.ndarray, m: np.ndarray, v: np.ndarray, "
              "step: int, rank: int, world_size: int, lr: float = 1e-3, betas=(0.9, 0.999), "
              "eps: float = 1e-8, weight_decay: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]",
    reference=zero1_step_reference,
    cases=_zero1_cases,
    mistakes={
        "no bias correction": (lambda *a, **k: _zero1(*a, **k, correct=False),
                               "m and v start at 0, so early on they are too small: divide by "
                               "(1 − β^step) before the update (m̂, v̂)."),
        "L2 in the gradient": (lambda *a, **k: _zero1(*a, **k, decoupled=False),
                               "you added weight_decay·p to the gradient (Adam with L2): AdamW decays the "
                               "weights directly, p·(1 − lr·wd), and the moments see the gradient only."),
        "rank's offset forgotten": (lambda *a, **k: _zero1(*a, **k, offset=False),
                                    "you updated the first s elements: rank r owns [r·s, (r + 1)·s) of the "
                                    "padded buffer."),
        "eps inside the root": (quiet(lambda *a, **k: _zero1(*a, **k, eps_inside=True)),
                                "eps belongs outside the square root: √v̂ + eps, as in optim.AdamW (inside, "
                                "it swamps tiny gradients)."),
    },
)


# ------------------------------------------------------------------------------- bytes per rank, stage 0-3
def zero_bytes_reference(n_params, world_size, stage, bytes_per_value=4):
    """minillm's ``peft.memory.zero_bytes_per_rank``: {"params", "grads", "optimizer"} bytes per rank."""
    return zero_bytes_per_rank(n_params, world_size, stage, bytes_per_value)


def _zero_bytes(n_params, world_size, stage, bytes_per_value=4, *, shard=None, first=1, moments=2):
    s = (-(-n_params // world_size)) if shard is None else shard(n_params, world_size)
    count = lambda k: s if stage >= k else n_params
    return {"params": bytes_per_value * count(first + 2), "grads": bytes_per_value * count(first + 1),
            "optimizer": moments * bytes_per_value * count(first)}


def _bytes_cases():
    n7b = LLAMA_7B.num_parameters()
    yield Case((n7b, 8, 0), label="LLaMA-7B on 8 ranks, stage 0 (DDP)")
    yield Case((1001, 3, 1), label="1001 parameters over 3: shards of 334")
    yield Case((1001, 3, 2), label="ragged, stage 2")
    yield Case((1001, 3, 3), {"bytes_per_value": 8}, label="ragged, stage 3, float64")
    yield Case((n7b, 8, 3), {"bytes_per_value": 2}, label="LLaMA-7B, stage 3, 16-bit")
    yield Case((3, 8, 3), label="3 parameters on 8 ranks: shards of 1")
    yield Case((100, 1, 2), label="a world of one: nothing is saved")
    yield Case((n7b, 64, 1), {"bytes_per_value": 2}, label="LLaMA-7B on 64 ranks, stage 1")


ZERO_BYTES = Exercise(
    name="16.zero_bytes", lesson=16,
    task="Write zero_bytes(n_params, world_size, stage, bytes_per_value=4): the bytes one rank holds for "
         "training Ψ = n_params parameters with AdamW on N = world_size ranks, as a dict {'params': ..., "
         "'grads': ..., 'optimizer': ...}. Each is Ψ values, or the rank's shard of s = ceil(Ψ / N) values "
         "(the flat buffer is padded to a multiple of N) once the stage shards it: stage 1 shards the "
         "optimizer state (two moments per parameter), stage 2 also the gradients, stage 3 also the "
         "parameters; stage 0 is DDP. Every value takes bytes_per_value bytes.",
    signature="def zero_bytes(n_params: int, world_size: int, stage: int, bytes_per_value: int = 4) -> dict",
    reference=zero_bytes_reference,
    cases=_bytes_cases,
    mistakes={
        "no padding": (lambda *a, **k: _zero_bytes(*a, **k, shard=lambda n, w: n // w),
                       "the shard is ceil(Ψ / N), not Ψ // N: the flat buffer is padded to a multiple of N, "
                       "so the last rank's shard is as long as the others."),
        "stages shifted": (lambda *a, **k: _zero_bytes(*a, **k, first=0),
                           "you shard one thing too many: stage 1 shards the optimizer state only, stage 2 "
                           "adds the gradients, stage 3 the parameters (stage 0 shards nothing)."),
        "one moment": (lambda *a, **k: _zero_bytes(*a, **k, moments=1),
                       "AdamW keeps two moments per parameter, m and v: the optimizer state is "
                       "2 · bytes_per_value per value."),
        "a float shard": (lambda *a, **k: _zero_bytes(*a, **k, shard=lambda n, w: n / w),
                          "Ψ / N is a float: a shard is a whole number of values, ceil(Ψ / N) (in "
                          "integers: -(-Ψ // N))."),
    },
)

EXERCISES = [RING_CHUNK, ZERO1_STEP, ZERO_BYTES]  # the order the lesson meets them
