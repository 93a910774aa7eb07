"""Llama: float64 gradient check of the whole model, RoPE and GQA properties, KV cache, checkpoints,
errors, and training through ``minillm.train``."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import float64_module

import minillm
from minillm import F, gradcheck, optim
from minillm.checkpoint import CheckpointError
from minillm.generate import generate
from minillm.models import GPT, GPTConfig, Llama, LlamaConfig
from minillm.models.auto import causal_lm_class, load_causal_lm
from minillm.train import TrainConfig, train


def tiny(**kw) -> Llama:
    cfg = dict(vocab_size=11, context_length=8, d_model=16, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=24)
    cfg.update(kw)
    return Llama(LlamaConfig(**cfg))


@settings(max_examples=5, deadline=None)
@given(st.fixed_dictionaries({"heads": st.sampled_from([(1, 1), (2, 1), (2, 2)]),
                              "n_layers": st.integers(1, 2), "tie_weights": st.booleans(),
                              "T": st.integers(1, 3), "seed": st.integers(0, 99)}))
def test_llama_gradcheck_float64(c):
    """Every parameter's gradient of the next-token loss agrees with central differences."""
    minillm.manual_seed(c["seed"])
    n_heads, n_kv = c["heads"]
    model = float64_module(Llama(LlamaConfig(vocab_size=5, context_length=4, d_model=2 * n_heads,
                                             n_heads=n_heads, n_kv_heads=n_kv, n_layers=c["n_layers"],
                                             d_ff=3, tie_weights=c["tie_weights"], rms_norm_eps=0.1)))
    rng = np.random.default_rng(c["seed"])
    for p in model.parameters():  # weights large enough that every path matters
        p.data = rng.uniform(-1, 1, p.shape)
    ids, targets = rng.integers(0, 5, (2, c["T"])), rng.integers(0, 5, (2, c["T"]))
    gradcheck(lambda *_: model(ids, targets)[1], *model.parameters(), name="llama loss")


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 50), st.integers(0, 50), st.sampled_from([2, 4, 8]), st.integers(0, 99))
def test_rope_scores_depend_only_on_the_offset(m, n, hs, seed):
    """q·k after rotating q to position m + s and k to n + s is the same for every shift s."""
    rng = np.random.default_rng(seed)
    q, k = (minillm.Tensor(rng.standard_normal((1, 1, 1, hs))) for _ in range(2))

    def score(i, j):
        cq, sq = F.rope_angles(hs, np.array([i]), dtype=np.float64)
        ck, sk = F.rope_angles(hs, np.array([j]), dtype=np.float64)
        return float((F.rope(q, cq, sq).numpy() * F.rope(k, ck, sk).numpy()).sum())

    assert score(m, n) == pytest.approx(score(m + 17, n + 17), abs=1e-9)
    # offset 0: the same as not rotating at all
    assert score(m, m) == pytest.approx(float((q.numpy() * k.numpy()).sum()), abs=1e-9)


def test_rope_is_a_rotation():
    """RoPE keeps every vector's length, and position 0 leaves it unchanged."""
    x = minillm.Tensor(np.random.default_rng(0).standard_normal((2, 3, 5, 8)))
    cos, sin = F.rope_angles(8, np.arange(5), dtype=np.float64)
    y = F.rope(x, cos, sin).numpy()
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x.numpy(), axis=-1), rtol=1e-12)
    np.testing.assert_allclose(y[:, :, 0], x.numpy()[:, :, 0], rtol=1e-12)


def test_gqa_equals_attention_with_repeated_heads():
    """Grouped-query attention is multi-head attention whose key/value heads are copies within a group."""
    rng = np.random.default_rng(1)
    q = minillm.Tensor(rng.standard_normal((2, 4, 5, 3)))
    k, v = (minillm.Tensor(rng.standard_normal((2, 2, 5, 3))) for _ in range(2))
    gqa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).numpy()
    mha = F.scaled_dot_product_attention(q, minillm.Tensor(np.repeat(k.numpy(), 2, axis=1)),
                                         minillm.Tensor(np.repeat(v.numpy(), 2, axis=1)), is_causal=True)
    np.testing.assert_allclose(gqa, mha.numpy(), rtol=1e-12)
    with pytest.raises(ValueError):
        F.scaled_dot_product_attention(q, k[:, :1] * 1, v, is_causal=True)  # mismatched heads, no enable_gqa


def test_cached_forward_matches_full_forward_and_start_pos():
    model = tiny()
    ids = np.random.default_rng(1).integers(0, 11, (2, 8))
    full, _ = model(ids)
    logits, past = model.forward_cached(ids[:, :5])
    step, past = model.forward_cached(ids[:, 5:6], past_kv=past)
    rest, past = model.forward_cached(ids[:, 6:], past_kv=past)
    np.testing.assert_allclose(np.concatenate([logits.numpy(), step.numpy(), rest.numpy()], 1), full.numpy(),
                               atol=1e-5)
    assert past[0][0].shape == (2, 2, 8, 4)  # (B, n_kv_heads, T, head_dim): the cache holds n_kv heads only
    assert sum(k.numpy().nbytes + v.numpy().nbytes for k, v in past) == model.kv_cache_bytes(8, batch_size=2)
    shifted, _ = model(ids[:, :3], start_pos=4)  # positions 4..6: RoPE sees only offsets, so nothing changes
    np.testing.assert_allclose(shifted.numpy(), model(ids[:, :3])[0].numpy(), atol=1e-5)


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 5), st.integers(1, 8), st.sampled_from([None, 3]), st.integers(0, 50))
def test_kv_cache_gives_the_same_tokens(prompt_len, keep, top_k, seed):
    """Cached and uncached generation agree token for token, also sliding past the context length."""
    minillm.manual_seed(seed)
    model = tiny()
    for p in model.parameters():
        p.data = p.data * 5
    prompt = np.random.default_rng(seed).integers(0, 11, prompt_len)
    kw = dict(max_new_tokens=20, slide_keep=keep, top_k=top_k, temperature=1.0, seed=seed)
    np.testing.assert_array_equal(generate(model, prompt, use_cache=False, **kw),
                                  generate(model, prompt, use_cache=True, **kw))


def test_multi_query_cache_is_n_heads_times_smaller():
    mha, gqa, mqa = (tiny(n_heads=4, n_kv_heads=n) for n in (4, 2, 1))
    assert mha.kv_cache_bytes(8) == 2 * gqa.kv_cache_bytes(8) == 4 * mqa.kv_cache_bytes(8)
    assert mha.num_parameters() - mqa.num_parameters() == 2 * 2 * 16 * 12  # k, v: 16 → 4 instead of 16


def test_config_defaults_and_errors():
    c = LlamaConfig(d_model=96, n_heads=4)
    assert c.n_kv_heads == 4 and c.d_ff == 256  # 8/3 · 96 = 256, already a multiple of 32
    with pytest.raises(ValueError, match="must divide n_heads"):
        LlamaConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="even for RoPE"):
        LlamaConfig(d_model=12, n_heads=4)
    with pytest.raises(ValueError, match="rope_theta"):
        LlamaConfig(rope_theta=0.5)
    with pytest.raises(ValueError):
        LlamaConfig(n_kv_heads=0)
    model = tiny()
    with pytest.raises(IndexError, match="token id 11 is out of range"):
        model(np.array([[1, 11]]))
    with pytest.raises(ValueError, match="longer than context_length 8"):
        model(np.zeros((1, 9), dtype=np.int64))


def test_no_biases_and_tied_head():
    model, tied = tiny(), tiny(tie_weights=True)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert model.num_parameters() - tied.num_parameters() == 11 * 16


def test_checkpoint_round_trip_and_dispatch(tmp_path):
    from minillm.tokenizer import load_default_tokenizer

    tok = load_default_tokenizer()
    model = tiny(vocab_size=tok.vocab_size)
    ids = np.array([[1, 2, 3]])
    model.save_checkpoint(tmp_path / "m.npz", tokenizer=tok)
    again, tok2 = load_causal_lm(tmp_path / "m.npz")
    assert isinstance(again, Llama) and again.config == model.config and tok2 == tok
    np.testing.assert_array_equal(again(ids)[0].numpy(), model(ids)[0].numpy())
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=8, d_model=8, n_heads=2, n_layers=1))
    gpt.save_checkpoint(tmp_path / "g.npz")
    assert causal_lm_class(tmp_path / "g.npz") is GPT
    with pytest.raises(CheckpointError, match="holds a 'gpt' model, not a 'llama' one"):
        Llama.from_checkpoint(tmp_path / "g.npz")
    minillm.save({"kind": "bert", "config": {}, "model": {}}, tmp_path / "b.npz")
    with pytest.raises(CheckpointError, match="not a causal LM"):
        load_causal_lm(tmp_path / "b.npz")


def test_trains_through_the_shared_loop(tmp_path):
    """``minillm.train.train`` fits a tiny Llama to a repeating sequence; its checkpoint reloads as Llama."""
    minillm.manual_seed(0)
    model = tiny(vocab_size=8)
    seq = np.arange(64) % 8

    def get_batch(split, rng):
        starts = rng.integers(0, 64 - 9, 4)
        return np.stack([seq[s:s + 8] for s in starts]), np.stack([seq[s + 1:s + 9] for s in starts])

    cfg = TrainConfig(steps=60, lr=1e-2, warmup=5, eval_every=0, out_dir=str(tmp_path), progress=False)
    history = train(model, lambda m, b: m(*b)[1], get_batch, cfg)
    assert history["loss"][-1] < 0.2 < np.log(8) - 0.5 < history["loss"][0] + 0.1
    assert causal_lm_class(tmp_path / "checkpoint.npz") is Llama


def test_overfits_one_batch_with_adamw():
    model = tiny(vocab_size=16, d_model=32)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 16, (4, 8)), rng.integers(0, 16, (4, 8))
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(120):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()
