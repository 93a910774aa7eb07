"""The array backend: NumPy (default, CPU) or CuPy (GPU), chosen once and used everywhere.

Every array the package creates goes through this module, so the same model code runs on both.
Read the current array module as ``backend.xp`` at call time (never ``from backend import xp``:
that would freeze the module chosen at import).

Randomness always comes from one NumPy ``Generator`` (``backend.rng``), seeded by
``minillm.manual_seed``; arrays are drawn on the host and moved to the device. That keeps a seeded run
identical bit for bit on NumPy and makes CuPy runs start from the same initial weights.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy

xp: Any = numpy  # the active array module (numpy or cupy)
name: str = "numpy"
rng: numpy.random.Generator = numpy.random.default_rng(0)
default_dtype = numpy.float32

# Matmul / attention implementations. The CUDA-kernel module swaps these on CuPy (see minillm.cuda.kernels):
# False (or MINILLM_KERNELS=library) keeps cupy.matmul and the composed attention for comparison.
use_custom_kernels: bool = True
fused_attention = None  # set by minillm.cuda.kernels.install() on CuPy


_on_change: list = []  # hooks called with the new backend's name (see on_backend_change)


class BackendError(RuntimeError):
    """The requested backend cannot be used on this machine."""


def _load_cupy():
    try:
        import cupy
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise BackendError(
            "backend 'cupy' needs the cupy package: pip install 'minillm[gpu]' (cupy-cuda12x)"
        ) from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError when no driver is present
        raise BackendError(f"backend 'cupy': cupy is installed but no CUDA GPU/driver was found ({e})") from e
    if n < 1:
        raise BackendError("backend 'cupy': cupy is installed but no CUDA GPU was found")
    return cupy


def set_backend(backend: str) -> None:
    """Switch the array backend to ``"numpy"`` or ``"cupy"``. Raises BackendError if unavailable."""
    global xp, name
    if backend == "numpy":
        xp, name = numpy, "numpy"
    elif backend == "cupy":
        xp, name = _load_cupy(), "cupy"
    else:
        raise ValueError(f"unknown backend {backend!r}: expected 'numpy' or 'cupy'")
    for hook in _on_change:
        hook(name)


def on_backend_change(hook) -> None:
    """Call ``hook(name)`` after every ``set_backend``: ``minillm.cuda.kernels`` uses it to put our kernels
    into the matmul/attention seams on CuPy (``MINILLM_KERNELS``) and take them out on NumPy. The engine
    only announces the switch, so it never imports the CUDA layer."""
    _on_change.append(hook)


def get_backend() -> str:
    """The active backend's name: ``"numpy"`` or ``"cupy"``."""
    return name


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        _load_cupy()
        return True
    except BackendError:
        return False


def set_default_dtype(dtype) -> None:
    """Default floating dtype for new tensors and parameters (float32 unless changed)."""
    global default_dtype
    dt = numpy.dtype(dtype)
    if dt not in (numpy.float32, numpy.float64, numpy.float16):
        raise ValueError(f"default dtype must be float16/32/64, got {dt}")
    default_dtype = dt.type


def get_default_dtype():
    return default_dtype


def manual_seed(seed: int) -> None:
    """Seed every random draw in minillm (initialisation, dropout, sampling, data)."""
    global rng
    rng = numpy.random.default_rng(seed)


def get_rng_state() -> dict:
    return rng.bit_generator.state


def set_rng_state(state: dict) -> None:
    rng.bit_generator.state = state


def asarray(a, dtype=None):
    """Array on the active backend (copies from host to device when needed)."""
    return xp.asarray(a, dtype=dtype)


def unwrap(a):
    """The backend array inside a Tensor, or ``a`` itself: ids, masks and labels may come as either.

    An array is returned as it is (a NumPy or CuPy array has a ``.data`` too: its raw buffer)."""
    if hasattr(a, "__array_interface__") or hasattr(a, "__cuda_array_interface__"):
        return a
    return getattr(a, "data", a)


def to_numpy(a) -> numpy.ndarray:
    """Host NumPy array from any backend array (or a Tensor)."""
    a = unwrap(a)
    if isinstance(a, numpy.ndarray):
        return a
    if hasattr(a, "get"):  # cupy.ndarray
        return a.get()
    return numpy.asarray(a)


def randn(*shape, dtype=None):
    """Standard normal draws from the seeded generator, on the active backend."""
    return xp.asarray(rng.standard_normal(shape).astype(dtype or default_dtype))


def rand(*shape, dtype=None):
    """Uniform [0, 1) draws from the seeded generator, on the active backend."""
    return xp.asarray(rng.random(shape).astype(dtype or default_dtype))


# --- matrix products: defaults route to the array library; minillm.cuda.kernels may replace them on CuPy ---
def matmul(a, b):
    """a @ b (batched, broadcasting)."""
    return xp.matmul(a, b)


def matmul_nt(a, b):
    """a @ b^T over the last two axes (used by backward: dA = dC · Bᵀ)."""
    return xp.matmul(a, xp.swapaxes(b, -1, -2))


def matmul_tn(a, b):
    """a^T @ b over the last two axes (used by backward: dB = Aᵀ · dC)."""
    return xp.matmul(xp.swapaxes(a, -1, -2), b)


def scatter_add(target, index, values) -> None:
    """target[index] += values with repeated indices accumulated (in place)."""
    if name == "cupy":
        import cupyx

        cupyx.scatter_add(target, index, values)
    else:
        numpy.add.at(target, index, values)


def _reuse_freed_buffers() -> None:
    """Ask glibc's malloc to keep freed activation-sized buffers for reuse instead of unmapping them.

    Every op allocates arrays the size of a layer's activations (megabytes). By default glibc maps each
    one fresh from the OS and unmaps it when freed, so the next one page-faults through all its memory
    again: about 10% of a CPU training step. PyTorch avoids this with a caching allocator; for us, two
    ``mallopt`` calls (32 MiB mmap threshold, 1 GiB trim threshold) do it. No-op off Linux/glibc.
    """
    if not sys.platform.startswith("linux") or os.environ.get("MINILLM_MALLOC_TUNING") == "0":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):  # not glibc (musl, ...): keep the defaults
        pass


_reuse_freed_buffers()
_env = os.environ.get("MINILLM_BACKEND")
if _env:
    set_backend(_env.strip().lower())
