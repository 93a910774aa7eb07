"""Property tests of the pre-training objectives (MLM, NSP, BART noising, T5 span corruption)."""

from functools import partial

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minillm.data import objectives as O

V, PAD, CLS, SEP, MASK = 60, 0, 1, 2, 3
SPECIAL = (PAD, CLS, SEP, MASK)
SENTINELS = list(range(40, 60))
DOT = 4  # plays '.' for sentence permutation

seeds = st.integers(0, 2**31 - 1)


@st.composite
def padded_batches(draw):
    """(B, T) ids of normal tokens (5..39) framed by [CLS] ... [SEP] and right-padded."""
    B, T = draw(st.integers(1, 6)), draw(st.integers(4, 40))
    rng = numpy.random.default_rng(draw(seeds))
    ids = numpy.full((B, T), PAD)
    for b in range(B):
        n = int(rng.integers(2, T + 1))
        ids[b, :n] = rng.integers(5, 40, size=n)
        ids[b, 0], ids[b, n - 1] = CLS, SEP
    return ids


# ------------------------------------------------------------------------------------------------ MLM
@given(padded_batches(), seeds)
def test_mlm_labels_specials_and_unmasked_positions(ids, seed):
    inputs, labels = O.mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids=SPECIAL, seed=seed)
    chosen = labels != O.IGNORE_INDEX
    assert inputs.shape == labels.shape == ids.shape
    assert not numpy.isin(ids[chosen], SPECIAL).any(), "a special token was chosen"
    assert (labels[chosen] == ids[chosen]).all()
    assert (inputs[~chosen] == ids[~chosen]).all(), "an unchosen position changed"
    for b in range(ids.shape[0]):  # the exact per-row count: round(15% of the non-special positions)
        n = int((~numpy.isin(ids[b], SPECIAL)).sum())
        assert chosen[b].sum() == (max(1, round(0.15 * n)) if n else 0)
    rand = chosen & (inputs != MASK) & (inputs != ids)
    assert not numpy.isin(inputs[rand], SPECIAL).any(), "a random replacement drew a special token"


def test_mlm_rates_80_10_10_on_a_large_batch():
    rng = numpy.random.default_rng(0)
    ids = rng.integers(5, V, size=(400, 128))
    ids[:, 0], ids[:, -1] = CLS, SEP
    inputs, labels = O.mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids=SPECIAL, seed=1)
    chosen = labels != O.IGNORE_INDEX
    assert abs(chosen.sum() / (ids.size - 800) - 0.15) < 0.005
    masked = (inputs[chosen] == MASK).mean()
    kept = (inputs[chosen] == ids[chosen]).mean()  # includes random draws that hit the same id (1/55)
    randomised = 1 - masked - kept
    assert abs(masked - 0.8) < 0.015 and abs(randomised - 0.1 * 54 / 55) < 0.015
    assert abs(kept - (0.1 + 0.1 / 55)) < 0.015


def test_mlm_is_deterministic_per_seed_and_checks_inputs():
    ids = numpy.arange(5, 25).reshape(2, 10)
    a = O.mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids=SPECIAL, seed=3)
    b = O.mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids=SPECIAL, seed=3)
    assert all((x == y).all() for x, y in zip(a, b))
    with pytest.raises(ValueError, match="range"):
        O.mask_tokens(ids + V, mask_id=MASK, vocab_size=V, special_ids=SPECIAL)
    with pytest.raises(TypeError, match="integers"):
        O.mask_tokens(ids * 0.5, mask_id=MASK, vocab_size=V, special_ids=SPECIAL)


# ------------------------------------------------------------------------------------------------ NSP
@st.composite
def documents(draw):
    rng = numpy.random.default_rng(draw(seeds))
    n_docs = draw(st.integers(2, 5))
    return [[list(rng.integers(5, 40, size=int(rng.integers(1, 8))) + 100 * d) for _ in range(
        int(rng.integers(2, 5)))] for d in range(n_docs)]


@given(documents(), seeds, st.integers(6, 24))
def test_nsp_pairs_layout_and_labels(docs, seed, max_len):
    out = O.nsp_pairs(docs, 40, cls_id=CLS, sep_id=SEP, pad_id=PAD, max_len=max_len, seed=seed)
    ids, types, attn, lab = (out[k] for k in ("input_ids", "token_type_ids", "attention_mask",
                                                "next_sentence_label"))
    doc_of = lambda tok: int(tok) // 100  # noqa: E731  the document a token came from
    for i in range(len(lab)):
        n = int(attn[i].sum())
        row = ids[i, :n]
        assert row[0] == CLS and row[-1] == SEP and (ids[i, n:] == PAD).all()
        seps = numpy.flatnonzero(row == SEP)
        assert len(seps) == 2
        a, b = row[1:seps[0]], row[seps[0] + 1:-1]
        assert (types[i, :seps[0] + 1] == 0).all() and (types[i, seps[0] + 1:n] == 1).all()
        assert (types[i, n:] == 0).all()
        if len(a) and len(b):
            same_doc = doc_of(a[0]) == doc_of(b[0])
            assert same_doc == (lab[i] == O.IS_NEXT)
        if lab[i] == O.IS_NEXT and len(a) and len(b):  # B is a prefix of the sentence after A
            d = doc_of(a[0])
            nxt = [s for s, t in zip(docs[d], docs[d][1:]) if list(a) == s[:len(a)] and list(b) == t[:len(b)]]
            assert nxt, "IsNext pair whose B is not the sentence after A"


def test_nsp_is_about_half_is_next():
    docs = [[[5 + d, 6, 7], [8, 9 + d], [10, 11, 12 + d]] for d in range(10)]
    out = O.nsp_pairs(docs, 2000, cls_id=CLS, sep_id=SEP, pad_id=PAD, max_len=16, seed=0)
    lab = out["next_sentence_label"]
    assert abs(lab.mean() - 0.5) < 0.04
    with pytest.raises(ValueError, match="2 documents"):
        O.nsp_pairs(docs[:1], 4, cls_id=CLS, sep_id=SEP, pad_id=PAD, max_len=16)


# ------------------------------------------------------------------------------------------------ BART
sequences = st.lists(st.integers(5, 39), min_size=1, max_size=80).map(numpy.array)


@given(sequences, seeds)
def test_text_infilling_reconstructs_and_keeps_order(ids, seed):
    out, spans = O.text_infilling(ids, mask_id=MASK, seed=seed, return_spans=True)
    assert (out == MASK).sum() == len(spans)
    # kept tokens in order; each mask replaced by its span gives back the original
    rebuilt, k = [], 0
    for tok in out.tolist():
        if tok == MASK:
            s, n = spans[k]
            rebuilt.extend(ids[s:s + n].tolist())
            k += 1
        else:
            rebuilt.append(tok)
    assert rebuilt == ids.tolist()
    removed = sum(n for _, n in spans)
    assert removed <= round(0.3 * len(ids))
    assert out[out != MASK].tolist() == [t for i, t in enumerate(ids.tolist())
                                         if not any(s <= i < s + n for s, n in spans)]


def test_text_infilling_rate_lengths_and_insertions():
    rng = numpy.random.default_rng(0)
    removed, total, lengths = 0, 0, []
    for seed in range(300):
        ids = rng.integers(5, 40, size=100)
        out, spans = O.text_infilling(ids, mask_id=MASK, seed=seed, return_spans=True)
        removed += sum(n for _, n in spans)
        total += len(ids)
        lengths += [n for _, n in spans]
    assert abs(removed / total - 0.3) < 0.01
    assert 0 in lengths, "no 0-length span (insertion) in 300 sequences"
    assert 2.3 < numpy.mean([n for n in lengths if n]) < 3.7  # Poisson(3), truncated by the budget


@given(sequences, seeds)
def test_text_infilling_never_swallows_specials(ids, seed):
    ids = ids.copy()
    ids[:: 5] = SEP
    out = O.text_infilling(ids, mask_id=MASK, special_ids=[SEP], seed=seed)
    assert (out == SEP).sum() == (ids == SEP).sum()


@given(sequences, seeds)
def test_sentence_permutation_is_a_permutation_of_sentences(ids, seed):
    ids = ids.copy()
    ids[::4] = DOT
    ids[-1] = DOT  # every sentence ends with '.', so the concatenation splits back into the same sentences
    out = O.sentence_permutation(ids, sentence_end_ids=[DOT], seed=seed)
    split = lambda a: sorted(tuple(s) for s in numpy.split(a, numpy.flatnonzero(a == DOT) + 1) if s.size)  # noqa
    assert split(out) == split(ids)


@given(sequences, seeds)
def test_token_masking_and_deletion(ids, seed):
    m = O.token_masking(ids, mask_id=MASK, mask_prob=0.5, seed=seed)
    assert m.shape == ids.shape and ((m == ids) | (m == MASK)).all()
    d = O.token_deletion(ids, delete_prob=0.5, seed=seed)
    it = iter(ids.tolist())
    assert all(t in it for t in d.tolist()), "deletion must keep a subsequence"


def test_bart_noise_composes():
    ids = numpy.array([5, 6, 7, DOT, 8, 9, DOT, 10, 11, 12, 13, DOT])
    noise = [partial(O.sentence_permutation, sentence_end_ids=[DOT]),
             partial(O.text_infilling, mask_id=MASK, mask_ratio=0.3)]
    x, y = O.bart_noise(ids, noise, seed=0)
    assert (y == ids).all() and (x == MASK).any()
    x2, _ = O.bart_noise(ids, noise, seed=0)
    assert (x == x2).all()


# ------------------------------------------------------------------------------------------------ T5
@given(st.lists(st.integers(5, 39), min_size=2, max_size=120).map(numpy.array), seeds)
def test_span_corruption_reassembles_the_original(ids, seed):
    inputs, targets = O.span_corruption(ids, sentinel_ids=SENTINELS, seed=seed)
    assert (O.reassemble_spans(inputs, targets, sentinel_ids=SENTINELS) == ids).all()
    n_spans = numpy.isin(inputs, SENTINELS).sum()
    assert n_spans >= 1
    sent_in_target = targets[numpy.isin(targets, SENTINELS)].tolist()
    assert sent_in_target == SENTINELS[:n_spans + 1], "target: each sentinel in order, then a final one"
    assert targets[-1] == SENTINELS[n_spans]
    assert inputs[numpy.isin(inputs, SENTINELS)].tolist() == SENTINELS[:n_spans]
    noise = len(targets) - n_spans - 1
    assert noise == min(max(round(0.15 * len(ids)), 1), len(ids) - 1)


def test_span_corruption_rate_and_mean_span_length():
    rng = numpy.random.default_rng(0)
    noise, spans, total = 0, 0, 0
    for seed in range(200):
        ids = rng.integers(5, 40, size=100)
        inputs, targets = O.span_corruption(ids, sentinel_ids=SENTINELS, seed=seed)
        k = numpy.isin(inputs, SENTINELS).sum()
        spans += k
        noise += len(targets) - k - 1
        total += len(ids)
    assert abs(noise / total - 0.15) < 0.005 and abs(noise / spans - 3.0) < 0.1
    with pytest.raises(ValueError, match="sentinels"):
        O.span_corruption(rng.integers(5, 40, size=100), sentinel_ids=SENTINELS[:2])


def test_pad_sequences():
    out = O.pad_sequences([[1, 2, 3], [4]], pad_value=0)
    assert out.tolist() == [[1, 2, 3], [4, 0, 0]]
