"""Batches for the encoder objectives: world stories as documents of tokenized sentences.

``world_documents`` turns stories into ``[[sentence ids, ...], ...]`` (a sentence after the first keeps its
leading space, so concatenating a document's sentences gives back its text). The ``*_batch`` functions
build one training batch from documents with a NumPy ``Generator`` (the ``get_batch(split, rng)`` shape
``minillm.train`` expects, once bound with functools.partial), using ``minillm.data.objectives``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial

import numpy

from minillm.data import objectives as O


@dataclass
class SpecialIds:
    """The special token ids the objectives need, read from a tokenizer."""
    pad: int
    cls: int
    sep: int
    mask: int
    eos: int
    period: int                      # '.' ends a sentence (sentence permutation)
    sentinels: list[int] = field(default_factory=list)  # <extra_id_0>, <extra_id_1>, ...

    @classmethod
    def from_tokenizer(cls, tok) -> SpecialIds:
        sentinels, i = [], 0
        while f"<extra_id_{i}>" in tok.special_tokens:
            sentinels.append(tok.token_to_id(f"<extra_id_{i}>"))
            i += 1
        return cls(pad=tok.pad_id, cls=tok.token_to_id("[CLS]"), sep=tok.token_to_id("[SEP]"),
                   mask=tok.token_to_id("[MASK]"), eos=tok.eos_id, period=tok.encode(".")[0],
                   sentinels=sentinels)

    @property
    def all(self) -> list[int]:
        return [self.pad, self.cls, self.sep, self.mask, self.eos, *self.sentinels]


def split_sentences(text: str) -> list[str]:
    """Sentences of a story, each after the first with its leading space."""
    parts = re.split(r"(?<=[.!?])(?= )", text.strip())
    return [p for p in parts if p.strip()]


def tokenize_documents(tokenizer, texts: list[str]) -> list[list[list[int]]]:
    return [[tokenizer.encode(s) for s in split_sentences(t)] for t in texts]


def world_documents(tokenizer, num_stories: int, seed: int = 0,
                    weights: dict[str, float] | None = None) -> list[list[list[int]]]:
    """The world's stories as tokenized documents of sentences (``weights``: the mix of story kinds,
    see ``minillm.data.world.iter_stories``)."""
    from minillm.data.world import generate_corpus

    return tokenize_documents(tokenizer, generate_corpus(num_stories, seed, weights).split("\n\n"))


def split_documents(docs: list, val_fraction: float = 0.05) -> tuple[list, list]:
    n_val = max(2, int(len(docs) * val_fraction))
    return docs[n_val:], docs[:n_val]


def _window(doc: list[list[int]], rng, max_tokens: int) -> list[int]:
    """Consecutive sentences of a document from a random start, up to ``max_tokens`` tokens."""
    start = int(rng.integers(len(doc)))
    out: list[int] = []
    for s in doc[start:]:
        if out and len(out) + len(s) > max_tokens:
            break
        out.extend(s)
    return out[:max_tokens]


# ---------------------------------------------------------------------------------------------- BERT
def mlm_batch(docs, rng, *, batch_size: int, max_len: int, sp: SpecialIds, vocab_size: int) -> dict:
    """``[CLS] sentences [SEP]`` windows, padded, masked for MLM: input_ids, attention_mask, labels."""
    seqs = [[sp.cls, *_window(docs[int(rng.integers(len(docs)))], rng, max_len - 2), sp.sep]
            for _ in range(batch_size)]
    ids = O.pad_sequences(seqs, sp.pad, max_len)
    inputs, labels = O.mask_tokens(ids, mask_id=sp.mask, vocab_size=vocab_size, special_ids=sp.all, seed=rng)
    return {"input_ids": inputs, "attention_mask": (ids != sp.pad).astype(numpy.int64), "labels": labels,
            "token_type_ids": numpy.zeros_like(ids)}


def nsp_batch(docs, rng, *, batch_size: int, max_len: int, sp: SpecialIds, vocab_size: int,
              mlm: bool = True) -> dict:
    """NSP pairs ``[CLS] A [SEP] B [SEP]`` (+ MLM masking when ``mlm``): BERT's two objectives at once."""
    out = O.nsp_pairs(docs, batch_size, cls_id=sp.cls, sep_id=sp.sep, pad_id=sp.pad, max_len=max_len,
                      seed=rng)
    if mlm:
        out["input_ids"], out["labels"] = O.mask_tokens(out["input_ids"], mask_id=sp.mask,
                                                        vocab_size=vocab_size, special_ids=sp.all, seed=rng)
    return out


# ---------------------------------------------------------------------------------------------- BART / T5
def bart_noise_fns(sp: SpecialIds, mask_ratio: float = 0.3) -> list:
    """BART's best combination (Lewis et al. 2020, §5): sentence permutation, then text infilling."""
    return [partial(O.sentence_permutation, sentence_end_ids=[sp.period]),
            partial(O.text_infilling, mask_id=sp.mask, mask_ratio=mask_ratio, special_ids=sp.all)]


def denoise_batch(docs, rng, *, batch_size: int, max_len: int, sp: SpecialIds, mask_ratio: float = 0.3
                  ) -> dict:
    """BART: corrupted windows as input_ids, the original + eos as labels (-100 on padding)."""
    noise = bart_noise_fns(sp, mask_ratio)
    inputs, targets = [], []
    for _ in range(batch_size):
        ids = _window(docs[int(rng.integers(len(docs)))], rng, max_len - 1)
        x, y = O.bart_noise(ids, noise, seed=rng)
        inputs.append(x[:max_len])
        targets.append([*y.tolist(), sp.eos])
    return {"input_ids": O.pad_sequences(inputs, sp.pad), "labels": O.pad_sequences(targets, O.IGNORE_INDEX)}


def span_batch(docs, rng, *, batch_size: int, max_len: int, sp: SpecialIds, noise_density: float = 0.15,
               mean_span_length: float = 3.0) -> dict:
    """T5: span-corrupted windows as input_ids, sentinel targets + eos as labels (-100 on padding)."""
    inputs, targets = [], []
    for _ in range(batch_size):
        ids = _window(docs[int(rng.integers(len(docs)))], rng, max_len)
        if len(ids) < 2:
            ids = (ids + [sp.period, sp.period])[:2]
        x, y = O.span_corruption(ids, sentinel_ids=sp.sentinels, noise_density=noise_density,
                                 mean_span_length=mean_span_length, seed=rng)
        inputs.append(x)
        targets.append([*y.tolist(), sp.eos])
    return {"input_ids": O.pad_sequences(inputs, sp.pad), "labels": O.pad_sequences(targets, O.IGNORE_INDEX)}


def encode_pairs(tokenizer, pairs: list[tuple[str, str]], max_len: int | None = None
                 ) -> list[tuple[list[int], list[int]]]:
    """(input text, target text) → (input ids, target ids + eos), each cut to ``max_len`` tokens."""
    n = max_len or 1 << 30
    return [(tokenizer.encode(a)[:n], (tokenizer.encode(b)[:n - 1] + [tokenizer.eos_id])) for a, b in pairs]


def seq2seq_batch(pairs, rng, *, batch_size: int, sp: SpecialIds) -> dict:
    """A batch of encoded (input, target) pairs: input_ids padded, labels padded with -100."""
    pick = rng.integers(len(pairs), size=batch_size)
    return {"input_ids": O.pad_sequences([pairs[i][0] for i in pick], sp.pad),
            "labels": O.pad_sequences([pairs[i][1] for i in pick], O.IGNORE_INDEX)}
