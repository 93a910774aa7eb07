"""Our CUDA kernels (``kernels/matmul.cu``, ``attention.cu``) behind the backend's matmul/attention seams.

``set_backend("cupy")`` calls :func:`install`, which replaces ``backend.matmul``/``matmul_nt``/``matmul_tn``
(used by ``Tensor.__matmul__`` and its backward) and sets ``backend.fused_attention`` (used by
``F.scaled_dot_product_attention``). Each call takes our kernel when the backend is CuPy, the operands
are float32 and the shape is supported, and otherwise the library path (``cupy.matmul`` = cuBLAS, and the
composed attention in ``functional.py``). ``backend.use_custom_kernels = False`` (or the environment
variable ``MINILLM_KERNELS=library``; ``ours`` is the default) selects the library path for comparison.

:class:`Kernels` holds the launch code: grid sizes, strides, argument types. It takes any module with
CuPy's ``RawModule`` API and an array module, so the CPU tests drive the same code through
``minillm.cuda.emulator`` with NumPy arrays, and the GPU runs it through ``cupy.RawModule``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy

from minillm import backend as B

# The tile sizes the .cu files default to (the launch geometry depends on them). Tests that compile the
# kernels with smaller tiles for the emulator pass the same overrides here.
DEFAULT_TILES = {
    "V1_BLOCK": 16, "V2_TILE": 32, "V3_BM": 128, "V3_BN": 128, "V3_BK": 8, "V3_TM": 8, "V3_TN": 8,
    "ATTN_TPR": 4, "FWD64_BM": 64, "FWD64_BN": 32, "FWD128_BM": 32, "FWD128_BN": 16,
    "FWD2_BM": 64, "FWD2_BN": 32, "BWD2_BM": 32, "BWD2_BN": 32, "DQ2_BM": 32, "DQ2_BN": 32,
    "BWD64_BM": 32, "BWD64_BN": 32, "BWD128_BM": 16, "BWD128_BN": 16,
}
RUNGS = ("v1", "v2", "v3")
LAYOUTS = ("nn", "nt", "tn")
MAX_GRID_YZ = 65535
MAX_HEAD_DIM = 128
ATTENTION_VERSION = "v2"  # fused attention kernels used by F.sdpa: "v2" (register-blocked, d <= 64) or "v1"


def kernel_path(name: str) -> Path:
    """Path of a kernel source file (``kernels/NAME`` in a checkout, ``minillm/kernels/NAME`` in a wheel)."""
    package = Path(__file__).resolve().parent.parent  # minillm/
    places = (package / "kernels", package.parent / "kernels")
    for folder in places:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"kernel source {name!r} not found in {places[0]} or {places[1]}")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class Kernels:
    """Launch wrappers for every kernel; ``modules`` maps "matmul"/"attention" to RawModule-like objects.

    ``poison=True`` fills outputs with NaN before a launch, so an element a kernel forgets to write shows.
    """

    def __init__(self, modules: dict, xp, tiles: dict | None = None, poison: bool = False):
        self.modules, self.xp, self.poison = modules, xp, poison
        self.t = dict(DEFAULT_TILES, **(tiles or {}))
        self._fns: dict = {}

    def _fn(self, module: str, name: str):
        if (module, name) not in self._fns:
            self._fns[module, name] = self.modules[module].get_function(name)
        return self._fns[module, name]

    def _out(self, shape, dtype=numpy.float32):
        xp = self.xp
        return xp.full(shape, numpy.nan, dtype=dtype) if self.poison else xp.empty(shape, dtype=dtype)

    # ------------------------------------------------------------------------------------------ matmul
    def gemm_shape(self, a_shape, b_shape, layout: str):
        """(batch_shape, M, N, K) of op(a)·op(b), or None when the shapes don't fit the kernels."""
        if len(a_shape) < 2 or len(b_shape) < 2:
            return None
        if layout == "nn":
            (M, K), (K2, N) = a_shape[-2:], b_shape[-2:]
        elif layout == "nt":
            (M, K), (N, K2) = a_shape[-2:], b_shape[-2:]
        elif layout == "tn":
            (K, M), (K2, N) = a_shape[-2:], b_shape[-2:]
        else:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if K != K2 or min(M, N, K) < 1:
            return None
        ba, bb = tuple(a_shape[:-2]), tuple(b_shape[:-2])
        try:
            batch = numpy.broadcast_shapes(ba, bb)
        except ValueError:
            return None
        # each operand is either the whole batch or one matrix shared by all (stride 0)
        for s in (ba, bb):
            if math.prod(s) != 1 and s != batch:
                return None
        return batch, M, N, K

    def gemm(self, a, b, layout: str = "nn", rung: str = "v3"):
        """op(a)·op(b) over the last two axes, batched over the leading ones (see ``gemm_shape``)."""
        xp, t = self.xp, self.t
        shp = self.gemm_shape(a.shape, b.shape, layout)
        if shp is None:
            raise ValueError(f"gemm_{layout}: shapes {a.shape} and {b.shape} are not supported by the kernel")
        batch, M, N, K = shp
        nb = math.prod(batch)
        a = xp.ascontiguousarray(a, dtype=numpy.float32)
        b = xp.ascontiguousarray(b, dtype=numpy.float32)
        sA = M * K if math.prod(a.shape[:-2]) == nb and nb > 1 else 0
        sB = K * N if math.prod(b.shape[:-2]) == nb and nb > 1 else 0
        c = self._out(batch + (M, N))
        if rung == "v1":
            bs = t["V1_BLOCK"]
            grid, block = (_cdiv(N, bs), _cdiv(M, bs), nb), (bs, bs, 1)
        elif rung == "v2":
            bs = t["V2_TILE"]
            grid, block = (_cdiv(N, bs), _cdiv(M, bs), nb), (bs, bs, 1)
        elif rung == "v3":
            nt = (t["V3_BM"] // t["V3_TM"]) * (t["V3_BN"] // t["V3_TN"])
            grid, block = (_cdiv(N, t["V3_BN"]), _cdiv(M, t["V3_BM"]), nb), (nt, 1, 1)
        else:
            raise ValueError(f"rung must be one of {RUNGS}, got {rung!r}")
        if grid[1] > MAX_GRID_YZ or grid[2] > MAX_GRID_YZ:
            raise ValueError(f"gemm: grid {grid} exceeds CUDA's 65535 limit on y/z")
        self._fn("matmul", f"sgemm_{rung}_{layout}")(
            grid, block, (a, b, c, numpy.int32(M), numpy.int32(N), numpy.int32(K),
                          numpy.int64(sA), numpy.int64(sB), numpy.int64(M * N)))
        return c

    def splitk_splits(self, M: int, N: int, K: int, sms: int = 132) -> int:
        """How many K chunks make Aᵀ·B fill the GPU: 1 unless the output tiles are few and K is long."""
        tiles = _cdiv(M, self.t["V3_BM"]) * _cdiv(N, self.t["V3_BN"])
        if K < 2048 or tiles >= 2 * sms:
            return 1
        return int(max(1, min(32, (2 * sms) // tiles, K // 512)))

    def gemm_tn_splitk(self, a, b, splits: int):
        """aᵀ·b for 2-D a (K, M), b (K, N) with K cut into ``splits`` chunks (deterministic reduction)."""
        xp, t = self.xp, self.t
        (K, M), (K2, N) = a.shape, b.shape
        if K != K2 or a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"gemm_tn_splitk: shapes {a.shape} and {b.shape} don't align")
        a = xp.ascontiguousarray(a, dtype=numpy.float32)
        b = xp.ascontiguousarray(b, dtype=numpy.float32)
        bk = t["V3_BK"]
        k_chunk = _cdiv(_cdiv(K, splits), bk) * bk  # whole tiles per chunk
        splits = _cdiv(K, k_chunk)
        work = self._out((splits, M, N))
        nt = (t["V3_BM"] // t["V3_TM"]) * (t["V3_BN"] // t["V3_TN"])
        grid = (_cdiv(N, t["V3_BN"]), _cdiv(M, t["V3_BM"]), splits)
        self._fn("matmul", "sgemm_v3_tn_splitk")(
            grid, (nt, 1, 1),
            (a, b, work, numpy.int32(M), numpy.int32(N), numpy.int32(K), numpy.int32(k_chunk)))
        c = self._out((M, N))
        self._fn("matmul", "splitk_reduce")(
            (_cdiv(M * N, 256), 1, 1), (256, 1, 1), (work, c, numpy.int64(M * N), numpy.int32(splits)))
        return c

    # --------------------------------------------------------------------------------------- attention
    def _attn_variant(self, d: int):
        if d <= 64:
            return "d64", self.t["FWD64_BM"], self.t["BWD64_BM"], self.t["BWD64_BN"]
        if d <= MAX_HEAD_DIM:
            return "d128", self.t["FWD128_BM"], self.t["BWD128_BM"], self.t["BWD128_BN"]
        raise ValueError(f"attention kernels support head dim <= {MAX_HEAD_DIM}, got {d}")

    def attention_forward(self, q, k, v, kpm, causal: bool, scale: float, version: str = "v2"):
        """Flash forward. q (BH, Tq, d), k/v (BH, Tk, d), kpm (BH, Tk) uint8 or None -> (o, m, log_l).

        ``version="v2"`` takes the register-blocked kernel when d <= 64; "v1" always the simple one.
        """
        xp = self.xp
        q, k, v = (xp.ascontiguousarray(x, dtype=numpy.float32) for x in (q, k, v))
        BH, Tq, d = q.shape
        Tk = k.shape[1]
        var, bm, _, _ = self._attn_variant(d)
        name, threads = f"flash_fwd_{var}", bm * self.t["ATTN_TPR"]
        if version == "v2" and d <= 64:
            bm = self.t["FWD2_BM"]
            name, threads = "flash_fwd_v2_d64", (bm // 4) * 16
        elif version not in ("v1", "v2"):
            raise ValueError(f"attention forward version must be 'v1' or 'v2', got {version!r}")
        o = self._out((BH, Tq, d))
        m, log_l = self._out((BH, Tq)), self._out((BH, Tq))
        has_mask = kpm is not None
        kpm = xp.ascontiguousarray(kpm, dtype=numpy.uint8) if has_mask else xp.zeros((1,), dtype=numpy.uint8)
        self._fn("attention", name)(
            (_cdiv(Tq, bm), BH, 1), (threads, 1, 1),
            (q, k, v, o, m, log_l, kpm, numpy.int32(has_mask), numpy.int32(Tq), numpy.int32(Tk),
             numpy.int32(d), numpy.float32(scale), numpy.int32(bool(causal))))
        return o, m, log_l

    def attention_backward(self, q, k, v, o, m, log_l, do, kpm, causal: bool, scale: float,
                           version: str = "v2"):
        """Flash backward from the saved (m, log l): D = rowsum(dO·O) first, then dK/dV, then dQ.

        ``version="v2"`` takes the register-blocked kernels when d <= 64; "v1" always the simple ones.
        """
        if version not in ("v1", "v2"):
            raise ValueError(f"attention backward version must be 'v1' or 'v2', got {version!r}")
        xp = self.xp
        q, k, v, o, do = (xp.ascontiguousarray(x, dtype=numpy.float32) for x in (q, k, v, o, do))
        BH, Tq, d = q.shape
        Tk = k.shape[1]
        var, _, bm, bn = self._attn_variant(d)
        tpr = self.t["ATTN_TPR"]
        D = self._out((BH, Tq))
        self._fn("attention", "attn_bwd_preprocess")(
            (_cdiv(BH * Tq, 256), 1, 1), (256, 1, 1), (o, do, D, numpy.int64(BH * Tq), numpy.int32(d)))
        has_mask = kpm is not None
        kpm = xp.ascontiguousarray(kpm, dtype=numpy.uint8) if has_mask else xp.zeros((1,), dtype=numpy.uint8)
        common = (q, k, v, do, m, log_l, D, kpm, numpy.int32(has_mask), numpy.int32(Tq), numpy.int32(Tk),
                  numpy.int32(d), numpy.float32(scale), numpy.int32(bool(causal)))
        dk, dv = self._out((BH, Tk, d)), self._out((BH, Tk, d))
        dq = self._out((BH, Tq, d))
        if version == "v2" and d <= 64:
            bn, bm = self.t["BWD2_BN"], self.t["DQ2_BM"]
            self._fn("attention", "flash_bwd_dkdv_v2_d64")(
                (_cdiv(Tk, bn), BH, 1), ((bn // 4) * 8, 1, 1), common + (dk, dv))
            self._fn("attention", "flash_bwd_dq_v2_d64")(
                (_cdiv(Tq, bm), BH, 1), ((bm // 4) * 8, 1, 1), common + (dq,))
            return dq, dk, dv
        self._fn("attention", f"flash_bwd_dkdv_{var}")(
            (_cdiv(Tk, bn), BH, 1), (bn * tpr, 1, 1), common + (dk, dv))
        self._fn("attention", f"flash_bwd_dq_{var}")((_cdiv(Tq, bm), BH, 1), (bm * tpr, 1, 1), common + (dq,))
        return dq, dk, dv


# ------------------------------------------------------------------------------------- backend glue
_LIBRARY = {"matmul": B.matmul, "matmul_nt": B.matmul_nt, "matmul_tn": B.matmul_tn}
_kernels: Kernels | None = None


def get_kernels() -> Kernels:
    """The process-wide CuPy ``Kernels`` (modules compiled on first use with NVRTC, then cached by CuPy)."""
    global _kernels
    if _kernels is None:
        import cupy

        modules = {name: cupy.RawModule(code=kernel_path(f"{name}.cu").read_text(), options=("-std=c++17",))
                   for name in ("matmul", "attention")}
        _kernels = Kernels(modules, cupy)
    return _kernels


def _ours(*arrays) -> bool:
    return (B.use_custom_kernels and B.name == "cupy"
            and all(getattr(a, "dtype", None) == numpy.float32 for a in arrays))


def _stored(x, transposed: bool):
    """(array, flag) with the array C-contiguous when a 2-D operand is a transposed view (no copy)."""
    if x.ndim == 2 and not x.flags.c_contiguous and x.T.flags.c_contiguous:
        return x.T, not transposed
    return x, transposed


def _gemm(a, ta: bool, b, tb: bool):
    """op(a)·op(b) through our top rung, or None when the layout/shape isn't covered (caller falls back)."""
    a, ta = _stored(a, ta)
    b, tb = _stored(b, tb)
    if ta and tb:  # no "tt" kernel: materialise b in its logical (K, N) order
        b, tb = b.T, False
    layout = ("t" if ta else "n") + ("t" if tb else "n")
    ker = get_kernels()
    shp = ker.gemm_shape(a.shape, b.shape, layout)
    if shp is None:
        return None
    batch, M, N, K = shp
    if _cdiv(M, ker.t["V3_BM"]) > MAX_GRID_YZ or math.prod(batch) > MAX_GRID_YZ:
        return None
    if layout == "tn" and a.ndim == 2 and b.ndim == 2:
        splits = ker.splitk_splits(M, N, K)
        if splits > 1:
            return ker.gemm_tn_splitk(a, b, splits)
    return ker.gemm(a, b, layout)


def matmul(a, b):
    """a @ b: our kernel for float32 operands of 2+ dims on CuPy, else the library."""
    if _ours(a, b) and a.ndim >= 2 and b.ndim >= 2:
        c = _gemm(a, False, b, False)
        if c is not None:
            return c
    return _LIBRARY["matmul"](a, b)


def matmul_nt(a, b):
    """a @ bᵀ over the last two axes (dA = dC·Bᵀ) without materialising bᵀ."""
    if _ours(a, b) and a.ndim >= 2 and b.ndim >= 2:
        c = _gemm(a, False, b, True)
        if c is not None:
            return c
    return _LIBRARY["matmul_nt"](a, b)


def matmul_tn(a, b):
    """aᵀ @ b over the last two axes (dB = Aᵀ·dC; split-K when the reduction is long) without aᵀ."""
    if _ours(a, b) and a.ndim >= 2 and b.ndim >= 2:
        c = _gemm(a, True, b, False)
        if c is not None:
            return c
    return _LIBRARY["matmul_tn"](a, b)


class FusedAttention:
    """The fused-attention seam ``F.scaled_dot_product_attention`` looks for (``backend.fused_attention``)."""

    @staticmethod
    def _key_padding(mask, batch: tuple, Tk: int):
        """The mask's shape when it only depends on the key ((..., 1, Tk) or (Tk,)), else None."""
        if mask is None:
            return None
        mask = B.unwrap(mask)
        shape = tuple(getattr(mask, "shape", ()))
        if len(shape) == 0 or shape[-1] not in (1, Tk) or (len(shape) >= 2 and shape[-2] != 1):
            return None
        target = batch + (1, Tk)
        try:
            if numpy.broadcast_shapes(shape, target) != target:
                return None
        except ValueError:
            return None
        return shape

    def supports(self, q, k, v, mask, is_causal) -> bool:
        if not _ours(q, k, v) or q.ndim < 3:
            return False
        d, Tq, Tk = q.shape[-1], q.shape[-2], k.shape[-2]
        if k.shape[:-2] != q.shape[:-2] or v.shape[:-2] != q.shape[:-2]:
            return False
        if k.shape[-1] != d or v.shape[-1] != d:
            return False
        if not 1 <= d <= MAX_HEAD_DIM or min(Tq, Tk) < 1 or v.shape[-2] != Tk:
            return False
        if math.prod(q.shape[:-2]) > MAX_GRID_YZ:
            return False
        return mask is None or self._key_padding(mask, tuple(q.shape[:-2]), Tk) is not None

    def forward(self, q, k, v, mask, is_causal, scale):
        xp = B.xp
        batch, (Tq, d), Tk = tuple(q.shape[:-2]), q.shape[-2:], k.shape[-2]
        BH = math.prod(batch)
        kpm = None
        if mask is not None:
            allowed = xp.asarray(B.unwrap(mask), dtype=bool)
            kpm = xp.broadcast_to(allowed, batch + (1, Tk)).reshape(BH, Tk).astype(numpy.uint8)
        q3, k3, v3 = q.reshape(BH, Tq, d), k.reshape(BH, Tk, d), v.reshape(BH, Tk, d)  # (BH, T, d)
        version = ATTENTION_VERSION
        o, m, log_l = get_kernels().attention_forward(q3, k3, v3, kpm, is_causal, scale, version)
        ctx = (q3, k3, v3, o, m, log_l, kpm, bool(is_causal), float(scale), q.shape, k.shape, version)
        return o.reshape(q.shape), ctx

    def backward(self, g, ctx):
        q3, k3, v3, o, m, log_l, kpm, causal, scale, q_shape, k_shape, version = ctx
        g3 = g.reshape(o.shape).astype(numpy.float32, copy=False)
        dq, dk, dv = get_kernels().attention_backward(q3, k3, v3, o, m, log_l, g3, kpm, causal, scale,
                                                      version)
        return dq.reshape(q_shape), dk.reshape(k_shape), dv.reshape(k_shape)


fused_attention = FusedAttention()


def install() -> None:
    """Route the backend's matmul and attention seams through our kernels (on set_backend("cupy"))."""
    choice = os.environ.get("MINILLM_KERNELS")
    if choice is not None:  # otherwise keep backend.use_custom_kernels as it is (True by default)
        choice = choice.strip().lower()
        if choice not in ("ours", "library"):
            raise ValueError(f"MINILLM_KERNELS must be 'ours' or 'library', got {choice!r}")
        B.use_custom_kernels = choice == "ours"
    B.matmul, B.matmul_nt, B.matmul_tn = matmul, matmul_nt, matmul_tn
    B.fused_attention = fused_attention


def uninstall() -> None:
    """Back to the library implementations (on set_backend("numpy"))."""
    B.matmul, B.matmul_nt, B.matmul_tn = _LIBRARY["matmul"], _LIBRARY["matmul_nt"], _LIBRARY["matmul_tn"]
    B.fused_attention = None


def follow_backend(name: str) -> None:
    """Install our kernels when the backend becomes CuPy, remove them when it becomes NumPy."""
    if name == "cupy":
        install()
    else:
        uninstall()


B.on_backend_change(follow_backend)  # the engine never imports this module: it announces, we follow
if B.name == "cupy":  # MINILLM_BACKEND=cupy chose CuPy before this module was imported
    install()
