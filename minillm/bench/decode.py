"""``minillm bench decode``: generation tokens/s with and without the KV cache, side by side in one run.

A GPT of GPT-2 small's shape (124,439,808 parameters: 12 layers, d_model 768, 12 heads, vocab 50257, 1024
positions, tied head) with random weights, float32 on NumPy, greedily generates ``--new-tokens`` tokens
after a random ``--prompt-len`` prompt, once recomputing every position per token (``use_cache=False``)
and once with the KV cache (``use_cache=True``: a prefill, then one position per token). A Llama with
about the same parameter count (same depth, width, heads and vocab, SwiGLU d_ff 2048, tied head:
123,551,232 parameters) is timed the same way. The two modes are timed in turn (uncached, cached,
cached, uncached, ...), so machine load hits both alike; tokens/s are medians over the repeats, with the
min-max spread, and the speed-up is the median of the per-repeat ratios. Both modes must produce the
same tokens, so the cached path is checked, not just timed.
"""

from __future__ import annotations

import statistics
import time

import numpy

from minillm import backend as B

SHAPES = {  # GPT-2 small, and a tiny one for tests
    "gpt2": dict(vocab_size=50257, context_length=1024, d_model=768, n_heads=12, n_layers=12),
    "tiny": dict(vocab_size=256, context_length=64, d_model=64, n_heads=4, n_layers=2),
}
FAMILIES = ("gpt", "llama")


def make_model(family: str, shape: str, seed: int = 0):
    """A random-weight float32 GPT, or a Llama of about the same parameter count (d_ff = 8/3·d, tied)."""
    from minillm.models.gpt import GPT, GPTConfig
    from minillm.models.llama import Llama, LlamaConfig

    B.manual_seed(seed)
    cfg = SHAPES[shape]
    if family == "gpt":
        return GPT(GPTConfig(**cfg, tie_weights=True))
    return Llama(LlamaConfig(**cfg, tie_weights=True))


def time_decode(model, prompt: numpy.ndarray, new_tokens: int, repeats: int) -> dict:
    """Seconds per ``generate`` call for each mode (False: no cache, True: KV cache), timed in turn."""
    from minillm.generate import generate

    times: dict[bool, list[float]] = {False: [], True: []}
    outs = {}
    for cache in (False, True):  # warm-up: first-call allocation and BLAS start-up
        generate(model, prompt, 2, greedy=True, use_cache=cache)
    for i in range(repeats):
        for cache in ((False, True) if i % 2 == 0 else (True, False)):
            t0 = time.perf_counter()
            outs[cache] = generate(model, prompt, new_tokens, greedy=True, use_cache=cache)
            times[cache].append(time.perf_counter() - t0)
    return {"times": times, "same_tokens": bool(numpy.array_equal(outs[False], outs[True]))}


def summarise(times: dict[bool, list[float]], new_tokens: int) -> dict:
    """tokens/s (median, min, max) per mode and the median of the paired speed-ups."""
    rate = {c: [new_tokens / t for t in ts] for c, ts in times.items()}
    pairs = [u / c for u, c in zip(times[False], times[True])]
    return {"uncached": (statistics.median(rate[False]), min(rate[False]), max(rate[False])),
            "cached": (statistics.median(rate[True]), min(rate[True]), max(rate[True])),
            "speedup": (statistics.median(pairs), min(pairs), max(pairs))}


def run(family: str, shape: str, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    """Build the model, time both modes, and summarise."""
    model = make_model(family, shape)
    prompt = numpy.random.default_rng(0).integers(0, model.config.vocab_size, prompt_len)
    r = time_decode(model, prompt, new_tokens, repeats)
    return {"family": family, "params": model.num_parameters(), "same_tokens": r["same_tokens"],
            "repeats": repeats, **summarise(r["times"], new_tokens)}


def check_lengths(shape: str, prompt_len: int, new_tokens: int) -> None:
    """Prompt + new tokens must fit the context (past it the window slides, another benchmark)."""
    ctx = SHAPES[shape]["context_length"]
    if prompt_len + new_tokens > ctx:
        raise ValueError(f"bench decode: --prompt-len {prompt_len} + --new-tokens {new_tokens} is more than "
                         f"the {shape} shape's context length {ctx}")


def main(args) -> list[dict]:
    """Print tokens/s with and without the KV cache for each family, and the ratio."""
    quick = bool(getattr(args, "quick", False))
    shape = getattr(args, "shape", None) or ("tiny" if quick else "gpt2")
    prompt_len = getattr(args, "prompt_len", None) or (8 if quick else 32)
    new_tokens = getattr(args, "new_tokens", None) or (8 if quick else 64)
    repeats = getattr(args, "repeats", None) or (1 if quick else 3)
    family = getattr(args, "family", None) or "both"
    check_lengths(shape, prompt_len, new_tokens)
    print(f"bench decode (backend={B.get_backend()}, float32, random weights, greedy): shape {shape}, prompt "
          f"{prompt_len} tokens, {new_tokens} new tokens, {repeats} interleaved repeats (median [min-max])")
    results = []
    for fam in FAMILIES if family == "both" else (family,):
        r = run(fam, shape, prompt_len, new_tokens, repeats)
        (u, u0, u1), (c, c0, c1), (s, s0, s1) = r["uncached"], r["cached"], r["speedup"]
        print(f"  {fam:<6} {r['params']:>12,} params   no cache {u:8.1f} tokens/s [{u0:.1f}-{u1:.1f}]   "
              f"KV cache {c:8.1f} tokens/s [{c0:.1f}-{c1:.1f}]   ratio {s:6.2f}x [{s0:.2f}-{s1:.2f}]   "
              f"same tokens: {r['same_tokens']}")
        results.append(r)
    return results


def add_arguments(p) -> None:
    """The ``minillm bench decode`` options (they shrink it; ``--quick`` picks tiny values)."""
    from minillm import options as opt

    p.add_argument("--shape", choices=sorted(SHAPES), default=None,
                   help="decode: model shape (default gpt2 = GPT-2 124M; tiny for tests)")
    p.add_argument("--family", choices=["both", *FAMILIES], default=None,
                   help="decode: which models (default both: GPT and a same-size Llama)")
    p.add_argument("--prompt-len", type=opt.positive_int, default=None, help="decode: prompt tokens (32)")
    p.add_argument("--new-tokens", type=opt.positive_int, default=None, help="decode: tokens generated (64)")
    p.add_argument("--repeats", type=opt.positive_int, default=None, help="decode: timed repeats (3)")
