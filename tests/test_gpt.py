"""GPT: float64 gradient check, overfitting one batch, KV-cache positions, errors, checkpoints."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import float64_module

import minillm
from minillm import gradcheck, optim
from minillm.checkpoint import CheckpointError
from minillm.models import GPT, GPTConfig
from minillm.models.gpt import load_checkpoint_tokenizer
from minillm.shipped import SHIPPED_GPT


def tiny(**kw):
    cfg = dict(vocab_size=7, context_length=6, d_model=8, n_heads=2, n_layers=2, d_ff=12)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


@settings(max_examples=5)
@given(st.fixed_dictionaries({"n_layers": st.integers(1, 2), "n_heads": st.sampled_from([1, 2]),
                              "tie_weights": st.booleans(), "T": st.integers(1, 3),
                              "seed": st.integers(0, 99)}))
def test_gpt_gradcheck_float64(c):
    """Every parameter's gradient of the next-token loss agrees with central differences."""
    minillm.manual_seed(c["seed"])
    model = float64_module(GPT(GPTConfig(vocab_size=5, context_length=4, d_model=4, n_heads=c["n_heads"],
                                         n_layers=c["n_layers"], d_ff=6, tie_weights=c["tie_weights"])))
    rng = np.random.default_rng(c["seed"])
    ids, targets = rng.integers(0, 5, (2, c["T"])), rng.integers(0, 5, (2, c["T"]))
    gradcheck(lambda *_: model(ids, targets)[1], *model.parameters(), name="gpt loss")


def test_overfits_one_batch():
    model = tiny(vocab_size=16, context_length=8, d_model=32, n_heads=4)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 16, (4, 8)), rng.integers(0, 16, (4, 8))
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()


def test_cached_forward_matches_full_forward():
    model = tiny()
    ids = np.random.default_rng(1).integers(0, 7, (2, 6))
    full, _ = model(ids)
    logits, past = model.forward_cached(ids[:, :4])
    step, past = model.forward_cached(ids[:, 4:5], past_kv=past)
    step2, _ = model.forward_cached(ids[:, 5:], past_kv=past)
    np.testing.assert_allclose(np.concatenate([logits.numpy(), step.numpy(), step2.numpy()], 1), full.numpy(),
                               atol=1e-5)


def test_bad_inputs_are_reported():
    model = tiny()
    with pytest.raises(IndexError, match="token id 7 is out of range for vocab_size 7"):
        model(np.array([[1, 7]]))
    with pytest.raises(IndexError, match="token id -1"):
        model(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="sequence of 7 tokens is longer than context_length 6"):
        model(np.zeros((1, 7), dtype=np.int64))
    _, past = model.forward_cached(np.zeros((1, 5), dtype=np.int64))
    with pytest.raises(ValueError, match=r"5 cached \+ 2 new"):
        model(np.zeros((1, 2), dtype=np.int64), past_kv=past)
    with pytest.raises(ValueError, match="integer token ids"):
        model(np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="not divisible"):
        GPTConfig(d_model=10, n_heads=4)


def test_tied_weights_and_init():
    minillm.manual_seed(0)
    tied, untied = tiny(n_layers=4, d_model=64, n_heads=4), tiny(n_layers=4, d_model=64, n_heads=4,
                                                                  tie_weights=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.num_parameters() - tied.num_parameters() == 7 * 64
    proj = tied.blocks[0].attn.out_proj.weight.numpy()
    assert abs(proj.std() - 0.02 / np.sqrt(8)) < 0.002  # residual projections scaled by 1/√(2·n_layers)
    assert abs(tied.blocks[0].attn.q_proj.weight.numpy().std() - 0.02) < 0.002


def test_checkpoint_round_trip(tmp_path):
    from minillm.tokenizer import load_default_tokenizer

    tok = load_default_tokenizer()
    model = tiny(vocab_size=tok.vocab_size)
    ids = np.array([[1, 2, 3]])
    model.save_checkpoint(tmp_path / "m.npz", tokenizer=tok)
    again = GPT.from_checkpoint(tmp_path / "m.npz")
    assert again.config == model.config
    np.testing.assert_array_equal(again(ids)[0].numpy(), model(ids)[0].numpy())
    assert load_checkpoint_tokenizer(tmp_path / "m.npz") == tok
    model.save_checkpoint(tmp_path / "h.npz", dtype="float16")
    half = GPT.from_checkpoint(tmp_path / "h.npz")
    assert half.tok_emb.weight.dtype == np.float32
    np.testing.assert_allclose(half(ids)[0].numpy(), model(ids)[0].numpy(), atol=1e-2)
    (tmp_path / "bad.npz").write_bytes((tmp_path / "m.npz").read_bytes()[:500])
    with pytest.raises(CheckpointError):
        GPT.from_checkpoint(tmp_path / "bad.npz")
    minillm.save({"weights": np.zeros(3)}, tmp_path / "other.npz")
    with pytest.raises(CheckpointError, match="holds no GPT"):
        GPT.from_checkpoint(tmp_path / "other.npz")


@pytest.mark.skipif(not SHIPPED_GPT.exists(), reason="the shipped gpt_tiny.npz is not built yet")
def test_shipped_gpt_models_unseen_stories():
    """The shipped model predicts fresh stories (a seed it never saw) well and carries its tokenizer."""
    from minillm.phases.pretrain import lm_tokens
    from minillm.tokenizer import load_default_tokenizer

    model = GPT.from_checkpoint(SHIPPED_GPT)
    tok = load_checkpoint_tokenizer(SHIPPED_GPT)
    assert tok == load_default_tokenizer() and model.config.vocab_size == tok.vocab_size
    ids = lm_tokens(tok, num_stories=60, seed=12345)[: 4 * model.config.context_length + 1]
    T = model.config.context_length
    x, y = ids[:-1].reshape(4, T), ids[1:].reshape(4, T)
    with minillm.no_grad():
        _, loss = model(x, y)
    assert loss.item() < 1.2, loss.item()


def test_attention_weights_for_plotting():
    model = tiny()
    maps = model.attention_weights(np.array([[1, 2, 3, 4]]))
    assert len(maps) == 2 and maps[0].shape == (1, 2, 4, 4)
    np.testing.assert_allclose(maps[1].sum(-1), 1.0, atol=1e-6)
    assert np.all(np.triu(maps[0][0, 0], k=1) == 0)  # causal: nothing above the diagonal
