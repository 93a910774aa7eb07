"""Data parallelism across processes: communicators (MPI, NCCL, a world of 1), DDP and ZeRO stages 1-3.

``minillm.train.train(..., distributed=make_strategy("zero2"))`` under ``mpiexec -n N`` trains on N ranks;
the same call in one process runs the same code on a world of 1.
"""

from minillm.distributed.comm import Comm, LocalComm, MPIComm, NCCLComm, init_comm, launched_world_size
from minillm.distributed.ddp import DDP, DataParallel, check_batch_size, flat_params
from minillm.distributed.zero import Layout, ShardedAdamW, ZeRO
from minillm.distributed.zero3 import STRATEGIES, ZeRO3, make_strategy

__all__ = ["Comm", "LocalComm", "MPIComm", "NCCLComm", "init_comm", "launched_world_size", "DDP",
           "DataParallel", "check_batch_size", "flat_params", "STRATEGIES", "Layout", "ShardedAdamW", "ZeRO",
           "ZeRO3", "make_strategy"]
