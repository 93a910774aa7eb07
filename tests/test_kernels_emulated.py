"""Every CUDA kernel run on the CPU through the emulator (minillm/cuda/emulator.py + kernels/cuda_emulator.h)
and compared with a float64 NumPy reference: random shapes that are not multiples of the tiles, outputs
poisoned with NaN first, random upstream gradients. The launches go through ``minillm.cuda.kernels.Kernels``,
the same launch code the GPU uses. ThreadSanitizer / AddressSanitizer builds check for races and
out-of-bounds accesses, and a copy with a ``__syncthreads()`` removed proves the race check can fail.

Most runs use smaller tile macros (fewer host threads per block); each kernel also runs once with the
real GPU tiles. Needs g++ (skipped with a reason without it).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm import backend as B
from minillm.cuda import kernels as cuda
from minillm.cuda.emulator import (
    EmulatedModule,
    EmulatorError,
    have_compiler,
    run_sanitized,
)
from minillm.cuda.kernels import kernel_path

pytestmark = pytest.mark.skipif(not have_compiler(), reason="the CUDA emulator needs g++ on PATH")

# Small tiles for the emulator: every block is 16-64 host threads. Not multiples of each other on purpose.
SMALL = {"V1_BLOCK": 4, "V2_TILE": 8, "V3_BM": 32, "V3_BN": 16, "V3_BK": 8, "V3_TM": 4, "V3_TN": 4,
         "FWD64_BM": 8, "FWD64_BN": 8, "FWD128_BM": 4, "FWD128_BN": 8, "FWD2_BM": 8, "FWD2_BN": 16,
         "BWD2_BM": 8, "BWD2_BN": 8, "DQ2_BM": 8, "DQ2_BN": 8,
         "BWD64_BM": 8, "BWD64_BN": 4, "BWD128_BM": 4, "BWD128_BN": 8}


def _kernels(tiles: dict | None) -> cuda.Kernels:
    mods = {n: EmulatedModule(kernel_path(f"{n}.cu"), defines=tiles) for n in ("matmul", "attention")}
    return cuda.Kernels(mods, np, tiles=tiles, poison=True)


@pytest.fixture(scope="module")
def small():
    return _kernels(SMALL)


@pytest.fixture(scope="module")
def real():
    return _kernels(None)


# ---------------------------------------------------------------------------------------------- matmul
def _operands(rng, batch_a, batch_b, M, N, K, layout):
    a_shape = (K, M) if layout == "tn" else (M, K)
    b_shape = (N, K) if layout == "nt" else (K, N)
    a = rng.standard_normal(batch_a + a_shape).astype(np.float32)
    b = rng.standard_normal(batch_b + b_shape).astype(np.float32)
    a_log = np.swapaxes(a, -1, -2) if layout == "tn" else a
    b_log = np.swapaxes(b, -1, -2) if layout == "nt" else b
    return a, b, np.matmul(a_log.astype(np.float64), b_log.astype(np.float64))


def _check_gemm(c, ref, K):
    assert c.shape == ref.shape
    assert np.isfinite(c).all(), "an output element was never written (still NaN)"
    np.testing.assert_allclose(c, ref, rtol=1e-4, atol=1e-5 * np.sqrt(K) * 4)


@pytest.mark.parametrize("rung", cuda.RUNGS)
@pytest.mark.parametrize("layout", cuda.LAYOUTS)
@settings(max_examples=6)
@given(M=st.integers(1, 45), N=st.integers(1, 40), K=st.integers(1, 37), seed=st.integers(0, 2**16))
def test_gemm_small_tiles(small, rung, layout, M, N, K, seed):
    a, b, ref = _operands(np.random.default_rng(seed), (), (), M, N, K, layout)
    _check_gemm(small.gemm(a, b, layout, rung), ref, K)


@pytest.mark.parametrize("rung", cuda.RUNGS)
@pytest.mark.parametrize("layout", cuda.LAYOUTS)
@pytest.mark.parametrize("batch_a,batch_b", [((3,), (3,)), ((2, 2), ()), ((), (3,))])
def test_gemm_batched_and_broadcast(small, rung, layout, batch_a, batch_b):
    a, b, ref = _operands(np.random.default_rng(1), batch_a, batch_b, 19, 13, 11, layout)
    _check_gemm(small.gemm(a, b, layout, rung), ref, 11)


@pytest.mark.parametrize("rung", cuda.RUNGS)
@pytest.mark.parametrize("layout", cuda.LAYOUTS)
def test_gemm_real_tiles(real, rung, layout):
    """The GPU configuration (v2: 32×32 threads, v3: 128×128 tiles of 256 threads) on ragged shapes."""
    M, N, K = (133, 130, 37) if rung == "v3" else (70, 45, 33)
    a, b, ref = _operands(np.random.default_rng(2), (2,), (2,), M, N, K, layout)
    _check_gemm(real.gemm(a, b, layout, rung), ref, K)


def _aligned16(x):
    """A copy of float32 ``x`` whose data starts on a 16-byte boundary (as CuPy's allocations do)."""
    buf = np.empty(x.size + 4, np.float32)
    off = (-buf.ctypes.data % 16) // 4
    out = buf[off:off + x.size].reshape(x.shape)
    out[...] = x
    assert out.ctypes.data % 16 == 0
    return out


@pytest.mark.parametrize("tiles", ["small", "real"])
@pytest.mark.parametrize("layout", cuda.LAYOUTS)
def test_gemm_v3_float4_path(small, real, tiles, layout):
    """Multiples of 4 and 16-byte-aligned operands take the float4 loads/stores (ragged ones don't)."""
    ker, (M, N, K) = (small, (36, 20, 44)) if tiles == "small" else (real, (132, 136, 40))
    a, b, ref = _operands(np.random.default_rng(3), (2,), (2,), M, N, K, layout)
    a, b = _aligned16(a), _aligned16(b)
    _check_gemm(ker.gemm(a, b, layout, "v3"), ref, K)


@pytest.mark.parametrize("tiles", ["small", "real"])
@pytest.mark.parametrize("K,splits", [(301, 3), (1000, 7), (64, 2)])
def test_gemm_tn_splitk(small, real, tiles, K, splits):
    ker = small if tiles == "small" else real
    a, b, ref = _operands(np.random.default_rng(K), (), (), 37, 21, K, "tn")
    _check_gemm(ker.gemm_tn_splitk(a, b, splits), ref, K)


def test_gemm_rejects_bad_shapes(small):
    with pytest.raises(ValueError, match="not supported"):
        small.gemm(np.zeros((3, 4), np.float32), np.zeros((5, 2), np.float32), "nn")
    assert small.gemm_shape((2, 3, 4), (3, 4, 5), "nn") is None  # batch 2 vs 3 doesn't broadcast


# ------------------------------------------------------------------------------------------- attention
def attention_reference(q, k, v, kpm, causal, scale, do):
    """Float64 attention with the composed path's semantics (masked score = -1e9) and its gradients."""
    q, k, v, do = (x.astype(np.float64) for x in (q, k, v, do))
    Tq, Tk = q.shape[1], k.shape[1]
    allowed = np.ones((q.shape[0], Tq, Tk), bool)
    if causal:
        allowed &= np.tril(np.ones((Tq, Tk), bool), k=Tk - Tq)
    if kpm is not None:
        allowed &= kpm[:, None, :].astype(bool)
    s = np.where(allowed, q @ k.transpose(0, 2, 1) * scale, -1e9)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dp = do @ v.transpose(0, 2, 1)
    ds = np.where(allowed, p * (dp - (dp * p).sum(-1, keepdims=True)), 0.0)
    return p @ v, ds @ k * scale, ds.transpose(0, 2, 1) @ q * scale, p.transpose(0, 2, 1) @ do


def _check_attention(ker, BH, Tq, Tk, d, causal, masked, seed, dead_rows=False, fwd="v2"):
    """fwd: kernel version ("v1"/"v2") for the forward and the backward (v2 applies to d <= 64)."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((BH, T, d)).astype(np.float32) for T in (Tq, Tk, Tk))
    do = rng.standard_normal((BH, Tq, d)).astype(np.float32)  # a random upstream gradient, never ones
    kpm = None
    if masked:
        kpm = (rng.random((BH, Tk)) > 0.3).astype(np.uint8)
        kpm[:, -1] = 1
        if dead_rows:  # left padding + causal: the first queries may see no key at all
            kpm[0, : min(Tk, 6)] = 0
    scale = 1.0 / np.sqrt(d)
    o, m, log_l = ker.attention_forward(q, k, v, kpm, causal, scale, version=fwd)
    dq, dk, dv = ker.attention_backward(q, k, v, o, m, log_l, do, kpm, causal, scale, version=fwd)
    refs = attention_reference(q, k, v, kpm, causal, scale, do)
    for name, got, ref in zip(("o", "dq", "dk", "dv"), (o, dq, dk, dv), refs):
        assert np.isfinite(got).all(), f"{name}: an element was never written (still NaN)"
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-5, err_msg=name)
    # the saved statistics are the log-sum-exp of the masked scores, in two parts
    assert np.isfinite(m).all() and np.isfinite(log_l).all()


@pytest.mark.parametrize("d,fwd", [(8, "v1"), (64, "v1"), (8, "v2"), (64, "v2"), (96, "v1")])
@settings(max_examples=5)
@given(BH=st.integers(1, 3), Tq=st.integers(1, 23), Tk=st.integers(1, 23), causal=st.booleans(),
       masked=st.booleans(), seed=st.integers(0, 2**16))
def test_attention_small_tiles(small, d, fwd, BH, Tq, Tk, causal, masked, seed):
    """d <= 64 runs the d64 kernels (forward v1 or v2), d = 96 the d128 ones."""
    _check_attention(small, BH, Tq, Tk, d, causal, masked, seed, fwd=fwd)


@pytest.mark.parametrize("fwd", ["v1", "v2"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Tq,Tk", [(13, 13), (7, 19), (19, 7)])
def test_attention_fully_masked_rows(small, causal, Tq, Tk, fwd):
    """Rows with no allowed key average V uniformly (as the composed path does) and get no dQ."""
    _check_attention(small, 2, Tq, Tk, 24, causal, True, seed=Tq * Tk, dead_rows=True, fwd=fwd)


@pytest.mark.parametrize("d,fwd", [(64, "v1"), (64, "v2"), (40, "v2"), (128, "v1")])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_real_tiles(real, d, fwd, causal):
    """The GPU tile configuration (fwd v1 64/32 rows of 4 threads, v2 64×32 on 256 threads; bwd 32/16)."""
    _check_attention(real, 2, 70, 70, d, causal, masked=causal, seed=d, fwd=fwd)


@pytest.mark.parametrize("fwd", ["v1", "v2"])
def test_attention_long_sequence_online_softmax(small, fwd):
    """Many key tiles: the running max/sum rescaling must match the full softmax."""
    _check_attention(small, 1, 150, 150, 16, causal=True, masked=False, seed=5, fwd=fwd)


# -------------------------------------------------------------------- the backend glue, on the emulator
@pytest.fixture
def emulated_backend(monkeypatch, small):
    """minillm.cuda.kernels installed over NumPy arrays with the emulator standing in for the GPU."""
    monkeypatch.setattr(cuda, "_kernels", small)
    monkeypatch.setattr(B, "name", "cupy")
    monkeypatch.setattr(B, "use_custom_kernels", True)
    monkeypatch.setattr(B, "scatter_add", lambda t, i, v: np.add.at(t, i, v))  # not cupyx on NumPy arrays
    for attr in ("matmul", "matmul_nt", "matmul_tn", "fused_attention"):
        monkeypatch.setattr(B, attr, getattr(B, attr))  # restored afterwards
    cuda.install()
    yield small


def _gpt_like_grads(seed, use_kernels: bool):
    import minillm
    from minillm import F, nn

    minillm.manual_seed(seed)
    B.use_custom_kernels = use_kernels
    lin_in, lin_out = nn.Linear(12, 3 * 12), nn.Linear(12, 7)
    x = minillm.Tensor(B.rng.standard_normal((2, 9, 12)).astype(np.float32), requires_grad=True)
    qkv = lin_in(x).reshape(2, 9, 3, 2, 6).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
    pad = np.ones((2, 1, 1, 9), bool)
    pad[1, ..., :3] = False
    y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], mask=pad, is_causal=True)  # (B, nh, T, hs)
    out = lin_out(y.transpose(0, 2, 1, 3).reshape(2, 9, 12))
    g = B.rng.standard_normal(out.shape).astype(np.float32)
    out.backward(g)
    return [out.data, x.grad, lin_in.weight.grad, lin_out.weight.grad, lin_in.bias.grad]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_backend_seams_match_library(emulated_backend, monkeypatch, version):
    """Tensor @, its backward (nt/tn, transposed views) and F.sdpa's fused path vs the library path."""
    monkeypatch.setattr(cuda, "ATTENTION_VERSION", version)
    calls = []
    fused = B.fused_attention
    orig_forward = fused.forward
    monkeypatch.setattr(fused, "forward", lambda *a: calls.append(1) or orig_forward(*a), raising=False)
    ours = _gpt_like_grads(0, True)
    assert calls, "the fused attention kernel was not used"
    lib = _gpt_like_grads(0, False)
    for a, b in zip(ours, lib):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_backend_splitk_for_long_reduction(emulated_backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2100, 9)).astype(np.float32)
    g = rng.standard_normal((2100, 5)).astype(np.float32)
    assert emulated_backend.splitk_splits(9, 5, 2100) > 1
    np.testing.assert_allclose(B.matmul_tn(x, g), x.T.astype(np.float64) @ g, rtol=1e-4, atol=1e-3)
    assert B.matmul(x.astype(np.float64), x.T @ x).dtype == np.float64  # float64 falls back to the library


def test_fused_attention_supports(emulated_backend):
    f = B.fused_attention
    q = np.zeros((2, 3, 5, 8), np.float32)
    assert f.supports(q, q, q, None, True)
    assert f.supports(q, q, q, np.ones((2, 1, 1, 5), bool), False)  # key padding
    assert not f.supports(q, q, q, np.ones((5, 5), bool), False)  # a general (Tq, Tk) mask
    assert not f.supports(q.astype(np.float64), q, q, None, False)
    assert not f.supports(np.zeros((2, 5, 130), np.float32), np.zeros((2, 5, 130), np.float32),
                          np.zeros((2, 5, 130), np.float32), None, False)  # head dim > 128
    B.use_custom_kernels = False
    assert not f.supports(q, q, q, None, True)


# --------------------------------------------------------------------------------- emulator self-checks
def test_emulator_rejects_python_scalars(small):
    a = np.zeros((4, 4), np.float32)
    fn = small.modules["matmul"].get_function("sgemm_v1_nn")
    with pytest.raises(EmulatorError, match="numpy.int32"):
        fn((1, 1, 1), (4, 4, 1), (a, a, a, 4, np.int32(4), np.int32(4), np.int64(0), np.int64(0),
                                  np.int64(0)))
    with pytest.raises(EmulatorError, match="C-contiguous"):
        fn((1, 1, 1), (4, 4, 1), (a.T.astype(np.float64), a, a, np.int32(4), np.int32(4), np.int32(4),
                                  np.int64(0), np.int64(0), np.int64(0)))


def _gemm_args(M, N, K, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32)
    return (a, b, np.zeros((M, N), np.float32), np.int32(M), np.int32(N), np.int32(K),
            np.int64(0), np.int64(0), np.int64(0))


@pytest.mark.parametrize("name,block", [("sgemm_v2_nn", (8, 8, 1)), ("sgemm_v3_tn", (32, 1, 1))])
def test_tsan_matmul_race_free(name, block):
    M, N, K = 19, 21, 23
    grid = (3, 3, 1) if name.startswith("sgemm_v2") else (2, 1, 1)
    report = run_sanitized(kernel_path("matmul.cu"), name, grid, block, _gemm_args(M, N, K), SMALL, "thread")
    assert report == "", report[:3000]


def _attn_args(kind, Tq=11, Tk=13, d=12):
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    kpm = (rng.random((1, Tk)) > 0.3).astype(np.uint8)
    scal = (np.int32(1), np.int32(Tq), np.int32(Tk), np.int32(d), np.float32(0.3), np.int32(1))
    if kind == "fwd":
        return (f(1, Tq, d), f(1, Tk, d), f(1, Tk, d), f(1, Tq, d), f(1, Tq), f(1, Tq), kpm) + scal
    common = (f(1, Tq, d), f(1, Tk, d), f(1, Tk, d), f(1, Tq, d), f(1, Tq), np.zeros((1, Tq), np.float32),
              f(1, Tq), kpm) + scal
    return common + ((f(1, Tk, d), f(1, Tk, d)) if kind == "dkdv" else (f(1, Tq, d),))


@pytest.mark.parametrize("name,grid,block", [("flash_fwd_d64", (2, 1, 1), (32, 1, 1)),
                                             ("flash_fwd_v2_d64", (2, 1, 1), (32, 1, 1)),
                                             ("flash_bwd_dkdv_v2_d64", (2, 1, 1), (16, 1, 1)),
                                             ("flash_bwd_dq_v2_d64", (2, 1, 1), (16, 1, 1)),
                                             ("flash_bwd_dkdv_d64", (4, 1, 1), (16, 1, 1)),
                                             ("flash_bwd_dq_d64", (2, 1, 1), (32, 1, 1))])
def test_tsan_attention_race_free(name, grid, block):
    kind = "dkdv" if "dkdv" in name else "dq" if "_dq_" in name else "fwd"
    report = run_sanitized(kernel_path("attention.cu"), name, grid, block, _attn_args(kind), SMALL, "thread")
    assert report == "", report[:3000]


def test_tsan_catches_a_missing_syncthreads(tmp_path):
    """Delete the barrier that protects the v2 tiles from being overwritten: TSan must report a race."""
    src = kernel_path("matmul.cu").read_text()
    marker = "__syncthreads();  // everyone is done reading"
    assert marker in src
    broken = tmp_path / "matmul_missing_sync.cu"
    broken.write_text(src.replace(marker, "/* barrier removed */ // everyone is done reading"))
    report = run_sanitized(broken, "sgemm_v2_nn", (3, 3, 1), (8, 8, 1), _gemm_args(19, 21, 23), SMALL,
                           "thread")
    assert "data race" in report and "matmul_missing_sync.cu" in report


@pytest.mark.parametrize("src,name,grid,block,args", [
    ("matmul.cu", "sgemm_v3_nn", (2, 1, 1), (32, 1, 1), lambda: _gemm_args(19, 21, 23)),
    ("matmul.cu", "sgemm_v3_nt", (1, 1, 1), (32, 1, 1), lambda: _gemm_args(8, 16, 8)),
    ("attention.cu", "flash_fwd_d64", (2, 1, 1), (32, 1, 1), lambda: _attn_args("fwd")),
    ("attention.cu", "flash_fwd_v2_d64", (2, 1, 1), (32, 1, 1), lambda: _attn_args("fwd")),
    ("attention.cu", "flash_bwd_dkdv_v2_d64", (2, 1, 1), (16, 1, 1), lambda: _attn_args("dkdv")),
    ("attention.cu", "flash_bwd_dq_v2_d64", (2, 1, 1), (16, 1, 1), lambda: _attn_args("dq")),
])
def test_asan_no_out_of_bounds(src, name, grid, block, args):
    """Buffers of exactly the tensor's size: any read/write past an edge (float4 included) is reported."""
    report = run_sanitized(kernel_path(src), name, grid, block, args(), SMALL, "address")
    assert report == "", report[:3000]


def test_asan_catches_an_unguarded_edge(tmp_path):
    """Drop v1's bounds check: AddressSanitizer must report the out-of-bounds access."""
    src = kernel_path("matmul.cu").read_text()
    marker = "if (m < M && n < N) {"
    assert marker in src
    broken = tmp_path / "matmul_unguarded.cu"
    broken.write_text(src.replace(marker, "{", 1))
    report = run_sanitized(broken, "sgemm_v1_nn", (3, 3, 1), (4, 4, 1), _gemm_args(9, 10, 7), SMALL,
                           "address")
    assert "AddressSanitizer" in report


@pytest.mark.parametrize("mask_shape", [(11,), (1, 11), (2, 1, 1, 11), (1, 3, 1, 11)])
def test_fused_attention_key_padding_shapes(emulated_backend, mask_shape):
    """Every broadcastable key-padding mask takes the fused path and matches the composed one."""
    import minillm
    from minillm import F

    rng = np.random.default_rng(0)
    mask = rng.random(mask_shape) > 0.3
    mask[..., 0] = True
    q, k, v = (rng.standard_normal((2, 3, T, 8)).astype(np.float32) for T in (7, 11, 11))
    g = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    assert B.fused_attention.supports(q, k, v, mask, False)
    results = []
    for ours in (True, False):
        B.use_custom_kernels = ours
        ts = [minillm.Tensor(x, requires_grad=True) for x in (q, k, v)]
        out = F.scaled_dot_product_attention(*ts, mask=mask, is_causal=True)
        out.backward(g)
        results.append([out.data] + [t.grad for t in ts])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
