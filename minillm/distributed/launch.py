"""Ranks on the command line: the ``--distributed`` option, the checks made before any work, and one
rank's failure stopping every rank.

An MPI job has no way back from a rank that stops alone: the others wait in their next collective for
ever. So a rank that fails prints one line naming itself and calls ``MPI_Abort``, which makes mpiexec stop
every rank. Checkpoints are written atomically by rank 0, so the last one written stays good.
"""

from __future__ import annotations

import sys

from minillm.distributed.comm import INSTALL_HINT, launched_by_mpiexec, launched_rank, launched_world_size
from minillm.distributed.ddp import check_batch_size
from minillm.distributed.zero3 import STRATEGIES


def add_argument(p) -> None:
    """``--distributed ddp|zero1|zero2|zero3`` (validated by ``check_launch`` before any work)."""
    p.add_argument("--distributed", choices=STRATEGIES, default=None,
                   help="data-parallel training on the ranks mpiexec starts (mpiexec -n N minillm ...): ddp, "
                        "or ZeRO stage 1/2/3; --batch-size is the global batch and must be divisible by N")


def check_launch(command: str, strategy: str | None, batch_size: int) -> None:
    """ValueError, in one line, when the processes and the options do not fit together: ranks started by
    mpiexec without ``--distributed`` (each would train the same model and write the same files),
    ``--distributed`` without mpiexec, no mpi4py, or a global batch that does not split over the ranks."""
    n = launched_world_size()
    if strategy is None:
        if n > 1:
            raise ValueError(f"{command}: mpiexec started {n} ranks but --distributed is not set: each would "
                             f"train the same model and write the same files; add --distributed "
                             f"{'|'.join(STRATEGIES)}")
        return
    if not launched_by_mpiexec():
        raise ValueError(f"{command}: --distributed {strategy} trains on ranks that mpiexec starts, and this "
                         f"process was started alone: run mpiexec -n 2 minillm {command} ... "
                         f"--distributed {strategy}")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise ValueError(f"{command}: --distributed needs mpi4py and an MPI: {INSTALL_HINT}") from None
    check_batch_size(batch_size, n)


def rank_label() -> str:
    """"rank r of N" when mpiexec started several ranks, else ""."""
    n = launched_world_size()
    return f"rank {launched_rank()} of {n}" if n > 1 else ""


def stop_all_ranks(code: int) -> None:
    """After this rank failed (already reported): make mpiexec stop every rank, exit status ``code``.
    Does nothing in a single process, or when MPI was never loaded (no collective can be waiting)."""
    if launched_world_size() < 2 or "mpi4py.MPI" not in sys.modules:
        return
    print(f"minillm ({rank_label()}): stopping every rank (MPI_Abort); the last checkpoint written stays "
          f"good", file=sys.stderr, flush=True)
    sys.modules["mpi4py.MPI"].COMM_WORLD.Abort(code)
