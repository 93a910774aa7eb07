"""``minillm bench train``: GPT training-step throughput, model FLOP utilisation, and KV-cache speed-up.

Everything is measured side by side in the same run (the machines are shared and noisy, so ratios mean
more than absolute times):

* the float32 matmul rate of this machine through the array library (the ceiling to compare against);
* tokens/s of one full training step (forward, backward, AdamW) of a GPT with d_model 256, 4 layers,
  4 heads, context 128, batch 16, and its model FLOP/s = (6·N + 12·L·T·d) per token (Kaplan et al. 2020,
  PaLM appendix B; N = parameters used in matmuls, i.e. all but the position table), as a fraction of the
  matmul rate (MFU);
* optionally a reference implementation of the same step timed in turn with ours, so both see the same
  load, and the ratio: ``python tests/torch_reference.py`` passes PyTorch eager this way (torch is never
  imported by the package, and never a dependency);
* generation of 256 new tokens with and without the KV cache on the shipped model (same tokens).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy

from minillm import backend as B

BENCH = dict(vocab_size=1024, context_length=128, d_model=256, n_heads=4, n_layers=4, batch_size=16)


def matmul_rate(n: int = 1024, repeats: int = 5) -> float:
    """Best float32 FLOP/s of an n×n @ n×n product through the active array library."""
    a = B.randn(n, n)
    b = B.randn(n, n)
    B.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        c = B.matmul(a, b)
        if B.name == "cupy":
            B.xp.cuda.Device().synchronize()
        best = min(best, time.perf_counter() - t0)
    del c
    return 2.0 * n ** 3 / best


def step_flops(n_matmul_params: int, n_layers: int, T: int, d: int, tokens: int) -> float:
    """Training FLOPs of one step: 6 per parameter per token (2 forward, 4 backward) plus attention's
    q·k and p·v products, 12·L·T·d per token."""
    return (6.0 * n_matmul_params + 12.0 * n_layers * T * d) * tokens


def minillm_step(cfg: dict):
    """A function running one training step of the benchmark GPT in minillm, and its matmul parameters."""
    from minillm import optim
    from minillm.models.gpt import GPT, GPTConfig

    B.manual_seed(0)
    model = GPT(GPTConfig(**{k: v for k, v in cfg.items() if k != "batch_size"}))
    opt = optim.AdamW(model.parameters(), lr=1e-4)
    rng = numpy.random.default_rng(0)
    ids = rng.integers(0, cfg["vocab_size"], (cfg["batch_size"], cfg["context_length"] + 1))
    x, y = ids[:, :-1], ids[:, 1:]

    def step():
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step, model.num_parameters() - model.pos_emb.weight.size


def interleaved_medians(steps: list, repeats: int) -> list[float]:
    """Median seconds of each step function, timed in turn (A, B, A, B, ...) so both see the same load."""
    for step in steps:
        step()  # warm-up
    times = [[] for _ in steps]
    for _ in range(repeats):
        for step, ts in zip(steps, times):
            t0 = time.perf_counter()
            step()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def kv_cache_speedup(new_tokens: int = 256) -> dict:
    """Seconds to generate ``new_tokens`` greedily with and without the KV cache on the shipped model."""
    from minillm.generate import generate
    from minillm.models.gpt import GPT, GPTConfig
    from minillm.shipped import SHIPPED_GPT

    if SHIPPED_GPT.exists():
        model, which = GPT.from_checkpoint(SHIPPED_GPT), SHIPPED_GPT.name
    else:
        B.manual_seed(0)
        model, which = GPT(GPTConfig()), "untrained GPTConfig() (no shipped checkpoint)"
    prompt = numpy.arange(1, 9)
    out = {}
    for cache in (False, True):
        generate(model, prompt, 4, greedy=True, use_cache=cache)
        t0 = time.perf_counter()
        out[cache] = generate(model, prompt, new_tokens, greedy=True, use_cache=cache)
        out[f"t{cache}"] = time.perf_counter() - t0
    return {"model": which, "uncached_s": out["tFalse"], "cached_s": out["tTrue"],
            "speedup": out["tFalse"] / out["tTrue"], "same_tokens": bool((out[False] == out[True]).all()),
            "new_tokens": new_tokens, "context_length": model.config.context_length}


def main(args, reference: tuple[str, Callable[[dict], Callable[[], None]]] | None = None) -> None:
    """Print the benchmark. ``reference``: (label, make_step) where ``make_step(cfg)`` returns a function
    running one training step of the same GPT in another implementation, timed side by side with ours."""
    quick = bool(getattr(args, "quick", False))
    repeats = 2 if quick else 7
    cfg = dict(BENCH)
    if quick:
        cfg.update(d_model=64, n_layers=2, context_length=32, batch_size=4)
    tokens = cfg["batch_size"] * cfg["context_length"]
    rate = matmul_rate(512 if quick else 1024)
    ours, n_matmul = minillm_step(cfg)
    theirs = reference[1](cfg) if reference else None
    medians = interleaved_medians([ours] + ([theirs] if theirs else []), repeats)
    t_ours, t_torch = medians[0], (medians[1] if theirs else None)
    rate = max(rate, matmul_rate(512 if quick else 1024))  # best of before and after: the machine is shared
    flops = step_flops(n_matmul, cfg["n_layers"], cfg["context_length"], cfg["d_model"], tokens)
    print(f"bench train (backend={B.get_backend()}): GPT d_model {cfg['d_model']}, {cfg['n_layers']} layers, "
          f"{cfg['n_heads']} heads, context {cfg['context_length']}, batch {cfg['batch_size']} "
          f"({n_matmul:,} matmul parameters)")
    print(f"  float32 matmul rate (measured now)   {rate / 1e9:8.1f} GFLOP/s")
    print(f"  minillm training step                {t_ours * 1e3:8.1f} ms  {tokens / t_ours:9,.0f} tokens/s  "
          f"{flops / t_ours / 1e9:6.1f} GFLOP/s = {flops / t_ours / rate:5.1%} of matmul rate (MFU)")
    if t_torch is None:
        print("  side by side with PyTorch eager: python tests/torch_reference.py (optional, needs torch)")
    else:
        print(f"  {reference[0]:<36} {t_torch * 1e3:8.1f} ms  {tokens / t_torch:9,.0f} tokens/s")
        print(f"  minillm / reference speed ratio      {t_torch / t_ours:8.2f}x  (> 1: minillm is faster)")
    kv = kv_cache_speedup(32 if quick else 256)
    print(f"  generation, {kv['new_tokens']} new tokens ({kv['model']}, context {kv['context_length']}): "
          f"uncached {kv['uncached_s']:.2f} s, KV cache {kv['cached_s']:.2f} s -> "
          f"{kv['speedup']:.1f}x faster, same tokens: {kv['same_tokens']}")
