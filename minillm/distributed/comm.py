"""Communicators: the five collectives data parallelism needs, over MPI (CPU), NCCL (GPU) or a world of 1.

Every engine speaks the same small interface, so DDP and ZeRO are written once:

* ``all_reduce(a, op)``     every rank gets op(a₀, …, a_{N-1}) (op: "sum", "mean", "max", "min")
* ``reduce_scatter(flat)``  flat (N·s,) on each rank → this rank's (s,) slice of the sum
* ``all_gather(shard)``     shard (s,) on each rank → their concatenation (N·s,), rank order
* ``broadcast(a, root)``    every rank gets root's ``a``
* ``barrier()``             wait until every rank gets here

``init_comm()`` picks MPI when the process was started by ``mpiexec -n N`` with N > 1, else ``LocalComm``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy

from minillm import backend as B

OPS = ("sum", "mean", "max", "min")
# what mpiexec sets: MPICH/Intel (PMI), Open MPI, and the PMIx/Slurm launchers
WORLD_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID", "SLURM_PROCID")
INSTALL_HINT = "pip install 'minillm[distributed]'"


class Comm:
    """A group of ``world_size`` ranks; this process is ``rank``. Subclasses implement the collectives."""

    rank: int = 0
    world_size: int = 1

    def all_reduce(self, array, op: str = "sum"):
        raise NotImplementedError

    def reduce_scatter(self, flat_array):
        raise NotImplementedError

    def all_gather(self, shard):
        raise NotImplementedError

    def broadcast(self, array, root: int = 0):
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    # shared checks, so every engine rejects the same bad input with the same message
    def _check_op(self, op: str) -> None:
        if op not in OPS:
            raise ValueError(f"{type(self).__name__}.all_reduce: op must be one of {OPS}, got {op!r}")

    def _shard_size(self, flat) -> int:
        if flat.ndim != 1 or flat.size % self.world_size:
            raise ValueError(f"{type(self).__name__}.reduce_scatter: needs a flat array whose length is a "
                             f"multiple of world size {self.world_size}, got shape {flat.shape} (pad it)")
        return flat.size // self.world_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size})"


class LocalComm(Comm):
    """A world of one process: every collective is a copy, so single-process runs take the same code path."""

    def all_reduce(self, array, op: str = "sum"):
        self._check_op(op)
        return array.copy()

    def reduce_scatter(self, flat_array):
        self._shard_size(flat_array)
        return flat_array.copy()

    def all_gather(self, shard):
        return shard.reshape(-1).copy()

    def broadcast(self, array, root: int = 0):
        return array

    def barrier(self) -> None:
        pass


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"distributed training over MPI needs mpi4py and an MPI library: "
                          f"{INSTALL_HINT}") from e
    return MPI


class MPIComm(Comm):
    """mpi4py's ``COMM_WORLD`` with its buffer-based (upper-case, no pickling) collectives on contiguous
    NumPy arrays. CuPy arrays go through the host (no CUDA-aware MPI assumed); on GPUs use ``NCCLComm``."""

    def __init__(self, comm=None):
        self.MPI = _import_mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        self._ops = {"sum": self.MPI.SUM, "mean": self.MPI.SUM, "max": self.MPI.MAX, "min": self.MPI.MIN}

    def all_reduce(self, array, op: str = "sum"):
        self._check_op(op)
        send = _host(array)
        out = numpy.empty_like(send)
        self.comm.Allreduce(send, out, op=self._ops[op])
        if op == "mean":
            out /= self.world_size
        return B.xp.asarray(out)

    def reduce_scatter(self, flat_array):
        send = _host(flat_array)
        out = numpy.empty(self._shard_size(send), dtype=send.dtype)
        self.comm.Reduce_scatter_block(send, out, op=self.MPI.SUM)
        return B.xp.asarray(out)

    def all_gather(self, shard):
        send = _host(shard).reshape(-1)
        out = numpy.empty(send.size * self.world_size, dtype=send.dtype)
        self.comm.Allgather(send, out)
        return B.xp.asarray(out)

    def broadcast(self, array, root: int = 0):
        buf = _host(array).copy()  # a private contiguous buffer: Bcast writes into it on every rank but root
        self.comm.Bcast(buf, root=root)
        array[...] = B.xp.asarray(buf)
        return array

    def barrier(self) -> None:
        self.comm.Barrier()


def _host(array) -> numpy.ndarray:
    """A contiguous host copy or view of ``array`` (NumPy or CuPy), the kind of buffer MPI reads."""
    return numpy.ascontiguousarray(B.to_numpy(array))


class NCCLComm(Comm):
    """NCCL over ``cupy.cuda.nccl`` on CuPy arrays, one GPU per rank (rank mod the GPU count). NCCL needs
    every rank to hold the same unique id: rank 0 makes it and MPI broadcasts it (``MPIComm``)."""

    def __init__(self, mpi: MPIComm | None = None):
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError as e:
            raise ImportError("NCCLComm needs CuPy with NCCL: pip install 'minillm[gpu]'") from e
        self.mpi = mpi if mpi is not None else MPIComm()
        self.rank, self.world_size = self.mpi.rank, self.mpi.world_size
        self.cupy, self.nccl = cupy, nccl
        cupy.cuda.Device(self.rank % cupy.cuda.runtime.getDeviceCount()).use()
        uid = self.mpi.comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
        self.comm = nccl.NcclCommunicator(self.world_size, uid, self.rank)
        self._ops = {"sum": nccl.NCCL_SUM, "mean": nccl.NCCL_SUM, "max": nccl.NCCL_MAX, "min": nccl.NCCL_MIN}

    def _dtype(self, a) -> int:
        types = {"float16": self.nccl.NCCL_FLOAT16, "float32": self.nccl.NCCL_FLOAT32,
                 "float64": self.nccl.NCCL_FLOAT64, "int32": self.nccl.NCCL_INT32,
                 "int64": self.nccl.NCCL_INT64}
        if a.dtype.name not in types:
            raise TypeError(f"NCCLComm: unsupported dtype {a.dtype}")
        return types[a.dtype.name]

    def _stream(self) -> int:
        return self.cupy.cuda.get_current_stream().ptr

    def all_reduce(self, array, op: str = "sum"):
        self._check_op(op)
        send = self.cupy.ascontiguousarray(self.cupy.asarray(array))
        out = self.cupy.empty_like(send)
        self.comm.allReduce(send.data.ptr, out.data.ptr, send.size, self._dtype(send), self._ops[op],
                            self._stream())
        if op == "mean":
            out /= self.world_size
        return out

    def reduce_scatter(self, flat_array):
        send = self.cupy.ascontiguousarray(self.cupy.asarray(flat_array))
        out = self.cupy.empty(self._shard_size(send), dtype=send.dtype)
        self.comm.reduceScatter(send.data.ptr, out.data.ptr, out.size, self._dtype(send), self.nccl.NCCL_SUM,
                                self._stream())
        return out

    def all_gather(self, shard):
        send = self.cupy.ascontiguousarray(self.cupy.asarray(shard)).reshape(-1)
        out = self.cupy.empty(send.size * self.world_size, dtype=send.dtype)
        self.comm.allGather(send.data.ptr, out.data.ptr, send.size, self._dtype(send), self._stream())
        return out

    def broadcast(self, array, root: int = 0):
        buf = self.cupy.ascontiguousarray(self.cupy.asarray(array)).copy()
        self.comm.bcast(buf.data.ptr, buf.size, self._dtype(buf), root, self._stream())
        array[...] = buf
        return array

    def barrier(self) -> None:
        self.cupy.cuda.get_current_stream().synchronize()
        self.mpi.barrier()


def _announced(names: tuple[str, ...]) -> int | None:
    for var in names:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return None


def launched_world_size() -> int:
    """The world size mpiexec (or srun) announced in the environment; 1 when not launched by one."""
    return _announced(WORLD_SIZE_VARS) or 1


def launched_rank() -> int:
    """This process's rank as mpiexec announced it (0 when not launched by one); needs no MPI import."""
    return _announced(RANK_VARS) or 0


def launched_by_mpiexec() -> bool:
    """Whether a launcher (mpiexec, srun) started this process, even as a world of 1."""
    return _announced(WORLD_SIZE_VARS) is not None


def find_mpiexec() -> str | None:
    """The mpiexec beside this Python (the ``mpich`` wheel puts it there) or on PATH; None if neither."""
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def init_comm(backend: str = "auto") -> Comm:
    """The communicator for this process: ``"auto"`` (when launched by mpiexec with more than one rank,
    NCCL on the CuPy backend and MPI on NumPy; else a world of 1), ``"local"``, ``"mpi"`` or ``"nccl"``."""
    if backend == "auto":
        backend = ("nccl" if B.name == "cupy" else "mpi") if launched_world_size() > 1 else "local"
    engines = {"local": LocalComm, "mpi": MPIComm, "nccl": NCCLComm}
    if backend not in engines:
        raise ValueError(f"init_comm: backend must be 'auto' or one of {sorted(engines)}, got {backend!r}")
    return engines[backend]()
