"""BERT, BART and T5: gradient checks, overfitting one batch, padding invariance, decoder causality,
T5's relative position buckets, checkpoints and errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minillm
from minillm import optim
from minillm.checkpoint import CheckpointError
from minillm.models import BART, BERT, T5, BARTConfig, BERTConfig, BERTForSequenceClassification, T5Config
from minillm.models.t5 import RelativePositionBias, relative_position_bucket

V, PAD, EOS = 13, 0, 1


def tiny(kind: str, **kw):
    layers = {k: kw.pop(k) for k in ("n_encoder_layers", "n_decoder_layers") if k in kw}
    common = dict(vocab_size=V, context_length=8, d_model=8, n_heads=2, d_ff=12)
    common.update(kw)
    if kind == "bert":
        return BERT(BERTConfig(n_layers=1, pad_id=PAD, **common))
    seq = dict(n_encoder_layers=1, n_decoder_layers=1, pad_id=PAD, eos_id=EOS, decoder_start_id=PAD, **common)
    seq.update(layers)
    if kind == "bart":
        return BART(BARTConfig(**seq))
    return T5(T5Config(num_buckets=8, max_distance=16, **seq))


def float64(model):
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    return model


def loss_of(kind, model, ids, lab):
    if kind == "bert":
        mlm_lab = np.where(np.arange(ids.shape[1]) % 2 == 1, ids, -100)
        return model(ids, labels=mlm_lab, next_sentence_label=np.arange(ids.shape[0]) % 2)[2]
    return model(ids, labels=lab)[1]


# ------------------------------------------------------------------------------------------ gradient checks
@pytest.mark.parametrize("kind", ["bert", "bart", "t5"])
def test_gradcheck_every_parameter(kind):
    """All parameters at once, including the relative position bias (T5) and cross-attention (BART, T5)."""
    model = float64(tiny(kind, d_model=4, d_ff=6, context_length=5))
    ids = np.array([[2, 3, 4, 5, PAD], [6, 7, 8, PAD, PAD]])  # padding in the encoder input
    lab = np.array([[9, 10, EOS], [11, EOS, -100]])
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    if kind == "t5":
        assert any("rel_bias" in n for n in names)
    if kind != "bert":
        assert any("cross_attn" in n for n in names)
    minillm.gradcheck(lambda *ps: loss_of(kind, model, ids, lab), *params, name=f"{kind} loss")


@pytest.mark.parametrize("pooling", ["cls", "mean", "mask"])
def test_gradcheck_classifier(pooling):
    MASK = 12
    model = BERTForSequenceClassification(BERTConfig(vocab_size=V, context_length=5, d_model=4, n_heads=2,
                                                     d_ff=6, n_layers=1, pad_id=PAD),
                                          num_labels=3, pooling=pooling, mask_id=MASK)
    float64(model)
    ids = np.array([[2, 3, MASK, PAD], [5, MASK, 7, 8]])
    minillm.gradcheck(lambda *ps: model(ids, labels=np.array([2, 0]))[1], *model.parameters(),
                      name=f"classifier ({pooling})")


def test_gradcheck_verbalizer_classifier():
    """PET head: each label's logit is the logsumexp of its words' MLM logits at the [MASK]."""
    MASK = 12
    model = BERTForSequenceClassification(BERTConfig(vocab_size=V, context_length=5, d_model=4, n_heads=2,
                                                     d_ff=6, n_layers=1, pad_id=PAD),
                                          num_labels=2, pooling="mask", mask_id=MASK,
                                          verbalizer=[[3, 4], [7]])
    float64(model)
    assert not any(n.startswith("classifier") for n, _ in model.named_parameters())  # no new weights
    ids = np.array([[2, 3, MASK, PAD], [5, MASK, 7, 8]])
    minillm.gradcheck(lambda *ps: model(ids, labels=np.array([1, 0]))[1], *model.parameters(),
                      name="classifier (verbalizer)")


@settings(deadline=None, max_examples=10)
@given(st.integers(0, 2**31 - 1))
def test_verbalizer_logits_are_the_mlm_logits_of_its_words(seed):
    MASK = 12
    minillm.manual_seed(seed)
    cfg = BERTConfig(vocab_size=V, context_length=8, d_model=8, n_heads=2, n_layers=1, pad_id=PAD)
    verb = [[3, 4], [7], [5, 6, 9]]
    model = BERTForSequenceClassification(cfg, 3, "mask", MASK, verb).eval()
    ids = np.random.default_rng(seed).integers(2, V, size=(3, 6))
    ids[ids == MASK] = 2
    ids[np.arange(3), np.array([1, 5, 3])] = MASK
    logits = model(ids)[0].numpy()
    vocab = model.bert.mlm_logits(model.bert.features(ids)).numpy()[np.arange(3), [1, 5, 3]]  # (B, V)
    want = np.stack([np.log(np.exp(vocab[:, w]).sum(-1)) for w in verb], -1)
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)


def test_verbalizer_is_checked():
    cfg = BERTConfig(vocab_size=V, context_length=8, d_model=8, n_heads=2, n_layers=1, pad_id=PAD)
    with pytest.raises(ValueError, match="one non-empty list of token ids per label"):
        BERTForSequenceClassification(cfg, 2, "mask", 12, [[3]])
    with pytest.raises(ValueError, match="needs pooling='mask'"):
        BERTForSequenceClassification(cfg, 2, "cls", 12, [[3], [4]])
    with pytest.raises(ValueError, match=f"outside the vocabulary \\[0, {V}\\)"):
        BERTForSequenceClassification(cfg, 2, "mask", 12, [[3], [V + 5]])


def test_classifier_pooling_reads_the_right_positions():
    MASK = 12
    cfg = BERTConfig(vocab_size=V, context_length=8, d_model=8, n_heads=2, n_layers=1, pad_id=PAD)
    ids = np.array([[2, 3, MASK, 4, PAD, PAD]])
    for pooling in ("cls", "mean", "mask"):
        minillm.manual_seed(0)
        model = BERTForSequenceClassification(cfg, 2, pooling, MASK)
        longer = np.concatenate([ids, np.full((1, 2), PAD)], axis=1)
        np.testing.assert_allclose(model(ids)[0].numpy(), model(longer)[0].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no \\[MASK\\]"):
        model(np.array([[2, 3, 4]]))
    with pytest.raises(ValueError, match="mask_id"):
        BERTForSequenceClassification(cfg, 2, "mask")


# ------------------------------------------------------------------------------------------ learning
@pytest.mark.parametrize("kind", ["bert", "bart", "t5"])
def test_overfits_one_batch(kind):
    model = tiny(kind, d_model=16, d_ff=32)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, V, size=(4, 6))
    lab = np.concatenate([rng.integers(2, V, size=(4, 4)), np.full((4, 1), EOS)], axis=1)
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(150):
        loss = loss_of(kind, model, ids, lab)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first, (first, loss.item())
    if kind != "bert":  # greedy decoding writes the memorised targets back
        assert model.generate(ids, max_new_tokens=6) == lab[:, :-1].tolist()


# ------------------------------------------------------------------------------------------ masking
@settings(max_examples=10)
@given(st.integers(0, 3), st.integers(1, 4), st.integers(0, 10_000))
def test_encoders_ignore_padding(n_pad_before, extra, seed):
    """Outputs at real positions do not change when more padding is appended."""
    rng = np.random.default_rng(seed)
    n_real = 4 - n_pad_before
    ids = np.concatenate([rng.integers(2, V, size=(2, n_real)), np.full((2, n_pad_before), PAD)], axis=1)
    longer = np.concatenate([ids, np.full((2, extra), PAD)], axis=1)
    minillm.manual_seed(seed)
    for kind in ("bert", "bart", "t5"):
        model = tiny(kind)
        if kind == "bert":
            a, b = model.features(ids), model.features(longer)
        else:
            a, b = model.encode(ids)[0], model.encode(longer)[0]
        np.testing.assert_allclose(a.numpy()[:, :n_real], b.numpy()[:, :n_real], rtol=1e-5, atol=1e-6)
        if kind != "bert":  # and the decoder does not see the encoder's padding either
            dec = rng.integers(2, V, size=(2, 3))
            np.testing.assert_allclose(model(ids, decoder_input_ids=dec)[0].numpy(),
                                       model(longer, decoder_input_ids=dec)[0].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["bart", "t5"])
@given(st.integers(1, 5), st.integers(0, 10_000))
def test_decoder_is_causal(kind, t, seed):
    """Logits at positions ≤ t do not change when the decoder tokens after t change."""
    rng = np.random.default_rng(seed)
    model = tiny(kind)
    ids = rng.integers(2, V, size=(2, 5))
    dec = rng.integers(2, V, size=(2, 6))
    dec2 = dec.copy()
    dec2[:, t + 1:] = rng.integers(2, V, size=(2, 6 - t - 1))
    a = model(ids, decoder_input_ids=dec)[0].numpy()
    b = model(ids, decoder_input_ids=dec2)[0].numpy()
    np.testing.assert_allclose(a[:, :t + 1], b[:, :t + 1], rtol=1e-5, atol=1e-6)
    if (dec2[:, t + 1:] != dec[:, t + 1:]).any():  # the test can fail: later positions do change
        assert not np.allclose(a[:, t + 1:], b[:, t + 1:])


@pytest.mark.parametrize("kind", ["bart", "t5"])
@settings(deadline=None, max_examples=15)
@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_kv_cached_decoding_matches_full_decoding(kind, split, seed):
    """Decoding a prefix, then the rest with its cached keys/values, gives the logits of decoding all at
    once (BART: positions continue; T5: the relative bias sees the offset); greedy generation with and
    without the cache gives the same tokens."""
    minillm.manual_seed(seed)
    model = tiny(kind, context_length=10, n_decoder_layers=2).eval()
    rng = np.random.default_rng(seed)
    ids, dec = rng.integers(2, V, size=(3, 6)), rng.integers(2, V, size=(3, 7))
    ids[0, 4:] = PAD  # a padded source row
    memory, pad = model.encode(ids)
    full = model.decode(dec, memory, pad)[0].numpy()
    first, cache = model.decode(dec[:, :split], memory, pad)
    rest, cache = model.decode(dec[:, split:], memory, pad, past_kv=cache)
    np.testing.assert_allclose(np.concatenate([first.numpy(), rest.numpy()], axis=1), full, rtol=1e-4,
                               atol=1e-5)
    assert cache[0][0].shape[2] == 7
    assert model.generate(ids, 9) == model.generate(ids, 9, use_cache=False)
    with pytest.raises(ValueError, match=r"7 cached \+ 4 new\) is longer than context_length 10"):
        model.decode(dec[:, :4], memory, pad, past_kv=cache)


def test_bert_is_bidirectional():
    model = tiny("bert")
    ids = np.array([[2, 3, 4, 5]])
    a = model.features(ids).numpy()
    b = model.features(np.array([[2, 3, 4, 6]])).numpy()
    assert not np.allclose(a[:, 0], b[:, 0]), "position 0 must see the last token"


# ------------------------------------------------------------------------------------------ T5 buckets
def test_relative_position_buckets_match_t5():
    rel = np.arange(-5, 6)
    # the reference rule worked by hand (num_buckets=32, max_distance=128): exact below 8 (causal: 16),
    # then log-spaced: e.g. causal -20 → 16 + ⌊16·ln(20/16)/ln 8⌋ = 17
    assert relative_position_bucket(rel, True).tolist() == [5, 4, 3, 2, 1, 0, 17, 18, 19, 20, 21]
    assert relative_position_bucket(rel, False).tolist() == [5, 4, 3, 2, 1, 0, 0, 0, 0, 0, 0]
    assert relative_position_bucket(np.array([-20, -200, 20, 200]), True).tolist() == [10, 15, 26, 31]
    assert relative_position_bucket(np.array([-20, -200]), False).tolist() == [17, 31]


@given(st.booleans(), st.sampled_from([8, 16, 32]), st.integers(-300, 300))
def test_relative_position_buckets_properties(bidirectional, num_buckets, r):
    b = int(relative_position_bucket(np.array([r]), bidirectional, num_buckets, 64)[0])
    assert 0 <= b < num_buckets
    # farther back never gets a smaller bucket within the same direction
    b2 = int(relative_position_bucket(np.array([r - 1]), bidirectional, num_buckets, 64)[0])
    if r <= 0:
        assert b2 >= b
    if bidirectional:
        assert (b >= num_buckets // 2) == (r > 0)


def test_relative_bias_is_shared_and_shaped():
    bias = RelativePositionBias(n_heads=3, bidirectional=True, num_buckets=8, max_distance=16)
    out = bias(4, 6)
    assert out.shape == (1, 3, 4, 6)
    model = tiny("t5")
    n_tables = [n for n, _ in model.named_parameters() if "rel_bias" in n]
    assert n_tables == ["enc_rel_bias.embedding.weight", "dec_rel_bias.embedding.weight"]


# -------------------------------------------------------------------------------------- checkpoints, errors
@pytest.mark.parametrize("kind", ["bert", "bart", "t5"])
def test_checkpoint_roundtrip_and_wrong_kind(kind, tmp_path):
    model = tiny(kind)
    path = tmp_path / f"{kind}.npz"
    model.save_checkpoint(path)
    again = type(model).from_checkpoint(path)
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=n)
    other = {"bert": BART, "bart": T5, "t5": BERT}[kind]
    with pytest.raises(CheckpointError, match="not a"):
        other.from_checkpoint(path)


def test_classifier_starts_from_pretrained_encoder(tmp_path):
    bert = tiny("bert")
    bert.save_checkpoint(tmp_path / "b.npz")
    clf = BERTForSequenceClassification.from_pretrained(tmp_path / "b.npz", num_labels=2)
    np.testing.assert_array_equal(clf.bert.tok_emb.weight.data, bert.tok_emb.weight.data)
    assert clf.bert.mlm_decoder.weight is clf.bert.tok_emb.weight  # still tied after loading
    logits, loss = clf(np.array([[2, 3, 4]]), labels=np.array([1]))
    assert logits.shape == (1, 2) and loss is not None


@pytest.mark.parametrize("kind", ["bert", "bart", "t5"])
def test_bad_ids_are_reported(kind):
    model = tiny(kind)
    call = model.features if kind == "bert" else model.encode
    with pytest.raises(IndexError, match="out of range"):
        call(np.array([[2, V]]))
    with pytest.raises(ValueError, match="longer than context_length"):
        call(np.full((1, 9), 2))
    with pytest.raises(ValueError, match="integer"):
        call(np.array([[0.5, 1.0]]))


@pytest.mark.parametrize("kind", ["bert", "bart", "t5"])
def test_checkpoints_with_the_old_max_len_field_still_load(kind, tmp_path):
    """Checkpoints written before the rename store ``max_len``; it is read as ``context_length``."""
    from dataclasses import asdict

    model = tiny(kind, context_length=7)
    cfg = asdict(model.config)
    cfg["max_len"] = cfg.pop("context_length")
    minillm.save({"kind": kind, "config": cfg, "model": model.state_dict()}, tmp_path / "old.npz")
    again = type(model).from_checkpoint(tmp_path / "old.npz")
    assert again.config == model.config and again.config.context_length == 7
