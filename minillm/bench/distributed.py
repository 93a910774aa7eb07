"""``minillm bench distributed``: training tokens/s of N ranks against one process, side by side.

Every process runs with one BLAS thread, so N ranks use N cores and one process uses one: the ratio is the
scaling of data parallelism on this machine (the target on 2 cores is ≥ 1.7×). The model is
``bench train``'s GPT (d_model 256, 4 layers, context 128) at the same global batch (16) in both runs;
each rank computes B/N rows. Launches alternate (one process, N ranks, one process, ...) so both see the
same load (each N-rank launch is compared with the one-process launches just before and after it); each
launch is a fresh ``python -m minillm.bench.distributed`` (under ``mpiexec -n N`` for the
ranks), because the BLAS thread count is fixed when NumPy loads. Time inside the collectives (which
includes waiting for the slower rank) is reported as a share of the step.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minillm.bench.train import BENCH
from minillm.distributed.comm import INSTALL_HINT, Comm, find_mpiexec

STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
TARGET = 1.7  # on 2 cores


class TimedComm(Comm):
    """A communicator that adds the seconds spent in each collective to ``seconds``."""

    def __init__(self, inner: Comm):
        self.inner, self.rank, self.world_size, self.seconds = inner, inner.rank, inner.world_size, 0.0

    def _timed(self, name: str, *args):
        t0 = time.perf_counter()
        out = getattr(self.inner, name)(*args)
        self.seconds += time.perf_counter() - t0
        return out

    def all_reduce(self, array, op: str = "sum"):
        return self._timed("all_reduce", array, op)

    def reduce_scatter(self, flat_array):
        return self._timed("reduce_scatter", flat_array)

    def all_gather(self, shard):
        return self._timed("all_gather", shard)

    def broadcast(self, array, root: int = 0):
        return self._timed("broadcast", array, root)

    def barrier(self) -> None:
        self._timed("barrier")


def config(quick: bool) -> dict:
    cfg = dict(BENCH)
    if quick:
        cfg.update(d_model=64, n_layers=2, context_length=32, batch_size=8)
    return cfg


def measure(cfg: dict, strategy: str | None, steps: int, warmup: int = 2) -> dict:
    """Median seconds per training step (and in collectives) of the GPT ``cfg`` at global batch
    ``cfg["batch_size"]``: one process when ``strategy`` is None, else this rank's view of the group."""
    import numpy

    from minillm import backend as B
    from minillm import optim
    from minillm.distributed import init_comm, make_strategy
    from minillm.models.gpt import GPT, GPTConfig
    from minillm.train import lm_loss, train_step

    B.manual_seed(0)
    model = GPT(GPTConfig(**{k: v for k, v in cfg.items() if k != "batch_size"}))
    opt = optim.AdamW(model.parameters(), lr=1e-4)
    sched = optim.CosineWarmupLR(opt, 1, warmup + steps)
    comm = dist = None
    if strategy:
        comm = TimedComm(init_comm())
        dist = make_strategy(strategy, comm)
        opt = dist.setup(model, opt, cfg["batch_size"])
    rng = numpy.random.default_rng(0)
    step_s, comm_s = [], []
    for i in range(warmup + steps):
        ids = rng.integers(0, cfg["vocab_size"], (cfg["batch_size"], cfg["context_length"] + 1))
        batch = (ids[:, :-1], ids[:, 1:])
        if dist is not None:
            batch = dist.local_batch(batch)
        before, t0 = comm.seconds if comm else 0.0, time.perf_counter()
        train_step(model, lm_loss, batch, opt, sched, 1.0, i + 1, None, dist)
        if i >= warmup:
            step_s.append(time.perf_counter() - t0)
            comm_s.append((comm.seconds if comm else 0.0) - before)
    return {"step_s": statistics.median(step_s), "comm_share": statistics.median(
        c / s for c, s in zip(comm_s, step_s))}


def launch(ranks: int, quick: bool, steps: int, mpiexec: str | None) -> dict:
    """One fresh launch with one BLAS thread per process: {strategy or "single": measure(...)}."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "minillm.bench.distributed", str(out), str(int(quick)), str(steps)]
        if ranks > 1:
            cmd = [mpiexec, "-n", str(ranks), *cmd]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode:
            raise RuntimeError(f"bench distributed: {' '.join(cmd[:4])} ... failed:\n{proc.stderr[-2000:]}")
        return json.loads(out.read_text())


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):5.2f}x [{min(values):.2f}–{max(values):.2f}]"


def main(args) -> None:
    """Print tokens/s of 1 process and of N ranks for each strategy, and their ratios (n launches)."""
    quick = bool(getattr(args, "quick", False))
    ranks = getattr(args, "ranks", None) or 2
    repeats, steps = (1, 2) if quick else (4, 5)
    mpiexec = find_mpiexec()
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpiexec = None
    if mpiexec is None:
        print(f"bench distributed: skipped, it needs mpiexec and mpi4py: {INSTALL_HINT}")
        return
    cfg = config(quick)
    single, group = [launch(1, quick, steps, mpiexec)["single"]], []
    for _ in range(repeats):  # one process, N ranks, one process, ...: each group between two singles
        group.append(launch(ranks, quick, steps, mpiexec))
        single.append(launch(1, quick, steps, mpiexec)["single"])
    tokens = cfg["batch_size"] * cfg["context_length"]
    one = [tokens / r["step_s"] for r in single]
    beside = [(a + b) / 2 for a, b in zip(one, one[1:])]  # the single-process rate around each group launch
    print(f"bench distributed: GPT d_model {cfg['d_model']}, {cfg['n_layers']} layers, context "
          f"{cfg['context_length']}, global batch {cfg['batch_size']}; 1 BLAS thread per process; median of "
          f"{steps} steps per launch; ratios to the single-process launches before and after, median "
          f"[min–max] over n={repeats}")
    print(f"  1 process                  {statistics.median(one):9,.0f} tokens/s  (n={len(one)})")
    for s in STRATEGIES:
        tps = [tokens / g[s]["step_s"] for g in group]
        ratios = [t / o for t, o in zip(tps, beside)]
        share = statistics.median(g[s]["comm_share"] for g in group)
        label = f"{ranks} ranks, {s}"
        print(f"  {label:<26} {statistics.median(tps):9,.0f} tokens/s  {spread(ratios)}  collectives "
              f"{share:5.1%} of the step")
    ddp = statistics.median(tokens / g["ddp"]["step_s"] / o for g, o in zip(group, beside))
    if ranks == 2 and not quick:
        print(f"  target on 2 cores: ddp ≥ {TARGET}x: {'met' if ddp >= TARGET else 'NOT met'} ({ddp:.2f}x)")


def add_arguments(p) -> None:
    """The ``minillm bench distributed`` option."""
    from minillm import options as opt

    p.add_argument("--ranks", type=opt.positive_int, default=None,
                   help="distributed: ranks to compare with one process (default 2; one core each)")


def worker(out: str, quick: str, steps: str) -> None:
    """What each launch runs: one process, or every strategy on this rank; rank 0 writes ``out``."""
    from minillm.distributed.comm import launched_rank, launched_world_size

    cfg, n = config(bool(int(quick))), int(steps)
    if launched_world_size() == 1:
        result = {"single": measure(cfg, None, n)}
    else:
        result = {s: measure(cfg, s, n) for s in STRATEGIES}
    if launched_rank() == 0:
        Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    worker(*sys.argv[1:4])
