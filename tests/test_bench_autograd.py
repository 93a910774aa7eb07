"""``minillm bench autograd --quick`` runs end to end (numbers only; no timing is asserted)."""

from minillm.cli import main


def test_bench_autograd_quick_runs(capsys):
    assert main(["bench", "autograd", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "engine" in out and "numpy" in out and "ratio" in out
