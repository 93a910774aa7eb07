"""Lessons 05 and 06: BERT's 80/10/10 masking and NSP pairs; BART's text infilling, T5's span
corruption, and T5's relative-position bucket.

Masking and pair building are random; here the learner gets the random numbers as inputs (uniform draws,
coin flips, spans), so the output is determined and compared exactly with a reference that follows
``minillm.data.objectives``' rules.
"""

from __future__ import annotations

import numpy

from minillm.data import objectives as O
from minillm.exercises.checking import Case, Exercise, seeded
from minillm.models.t5 import relative_position_bucket

IGNORE = -100


# ------------------------------------------------------------------------------------- 05: BERT masking
def _masking(ids, u_select, u_kind, u_token, *, mask_id, vocab_size, special_ids, mask_prob=0.15,
             all_positions=False, random_kind=True, random_from_vocab=False, labels_rule="chosen"):
    """The reference (all flags at their defaults) and, with a flag changed, a usual mistake."""
    ids = numpy.asarray(ids, dtype=numpy.int64)
    special = set(int(s) for s in special_ids) | {int(mask_id)}
    normal = numpy.array([t for t in range(vocab_size) if t not in special], dtype=numpy.int64)
    inputs, labels = ids.copy(), numpy.full_like(ids, IGNORE)
    for r in range(ids.shape[0]):
        eligible = numpy.ones(ids.shape[1], bool) if all_positions else ~numpy.isin(ids[r], list(special))
        pos = numpy.flatnonzero(eligible)
        if pos.size == 0:
            continue
        k = max(1, int(round(mask_prob * pos.size)))
        chosen = pos[numpy.argsort(u_select[r, pos], kind="stable")[:k]]
        for p in chosen:
            u = u_kind[r, p]
            if u < 0.8:
                inputs[r, p] = mask_id
            elif u < 0.9 and random_kind:
                inputs[r, p] = (int(u_token[r, p] * vocab_size) if random_from_vocab
                                else normal[int(u_token[r, p] * normal.size)])
            if labels_rule == "chosen" or (labels_rule == "masked" and inputs[r, p] == mask_id):
                labels[r, p] = ids[r, p]
    if labels_rule == "everywhere":
        labels = ids.copy()
    return inputs, labels


def mask_tokens(ids, u_select, u_kind, u_token, *, mask_id, vocab_size, special_ids, mask_prob=0.15):
    return _masking(ids, u_select, u_kind, u_token, mask_id=mask_id, vocab_size=vocab_size,
                    special_ids=special_ids, mask_prob=mask_prob)


def _wrong_masking(**flags):
    def fn(ids, u_select, u_kind, u_token, *, mask_id, vocab_size, special_ids, mask_prob=0.15):
        return _masking(ids, u_select, u_kind, u_token, mask_id=mask_id, vocab_size=vocab_size,
                        special_ids=special_ids, mask_prob=mask_prob, **flags)
    return fn


def _mask_cases():
    """Rows ``[CLS] words [SEP] pad...`` of a 30-token vocabulary whose ids 0-4 are special."""
    rng = seeded(501)
    pad, cls, sep, mask, eos = 0, 1, 2, 3, 4
    kw = dict(mask_id=mask, vocab_size=30, special_ids=[pad, cls, sep, eos])  # [MASK] is special anyway

    def batch(lengths, width):
        ids = numpy.full((len(lengths), width), pad, dtype=numpy.int64)
        for r, n in enumerate(lengths):
            ids[r, :n + 2] = [cls, *rng.integers(5, 30, n), sep]
        return ids

    def case(ids, label="", **extra):
        u = [rng.random(ids.shape) for _ in range(3)]
        return Case((ids, *u), {**kw, **extra}, label)

    yield case(batch([20, 13, 7], 22), "3 rows, padded")
    yield case(batch([40, 40], 42), "2 full rows", mask_prob=0.3)
    yield case(batch([9, 30, 1, 17], 32), "ragged rows, one with a single word", mask_prob=0.5)
    yield case(numpy.array([[cls, sep, pad, pad], [cls, 7, sep, pad]]), "a row of specials only")
    yield case(numpy.array([[17]]), "one token, not special", mask_prob=0.15)
    yield case(batch([25] * 6, 27), "6 rows", mask_prob=0.4)


MASK = Exercise(
    name="05.mask_tokens", lesson=5,
    task="Write BERT's masking with the random numbers given: in each row, of the n positions whose id is "
         "not special ([MASK] counts as special), choose the k = max(1, round(mask_prob·n)) with the "
         "smallest u_select. A chosen position becomes mask_id if u_kind < 0.8, a random non-special token "
         "if 0.8 ≤ u_kind < 0.9 (normal[int(u_token · len(normal))], where normal lists the non-special ids "
         "of range(vocab_size) in order), and stays unchanged otherwise. labels hold the original id at "
         "every chosen position and -100 elsewhere. Return (inputs, labels).",
    signature="def mask_tokens(ids, u_select, u_kind, u_token, *, mask_id, vocab_size, special_ids, "
              "mask_prob=0.15) -> tuple[np.ndarray, np.ndarray]",
    reference=mask_tokens,
    cases=_mask_cases,
    mistakes={
        "specials chosen": (_wrong_masking(all_positions=True),
                            "special tokens ([CLS], [SEP], padding) were chosen: only the non-special "
                            "positions take part, and k counts those."),
        "80/20": (_wrong_masking(random_kind=False),
                  "no chosen position became a random token: between 0.8 and 0.9 the token is replaced by "
                  "one drawn from the non-special ids."),
        "random from the whole vocabulary": (
            _wrong_masking(random_from_vocab=True),
            "the random replacement was drawn from all of range(vocab_size): it may then be [MASK] or "
            "[CLS]; draw from the non-special ids."),
        "labels everywhere": (_wrong_masking(labels_rule="everywhere"),
                              "positions that were not chosen carry a label: they must be -100, so the loss "
                              "only counts the chosen ones."),
        "labels only on [MASK]": (_wrong_masking(labels_rule="masked"),
                                  "the chosen positions that became a random token or stayed unchanged need "
                                  "their original id as label too: the model must predict them as well."),
    },
)


# ------------------------------------------------------------------------------------- 05: NSP pairs
def _nsp(a, next_b, random_b, coin, *, cls_id, sep_id, pad_id, max_len, swap=False, sep_in_b=False,
         pad_in_b=False, cut_b_only=False):
    is_next = coin < 0.5
    a, b = list(a), list(next_b if is_next else random_b)
    while len(a) + len(b) > max_len - 3:
        if cut_b_only:
            (b if b else a).pop()
        else:
            (a if len(a) > len(b) else b).pop()
    seq = [cls_id, *a, sep_id, *b, sep_id]
    ids = numpy.full(max_len, pad_id, dtype=numpy.int64)
    ids[:len(seq)] = seq
    types = numpy.zeros(max_len, dtype=numpy.int64)
    types[len(a) + (1 if sep_in_b else 2):(max_len if pad_in_b else len(seq))] = 1
    attn = (numpy.arange(max_len) < len(seq)).astype(numpy.int64)
    label = O.IS_NEXT if is_next else O.NOT_NEXT
    return ids, types, attn, int(1 - label if swap else label)


def nsp_example(a, next_b, random_b, coin, *, cls_id, sep_id, pad_id, max_len):
    return _nsp(a, next_b, random_b, coin, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id, max_len=max_len)


def _wrong_nsp(**flags):
    def fn(a, next_b, random_b, coin, *, cls_id, sep_id, pad_id, max_len):
        return _nsp(a, next_b, random_b, coin, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id, max_len=max_len,
                    **flags)
    return fn


def _nsp_cases():
    rng = seeded(502)
    kw = dict(cls_id=1, sep_id=2, pad_id=0)

    def sent(n):
        return rng.integers(5, 50, n).tolist()

    for (na, nb, nr), coin, max_len in [((4, 5, 3), 0.2, 16), ((4, 5, 3), 0.8, 16), ((6, 2, 7), 0.49, 20),
                                        ((12, 3, 4), 0.1, 12), ((3, 4, 14), 0.9, 12), ((5, 5, 5), 0.3, 9),
                                        ((1, 1, 1), 0.5, 5), ((7, 9, 2), 0.05, 19)]:
        yield Case((sent(na), sent(nb), sent(nr), coin), {**kw, "max_len": max_len},
                   f"|A|={na}, coin {coin}, max_len {max_len}")


NSP = Exercise(
    name="05.nsp_example", lesson=5,
    task="Build one next-sentence-prediction example from sentence a, the sentence that follows it "
         "(next_b), a sentence from another story (random_b) and a coin in [0, 1): coin < 0.5 means IsNext "
         "(B = next_b, label 0), otherwise NotNext (B = random_b, label 1). While len(a) + len(b) > "
         "max_len - 3, drop the last token of the longer one (of b when they are equal). The example is "
         "[CLS] a [SEP] b [SEP] padded with pad_id to max_len; token_type_ids are 0 for [CLS] a [SEP], 1 "
         "for b [SEP] and 0 on padding; attention_mask is 1 on real tokens. Return "
         "(input_ids, token_type_ids, attention_mask, label).",
    signature="def nsp_example(a, next_b, random_b, coin, *, cls_id, sep_id, pad_id, max_len) "
              "-> tuple[np.ndarray, np.ndarray, np.ndarray, int]",
    reference=nsp_example,
    cases=_nsp_cases,
    mistakes={
        "labels swapped": (_wrong_nsp(swap=True),
                           "the labels are the wrong way round: IsNext is 0, NotNext 1."),
        "first [SEP] in segment B": (_wrong_nsp(sep_in_b=True),
                                     "the [SEP] after a belongs to segment 0; segment 1 starts at b's first "
                                     "token."),
        "padding in segment B": (_wrong_nsp(pad_in_b=True),
                                 "the padding after the final [SEP] got segment 1: it stays 0."),
        "only B truncated": (_wrong_nsp(cut_b_only=True),
                             "when the pair is too long, shorten whichever sentence is longer, one token at "
                             "a time, not always b."),
    },
)


# ------------------------------------------------------------------------------------- 06: BART infilling
def text_infilling(ids, spans, mask_id):
    out, pos = [], 0
    for start, length in spans:
        out.extend(numpy.asarray(ids[pos:start]).tolist())
        out.append(mask_id)
        pos = start + length
    out.extend(numpy.asarray(ids[pos:]).tolist())
    return numpy.asarray(out, dtype=numpy.int64)


def _infill_per_token(ids, spans, mask_id):
    out = numpy.asarray(ids, dtype=numpy.int64).copy()
    for start, length in spans:
        out[start:start + length] = mask_id
    return out


def _infill_skip_empty(ids, spans, mask_id):
    return text_infilling(ids, [(s, n) for s, n in spans if n > 0], mask_id)


def _infill_delete(ids, spans, mask_id):
    out, pos = [], 0
    for start, length in spans:
        out.extend(numpy.asarray(ids[pos:start]).tolist())
        pos = start + length
    out.extend(numpy.asarray(ids[pos:]).tolist())
    return numpy.asarray(out, dtype=numpy.int64)


def _infill_cases():
    rng = seeded(601)
    mask = 3
    for seed, n in [(0, 40), (1, 25), (2, 60), (3, 17)]:
        yield Case((rng.integers(5, 100, n), O.infilling_spans(n, seed=seed), mask), label=f"{n} tokens")
    ids = rng.integers(5, 100, 20)
    yield Case((ids, [(0, 3), (7, 0), (10, 4), (20, 0)], mask), label="spans at both ends, two empty")
    yield Case((ids, [(5, 1), (9, 1)], mask), label="two 1-token spans")
    yield Case((ids, [], mask), label="no spans")
    yield Case((rng.integers(5, 100, 1), [(0, 1)], mask), label="one token, all of it a span")
    yield Case((rng.integers(5, 100, 6), [(2, 0)], mask), label="a single empty span")


INFILL = Exercise(
    name="06.text_infilling", lesson=6,
    task="Write BART's text infilling given the spans: spans is a sorted list of non-overlapping (start, "
         "length) pairs over ids. Each span's tokens ids[start:start+length] are replaced by ONE mask_id, "
         "however long the span; a span of length 0 inserts a mask_id before ids[start] (start may be "
         "len(ids)). Every other token is kept, in order. Return the new 1-D id array.",
    signature="def text_infilling(ids: np.ndarray, spans: list[tuple[int, int]], mask_id: int) -> np.ndarray",
    reference=text_infilling,
    cases=_infill_cases,
    mistakes={
        "a mask per token": (_infill_per_token,
                             "each token of a span became a mask: the whole span is one mask, so the model "
                             "must also guess how many tokens are missing."),
        "empty spans skipped": (_infill_skip_empty,
                                "a span of length 0 still inserts a mask (where nothing is missing)."),
        "spans deleted": (_infill_delete, "the spans were removed without leaving a mask in their place."),
    },
)


# ------------------------------------------------------------------------------------- 06: T5 spans
def _corrupt(ids, noise, sentinel_ids, closing=True, per_token=False, one_sentinel=False):
    ids, noise = numpy.asarray(ids).tolist(), numpy.asarray(noise, dtype=bool)
    inputs, targets, span = [], [], -1
    for i, (tok, hit) in enumerate(zip(ids, noise)):
        if hit:
            if per_token or i == 0 or not noise[i - 1]:
                span += 1
                s = int(sentinel_ids[0 if one_sentinel else span])
                inputs.append(s)
                targets.append(s)
            targets.append(tok)
        else:
            inputs.append(tok)
    if closing:
        targets.append(int(sentinel_ids[0 if one_sentinel else span + 1]))
    return numpy.asarray(inputs, dtype=numpy.int64), numpy.asarray(targets, dtype=numpy.int64)


def span_corruption(ids, noise_mask, sentinel_ids):
    return _corrupt(ids, noise_mask, sentinel_ids)


def _wrong_corrupt(**flags):
    return lambda ids, noise_mask, sentinel_ids: _corrupt(ids, noise_mask, sentinel_ids, **flags)


def _span_cases():
    rng = seeded(602)
    sentinels = list(range(199, 179, -1))  # <extra_id_0> = 199, <extra_id_1> = 198, ... as in T5
    for seed, n in [(0, 40), (1, 64), (2, 23)]:
        noise = O.random_spans_noise_mask(n, seed=seed)
        yield Case((rng.integers(5, 150, n), noise, sentinels), label=f"{n} tokens")
    noise = O.random_spans_noise_mask(30, noise_density=0.5, seed=3)
    yield Case((rng.integers(5, 150, 30), noise, sentinels), label="half the tokens corrupted")
    noise = numpy.zeros(12, bool)
    noise[[0, 1, 5, 11]] = True
    yield Case((rng.integers(5, 150, 12), noise, sentinels), label="spans at the start and the end")
    noise = numpy.zeros(8, bool)
    noise[4] = True
    yield Case((rng.integers(5, 150, 8), noise, sentinels), label="one 1-token span")
    yield Case((rng.integers(5, 150, 2), numpy.array([False, True]), sentinels), label="2 tokens")


SPANS = Exercise(
    name="06.span_corruption", lesson=6,
    task="Write T5's span corruption given the noise mask (bool, one per token): a span is a maximal run of "
         "True. The input keeps the uncorrupted tokens and puts sentinel_ids[k] in place of the k-th span "
         "(counting from 0); the target lists, for each span in order, its sentinel followed by the span's "
         "tokens, and ends with the next unused sentinel. Return (inputs, targets) as 1-D id arrays.",
    signature="def span_corruption(ids: np.ndarray, noise_mask: np.ndarray, sentinel_ids: list[int]) "
              "-> tuple[np.ndarray, np.ndarray]",
    reference=span_corruption,
    cases=_span_cases,
    mistakes={
        "no closing sentinel": (_wrong_corrupt(closing=False),
                                "the target must end with one more sentinel after the last span: it tells "
                                "the decoder that nothing else is missing."),
        "a sentinel per token": (_wrong_corrupt(per_token=True),
                                 "a run of corrupted tokens is ONE span with one sentinel, however long."),
        "the same sentinel for every span": (_wrong_corrupt(one_sentinel=True),
                                             "every hole got the same sentinel: the k-th span uses "
                                             "sentinel_ids[k], so the target says which span is which."),
    },
)


# ------------------------------------------------------------------------------------- 06: T5 buckets
def _bucket_exact_only(relative_position, bidirectional, num_buckets=32, max_distance=128):
    n = -numpy.asarray(relative_position, dtype=numpy.int64)
    ret = numpy.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0) * num_buckets
        n = numpy.abs(n)
    else:
        n = numpy.maximum(n, 0)
    return ret + numpy.minimum(n, num_buckets - 1)


def _bucket_flipped(relative_position, bidirectional, num_buckets=32, max_distance=128):
    flipped = -numpy.asarray(relative_position)
    return relative_position_bucket(flipped, bidirectional, num_buckets, max_distance)


def _bucket_unclamped(relative_position, bidirectional, num_buckets=32, max_distance=128):
    n = -numpy.asarray(relative_position, dtype=numpy.int64)
    ret = numpy.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0) * num_buckets
        n = numpy.abs(n)
    else:
        n = numpy.maximum(n, 0)
    max_exact = num_buckets // 2
    large = max_exact + (numpy.log(numpy.maximum(n, 1) / max_exact) / numpy.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).astype(numpy.int64)
    return ret + numpy.where(n < max_exact, n, large)


def _bucket_causal_abs(relative_position, bidirectional, num_buckets=32, max_distance=128):
    if bidirectional:
        return relative_position_bucket(relative_position, True, num_buckets, max_distance)
    return relative_position_bucket(-numpy.abs(numpy.asarray(relative_position)), False, num_buckets,
                                    max_distance)


def _bucket_cases():
    wide = numpy.arange(-300, 301)
    q, k = numpy.arange(3, 8)[:, None], numpy.arange(11)[None, :]
    for bidirectional in (True, False):
        yield Case((wide, bidirectional), label="distances -300 .. 300")
        yield Case((k - q, bidirectional), {"num_buckets": 16, "max_distance": 20},
                   label="a (5, 11) key - query matrix, 16 buckets, max distance 20")
        yield Case((seeded(603).integers(-1000, 1000, (4, 7)), bidirectional),
                   {"num_buckets": 8, "max_distance": 16}, label="8 buckets, max distance 16")
    yield Case((numpy.array(0), True), label="distance 0")


BUCKET = Exercise(
    name="06.relative_position_bucket", lesson=6,
    task="Write T5's relative-position bucket for each relative_position = key_pos - query_pos. Let n = "
         "query - key. Bidirectional: half the buckets are for keys after the query (n < 0; add "
         "num_buckets/2 to their bucket) and n becomes |n|, with num_buckets halved; causal: n = max(n, 0). "
         "With max_exact = num_buckets // 2 (of the halved count when bidirectional), n < max_exact is its "
         "own bucket; larger n gets max_exact + int(log(n / max_exact) / log(max_distance / max_exact) · "
         "(num_buckets - max_exact)), at most num_buckets - 1.",
    signature="def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool, "
              "num_buckets: int = 32, max_distance: int = 128) -> np.ndarray",
    reference=relative_position_bucket,
    cases=_bucket_cases,
    mistakes={
        "no log-spaced buckets": (_bucket_exact_only,
                                  "every distance up to the last bucket got its own bucket: beyond max_exact "
                                  "the buckets grow logarithmically up to max_distance."),
        "direction flipped": (_bucket_flipped,
                              "left and right are swapped: n is query - key, so n > 0 means the key comes "
                              "earlier."),
        "not clamped": (_bucket_unclamped,
                        "distances beyond max_distance ran past the last bucket: clamp the log bucket to "
                        "num_buckets - 1."),
        "causal sees the future": (_bucket_causal_abs,
                                   "in the causal case keys after the query all map to bucket 0 (n = max(n, "
                                   "0)), not to the bucket of their distance."),
    },
)

EXERCISES = [MASK, NSP, INFILL, SPANS, BUCKET]
