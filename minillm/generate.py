"""Text generation from a causal language model: greedy, temperature, top-k and top-p sampling.

With ``use_cache`` each new token costs one position's forward pass: the keys and values of earlier
positions are kept (the KV cache, ``model.forward_cached``) instead of being recomputed. Both paths condition
on the same window of tokens, so they produce the same tokens.

Past the context length the window slides: it drops to the last ``slide_keep`` tokens (default half the
context), then grows again up to the context length. With learned absolute positions a cache cannot shift
by one position, so the cached path re-reads the kept window once per slide (a prefill) and continues;
``slide_keep=context_length`` gives the classic "last context_length tokens" window at every step, at
the cost of a full prefill per token once the context is full.
"""

from __future__ import annotations

import math
import numbers

import numpy

from minillm import backend as B
from minillm.nn import evaluating


def window_start(n: int, context_length: int, slide_keep: int) -> int:
    """First position of the window the model reads when ``n`` tokens exist (0 while n ≤ context).

    Past the context the window length cycles keep, keep+1, …, context, keep, … so a KV cache can be
    extended token by token between slides.
    """
    if n <= context_length:
        return 0
    w = slide_keep + (n - context_length - 1) % (context_length - slide_keep + 1)
    return n - w


def sample_next(logits, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                rng: numpy.random.Generator | None = None) -> numpy.ndarray:
    """One token id per row of ``logits`` (B, V): argmax when temperature is 0, else a draw from
    softmax(logits / temperature) restricted to the top_k most likely and/or the smallest set whose
    probability reaches top_p (nucleus sampling, Holtzman et al. 2020)."""
    z = B.to_numpy(logits).astype(numpy.float64)
    if temperature == 0:
        return z.argmax(axis=-1)
    if temperature < 0:
        raise ValueError(f"sample_next: temperature must be ≥ 0, got {temperature}")
    z = z / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"sample_next: top_k must be ≥ 1, got {top_k}")
        k = min(top_k, z.shape[-1])
        kth = numpy.partition(z, -k, axis=-1)[:, -k][:, None]
        z = numpy.where(z < kth, -numpy.inf, z)
    p = numpy.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"sample_next: top_p must be in (0, 1], got {top_p}")
        order = numpy.argsort(-p, axis=-1, kind="stable")
        sp = numpy.take_along_axis(p, order, axis=-1)
        before = numpy.cumsum(sp, axis=-1) - sp  # mass of the more likely tokens
        sp = numpy.where(before < top_p, sp, 0.0)  # keep a token while the mass before it is < top_p
        p = numpy.zeros_like(p)
        numpy.put_along_axis(p, order, sp, axis=-1)
        p /= p.sum(axis=-1, keepdims=True)
    rng = rng if rng is not None else B.rng
    u = rng.random((p.shape[0], 1))
    return numpy.minimum((numpy.cumsum(p, axis=-1) < u).sum(axis=-1), p.shape[-1] - 1)


def generate(model, ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, greedy: bool = False, stop_tokens=(), seed: int | None = None,
             use_cache: bool = True, slide_keep: int | None = None,
             pad_id: int | None = None) -> numpy.ndarray:
    """Continue ``ids`` (T,) or (B, T) by up to ``max_new_tokens`` tokens; returns prompt + new tokens.

    ``greedy`` (or temperature 0) takes the argmax. ``seed`` makes sampling reproducible (default: the
    global minillm RNG). Generation stops once every row has produced one of ``stop_tokens`` (the stop
    token is kept); rows that stopped early are filled with ``pad_id`` (default: their stop token).
    """
    arr = numpy.asarray(B.to_numpy(ids))
    squeeze = arr.ndim == 1
    seq = arr[None, :] if squeeze else arr
    if seq.ndim != 2 or seq.shape[1] == 0:
        raise ValueError(f"generate: need a non-empty prompt of shape (T,) or (B, T), got {arr.shape}")
    if seq.dtype.kind not in "iu":  # 2.7 is not a token: casting it would hide a bug upstream
        raise TypeError(f"generate: token ids must be integers, got {seq.dtype}")
    whole = isinstance(max_new_tokens, numbers.Integral) and not isinstance(max_new_tokens, bool)
    if not whole or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
    if not (greedy or (math.isfinite(temperature) and temperature >= 0)):
        raise ValueError(f"generate: temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and top_k < 1 or top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"generate: top_k must be >= 1 and top_p in (0, 1], got {top_k!r} and {top_p!r}")
    seq = seq.astype(numpy.int64)
    ctx = model.config.context_length
    keep = ctx // 2 if slide_keep is None else int(slide_keep)
    if not 1 <= keep <= ctx:
        raise ValueError(f"generate: slide_keep must be in 1..{ctx}, got {keep}")
    stops = set(int(s) for s in (stop_tokens or ()))
    rng = numpy.random.default_rng(seed) if seed is not None else None
    temperature = 0.0 if greedy else temperature
    done = numpy.zeros(seq.shape[0], dtype=bool)
    fill = numpy.zeros(seq.shape[0], dtype=numpy.int64)
    cache, cache_start = None, -1
    with evaluating(model):
        for _ in range(max_new_tokens):
            n = seq.shape[1]
            s = window_start(n, ctx, keep)
            if use_cache and cache is not None and s == cache_start:
                logits, cache = model.forward_cached(seq[:, n - 1:], past_kv=cache)  # one position
            elif use_cache:
                logits, cache = model.forward_cached(seq[:, s:])  # prefill the window
                cache_start = s
            else:
                logits, _ = model(seq[:, s:])
            nxt = sample_next(logits.data[:, -1, :], temperature, top_k, top_p, rng)
            nxt = numpy.where(done, fill if pad_id is None else pad_id, nxt).astype(numpy.int64)
            seq = numpy.concatenate([seq, nxt[:, None]], axis=1)
            if stops:
                hit = ~done & numpy.isin(nxt, list(stops))
                fill = numpy.where(hit, nxt, fill)
                done |= hit
                if done.all():
                    break
    return seq[0] if squeeze else seq


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 64, **kwargs) -> str:
    """Encode ``prompt``, generate, and decode only the new tokens (a final stop token is dropped).

    Stops at the tokenizer's end-of-text token unless ``stop_tokens`` is given.
    """
    ids = tokenizer.encode(prompt, allowed_special="all") if prompt else [tokenizer.eos_id]
    kwargs.setdefault("stop_tokens", [tokenizer.eos_id])
    out = generate(model, numpy.asarray(ids), max_new_tokens, **kwargs)
    new = [int(t) for t in out[len(ids):]]
    if new and new[-1] in set(kwargs["stop_tokens"]):
        new = new[:-1]
    return tokenizer.decode(new)
