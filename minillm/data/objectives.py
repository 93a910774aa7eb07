"""Pre-training objectives of the encoder families: pure functions from token ids to (inputs, labels).

Each function takes the ids, the special ids it needs, and a ``seed`` (an int or a NumPy ``Generator``),
and returns NumPy arrays; nothing here touches a model, so every rule is checked by property tests.

- ``mask_tokens``: BERT's masked language modelling (Devlin et al. 2019, §3.1).
- ``nsp_pairs``: BERT's next-sentence prediction pairs ``[CLS] A [SEP] B [SEP]`` with segment ids.
- ``token_masking``, ``token_deletion``, ``text_infilling``, ``sentence_permutation``, ``bart_noise``:
  BART's noising functions (Lewis et al. 2020, §2.2), composable.
- ``span_corruption`` / ``reassemble_spans``: T5's span corruption (Raffel et al. 2020, §3.1.4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy

IGNORE_INDEX = -100  # label of positions that carry no loss (F.cross_entropy's ignore_index)
IS_NEXT, NOT_NEXT = 0, 1  # next_sentence_label values, as in Hugging Face's BertForPreTraining


def _rng(seed) -> numpy.random.Generator:
    return seed if isinstance(seed, numpy.random.Generator) else numpy.random.default_rng(seed)


def _ids(ids, name: str) -> numpy.ndarray:
    a = numpy.asarray(ids)
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"{name}: token ids must be integers, got dtype {a.dtype}")
    return a.astype(numpy.int64)


# ---------------------------------------------------------------------------------------------- BERT: MLM
def mask_tokens(ids, *, mask_id: int, vocab_size: int, special_ids: Sequence[int], mask_prob: float = 0.15,
                seed=0) -> tuple[numpy.ndarray, numpy.ndarray]:
    """BERT's masked-LM corruption of ``ids`` (any shape; rows are sequences).

    In each row, ``round(mask_prob · n)`` of the n non-special positions (at least one when n > 0) are
    chosen; of those 80% become ``mask_id``, 10% a random non-special token, 10% stay unchanged.
    Returns ``(inputs, labels)``: labels hold the original id at chosen positions and -100 elsewhere.
    Special ids (``[CLS]``, ``[SEP]``, padding, ...) are never chosen and never drawn as random tokens.
    """
    ids = _ids(ids, "mask_tokens")
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"mask_tokens: mask_prob must be in (0, 1), got {mask_prob}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"mask_tokens: ids must be in [0, {vocab_size}), got range "
                         f"[{ids.min()}, {ids.max()}]")
    rng = _rng(seed)
    special = numpy.asarray(sorted(set(int(s) for s in special_ids)), dtype=numpy.int64)
    if mask_id not in set(special.tolist()):
        special = numpy.append(special, mask_id)
    normal = numpy.setdiff1d(numpy.arange(vocab_size), special)  # ids a random replacement may take
    if normal.size == 0:
        raise ValueError("mask_tokens: every id in the vocabulary is special; nothing to draw")
    rows = ids.reshape(-1, ids.shape[-1]) if ids.ndim else ids.reshape(1, 1)
    inputs, labels = rows.copy(), numpy.full_like(rows, IGNORE_INDEX)
    eligible = ~numpy.isin(rows, special)
    for r in range(rows.shape[0]):
        pos = numpy.flatnonzero(eligible[r])
        if pos.size == 0:
            continue
        k = max(1, int(round(mask_prob * pos.size)))
        chosen = rng.choice(pos, size=k, replace=False)
        labels[r, chosen] = rows[r, chosen]
        u = rng.random(k)
        to_mask, to_random = chosen[u < 0.8], chosen[(u >= 0.8) & (u < 0.9)]  # the rest: unchanged
        inputs[r, to_mask] = mask_id
        inputs[r, to_random] = rng.choice(normal, size=to_random.size)
    return inputs.reshape(ids.shape), labels.reshape(ids.shape)


# ---------------------------------------------------------------------------------------------- BERT: NSP
def _truncate_pair(a: list, b: list, max_tokens: int) -> None:
    """BERT's truncate_seq_pair: drop from the end of the longer one until both fit."""
    while len(a) + len(b) > max_tokens:
        (a if len(a) > len(b) else b).pop()


def nsp_pairs(documents: Sequence[Sequence[Sequence[int]]], n_pairs: int, *, cls_id: int, sep_id: int,
              pad_id: int, max_len: int, seed=0) -> dict[str, numpy.ndarray]:
    """Next-sentence-prediction examples from ``documents`` (each a list of sentences, each a list of ids).

    Half the pairs (a fair coin per pair) are IsNext: sentence A and the sentence after it in the same
    document; the others NotNext: A and a random sentence of another document. Each example is
    ``[CLS] A [SEP] B [SEP]`` padded to ``max_len`` (A and B truncated from the end if needed).

    Returns ``input_ids``, ``token_type_ids`` (0 for [CLS] A [SEP], 1 for B [SEP], 0 on padding),
    ``attention_mask`` (1 on real tokens) of shape (n_pairs, max_len), and ``next_sentence_label``
    (n_pairs,) with 0 = IsNext, 1 = NotNext.
    """
    if len(documents) < 2:
        raise ValueError(f"nsp_pairs: need at least 2 documents for NotNext pairs, got {len(documents)}")
    if max_len < 5:
        raise ValueError(f"nsp_pairs: max_len must be at least 5 ([CLS] a [SEP] b [SEP]), got {max_len}")
    docs = documents
    # sentence A may be any sentence that has a next one: number them doc by doc, find one by bisection
    # (no per-call list of all pairs: a corpus of 20k documents is sampled every training step)
    n_heads = numpy.cumsum([max(0, len(d) - 1) for d in docs])
    if n_heads[-1] == 0:
        raise ValueError("nsp_pairs: no document has two sentences")
    rng = _rng(seed)
    ids = numpy.full((n_pairs, max_len), pad_id, dtype=numpy.int64)
    types = numpy.zeros((n_pairs, max_len), dtype=numpy.int64)
    attn = numpy.zeros((n_pairs, max_len), dtype=numpy.int64)
    label = numpy.zeros(n_pairs, dtype=numpy.int64)
    for i in range(n_pairs):
        k = int(rng.integers(n_heads[-1]))
        d = int(numpy.searchsorted(n_heads, k, side="right"))
        s = k - (int(n_heads[d - 1]) if d else 0)
        a = list(docs[d][s])
        if rng.random() < 0.5:
            b, label[i] = list(docs[d][s + 1]), IS_NEXT
        else:
            other = int(rng.integers(len(docs) - 1))
            other += other >= d  # any document but d
            b, label[i] = list(docs[other][rng.integers(len(docs[other]))]), NOT_NEXT
        _truncate_pair(a, b, max_len - 3)
        seq = [cls_id, *a, sep_id, *b, sep_id]
        ids[i, :len(seq)] = seq
        types[i, len(a) + 2:len(seq)] = 1
        attn[i, :len(seq)] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": attn, "next_sentence_label": label}


# ---------------------------------------------------------------------------------------------- BART noising
def token_masking(ids, *, mask_id: int, mask_prob: float = 0.15, special_ids: Sequence[int] = (),
                  seed=0) -> numpy.ndarray:
    """Replace each non-special token by ``mask_id`` with probability ``mask_prob`` (BART §2.2)."""
    ids = _ids(ids, "token_masking")
    hit = (_rng(seed).random(ids.shape) < mask_prob) & ~numpy.isin(ids, list(special_ids))
    return numpy.where(hit, mask_id, ids)


def token_deletion(ids, *, delete_prob: float = 0.15, special_ids: Sequence[int] = (),
                   seed=0) -> numpy.ndarray:
    """Delete each non-special token with probability ``delete_prob``; the model must find where (§2.2)."""
    ids = _ids(ids, "token_deletion")
    hit = (_rng(seed).random(ids.shape) < delete_prob) & ~numpy.isin(ids, list(special_ids))
    return ids[~hit]


def infilling_spans(n: int, *, mask_ratio: float = 0.3, poisson_lambda: float = 3.0, seed=0,
                    maskable=None) -> list[tuple[int, int]]:
    """Spans ``(start, length)`` for text infilling on a sequence of ``n`` tokens, sorted, non-overlapping.

    Lengths are drawn from Poisson(λ) until about ``mask_ratio · n`` tokens are covered; a length-0 span
    is an insertion point (the model must learn that nothing is missing there). ``maskable`` (bool, (n,))
    limits spans to runs of maskable tokens (specials are never swallowed).
    """
    rng = _rng(seed)
    ok = numpy.ones(n, dtype=bool) if maskable is None else numpy.asarray(maskable, dtype=bool)
    budget = int(round(mask_ratio * int(ok.sum())))
    taken = numpy.zeros(n + 1, dtype=bool)  # taken[i]: token i is in a span or touches one
    spans: list[tuple[int, int]] = []
    covered, tries = 0, 0
    while covered < budget and tries < 20 * (n + 1):
        tries += 1
        length = int(min(rng.poisson(poisson_lambda), budget - covered))
        start = int(rng.integers(n + 1 - length)) if length else int(rng.integers(n + 1))
        if length == 0:
            # an insertion point before token `start`: keep it clear of other spans so spans stay separable
            if taken[start] or (start > 0 and taken[start - 1]):
                continue
            spans.append((start, 0))
            taken[start] = True
            continue
        window = slice(max(0, start - 1), start + length + 1)  # spans never touch: each keeps its own mask
        if not ok[start:start + length].all() or taken[window].any():
            continue
        spans.append((start, length))
        taken[start:start + length] = True
        covered += length
    return sorted(spans)


def text_infilling(ids, *, mask_id: int, mask_ratio: float = 0.3, poisson_lambda: float = 3.0,
                   special_ids: Sequence[int] = (), seed=0, return_spans: bool = False):
    """BART's text infilling: spans with Poisson(λ=3) lengths each become ONE ``mask_id`` (BART §2.2).

    About ``mask_ratio`` of the non-special tokens are removed; 0-length spans insert a mask. The kept
    tokens stay in order. With ``return_spans`` also returns the ``(start, length)`` spans, so replacing
    the k-th mask by ``ids[start:start+length]`` of the k-th span gives back ``ids``.
    """
    ids = _ids(ids, "text_infilling")
    if ids.ndim != 1:
        raise ValueError(f"text_infilling: expects one sequence (1-D ids), got shape {ids.shape}")
    spans = infilling_spans(len(ids), mask_ratio=mask_ratio, poisson_lambda=poisson_lambda, seed=seed,
                            maskable=~numpy.isin(ids, list(special_ids)))
    out, pos = [], 0
    for start, length in spans:
        out.extend(ids[pos:start].tolist())
        out.append(mask_id)
        pos = start + length
    out.extend(ids[pos:].tolist())
    out = numpy.asarray(out, dtype=numpy.int64)
    return (out, spans) if return_spans else out


def sentence_permutation(ids, *, sentence_end_ids: Sequence[int], seed=0) -> numpy.ndarray:
    """Split after each token in ``sentence_end_ids`` (e.g. '.') and shuffle the sentences (BART §2.2)."""
    ids = _ids(ids, "sentence_permutation")
    ends = numpy.flatnonzero(numpy.isin(ids, list(sentence_end_ids))) + 1
    sentences = [s for s in numpy.split(ids, ends) if s.size]
    order = _rng(seed).permutation(len(sentences))
    return numpy.concatenate([sentences[i] for i in order]) if sentences else ids.copy()


def bart_noise(ids, noise: Sequence[Callable[..., numpy.ndarray]],
               seed=0) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Apply noising functions in turn (e.g. permutation then infilling, as in BART's best model).

    Each function is called as ``fn(ids, seed=rng)`` (bind its other arguments with functools.partial).
    Returns ``(inputs, labels)`` = (the corrupted ids, the original ids): BART's decoder reconstructs the
    original.
    """
    original = _ids(ids, "bart_noise")
    rng = _rng(seed)
    x = original
    for fn in noise:
        x = fn(x, seed=rng)
    return x, original.copy()


# ---------------------------------------------------------------------------------------------- T5
def random_spans_noise_mask(n: int, *, noise_density: float = 0.15, mean_span_length: float = 3.0,
                            seed=0) -> numpy.ndarray:
    """Boolean (n,) mask of the tokens to corrupt, as in T5's ``random_spans_noise_mask``.

    ``round(n · noise_density)`` tokens are corrupted in ``round(noise / mean_span_length)`` spans (at least
    one); the noise and the kept tokens are each cut into that many random non-empty pieces and
    interleaved, kept first, so spans never touch and never start at position 0.
    """
    if n < 2:
        raise ValueError(f"span corruption needs at least 2 tokens, got {n}")
    rng = _rng(seed)
    num_noise = min(max(int(round(n * noise_density)), 1), n - 1)
    num_spans = max(int(round(num_noise / mean_span_length)), 1)
    num_spans = min(num_spans, num_noise, n - num_noise)

    def pieces(total: int) -> numpy.ndarray:  # `total` cut into num_spans positive lengths
        cuts = numpy.sort(rng.choice(numpy.arange(1, total), size=num_spans - 1, replace=False))
        return numpy.diff(numpy.concatenate([[0], cuts, [total]]))

    noise_len, keep_len = pieces(num_noise), pieces(n - num_noise)
    mask = numpy.zeros(n, dtype=bool)
    pos = 0
    for k, m in zip(keep_len, noise_len):
        pos += int(k)
        mask[pos:pos + int(m)] = True
        pos += int(m)
    return mask


def span_corruption(ids, *, sentinel_ids: Sequence[int], noise_density: float = 0.15,
                    mean_span_length: float = 3.0, seed=0) -> tuple[numpy.ndarray, numpy.ndarray]:
    """T5's span corruption: ``(inputs, targets)`` for one sequence of ids.

    The input keeps the uncorrupted tokens and one sentinel per corrupted span (``<extra_id_0>``, ...);
    the target lists each sentinel followed by its span and ends with the next sentinel. Example
    (Raffel et al. 2020, fig. 2): "Thank you <X> me to your party <Y> week."
    → "<X> for inviting <Y> last <Z>".
    """
    ids = _ids(ids, "span_corruption")
    if ids.ndim != 1:
        raise ValueError(f"span_corruption: expects one sequence (1-D ids), got shape {ids.shape}")
    noise = random_spans_noise_mask(len(ids), noise_density=noise_density,
                                    mean_span_length=mean_span_length, seed=seed)
    starts = numpy.flatnonzero(noise & ~numpy.concatenate([[False], noise[:-1]]))
    if len(starts) + 1 > len(sentinel_ids):
        raise ValueError(f"span_corruption: {len(starts)} spans need {len(starts) + 1} sentinels, "
                         f"only {len(sentinel_ids)} given (shorten the sequence)")
    inputs, targets, span = [], [], -1
    for i, (tok, is_noise) in enumerate(zip(ids.tolist(), noise)):
        if is_noise:
            if i == 0 or not noise[i - 1]:
                span += 1
                inputs.append(int(sentinel_ids[span]))
                targets.append(int(sentinel_ids[span]))
            targets.append(tok)
        else:
            inputs.append(tok)
    targets.append(int(sentinel_ids[span + 1]))
    return numpy.asarray(inputs, dtype=numpy.int64), numpy.asarray(targets, dtype=numpy.int64)


def reassemble_spans(inputs, targets, *, sentinel_ids: Sequence[int]) -> numpy.ndarray:
    """Invert ``span_corruption``: put each target span back in place of its sentinel in the input."""
    sent = {int(s): k for k, s in enumerate(sentinel_ids)}
    spans: dict[int, list[int]] = {}
    current = None
    for tok in _ids(targets, "reassemble_spans").tolist():
        if tok in sent:
            current = sent[tok]
            spans.setdefault(current, [])
        elif current is not None:
            spans[current].append(tok)
    out: list[int] = []
    for tok in _ids(inputs, "reassemble_spans").tolist():
        out.extend(spans.get(sent[tok], []) if tok in sent else [tok])
    return numpy.asarray(out, dtype=numpy.int64)


# ---------------------------------------------------------------------------------------------- batching
def pad_sequences(seqs: Sequence[Sequence[int]], pad_value: int, length: int | None = None) -> numpy.ndarray:
    """Stack variable-length id lists into a (len(seqs), length) array, right-padded with ``pad_value``."""
    length = max((len(s) for s in seqs), default=0) if length is None else length
    out = numpy.full((len(seqs), length), pad_value, dtype=numpy.int64)
    for i, s in enumerate(seqs):
        s = list(s)[:length]
        out[i, :len(s)] = s
    return out
