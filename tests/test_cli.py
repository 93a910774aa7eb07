"""The command line end to end on tiny configs: pretrain (world or file, resume), generate, pipeline."""

import numpy as np
import pytest

import minillm
from minillm.cli import COMMANDS, main
from minillm.phases.pretrain import OBJECTIVES

TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--context-length", "16", "--batch-size", "4",
        "--num-stories", "60", "--eval-every", "3", "--eval-steps", "2", "--warmup", "1", "--no-progress"]


def test_pretrain_resume_and_generate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--objective", "clm", "--steps", "6", "--checkpoint-every", "3",
                 "--out", str(out), "--export", str(tmp_path / "small.npz"), "--export-dtype", "float16",
                 *TINY]) == 0
    text = capsys.readouterr().out
    assert "val loss" in text and "perplexity" in text and "sample:" in text
    state = minillm.load(out / "checkpoint.npz")
    assert state["step"] == 6 and len(state["history"]["loss"]) == 6
    # resuming a finished 6-step run for 8 steps continues at step 7
    assert main(["pretrain", "--steps", "8", "--checkpoint-every", "3", "--out", str(out),
                 "--resume", str(out / "checkpoint.npz"), *TINY]) == 0
    assert minillm.load(out / "checkpoint.npz")["step"] == 8
    capsys.readouterr()
    for ckpt in (out / "model.npz", tmp_path / "small.npz"):
        assert main(["generate", "--ckpt", str(ckpt), "--prompt", "Mia went", "--max-new-tokens", "5",
                     "--seed", "1", "--num-samples", "2"]) == 0
        printed = capsys.readouterr().out
        assert printed.startswith("Mia went") and "---" in printed


def test_pretrain_arch_llama_trains_a_grouped_query_decoder_that_the_other_commands_load(tmp_path, capsys):
    from minillm.models import Llama
    from minillm.models.auto import load_causal_lm

    out = tmp_path / "llama"
    assert main(["pretrain", "--arch", "llama", "--n-kv-heads", "1", "--steps", "4", "--out", str(out),
                 *TINY]) == 0
    assert capsys.readouterr().out.startswith("Llama ")
    model, _ = load_causal_lm(out / "model.npz")
    assert isinstance(model, Llama) and (model.config.n_heads, model.config.n_kv_heads) == (2, 1)
    assert len(minillm.load(out / "checkpoint.npz")["history"]["loss"]) == 4
    assert main(["pretrain", "--init", str(out / "model.npz"), "--steps", "2",
                 "--out", str(tmp_path / "more"), *TINY]) == 0  # --init keeps the checkpoint's class
    assert isinstance(load_causal_lm(tmp_path / "more" / "model.npz")[0], Llama)
    assert main(["generate", "--ckpt", str(out / "model.npz"), "--prompt", "Mia",
                 "--max-new-tokens", "3"]) == 0


def test_pretrain_on_a_user_file(tmp_path, capsys):
    data = tmp_path / "my.txt"
    data.write_text("the cat sat on the mat. <|endoftext|> é ✓\n" * 40, encoding="utf-8")
    assert main(["pretrain", "--data", str(data), "--steps", "3", "--out", str(tmp_path / "o"), *TINY]) == 0
    assert "val loss" in capsys.readouterr().out


def test_pretrain_reports_bad_data_at_parse_time(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--data", str(tmp_path / "missing.txt"), "--steps", "1", *TINY])
    assert e.value.code == 2 and "missing.txt' does not exist" in capsys.readouterr().err


def test_objectives_are_extensible():
    assert {"clm", "mlm", "nsp", "mlm+nsp", "denoise", "span"} == set(OBJECTIVES)


def test_cli_is_a_table_of_command_modules():
    """Every command is a module with add_arguments(parser) and main(args); cli.py defines no options."""
    import argparse
    import ast
    import importlib
    import inspect

    import minillm.cli

    for name, (module, help_line) in COMMANDS.items():
        mod = importlib.import_module(module)
        assert callable(mod.add_arguments) and callable(mod.main) and help_line, name
        mod.add_arguments(argparse.ArgumentParser())  # registers without error on a fresh parser
    calls = [n.func.attr for n in ast.walk(ast.parse(inspect.getsource(minillm.cli)))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    assert calls.count("add_argument") == 1  # only the global --backend


def test_generate_greedy_is_deterministic_and_cache_free_agrees(capsys):
    from minillm.shipped import SHIPPED_GPT

    if not SHIPPED_GPT.exists():
        pytest.skip("the shipped gpt_tiny.npz is not built yet")
    outs = []
    for extra in ([], ["--no-cache"]):
        main(["generate", "--prompt", "Tom lives in", "--max-new-tokens", "12", "--greedy", *extra])
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith("Tom lives in")


def test_pipeline_quick(tmp_path, capsys):
    assert main(["pipeline", "--quick", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "pre-training" in text and "val perplexity" in text and "all phases done" in text
    for shipped in ("gpt_sft_code.npz: code pass@1", "gpt_sft_cot.npz: direct by steps",  # the shipped SFT
                    "gpt_sft.npz: right tool / arguments / answer"):  # models' effects are reported too
        assert f"shipped {shipped}" in text, text
    assert (tmp_path / "pretrain" / "model.npz").exists()
    assert np.isfinite(minillm.load(tmp_path / "pretrain" / "checkpoint.npz")["history"]["val_loss"]).all()


# ------------------------------------------------------------------------------- the command's errors
@pytest.mark.parametrize("argv,expect", [
    (["pretrain", "--objective", "mlm", "--story-weights", "sunny=1"], "unknown story kind 'sunny'"),
    (["generate", "--ckpt", "{tmp}/corrupt.npz"], "corrupt.npz"),
    (["finetune-classify", "--ckpt", "{tmp}/corrupt.npz"], "corrupt.npz"),
])
def test_the_command_reports_bad_input_in_one_line(argv, expect, tmp_path):
    """`minillm ...` (``python -m minillm``) turns bad input into one stderr line and exit status 2, never
    a traceback; MINILLM_TRACEBACK=1 brings the traceback back."""
    import os
    import subprocess
    import sys

    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    env.pop("MINILLM_TRACEBACK", None)
    r = subprocess.run([sys.executable, "-m", "minillm", *argv], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("minillm: error: "), r.stderr
    assert expect in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = subprocess.run([sys.executable, "-m", "minillm", *argv], capture_output=True, text=True,
                       env={**env, "MINILLM_TRACEBACK": "1"}, timeout=120)
    assert r.returncode == 1 and "Traceback" in r.stderr


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_prints_its_help(command, capsys):
    """``--help`` formats every option's help (a stray ``%`` in one breaks argparse for the whole command)."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and f"minillm {command}" in capsys.readouterr().out
