"""LoRA: the formula, step-0 equality, freezing, merge/unmerge, adapter-only state, the seed's arithmetic."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import arrays, float64_module, tensor64

import minillm
from minillm import nn, optim
from minillm.peft.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    format_trainable_parameters,
    load_lora_state_dict,
    lora_disabled,
    lora_linear_reference,
    lora_param_count,
    lora_param_count_for_shape,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    print_trainable_parameters,
    trainable_parameters,
    unmerge_lora,
)
from minillm.peft.memory import LLAMA_7B
from minillm.tensor import Tensor, no_grad


def tiny_gpt():
    from minillm.models.gpt import GPT, GPTConfig

    return GPT(GPTConfig(vocab_size=40, context_length=16, d_model=16, n_heads=2, n_layers=2))


def randomise_B(model, scale=0.1):
    for _, m in model.named_modules():
        if isinstance(m, LoRALinear):
            m.lora_B.weight.data = minillm.backend.randn(*m.lora_B.weight.shape) * scale


# ------------------------------------------------------------------ the seed's arithmetic
def test_seed_arithmetic_one_layer():
    n = lora_param_count(1000, 1000, 4)
    assert n == 8_000
    assert n / (1000 * 1000) == pytest.approx(0.008)  # 0.8 %
    layer = LoRALinear(nn.Linear(1000, 1000, bias=False), r=4, lora_alpha=8)
    assert trainable_parameters(layer) == (8_000, 1_008_000)  # PEFT counts the adapter in "all params"
    assert print_trainable_parameters(layer) == \
        "trainable params: 8,000 || all params: 1,008,000 || trainable%: 0.7937"


def test_7b_ratio_from_config_matches_peft():
    n = lora_param_count_for_shape(LLAMA_7B, LoRAConfig(r=8, target_modules=("q_proj", "v_proj")))
    assert n == 4_194_304 == 32 * 2 * 8 * (4096 + 4096)
    assert LLAMA_7B.num_parameters() == 6_738_415_616
    # PEFT's well-known line for LLaMA-7B, r=8 on q_proj and v_proj
    assert format_trainable_parameters(n, LLAMA_7B.num_parameters() + n) == \
        "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622"


def test_lesson_model_ratio_from_config_equals_allocated():
    from minillm.peft.memory import shape_from_gpt_config

    m = tiny_gpt()
    base = m.num_parameters()
    apply_lora(m, LoRAConfig(r=4))
    t, total = trainable_parameters(m)
    shape = shape_from_gpt_config(m.config)
    assert shape.num_parameters() == base
    assert t == lora_param_count_for_shape(shape, LoRAConfig(r=4)) == 2 * 2 * 4 * (16 + 16)
    assert total == base + t


@pytest.mark.parametrize("bad", [dict(r=0), dict(r=2.5), dict(lora_dropout=1.0), dict(init="xavier")])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        LoRAConfig(**bad)


def test_param_count_rejects_bad_values():
    with pytest.raises(ValueError, match="r must be a positive integer"):
        lora_param_count(10, 10, 0)


# ------------------------------------------------------------------ the layer
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), st.booleans(),
       st.booleans())
def test_lora_linear_matches_formula(batch, d_in, d_out, r, bias, rs):
    layer = LoRALinear(nn.Linear(d_in, d_out, bias=bias), r=r, lora_alpha=3.0, use_rslora=rs)
    layer.lora_B.weight.data = minillm.backend.randn(d_out, r)
    x = np.random.default_rng(batch).standard_normal((batch, d_in)).astype(np.float32)
    s = 3.0 / (np.sqrt(r) if rs else r)
    assert layer.scaling == pytest.approx(s)
    b = layer.base_layer.bias.numpy() if bias else None
    ref = lora_linear_reference(x, layer.base_layer.weight.numpy(), b,
                                layer.lora_A.weight.numpy(), layer.lora_B.weight.numpy(), s)
    np.testing.assert_allclose(layer(Tensor(x)).numpy(), ref, rtol=1e-5, atol=1e-5)


@given(st.data())
def test_gradcheck_lora_linear(data):
    d_in, d_out, r = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    x = tensor64(data.draw(arrays((2, d_in))))
    layer = float64_module(LoRALinear(nn.Linear(d_in, d_out), r=r, lora_alpha=2.0,
                                      init=data.draw(st.sampled_from(["gaussian", "kaiming"]))))
    layer.lora_B.weight.data = np.ascontiguousarray(data.draw(arrays((d_out, r))))
    A, Bm = layer.lora_A.weight, layer.lora_B.weight
    minillm.gradcheck(lambda x, A, Bm: layer(x), x, A, Bm, name="LoRALinear")
    assert layer.base_layer.weight.grad is None  # frozen: nothing accumulates there


def test_step0_outputs_identical_on_gpt():
    m = tiny_gpt()
    ids = np.random.default_rng(0).integers(0, 40, (2, 10))
    with no_grad():
        before = m(ids)[0].numpy()
    apply_lora(m, LoRAConfig(r=4, target_modules=("q_proj", "v_proj", "out_proj", "up_proj", "down_proj")))
    with no_grad():
        after = m(ids)[0].numpy()
    assert np.array_equal(before, after)  # B = 0: exactly, not approximately


def test_frozen_params_get_no_gradient_and_no_optimizer_state():
    m = tiny_gpt()
    apply_lora(m, LoRAConfig(r=2))
    ids = np.random.default_rng(0).integers(0, 40, (2, 8))
    opt = optim.AdamW(m.parameters(), lr=1e-2)
    _, loss = m(ids, ids)
    loss.backward()
    for name, p in m.named_parameters():
        is_lora = ".lora_A." in name or ".lora_B." in name
        assert p.requires_grad == is_lora, name
        assert (p.grad is not None) == is_lora, name
    opt.step()
    t, _ = trainable_parameters(m)
    assert len(opt.state) == 2 * 2 * 2  # A and B of q_proj and v_proj in 2 layers
    assert opt.state_nbytes() == 8 * t  # m and v in float32 for the trainable numbers only


def test_training_changes_only_lora_and_lowers_loss():
    m = tiny_gpt()
    base = {k: v.copy() for k, v in m.state_dict().items()}
    targets = ("q_proj", "v_proj", "out_proj", "up_proj", "down_proj")
    apply_lora(m, LoRAConfig(r=4, lora_alpha=8, target_modules=targets))
    ids = np.random.default_rng(1).integers(0, 40, (4, 12))
    opt = optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(20):
        _, loss = m(ids, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    sd = m.state_dict()
    for k, v in base.items():
        k2 = k if k in sd else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert np.array_equal(sd[k2], v), k


def test_merge_unmerge_and_merge_and_unload():
    m = tiny_gpt()
    apply_lora(m, LoRAConfig(r=4))
    randomise_B(m, 0.3)
    ids = np.random.default_rng(0).integers(0, 40, (2, 10))
    with no_grad():
        y = m(ids)[0].numpy()
        w0 = m.blocks[0].attn.q_proj.base_layer.weight.numpy().copy()
        merge_lora(m)
        assert all(layer.merged for _, layer in m.named_modules() if isinstance(layer, LoRALinear))
        y_merged = m(ids)[0].numpy()
        assert not np.allclose(m.blocks[0].attn.q_proj.base_layer.weight.numpy(), w0)
        unmerge_lora(m)
        y_unmerged = m(ids)[0].numpy()
        np.testing.assert_allclose(m.blocks[0].attn.q_proj.base_layer.weight.numpy(), w0, atol=1e-6)
        merge_and_unload(m)
        y_plain = m(ids)[0].numpy()
    np.testing.assert_allclose(y_merged, y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y_unmerged, y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y_plain, y, rtol=1e-4, atol=1e-5)
    assert not any(isinstance(x, LoRALinear) for x in m.modules())
    assert type(m.blocks[0].attn.q_proj) is nn.Linear


def test_lora_disabled_gives_the_base_model_exactly():
    m = tiny_gpt()
    ids = np.random.default_rng(0).integers(0, 40, (2, 10))
    with no_grad():
        y_base = m(ids)[0].numpy()
    apply_lora(m, LoRAConfig(r=4))
    randomise_B(m, 0.5)
    with no_grad():
        y_lora = m(ids)[0].numpy()
        with lora_disabled(m):
            y_off = m(ids)[0].numpy()
        merge_lora(m)
        with lora_disabled(m):
            y_off_merged = m(ids)[0].numpy()
        y_back = m(ids)[0].numpy()
    assert not np.allclose(y_lora, y_base)
    np.testing.assert_array_equal(y_off, y_base)
    np.testing.assert_allclose(y_off_merged, y_base, atol=1e-5)
    np.testing.assert_allclose(y_back, y_lora, atol=1e-5)
    layers = [x for _, x in m.named_modules() if isinstance(x, LoRALinear)]
    assert all(x.merged and not x.disabled for x in layers)


def test_lora_state_dict_roundtrip(tmp_path):
    m = tiny_gpt()
    apply_lora(m, LoRAConfig(r=3))
    randomise_B(m)
    sd = lora_state_dict(m)
    assert sorted(sd) == sorted(f"blocks.{i}.attn.{p}.lora_{ab}.weight"
                                for i in range(2) for p in ("q_proj", "v_proj") for ab in "AB")
    minillm.save({k: np.asarray(v) for k, v in sd.items()}, tmp_path / "adapter.npz")
    minillm.manual_seed(5)
    m2 = tiny_gpt()
    m2.load_state_dict({k: v for k, v in m.state_dict().items()
                        if "lora_" not in k and "base_layer" not in k}, strict=False)
    for k, v in m.state_dict().items():  # same base
        if "base_layer" in k:
            m2_key = k.replace(".base_layer", "")
            m2.load_state_dict({m2_key: v}, strict=False)
    apply_lora(m2, LoRAConfig(r=3))
    load_lora_state_dict(m2, minillm.load(tmp_path / "adapter.npz"))
    ids = np.arange(8)[None] % 40
    with no_grad():
        np.testing.assert_array_equal(m(ids)[0].numpy(), m2(ids)[0].numpy())


def test_load_lora_state_dict_errors():
    m = tiny_gpt()
    with pytest.raises(nn.StateDictError, match="no LoRA layers"):
        load_lora_state_dict(m, {})
    apply_lora(m, LoRAConfig(r=3))
    sd = dict(lora_state_dict(m))
    sd["blocks.0.attn.q_proj.lora_A.weight"] = np.zeros((5, 16), np.float32)
    with pytest.raises(nn.StateDictError, match="shape mismatch"):
        load_lora_state_dict(m, sd)


def test_apply_lora_names_the_layers_when_nothing_matches():
    with pytest.raises(ValueError, match="no Linear layer matches target_modules=\\('c_attn',\\).*q_proj"):
        apply_lora(tiny_gpt(), LoRAConfig(target_modules=("c_attn",)))


def test_apply_lora_in_sequential_keeps_order_and_is_idempotent():
    seq = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = Tensor(np.ones((1, 3), np.float32))
    y = seq(x).numpy()
    apply_lora(seq, LoRAConfig(r=2, target_modules=("0", "2")))
    apply_lora(seq, LoRAConfig(r=2, target_modules=("0", "2")))  # no double wrapping
    assert list(seq._modules) == ["0", "1", "2"]
    assert isinstance(seq[0], LoRALinear) and isinstance(seq[0].base_layer, nn.Linear)
    np.testing.assert_array_equal(seq(x).numpy(), y)


def test_lora_dropout_only_in_training():
    layer = LoRALinear(nn.Linear(8, 8), r=2, lora_dropout=0.5)
    layer.lora_B.weight.data = minillm.backend.randn(8, 2)
    x = Tensor(np.ones((4, 8), np.float32))
    layer.eval()
    a, b = layer(x).numpy(), layer(x).numpy()
    assert np.array_equal(a, b)
    layer.train()
    assert not np.array_equal(layer(x).numpy(), layer(x).numpy())


# ------------------------------------------------------------------ the measured comparison (tiny, fast)
def test_world_qa_task_and_encoding():
    from minillm.phases.peft_compare import encode_qa, world_qa
    from minillm.tokenizer import load_default_tokenizer

    qa = world_qa()
    assert len(qa["train"]) == 2 * len(qa["test"]) == 60
    train_prompts = {p for p, _ in qa["train"]}
    assert not any(p in train_prompts for p, _ in qa["test"])  # held-out phrasings
    tok = load_default_tokenizer()
    x, y = encode_qa(tok, qa["test"][:3])
    assert (encode_qa(tok, qa["test"][:1], eos=True)[1] == tok.eos_id).sum() == 1  # optional end-of-text
    for i, (prompt, answer) in enumerate(qa["test"][:3]):
        target = [t for t in y[i] if t != -100]
        assert target == tok.encode(answer)  # the loss sees the answer only
        n = len(tok.encode(prompt))
        assert list(x[i, :n]) == tok.encode(prompt)


def test_compare_measures_every_method(tmp_path):
    from minillm.models.gpt import GPT, GPTConfig
    from minillm.phases.peft_compare import compare, format_comparison
    from minillm.tokenizer import load_default_tokenizer

    tok = load_default_tokenizer()
    GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=32, d_model=16, n_heads=2, n_layers=1)
        ).save_checkpoint(tmp_path / "g.npz", tok)
    res = compare(tmp_path / "g.npz", steps=2, batch_size=4, log=None)
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"full", "lora", "qlora", "adapter", "prefix"}
    for name, r in rows.items():
        assert r["optimizer_bytes"] == 8 * r["trainable"], name  # AdamW m and v, float32, trainable only
        assert 0 <= r["test_exact_match"] <= 1 and np.isfinite(r["pretrain_loss_after"])
    assert rows["full"]["trainable_pct"] == 100.0
    assert max(r["trainable_pct"] for n, r in rows.items() if n != "full") < 50
    assert rows["lora"]["merged_test_exact_match"] == rows["lora"]["test_exact_match"]
    table = format_comparison(res)
    assert "held-out EM" in table and "qlora" in table


class _HalfLinear(nn.Module):
    """A Linear-like layer of the surgery protocol that is no nn.Linear: in/out features and dequantize()."""

    def __init__(self, lin):
        super().__init__()
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.register_buffer("w16", lin.weight.data.astype(np.float16))
        self.bias = lin.bias

    def dequantize(self, dtype=None):
        return self.w16.astype(dtype or np.float32)

    def forward(self, x):
        return x @ Tensor(self.dequantize(x.dtype)).T + self.bias


def test_lora_wraps_any_module_of_the_linear_like_protocol():
    from minillm.peft.surgery import is_linear_like, is_quantized_linear

    minillm.manual_seed(0)
    seq = nn.Sequential(_HalfLinear(nn.Linear(3, 4)), nn.Tanh())
    assert is_linear_like(seq[0]) and is_quantized_linear(seq[0]) and not is_quantized_linear(nn.Linear(2, 2))
    apply_lora(seq, LoRAConfig(r=2, target_modules=("0",)))
    assert isinstance(seq[0], LoRALinear) and isinstance(seq[0].base_layer, _HalfLinear)
    trainable, total = trainable_parameters(seq)
    assert trainable == 2 * (3 + 4) and total == trainable + 4 + 3 * 4  # bias + the stored weight's numbers
    x = Tensor(np.ones((1, 3), np.float32))
    y = seq(x).numpy()
    merged = merge_and_unload(seq)
    assert isinstance(merged[0], nn.Linear)
    np.testing.assert_allclose(merged(x).numpy(), y, rtol=1e-6)
