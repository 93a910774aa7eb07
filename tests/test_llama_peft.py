"""LoRA, QLoRA, prefix tuning and adapters on a tiny Llama (grouped-query attention) as on GPT: training
moves only the adapter, switching it off gives the base exactly, generation with the KV cache equals
generation without, adapters save and load alone; and DPO with the adapter switched off as its reference."""

import copy

import numpy as np
import pytest

import minillm
from minillm.generate import generate
from minillm.models import GPT, GPTConfig, Llama, LlamaConfig
from minillm.nn import evaluating
from minillm.peft.lora import merge_lora, trainable_parameters
from minillm.peft.peft_model import (
    PEFT_TYPES,
    PeftConfig,
    disable_adapter,
    get_peft_model,
    load_adapter,
    save_adapter,
    unload,
)
from minillm.peft.prefix import PrefixTuning, prefix_param_count
from minillm.tensor import no_grad
from minillm.train import TrainConfig, lm_loss, train

VOCAB, CTX = 40, 16


def tiny_llama(seed=0, n_kv_heads=2):
    minillm.manual_seed(seed)
    return Llama(LlamaConfig(vocab_size=VOCAB, context_length=CTX, d_model=16, n_heads=4,
                             n_kv_heads=n_kv_heads, n_layers=2))


def tiny_gpt(seed=0):
    minillm.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, context_length=CTX, d_model=16, n_heads=2, n_layers=2))


def config(method):
    targets = ("q_proj", "k_proj", "v_proj", "out_proj", "gate_proj", "up_proj", "down_proj") \
        if method in ("lora", "qlora") else None
    return PeftConfig(method, r=4, target_modules=targets, num_virtual_tokens=3, bottleneck=4)


def perturbed(model):
    """The adapter moved off its identity start (B = 0, up = 0), so every path is live."""
    rng = np.random.default_rng(1)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data + 0.1 * rng.standard_normal(p.shape).astype(p.dtype)
    return model


IDS = (np.arange(24) * 7 % VOCAB).reshape(2, 12)


def logits(model, ids=IDS):
    with evaluating(model), no_grad():
        return model(ids)[0].numpy()


@pytest.mark.parametrize("method", PEFT_TYPES)
def test_each_method_trains_a_llama_and_moves_only_the_adapter(method):
    model = get_peft_model(tiny_llama(), config(method))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {k: v.copy() for k, v in model.state_dict().items() if k not in trained}
    x, y = IDS[:, :-1], IDS[:, 1:]
    cfg = TrainConfig(steps=20, lr=3e-2, warmup=0, eval_every=0, batch_size=2, progress=False,
                      weight_decay=0.0)
    hist = train(model, lm_loss, lambda split, rng: (x, y), cfg)
    assert hist["loss"][-1] < hist["loss"][0] - 0.05  # a prefix moves a random base least
    after = model.state_dict()
    assert frozen and all(np.array_equal(after[k], v) for k, v in frozen.items())
    n_trainable, n_all = trainable_parameters(model)
    assert 0 < n_trainable < 0.5 * n_all


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt])
@pytest.mark.parametrize("method", PEFT_TYPES)
def test_adapter_off_is_the_base_exactly_and_cached_generation_matches(make, method):
    model = perturbed(get_peft_model(make(), config(method) if make is tiny_llama else PeftConfig(method)))
    base = unload(copy.deepcopy(model))  # the frozen base as the adapter sees it (QLoRA: its NF4 weights)
    with disable_adapter(model):
        np.testing.assert_array_equal(logits(model), logits(base))
    assert not np.allclose(logits(model), logits(base), atol=1e-4)  # the adapter does something when on
    for prompt in (IDS[0, :3], IDS[:, :5]):
        cached = generate(model, prompt, 9, greedy=True)
        np.testing.assert_array_equal(cached, generate(model, prompt, 9, greedy=True, use_cache=False))


def test_lora_merge_gives_the_unmerged_logits_on_llama():
    model = perturbed(get_peft_model(tiny_llama(), config("lora")))
    before = logits(model)
    merge_lora(model)
    np.testing.assert_allclose(logits(model), before, rtol=1e-5, atol=1e-5)


def test_prefix_with_fewer_kv_heads_than_query_heads():
    model = tiny_llama(n_kv_heads=1)  # multi-query: one key/value head for 4 query heads
    pt = PrefixTuning(model, num_virtual_tokens=3, hidden=8)
    kv = pt.prefix_kv_tensor()
    assert kv.shape == (2, 2, 1, 3, 4)  # (L, 2, n_kv_heads, P, head_dim)
    assert pt.prefix_mlp[2].out_features == 2 * 2 * 1 * 4  # 2·L·n_kv·hs, not 2·L·d_model
    direct = PrefixTuning(tiny_llama(n_kv_heads=1), num_virtual_tokens=3, reparameterize=False)
    assert direct.prefix_kv.size == prefix_param_count(2, 16, 3, kv_width=4) == 48
    before = logits(pt)
    pt.fold()
    np.testing.assert_allclose(logits(pt), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", PEFT_TYPES)
def test_a_saved_adapter_loads_onto_its_base_alone(method, tmp_path):
    base = tiny_llama()
    model = perturbed(get_peft_model(copy.deepcopy(base), config(method)))
    save_adapter(model, config(method), tmp_path / "a.npz", "base.npz")
    assert (tmp_path / "a.npz").stat().st_size < 40_000  # the base's float32 weights alone are 50 KB
    loaded = load_adapter(copy.deepcopy(base), tmp_path / "a.npz")
    np.testing.assert_array_equal(logits(loaded), logits(model))
    with pytest.raises(ValueError, match="another base model: this one has n_kv_heads 4"):
        load_adapter(tiny_llama(n_kv_heads=4), tmp_path / "a.npz")


def test_unknown_target_modules_are_named_with_the_models_own():
    with pytest.raises(ValueError, match="c_attn: no Linear layer of this Llama .* gate_proj"):
        get_peft_model(tiny_llama(), PeftConfig("lora", target_modules=("q_proj", "c_attn")))


# ------------------------------------------------------------------ DPO: the adapter off as its reference
def dpo_setup(make, method):
    from test_dpo import pairs_for

    from minillm.phases.dpo import PreferenceDataset

    base = make()
    policy = perturbed(get_peft_model(copy.deepcopy(base), PeftConfig(method, r=2, num_virtual_tokens=2)))
    return base, policy, PreferenceDataset(pairs_for(n=6, vocab=VOCAB))


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt])
@pytest.mark.parametrize("method", PEFT_TYPES)
def test_adapter_off_reference_equals_a_frozen_copy_of_the_base(make, method):
    from minillm.phases.dpo import (
        AdapterOffReference,
        concatenated_logps,
        frozen_reference,
        reference_weight_bytes,
        weight_bytes,
    )

    base, policy, ds = dpo_setup(make, method)
    copy_ref = frozen_reference(unload(copy.deepcopy(policy)))
    batch = ds.batch(range(len(ds)))
    with no_grad():
        off = [t.numpy() for t in concatenated_logps(AdapterOffReference(policy), batch)]
        frozen = [t.numpy() for t in concatenated_logps(copy_ref, batch)]
    np.testing.assert_array_equal(off[0], frozen[0])
    np.testing.assert_array_equal(off[1], frozen[1])
    measured = reference_weight_bytes(policy)
    assert measured["saved"] == weight_bytes(copy_ref) == measured["frozen_copy"] - measured["adapter_off"]
    if method != "qlora":  # QLoRA's base is its NF4 form, smaller than the float base it came from
        assert measured["saved"] == weight_bytes(base) == sum(p.data.nbytes for p in base.parameters())


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_dpo_metrics_at_step_0_match_between_the_two_reference_paths(method):
    from minillm.phases.dpo import DPOConfig, frozen_reference, train_dpo

    _, policy, ds = dpo_setup(tiny_llama, method)
    cfg = TrainConfig(steps=2, lr=1e-3, warmup=0, eval_every=0, batch_size=4, progress=False, seed=3)
    h_off, _ = train_dpo(copy.deepcopy(policy), ds, DPOConfig(beta=0.5), cfg)  # adapter off: the default
    h_copy, _ = train_dpo(copy.deepcopy(policy), copy.deepcopy(ds), DPOConfig(beta=0.5), cfg,
                          reference=frozen_reference(unload(copy.deepcopy(policy))))
    for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert h_off[k][0] == h_copy[k][0], k
