"""``minillm bench autograd``: the engine's overhead over hand-written NumPy on a 4-layer MLP.

Forward + backward of Linear → GELU (×3) → Linear → cross-entropy (batch 256, width 512, float32), once
through ``minillm`` (graph, closures, gradient accumulation) and once as the same arithmetic written out
in NumPy with a hand-derived backward. Repeats are interleaved (engine, NumPy, engine, ...) so machine
noise hits both alike; the medians are printed, and the ratio is the median of the per-pair ratios
(each engine run over the NumPy run beside it, so load that drifts during the run cancels). Target:
ratio ≤ 1.2. The gradients of both are compared first, so the NumPy side is a reference, not just a timer.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy

from minillm import backend as B
from minillm import functional as F
from minillm import nn
from minillm.tensor import Tensor

BATCH, WIDTH, CLASSES, LAYERS = 256, 512, 10, 4
_C = math.sqrt(2.0 / math.pi)


def make_model() -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(LAYERS):
        layers.append(nn.Linear(WIDTH, CLASSES if i == LAYERS - 1 else WIDTH))
        if i < LAYERS - 1:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def engine_step(model: nn.Module, x: numpy.ndarray, y: numpy.ndarray) -> float:
    """Forward + backward through the autograd engine; leaves .grad on every parameter."""
    model.zero_grad()
    loss = F.cross_entropy(model(Tensor(x)), y)
    loss.backward()
    return loss.item()


def numpy_step(params: list[tuple[numpy.ndarray, numpy.ndarray]], x: numpy.ndarray, y: numpy.ndarray):
    """The same computation with the backward written by hand: returns (loss, [(dW, db), ...])."""
    hs, us, ts = [x], [], []
    h = x
    for i, (W, b) in enumerate(params):
        z = h @ W.T + b
        if i < len(params) - 1:  # GELU, tanh approximation
            u = _C * (z + 0.044715 * z * z * z)
            t = numpy.tanh(u)
            us.append(z)
            ts.append(t)
            h = 0.5 * z * (1 + t)
            hs.append(h)
        else:
            h = z
    m = h.max(-1, keepdims=True)
    logp = h - m - numpy.log(numpy.exp(h - m).sum(-1, keepdims=True))
    rows = numpy.arange(len(y))
    loss = -logp[rows, y].mean()
    dz = numpy.exp(logp)
    dz[rows, y] -= 1
    dz /= len(y)
    grads = []
    for i in reversed(range(len(params))):
        W, _ = params[i]
        grads.append((dz.T @ hs[i], dz.sum(0)))
        if i > 0:
            dh = dz @ W
            z, t = us[i - 1], ts[i - 1]
            dz = dh * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _C * (1 + 3 * 0.044715 * z * z))
    return float(loss), grads[::-1]


def run(repeats: int, warmup: int = 2) -> dict:
    B.manual_seed(0)
    model = make_model()
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((BATCH, WIDTH)).astype(B.default_dtype)
    y = rng.integers(0, CLASSES, BATCH)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    params = [(B.to_numpy(m.weight.data), B.to_numpy(m.bias.data)) for m in linears]

    # validate: same loss and gradients
    loss_e = engine_step(model, x, y)
    loss_n, grads = numpy_step(params, x, y)
    assert abs(loss_e - loss_n) < 1e-4 * max(1.0, abs(loss_n)), (loss_e, loss_n)
    for m, (dW, db) in zip(linears, grads):
        numpy.testing.assert_allclose(B.to_numpy(m.weight.grad), dW, rtol=1e-3, atol=1e-5)
        numpy.testing.assert_allclose(B.to_numpy(m.bias.grad), db, rtol=1e-3, atol=1e-5)

    times: dict[str, list[float]] = {"engine": [], "numpy": []}
    steps = [("engine", lambda: engine_step(model, x, y)), ("numpy", lambda: numpy_step(params, x, y))]
    for i in range(warmup + repeats):
        for name, step in steps[::1 if i % 2 else -1]:  # alternate which goes first
            t0 = time.perf_counter()
            step()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
    eng, ref = statistics.median(times["engine"]), statistics.median(times["numpy"])
    paired = statistics.median(e / n for e, n in zip(times["engine"], times["numpy"]))
    flops = 3 * 2 * BATCH * sum(W.size for W, _ in params)  # forward + two backward matmuls per layer
    return {"engine_ms": eng * 1e3, "numpy_ms": ref * 1e3, "ratio": paired, "ratio_of_medians": eng / ref,
            "gflops_engine": flops / eng / 1e9, "repeats": repeats}


def main(args) -> dict:
    quick = getattr(args, "quick", False)
    repeats = 3 if quick else 30
    r = run(repeats, warmup=1 if quick else 3)
    print(f"autograd: {LAYERS}-layer GELU MLP, batch {BATCH}, width {WIDTH}, float32, forward+backward, "
          f"median of {repeats} interleaved repeats (backend {B.get_backend()})")
    print(f"  engine   {r['engine_ms']:8.2f} ms   ({r['gflops_engine']:.0f} GFLOP/s)")
    print(f"  numpy    {r['numpy_ms']:8.2f} ms   (hand-written backward, same arithmetic)")
    print(f"  ratio    {r['ratio']:8.3f}x  (median of paired ratios; ratio of medians "
          f"{r['ratio_of_medians']:.3f}x; target <= 1.2x)")
    return r
