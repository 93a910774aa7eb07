"""`minillm bench distributed --quick` launches one process and 2 MPI ranks and reports tokens/s, their
ratio and the collectives' share of the step (the timings are never asserted: they are the benchmark)."""

import re

from minillm.bench.distributed import TimedComm
from minillm.cli import main
from minillm.distributed import LocalComm


def test_bench_distributed_quick_reports_each_strategy_against_one_process(capsys):
    from optional import optional_import

    optional_import("mpi4py", "bench distributed needs mpi4py: pip install 'minillm[distributed]'")
    assert main(["bench", "distributed", "--quick"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"1 process +[\d,]+ tokens/s", out), out
    for strategy in ("ddp", "zero1", "zero2", "zero3"):
        line = re.search(rf"2 ranks, {strategy} +[\d,]+ tokens/s +([\d.]+)x \[[\d.]+–[\d.]+\]  collectives "
                         rf"+([\d.]+)% of the step", out)
        assert line and float(line.group(1)) > 0 and 0 <= float(line.group(2)) <= 100, out


def test_timed_comm_counts_the_seconds_in_collectives_and_passes_results_through():
    import numpy as np

    comm = TimedComm(LocalComm())
    a = np.arange(4.0)
    assert comm.all_reduce(a).tolist() == a.tolist() and comm.all_gather(a).tolist() == a.tolist()
    assert comm.reduce_scatter(a).tolist() == a.tolist() and comm.broadcast(a) is a
    comm.barrier()
    assert comm.seconds > 0 and (comm.rank, comm.world_size) == (0, 1)
