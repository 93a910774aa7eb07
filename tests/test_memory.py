"""The memory calculator against hand-computed figures, against minillm's own allocations, and its CLI."""

import numpy as np
import pytest

from minillm import optim
from minillm.cli import main as cli_main
from minillm.peft.lora import LoRAConfig, apply_lora, trainable_parameters
from minillm.peft.memory import (
    LLAMA_7B,
    TransformerShape,
    activation_bytes,
    estimate_memory,
    measured_training_bytes,
    predicted_training_bytes,
    shape_from_gpt_config,
)
from minillm.peft.qlora import apply_qlora, quantized_storage

LORA_7B = 32 * 2 * 8 * (4096 + 4096)  # r=8 on q_proj and v_proj: 4,194,304


def test_parameter_counts_of_known_models():
    assert LLAMA_7B.num_parameters() == 6_738_415_616  # LLaMA-7B
    gpt2 = TransformerShape(12, 768, 12, 50257, bias=True, norm="layer", tied_embeddings=True,
                            max_positions=1024)
    assert gpt2.num_parameters() == 124_439_808  # GPT-2 small


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
