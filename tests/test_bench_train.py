"""`minillm bench train` and `minillm bench peft` run end to end (quick configurations) and report the
figures the README quotes; the timings themselves are benchmarks, never asserted here."""

import re

from minillm.bench.train import step_flops
from minillm.cli import main


def test_bench_train_quick_reports_throughput_mfu_and_kv_cache(capsys):
    assert main(["bench", "train", "--quick"]) == 0
    out = capsys.readouterr().out
    mfu = re.search(r"= +([\d.]+)% of matmul rate \(MFU\)", out)
    assert mfu and 0 < float(mfu.group(1)) < 100, out
    assert "tokens/s" in out and "same tokens: True" in out
    assert "python tests/torch_reference.py" in out  # how to get the PyTorch side by side


def test_step_flops_counts_six_per_parameter_plus_attention():
    assert step_flops(1000, 2, 8, 4, tokens=10) == (6 * 1000 + 12 * 2 * 8 * 4) * 10


def test_bench_peft_quick_runs(capsys):
    assert main(["bench", "peft", "--quick"]) == 0
    assert capsys.readouterr().out.strip()
