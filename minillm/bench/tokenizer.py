"""``minillm bench tokenizer``: BPE training time (1 MB -> 2,000-token vocab) and encode/decode throughput.

Two training texts, both deterministic and generated here:

- the world corpus (what the shipped tokenizer is trained on). Its vocabulary is a few hundred words, so
  BPE runs out of pairs (every word is already one token) well before 2,000 tokens; the figure shows that.
- "Zipf text": words made of random syllables drawn with Zipf's-law frequencies (about 20,000 distinct
  words, like natural text), which does reach 2,000 tokens. This is the case the ≤ 30 s target is about.
- (full run only) "random words": uniformly random letters, ~100,000 distinct words, every pair about
  equally common: a worst case for the incremental counts, since each merge touches thousands of words.

Encoding is timed twice: cold (a fresh tokenizer, empty per-word cache) and warm (cache filled).
"""

from __future__ import annotations

import random
import time

import numpy

from minillm.tokenizer import BPETokenizer

TARGET_SECONDS = 30.0
SYLLABLES = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


def zipf_text(n_chars: int, seed: int = 0, n_words: int = 20_000) -> str:
    """Pseudo-words with Zipf frequencies (rank r drawn with p ∝ 1/r), capitalised sentences, punctuation
    and digits: natural-text-like statistics for timing BPE, with no file to download."""
    rng = random.Random(seed)
    lengths = (1, 2, 2, 3, 3, 4)  # syllables per word
    lexicon = sorted({"".join(rng.choices(SYLLABLES, k=rng.choice(lengths))) for _ in range(n_words)})
    rng.shuffle(lexicon)
    weights = 1.0 / numpy.arange(1, len(lexicon) + 1)
    cum = numpy.cumsum(weights / weights.sum())
    nprng = numpy.random.default_rng(seed)
    parts, total = [], 0
    while total < n_chars:
        idx = numpy.searchsorted(cum, nprng.random(nprng.integers(4, 14)))
        words = [lexicon[min(i, len(lexicon) - 1)] for i in idx]
        if nprng.random() < 0.3:
            words.insert(int(nprng.integers(len(words))), str(int(nprng.integers(0, 2000))))
        s = " ".join(words).capitalize() + nprng.choice([".", ".", ".", "?", "!", ","]) + " "
        parts.append(s)
        total += len(s)
    return "".join(parts)[:n_chars]


def random_words_text(n_chars: int, seed: int = 0) -> str:
    """Words of 1-12 uniformly random letters: nearly all distinct (the worst case for BPE training)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    parts, total = [], 0
    while total < n_chars:
        w = "".join(rng.choices(letters, k=rng.randint(1, 12)))
        parts.append(w)
        total += len(w) + 1
    return " ".join(parts)[:n_chars]


def _time_training(name: str, text: str, vocab_size: int) -> BPETokenizer:
    t0 = time.perf_counter()
    tok = BPETokenizer.train(text, vocab_size)
    dt = time.perf_counter() - t0
    n_merges = len(tok.merges)
    status = "ok" if dt <= TARGET_SECONDS else "SLOWER THAN TARGET"
    full = tok.vocab_size == vocab_size
    note = "" if full else f" (out of pairs: each word is 1 token at {n_merges} merges)"
    print(f"  train {name:<6} {len(text.encode()) / 1e6:.2f} MB -> vocab {tok.vocab_size:>5}: {dt:6.2f} s, "
          f"{n_merges / dt:8.0f} merges/s  [target <= {TARGET_SECONDS:.0f} s: {status}]{note}")
    return tok


def _time_encode(name: str, tok: BPETokenizer, text: str) -> None:
    mb = len(text.encode()) / 1e6
    fresh = BPETokenizer(tok.merges, tok.special_tokens, tok.pattern)  # empty cache
    t0 = time.perf_counter()
    ids = fresh.encode(text)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    fresh.encode(text)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = fresh.decode(ids)
    dec = time.perf_counter() - t0
    assert back == text, "round-trip failed"
    print(f"  encode {name:<6} {mb:.2f} MB: cold {mb / cold:6.1f} MB/s "
          f"({len(ids) / cold / 1e6:.2f} M tokens/s), warm {mb / warm:6.1f} MB/s; "
          f"decode {mb / dec:6.1f} MB/s; "
          f"{len(text.encode()) / len(ids):.2f} bytes/token")


def main(args=None) -> None:
    from minillm.data.world import generate_corpus_chars

    quick = bool(getattr(args, "quick", False))
    n_chars = 200_000 if quick else 1_000_000
    vocab = 2_000
    print(f"tokenizer: byte-level BPE, {n_chars / 1e6:.1f} MB of text -> {vocab} tokens"
          f"{' (--quick)' if quick else ''}")
    world_text = generate_corpus_chars(n_chars, seed=0)
    zipf = zipf_text(n_chars, seed=0)
    world_tok = _time_training("world", world_text, vocab)
    zipf_tok = _time_training("zipf", zipf, vocab)
    if not quick:
        _time_training("random", random_words_text(n_chars, seed=0), vocab)
    _time_encode("world", world_tok, generate_corpus_chars(n_chars, seed=1))
    _time_encode("zipf", zipf_tok, zipf_text(n_chars, seed=1))
    _time_encode("1-word", world_tok, "".join(c for c in generate_corpus_chars(2 * n_chars, seed=2)
                                              if c.isalpha())[:n_chars])  # one huge "word", no spaces
