"""Prefix tuning and bottleneck adapters: gradients, identity/frozen properties, KV-cache generation."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import arrays, float64_module, tensor64

import minillm
from minillm import nn, optim
from minillm.generate import generate
from minillm.peft.adapter import (
    AdaptedSublayer,
    Adapter,
    adapter_param_count,
    adapter_state_dict,
    apply_adapters,
)
from minillm.peft.lora import trainable_parameters
from minillm.peft.prefix import PrefixTuning, prefix_param_count
from minillm.tensor import Tensor, no_grad


def tiny_gpt(dtype=None):
    from minillm.models.gpt import GPT, GPTConfig

    m = GPT(GPTConfig(vocab_size=30, context_length=16, d_model=8, n_heads=2, n_layers=2))
    return float64_module(m) if dtype == np.float64 else m


# ------------------------------------------------------------------ adapters
@given(st.data())
def test_gradcheck_adapter(data):
    d, m = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3))
    ad = float64_module(Adapter(d, m, activation=data.draw(st.sampled_from(["gelu", "relu"]))))
    ad.up_proj.weight.data = np.ascontiguousarray(data.draw(arrays((d, m))))  # non-zero: every path live
    x = tensor64(data.draw(arrays((3, d), away_from=(0.0,))))
    ps = [ad.down_proj.weight, ad.down_proj.bias, ad.up_proj.weight, ad.up_proj.bias]
    minillm.gradcheck(lambda x, *ps: ad(x), x, *ps, name="Adapter")


def test_adapter_is_identity_at_init_and_counts():
    ad = Adapter(12, 3)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 5, 12)).astype(np.float32))
    np.testing.assert_array_equal(ad(x).numpy(), x.numpy())
    assert sum(p.size for p in ad.parameters()) == adapter_param_count(12, 3) == 2 * 12 * 3 + 3 + 12
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 12\)"):
        ad(Tensor(np.ones((2, 5))))


def test_apply_adapters_on_gpt_identity_frozen_and_trains():
    m = tiny_gpt()
    ids = np.random.default_rng(0).integers(0, 30, (2, 9))
    with no_grad():
        y0 = m(ids)[0].numpy()
    apply_adapters(m, bottleneck=4)
    wrapped = [n for n, x in m.named_modules() if isinstance(x, AdaptedSublayer)]
    assert wrapped == ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]
    with no_grad():
        np.testing.assert_array_equal(m(ids)[0].numpy(), y0)  # identity at step 0
    t, _ = trainable_parameters(m)
    assert t == 4 * adapter_param_count(8, 4)
    assert sorted(adapter_state_dict(m)) == sorted(f"blocks.{i}.{s}.adapter.{p}.{w}" for i in range(2)
                                                   for s in ("attn", "mlp") for p in ("down_proj", "up_proj")
                                                   for w in ("weight", "bias"))
    opt = optim.AdamW(m.parameters(), lr=1e-2)
    _, loss = m(ids, ids)
    loss.backward()
    for name, p in m.named_parameters():
        assert (p.grad is not None) == (".adapter." in name), name
    opt.step()
    assert opt.state_nbytes() == 8 * t
    # the cache path (attention returns (y, present)) goes through the adapter too
    out_cached = generate(m, ids[0, :4], 5, greedy=True, use_cache=True)
    out_plain = generate(m, ids[0, :4], 5, greedy=True, use_cache=False)
    np.testing.assert_array_equal(out_cached, out_plain)


def test_apply_adapters_error():
    with pytest.raises(ValueError, match="no sub-module name ends in"):
        apply_adapters(nn.Sequential(nn.Linear(2, 2)), target_modules=("attn",))


# ------------------------------------------------------------------ prefix tuning
@given(st.integers(1, 3), st.booleans())
def test_gradcheck_prefix(P, reparam):
    minillm.manual_seed(P)
    m = tiny_gpt(np.float64)
    pt = float64_module(PrefixTuning(m, P, reparameterize=reparam, hidden=4))
    ids = np.array([[1, 2, 3]])
    params = [p for p in pt.parameters() if p.requires_grad]
    assert params and all(p.dtype == np.float64 for p in params)
    minillm.gradcheck(lambda *ps: pt(ids)[0], *params, name="PrefixTuning", atol=1e-5, rtol=1e-3)
    assert all(p.grad is None for p in m.parameters())  # the base is frozen


def test_prefix_counts_fold_and_frozen_base():
    m = tiny_gpt()
    pt = PrefixTuning(m, 5, reparameterize=True, hidden=6)
    ids = np.random.default_rng(0).integers(0, 30, (3, 7))
    with no_grad():
        y = pt(ids)[0].numpy()
    pt.fold()
    assert [n for n, p in pt.named_parameters() if p.requires_grad] == ["prefix_kv"]
    assert trainable_parameters(pt)[0] == prefix_param_count(2, 8, 5) == 2 * 2 * 5 * 8
    with no_grad():
        np.testing.assert_allclose(pt(ids)[0].numpy(), y, atol=1e-6)  # folding changes nothing
    opt = optim.AdamW(pt.parameters(), lr=1e-2)
    _, loss = pt(ids, ids)
    loss.backward()
    opt.step()
    assert opt.state_nbytes() == 8 * prefix_param_count(2, 8, 5)
    assert all(p.grad is None for p in m.parameters())


def test_prefix_changes_outputs_and_positions_start_at_zero():
    m = tiny_gpt()
    ids = np.array([[3, 4, 5, 6]])
    pt = PrefixTuning(m, 3, reparameterize=False)
    with no_grad():
        y_base = m(ids)[0].numpy()
        y_prefix = pt(ids)[0].numpy()
        # the prefix is "the past": equal to calling the base model with it as past_kv and positions from 0
        y_manual = m(ids, past_kv=pt.past_key_values(), start_pos=0)[0].numpy()
    assert not np.allclose(y_prefix, y_base)
    np.testing.assert_array_equal(y_prefix, y_manual)


def test_prefix_generation_with_kv_cache_matches_without():
    m = tiny_gpt()
    pt = PrefixTuning(m, 4, reparameterize=True, hidden=8)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    a = generate(pt, prompt, 6, greedy=True, use_cache=True)
    b = generate(pt, prompt, 6, greedy=True, use_cache=False)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 9)


@pytest.mark.parametrize("reparam", [True, False])
def test_prefix_training_lowers_loss(reparam):
    m = tiny_gpt()
    for p in m.parameters():  # GPT-2 init (std 0.02) barely listens to attention; a larger scale does
        if p.ndim == 2:
            p.data *= 25
    pt = PrefixTuning(m, 4, reparameterize=reparam, hidden=16)
    ids = np.random.default_rng(2).integers(0, 30, (4, 10))
    opt = optim.AdamW([p for p in pt.parameters() if p.requires_grad], lr=3e-2, weight_decay=0.0)
    losses = []
    for _ in range(15):
        _, loss = pt(ids, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3


def test_prefix_rejects_bad_size():
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        PrefixTuning(tiny_gpt(), 0)
