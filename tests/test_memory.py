"""The memory calculator against hand-computed figures, against minillm's own allocations, and its CLI."""

import numpy as np
import pytest

from minillm import optim
from minillm.cli import main as cli_main
from minillm.peft.lora import LoRAConfig, apply_lora, trainable_parameters
from minillm.peft.memory import (
    GPT2_SMALL,
    LLAMA_7B,
    TransformerShape,
    activation_bytes,
    estimate_memory,
    measured_training_bytes,
    predicted_training_bytes,
    shape_from_config_file,
    shape_from_gpt_config,
    shape_from_hf_config,
    shape_from_llama_config,
    zero_bytes_per_rank,
    zero_mixed_precision_bytes_per_rank,
    zero_peak_gathered_bytes,
    zero_shard,
)
from minillm.peft.qlora import apply_qlora, quantized_storage

LORA_7B = 32 * 2 * 8 * (4096 + 4096)  # r=8 on q_proj and v_proj: 4,194,304


def test_parameter_counts_of_known_models():
    assert LLAMA_7B.num_parameters() == 6_738_415_616  # LLaMA-7B
    gpt2 = TransformerShape(12, 768, 12, 50257, bias=True, norm="layer", tied_embeddings=True,
                            max_positions=1024)
    assert gpt2.num_parameters() == GPT2_SMALL.num_parameters() == 124_439_808  # GPT-2 small
    # Llama-2-70B-like GQA: 8 kv heads of 128 → k_proj, v_proj are 8192 × 1024
    gqa = TransformerShape(80, 8192, 64, 32000, d_ff=28672, gated_mlp=True, n_kv_heads=8)
    assert gqa.linear_shapes()["k_proj"] == (8192, 1024)
    assert gqa.num_parameters() == 68_976_648_192  # Llama-2-70B


def test_mixed_precision_is_16_bytes_per_param():
    e = estimate_memory(LLAMA_7B, "mixed", params=7_000_000_000)
    assert (e.weights, e.gradients, e.optimizer) == (14e9, 14e9, 84e9)  # 2 + 2 + 12 bytes/param (ZeRO)
    assert e.weights + e.gradients + e.optimizer == 16 * 7e9
    f = estimate_memory(LLAMA_7B, "full-fp32", params=7_000_000_000)
    assert (f.weights, f.gradients, f.optimizer) == (28e9, 28e9, 56e9)


def test_activation_formula_by_hand():
    # Korthikanti et al.: s·b·h·(34 + 5as/h) per layer; s=2048, b=1, h=4096, a=32 → 8,388,608 · 114
    per_layer = 2048 * 4096 * (34 + 5 * 32 * 2048 / 4096)
    assert per_layer == 956_301_312
    logits = 4 * 2048 * 32000
    assert activation_bytes(LLAMA_7B, 1, 2048) == 32 * per_layer + logits == 30_863_785_984
    assert activation_bytes(LLAMA_7B, 1, 2048, recompute=True) == 32 * 2 * 2048 * 4096 + logits
    assert activation_bytes(LLAMA_7B, 2, 2048) == 2 * activation_bytes(LLAMA_7B, 1, 2048)
    assert estimate_memory(LLAMA_7B, "full-fp32").activations == 2 * 32 * per_layer + logits


def test_lora_and_qlora_by_hand():
    N = LLAMA_7B.num_parameters()
    lo = estimate_memory(LLAMA_7B, "lora")
    assert lo.trainable == LORA_7B
    assert (lo.weights, lo.gradients, lo.optimizer) == (2 * N + 2 * LORA_7B, 2 * LORA_7B, 12 * LORA_7B)
    q = estimate_memory(LLAMA_7B, "qlora")
    n_q = 32 * (4 * 4096 ** 2 + 3 * 4096 * 11008)
    assert n_q == 6_476_005_376
    assert q.weights == pytest.approx(n_q * (4 + 8 / 64 + 32 / (64 * 256)) / 8 + 2 * (N - n_q) + 2 * LORA_7B)
    assert 3.8e9 < q.weights < 3.9e9
    assert q.total < lo.total < estimate_memory(LLAMA_7B, "mixed").total


def test_estimate_errors():
    with pytest.raises(ValueError, match="unknown method"):
        estimate_memory(LLAMA_7B, "sgd")
    with pytest.raises(ValueError, match="not divisible"):
        TransformerShape(2, 10, 3, 100)
    with pytest.raises(ValueError, match="unknown target"):
        estimate_memory(LLAMA_7B, "lora", lora_targets=("c_attn",))


def tiny_gpt():
    from minillm.models.gpt import GPT, GPTConfig

    return GPT(GPTConfig(vocab_size=50, context_length=16, d_model=32, n_heads=4, n_layers=2))


def one_step(model):
    ids = np.random.default_rng(0).integers(0, 50, (2, 12))
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    _, loss = model(ids, ids)
    loss.backward()
    opt.step()
    return measured_training_bytes(model, opt)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_predicted_bytes_equal_allocated_bytes(method):
    m = tiny_gpt()
    shape = shape_from_gpt_config(m.config)
    if method == "lora":
        apply_lora(m, LoRAConfig(r=4))
    t, n = trainable_parameters(m)
    assert n == shape.num_parameters() + (t if method == "lora" else 0)  # counted from the config
    measured = one_step(m)
    predicted = predicted_training_bytes(n, t)
    assert {k: measured[k] for k in predicted} == predicted


def test_qlora_storage_measured():
    m = tiny_gpt()
    apply_qlora(m, LoRAConfig(r=4))
    measured = one_step(m)
    st = quantized_storage(m)
    t, _ = trainable_parameters(m)
    assert measured["optimizer"] == 8 * t and measured["gradients"] == 4 * t
    assert measured["buffers"] == st["nf4_bytes"]  # the 4-bit weights are all the buffers there are
    assert st["bits_per_param"] > 4.127  # tiny layers pay for padding a partly used scale block


def test_cli_memory_prints_table(capsys):
    assert cli_main(["memory", "--params", "7e9", "--seq", "2048", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "7B parameters" in out
    for m in ("full-fp32", "mixed", "lora", "qlora"):
        assert m in out
    mixed = next(line for line in out.splitlines() if line.startswith("mixed"))
    assert mixed.split()[2:5] == ["14.00", "14.00", "84.00"]
    assert cli_main(["memory", "--method", "qlora", "--recompute", "on", "--layers", "2", "--hidden", "64",
                     "--heads", "4", "--vocab", "100", "--ffn", "256"]) == 0
    out = capsys.readouterr().out
    assert "qlora" in out and "mixed" not in out and "recompute on" in out


# ------------------------------------------------------------------ Llama, GQA, KV cache
def tiny_llama(tie: bool = False):
    from minillm.models.llama import Llama, LlamaConfig

    return Llama(LlamaConfig(vocab_size=50, context_length=16, d_model=32, n_heads=4, n_kv_heads=2,
                             n_layers=2, d_ff=48, tie_weights=tie))


@pytest.mark.parametrize("tie", [False, True])
def test_llama_prediction_equals_allocated_bytes(tie):
    m = tiny_llama(tie)
    shape = shape_from_llama_config(m.config)
    n = shape.num_parameters()
    assert n == m.num_parameters() == sum(p.size for p in m.parameters())
    assert shape.block_params() == sum(p.size for p in m.blocks[0].parameters())
    measured = one_step(m)
    assert {k: measured[k] for k in ("weights", "gradients", "optimizer")} == predicted_training_bytes(n, n)
    zero = zero_bytes_per_rank(n, 1, 0)
    assert (zero["params"], zero["grads"], zero["optimizer"]) == (
        measured["weights"], measured["gradients"], measured["optimizer"])


def real_cache_bytes(model, prompt_len: int, new: int, batch: int) -> int:
    """Bytes of the cache minillm holds after a prefill of ``prompt_len`` and ``new`` one-token steps."""
    from minillm.nn import evaluating

    ids = np.random.default_rng(0).integers(0, 50, (batch, prompt_len))
    with evaluating(model):
        _, cache = model.forward_cached(ids)
        for _ in range(new):
            _, cache = model.forward_cached(ids[:, :1], past_kv=cache)
    return sum(int(k.data.nbytes) + int(v.data.nbytes) for k, v in cache)


def test_kv_cache_bytes_equal_the_cache_minillm_allocates():
    llama, gpt = tiny_llama(), tiny_gpt()
    for model, shape in ((llama, shape_from_llama_config(llama.config)),
                         (gpt, shape_from_gpt_config(gpt.config))):
        assert real_cache_bytes(model, 5, 3, batch=2) == shape.kv_cache_bytes(8, 2, 4)
    assert shape_from_llama_config(llama.config).kv_cache_bytes(8, 2) == llama.kv_cache_bytes(8, 2)
    assert llama.kv_cache_bytes(8, 2) == 2 * 2 * 2 * 8 * 8 * 2 * 4  # 2·L·n_kv·hd·seq·batch·4 (GQA halves it)
    assert LLAMA_7B.kv_cache_bytes(2048, 1, 2) == 2 * 32 * 4096 * 2048 * 2  # 1.07 GB in 16 bits


def test_hf_and_minillm_config_files(tmp_path):
    import json

    hf_gpt2 = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257,
               "n_positions": 1024, "n_inner": None}
    assert shape_from_hf_config(hf_gpt2).num_parameters() == 124_439_808
    hf_llama = {"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096,
                "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
                "vocab_size": 32000}
    assert shape_from_hf_config(hf_llama).num_parameters() == 6_738_415_616
    with pytest.raises(ValueError, match="not supported"):
        shape_from_hf_config({"model_type": "bert"})
    m = tiny_llama()
    m.save_checkpoint(tmp_path / "llama.npz")
    from dataclasses import asdict

    (tmp_path / "llama.json").write_text(json.dumps(asdict(m.config)))
    (tmp_path / "gpt.json").write_text(json.dumps({"kind": "gpt", "config": asdict(tiny_gpt().config)}))
    (tmp_path / "config.json").write_text(json.dumps(hf_gpt2))
    for name in ("llama.npz", "llama.json"):
        assert shape_from_config_file(tmp_path / name).num_parameters() == m.num_parameters()
    assert shape_from_config_file(tmp_path / "gpt.json").num_parameters() == tiny_gpt().num_parameters()
    assert shape_from_config_file(tmp_path / "config.json").num_parameters() == 124_439_808


def test_cli_arch_config_and_kv_line(tmp_path, capsys):
    assert cli_main(["memory", "--arch", "gpt2", "--method", "full-fp32"]) == 0
    out = capsys.readouterr().out
    assert "0.124B parameters" in out and "GPT-2 124M" in out
    assert "full-fp32 0.151 GB" in out  # 2·12·768·2048·4 = 150,994,944 bytes
    tiny_llama().save_checkpoint(tmp_path / "m.npz")
    assert cli_main(["memory", "--config", str(tmp_path / "m.npz"), "--seq", "16"]) == 0
    out = capsys.readouterr().out
    assert "(2 kv)" in out and "m.npz (llama)" in out
    assert cli_main(["memory", "--arch", "gpt2", "--layers", "24", "--method", "mixed"]) == 0
    assert "24 layers" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--arch", "gpt2", "--config", "{tmp}/m.npz"], "not allowed with argument"),
    (["--config", "{tmp}/m.npz", "--layers", "2"], "drop --layers"),
    (["--arch", "bert"], "invalid choice"),
    (["--zero-stage", "2"], "go together"), (["--world-size", "8"], "go together"),
    (["--zero-stage", "4", "--world-size", "8"], "invalid choice"),
    (["--zero-stage", "1", "--world-size", "0"], "--world-size"),
    (["--heads", "32", "--kv-heads", "5"], "must divide"),
    (["--config", "{tmp}/bad.json"], "neither a checkpoint nor a JSON"),
    (["--config", "{tmp}/bert.json"], "not supported"),
])
def test_cli_memory_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    from minillm.cli import console_main

    tiny_llama().save_checkpoint(tmp_path / "m.npz")
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "bert.json").write_text('{"model_type": "bert"}')
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as e:
        raise SystemExit(console_main(["memory", *argv]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


# ------------------------------------------------------------------ ZeRO
def test_zero_rule_by_hand():
    n, N = 10, 4  # shard = ceil(10/4) = 3, the flat buffer padded to 12
    assert zero_shard(n, N) == 3
    assert zero_bytes_per_rank(n, N, 0) == {"params": 40, "grads": 40, "optimizer": 80}
    assert zero_bytes_per_rank(n, N, 1) == {"params": 40, "grads": 40, "optimizer": 24}
    assert zero_bytes_per_rank(n, N, 2) == {"params": 40, "grads": 12, "optimizer": 24}
    assert zero_bytes_per_rank(n, N, 3) == {"params": 12, "grads": 12, "optimizer": 24}
    assert zero_bytes_per_rank(n, N, 3, bytes_per_value=2) == {"params": 6, "grads": 6, "optimizer": 12}
    with pytest.raises(ValueError, match="stage"):
        zero_bytes_per_rank(n, N, 4)
    with pytest.raises(ValueError, match="world_size"):
        zero_shard(n, 0)


def test_zero_shards_of_a_real_flat_buffer():
    m = tiny_llama()
    flat = np.concatenate([p.data.ravel() for p in m.parameters()])
    N = 3
    padded = np.concatenate([flat, np.zeros(-len(flat) % N, flat.dtype)])
    shards = np.split(padded, N)
    z = zero_bytes_per_rank(len(flat), N, 3)
    assert all(s.nbytes == z["params"] == z["grads"] == z["optimizer"] // 2 for s in shards)
    assert zero_peak_gathered_bytes(shape_from_llama_config(m.config)) == sum(
        p.data.nbytes for p in m.blocks[0].parameters())


def test_zero_paper_numbers():
    # Rajbhandari et al. 2020, Figure 1 / §5: Ψ = 7.5B, N_d = 64, K = 12
    psi, N = 7_500_000_000, 64
    gb = [round(sum(zero_mixed_precision_bytes_per_rank(psi, N, s).values()) / 1e9, 1) for s in range(4)]
    assert gb == [120.0, 31.4, 16.6, 1.9]
    assert sum(zero_mixed_precision_bytes_per_rank(psi, N, 1).values()) == 4 * psi + 12 * psi // N
    assert sum(zero_mixed_precision_bytes_per_rank(psi, N, 2).values()) == 2 * psi + 14 * psi // N


def test_cli_zero_table_7b_on_8_gpus(capsys):
    assert cli_main(["memory", "--arch", "llama", "--zero-stage", "all", "--world-size", "8"]) == 0
    out = capsys.readouterr().out
    psi = LLAMA_7B.num_parameters()
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1] in "0123"}
    assert sorted(rows) == ["0", "1", "2", "3"]
    for s, row in rows.items():
        fp32 = zero_bytes_per_rank(psi, 8, int(s))
        mixed = zero_mixed_precision_bytes_per_rank(psi, 8, int(s))
        assert row[4] == f"{sum(fp32.values()) / 1e9:.2f}" and row[9] == f"{sum(mixed.values()) / 1e9:.2f}"
    assert rows["3"][9] == f"{16 * psi / 8 / 1e9:.2f}" == "13.48"
    assert "peak gathered" in out
    assert cli_main(["memory", "--arch", "gpt2", "--zero-stage", "1", "--world-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "peak gathered" not in out and "62,219,904" in out
