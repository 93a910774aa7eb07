"""Attention, feed-forward and transformer block: float64 gradient checks and the masking properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import float64_module

import minillm
from minillm import Tensor, gradcheck, nn


def t64(*shape, grad=True, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=grad, dtype=np.float64)


attn_cfg = st.fixed_dictionaries({
    "B": st.integers(1, 2), "Tq": st.integers(1, 3), "Tk": st.integers(1, 3), "nh": st.integers(1, 2),
    "hs": st.integers(1, 2), "bias": st.booleans(), "seed": st.integers(0, 100)})


@settings(max_examples=10)
@given(attn_cfg, st.sampled_from(["self", "causal", "cross", "padding", "past", "bias"]))
def test_attention_gradcheck(c, mode):
    """Gradients of the input, the context, every projection, a KV past and a position bias."""
    minillm.manual_seed(c["seed"])
    d = c["nh"] * c["hs"]
    attn = float64_module(nn.MultiHeadAttention(d, c["nh"], bias=c["bias"], cross=mode == "cross"))
    x = t64(c["B"], c["Tq"], d, seed=c["seed"])
    inputs, kwargs = [x], {}
    if mode == "cross":
        kwargs["context"] = t64(c["B"], c["Tk"], d, seed=c["seed"] + 1)
        inputs.append(kwargs["context"])
    if mode == "causal":
        kwargs["is_causal"] = True
    if mode == "padding":
        kpm = np.zeros((c["B"], c["Tq"]), dtype=bool)
        kpm[:, -1] = c["Tq"] > 1  # pad the last key (keep at least one real key)
        kwargs["key_padding_mask"] = kpm
    if mode == "past":
        kv_shape = (c["B"], c["nh"], c["Tk"], c["hs"])
        past = (t64(*kv_shape, seed=2), t64(*kv_shape, seed=3))
        kwargs.update(past_kv=past, is_causal=True)
        inputs.extend(past)
    if mode == "bias":
        kwargs["position_bias"] = t64(1, c["nh"], c["Tq"], c["Tq"], seed=4)
        inputs.append(kwargs["position_bias"])
    params = list(attn.parameters())
    gradcheck(lambda *_: attn(x, **kwargs)[0], *inputs, *params, name=f"attention[{mode}]")


@settings(max_examples=6)
@given(st.sampled_from(["layernorm", "rmsnorm"]), st.booleans(), st.booleans(),
       st.sampled_from(["gelu", "relu"]))
def test_block_gradcheck(norm, cross, causal, activation):
    block = float64_module(nn.TransformerBlock(4, 2, 6, cross_attention=cross, norm=norm, causal=causal,
                                               activation=activation))
    x = t64(2, 3, 4)
    ctx = t64(2, 2, 4, seed=1) if cross else None
    kpm = np.array([[False, False, True], [False, False, False]])
    inputs = [x] + ([ctx] if cross else [])
    gradcheck(lambda *_: block(x, context=ctx, key_padding_mask=kpm)[0], *inputs, *block.parameters(),
              name=f"block[{norm}, cross={cross}]")


def test_feedforward_gradcheck():
    ff = float64_module(nn.FeedForward(3, 5, activation="gelu"))
    x = t64(2, 3)
    gradcheck(lambda *_: ff(x), x, *ff.parameters(), name="feedforward")


def test_causal_attention_ignores_the_future():
    attn = nn.MultiHeadAttention(8, 2)
    x = np.random.default_rng(0).standard_normal((1, 5, 8)).astype(np.float32)
    y1 = attn(Tensor(x), is_causal=True)[0].numpy()
    x2 = x.copy()
    x2[:, 3:] += 10.0  # change positions 3 and 4 only
    y2 = attn(Tensor(x2), is_causal=True)[0].numpy()
    np.testing.assert_allclose(y1[:, :3], y2[:, :3], atol=1e-6)
    assert np.abs(y1[:, 3:] - y2[:, 3:]).max() > 1e-3


def test_key_padding_mask_hides_padded_keys_and_weights_are_probabilities():
    attn = nn.MultiHeadAttention(8, 2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 8)).astype(np.float32)
    kpm = np.array([[False, False, False, True], [False, True, True, True]])
    y1, _ = attn(Tensor(x), key_padding_mask=kpm)
    w = attn.attention_weights(Tensor(x), key_padding_mask=kpm)
    assert w.shape == (2, 2, 4, 4)
    np.testing.assert_allclose(w.numpy().sum(-1), 1.0, atol=1e-6)
    assert np.all(w.numpy()[0, :, :, 3] == 0) and np.all(w.numpy()[1, :, :, 1:] == 0)
    x2 = x.copy()
    x2[0, 3] = 99.0
    x2[1, 1:] = -7.0
    y2, _ = attn(Tensor(x2), key_padding_mask=kpm)
    # unpadded query positions see the same keys; their outputs are unchanged
    np.testing.assert_allclose(y1.numpy()[0, :3], y2.numpy()[0, :3], atol=1e-5)
    np.testing.assert_allclose(y1.numpy()[1, :1], y2.numpy()[1, :1], atol=1e-5)


def test_kv_cache_matches_full_attention():
    """Attending token by token with past_kv gives the same outputs as one causal pass."""
    block = nn.TransformerBlock(8, 2, 16, causal=True)
    x = Tensor(np.random.default_rng(2).standard_normal((2, 5, 8)).astype(np.float32))
    full = block(x)[0].numpy()
    past, outs = None, []
    for t in range(5):
        y, past = block(x[:, t:t + 1], past_kv=past)
        outs.append(y.numpy())
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, atol=1e-5)
    assert past[0].shape == (2, 2, 5, 4)


def test_trainable_prefix_gets_gradient_and_broadcasts_over_batch():
    attn = nn.MultiHeadAttention(4, 2)
    pk = Tensor(np.ones((1, 2, 3, 2), dtype=np.float32), requires_grad=True)
    pv = Tensor(np.ones((1, 2, 3, 2), dtype=np.float32), requires_grad=True)
    y, present = attn(minillm.randn(3, 2, 4), past_kv=(pk, pv))
    assert present[0].shape == (3, 2, 5, 2)
    y.sum().backward()
    assert pk.grad is not None and pv.grad is not None and np.abs(pv.grad).sum() > 0


def test_cross_attention_uses_context_length():
    attn = nn.MultiHeadAttention(8, 4, cross=True)
    x, ctx = minillm.randn(2, 3, 8), minillm.randn(2, 7, 8)
    y, (k, v) = attn(x, context=ctx)
    w = attn.attention_weights(x, context=ctx)
    assert y.shape == (2, 3, 8) and w.shape == (2, 4, 3, 7) and k.shape == v.shape == (2, 4, 7, 2)


def test_projection_names_for_lora():
    names = [n for n, _ in nn.TransformerBlock(8, 2).named_parameters()]
    for proj in ("attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight", "attn.out_proj.weight",
                 "mlp.up_proj.weight", "mlp.down_proj.weight"):
        assert proj in names


def test_bad_inputs_are_reported():
    with pytest.raises(ValueError, match="not divisible"):
        nn.MultiHeadAttention(10, 3)
    attn = nn.MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"\(B, T, 8\)"):
        attn(minillm.randn(2, 3, 6))
    with pytest.raises(ValueError, match="key_padding_mask has shape"):
        attn(minillm.randn(2, 3, 8), key_padding_mask=np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="pass context="):
        nn.TransformerBlock(8, 2, cross_attention=True)(minillm.randn(1, 2, 8))
    with pytest.raises(ValueError, match="norm must be"):
        nn.TransformerBlock(8, 2, norm="batchnorm")


# ------------------------------------------------------------------------------------ attention dropout
@settings(deadline=None, max_examples=15)
@given(st.sampled_from([0.1, 0.3, 0.6]), st.integers(0, 2**31 - 1))
def test_attention_dropout_drops_probabilities_and_rescales(p, seed):
    """dropout_p zeroes attention probabilities at rate p, scales the rest by 1/(1-p), and the output is
    exactly those weights times v."""
    from minillm import functional as F

    rng = np.random.default_rng(seed)
    q, k, v = (Tensor(rng.normal(size=(2, 3, 40, 8))) for _ in range(3))
    ref = F.attention_probs(q, k).numpy()
    minillm.manual_seed(seed)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
    minillm.manual_seed(seed)
    w = F.attention_probs(q, k, dropout_p=p).numpy()  # the same draw
    kept = w != 0
    np.testing.assert_allclose(w[kept], ref[kept] / (1 - p), rtol=1e-6)
    assert abs((~kept).mean() - p) < 0.05
    np.testing.assert_allclose(out.numpy(), w @ v.numpy(), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="dropout_p must be in"):
        F.scaled_dot_product_attention(q, k, v, dropout_p=1.0)


def test_multihead_attention_dropout_only_in_training():
    minillm.manual_seed(0)
    attn = nn.MultiHeadAttention(16, 4, dropout=0.5)
    x = Tensor(np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32))
    attn.eval()
    a, b = attn(x)[0].numpy(), attn(x)[0].numpy()
    np.testing.assert_array_equal(a, b)  # eval: deterministic, no dropout anywhere
    attn.train()
    c = attn.attention_weights(x).numpy()  # (B, nh, Tq, Tk) probabilities as used
    assert (c == 0).any() and not np.allclose(c.sum(-1), 1.0)  # dropped rows no longer sum to 1
    assert not np.allclose(attn(x)[0].numpy(), a)


# ------------------------------------------------------------------------------------ one return shape
@pytest.mark.parametrize("with_past", [False, True])
def test_attention_block_and_gpt_features_always_return_a_pair(with_past):
    """MultiHeadAttention, TransformerBlock and GPT.features return (output, present_kv) whether or not a
    past is given; present_kv includes the past."""
    from minillm.models import GPT, GPTConfig

    Tp, T = (2, 3) if with_past else (0, 3)
    x = minillm.randn(2, T, 8)
    past = (minillm.randn(2, 2, Tp, 4), minillm.randn(2, 2, Tp, 4)) if with_past else None
    for module in (nn.MultiHeadAttention(8, 2), nn.TransformerBlock(8, 2, 16)):
        out = module(x, past_kv=past)
        assert isinstance(out, tuple) and len(out) == 2
        y, (k, v) = out
        assert y.shape == (2, T, 8) and k.shape == v.shape == (2, 2, Tp + T, 4)
    model = GPT(GPTConfig(vocab_size=7, context_length=8, d_model=8, n_heads=2, n_layers=2))
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    gpt_past = model.features(ids)[1] if with_past else None
    out = model.features(ids, past_kv=gpt_past)
    assert isinstance(out, tuple) and len(out) == 2
    h, present = out
    assert h.shape == (2, 3, 8) and len(present) == 2
    assert present[0][0].shape[2] == (6 if with_past else 3)  # the past included
    for method in (model.forward, model.forward_cached):
        res = method(ids, past_kv=gpt_past)
        assert isinstance(res, tuple) and len(res) == 2 and res[0].shape == (2, 3, 7)
