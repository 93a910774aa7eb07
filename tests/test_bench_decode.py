"""``minillm bench decode`` runs end to end on the tiny shape (numbers only; no timing is asserted)."""

import re

import pytest

from minillm.bench.decode import make_model
from minillm.cli import console_main, main


def test_bench_decode_tiny_runs(capsys):
    assert main(["bench", "decode", "--shape", "tiny", "--prompt-len", "4", "--new-tokens", "4",
                 "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "tokens/s" in line]
    assert [r.split()[0] for r in rows] == ["gpt", "llama"], out
    for r in rows:
        assert "no cache" in r and "KV cache" in r and "same tokens: True" in r
        assert re.search(r"ratio +[\d.]+x \[[\d.]+-[\d.]+\]", r), r


def test_bench_decode_quick_one_family(capsys):
    assert main(["bench", "decode", "--quick", "--family", "llama"]) == 0
    out = capsys.readouterr().out
    assert "shape tiny" in out and "llama" in out and "gpt " not in out


def test_gpt2_shape_is_124m_and_llama_about_the_same():
    import minillm.bench.decode as d

    c = d.SHAPES["gpt2"]
    emb, L, h = c["vocab_size"] * c["d_model"], c["n_layers"], c["d_model"]
    assert emb + c["context_length"] * h + L * (12 * h * h + 13 * h) + 2 * h == 124_439_808
    from minillm.models.llama import LlamaConfig
    from minillm.peft.memory import shape_from_llama_config

    llama = shape_from_llama_config(LlamaConfig(**c, tie_weights=True)).num_parameters()
    assert llama == 123_551_232  # SwiGLU d_ff 2048 = 8/3·768, tied head: within 1% of GPT-2's count
    assert abs(make_model("llama", "tiny").num_parameters() / make_model("gpt", "tiny").num_parameters()
               - 1) < 0.05


@pytest.mark.parametrize("argv, message", [
    (["--shape", "tiny", "--prompt-len", "60", "--new-tokens", "8"], "context length 64"),
    (["--new-tokens", "0"], "--new-tokens"), (["--shape", "huge"], "invalid choice"),
])
def test_bench_decode_bad_input(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(console_main(["bench", "decode", *argv]))
    assert e.value.code == 2 and message in capsys.readouterr().err
