"""Our CUDA kernels on a real GPU through CuPy (marked ``gpu``; skipped with a reason where there is none).

The same comparisons as the emulator tests, against float64 NumPy references, plus: attention's online
softmax vs the naive softmax up to T = 2048, Tensor-level autograd with our kernels vs NumPy, the library
switch, and a checkpoint written on the GPU read back on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

import minillm
from minillm import F, nn
from minillm import backend as B

HAVE_GPU = B.gpu_available()
needs_gpu = pytest.mark.skipif(not HAVE_GPU, reason="no CUDA GPU (or no CuPy): GPU kernel tests skipped")


def test_set_backend_cupy_without_gpu_raises_clearly():
    if HAVE_GPU:
        pytest.skip("a GPU is present: the no-GPU error path cannot be exercised here")
    with pytest.raises(B.BackendError, match="cupy"):
        minillm.set_backend("cupy")
    assert B.get_backend() == "numpy" and B.xp is np


@pytest.fixture
def gpu():
    """CuPy backend with our kernels installed; back to NumPy afterwards."""
    minillm.set_backend("cupy")
    B.use_custom_kernels = True
    from minillm.cuda import kernels as cuda

    yield cuda.get_kernels()
    minillm.set_backend("numpy")
    B.use_custom_kernels = True


def _rel_err(got, ref):
    got = B.to_numpy(got).astype(np.float64)
    assert np.isfinite(got).all(), "NaN/inf in a kernel output (an element never written?)"
    return np.abs(got - ref).max() / max(1.0, np.abs(ref).max())


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("rung", ["v1", "v2", "v3"])
@pytest.mark.parametrize("layout", ["nn", "nt", "tn"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (129, 67, 45), (257, 515, 1000), (1024, 768, 33)])
def test_gemm_vs_float64(gpu, rung, layout, shape):
    import cupy

    ker = cuda_kernels_poisoned(gpu)
    M, N, K = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, K, M) if layout == "tn" else (2, M, K)).astype(np.float32)
    b = rng.standard_normal((2, N, K) if layout == "nt" else (2, K, N)).astype(np.float32)
    al = np.swapaxes(a, -1, -2) if layout == "tn" else a
    bl = np.swapaxes(b, -1, -2) if layout == "nt" else b
    c = ker.gemm(cupy.asarray(a), cupy.asarray(b), layout, rung)
    assert _rel_err(c, al.astype(np.float64) @ bl.astype(np.float64)) < 1e-5 * max(1, np.sqrt(K))


def cuda_kernels_poisoned(ker):
    from minillm.cuda import kernels as cuda

    return cuda.Kernels(ker.modules, ker.xp, poison=True)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("K,splits", [(4096, 8), (10_000, 13)])
def test_splitk_vs_float64(gpu, K, splits):
    import cupy

    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((K, 384)).astype(np.float32), rng.standard_normal((K, 96)).astype(np.float32)
    c = cuda_kernels_poisoned(gpu).gemm_tn_splitk(cupy.asarray(a), cupy.asarray(b), splits)
    assert _rel_err(c, a.T.astype(np.float64) @ b) < 1e-5 * np.sqrt(K)


def _attention_ref(q, k, v, kpm, causal, scale, do):
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


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("d,fwd", [(32, "v2"), (64, "v2"), (64, "v1"), (80, "v1"), (128, "v1")])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Tq,Tk", [(1, 1), (77, 77), (50, 131), (256, 256), (1000, 1000), (2048, 2048)])
def test_attention_vs_float64(gpu, d, fwd, causal, Tq, Tk):
    """Online softmax (tile by tile) vs the naive full softmax in float64, forward and backward."""
    import cupy

    if Tq * Tk * d > 2048 * 2048 * 64:
        pytest.skip("kept to T=2048 at d<=64 for time")
    rng = np.random.default_rng(d + Tq)
    BH = 3
    q, k, v = (rng.standard_normal((BH, T, d)).astype(np.float32) for T in (Tq, Tk, Tk))
    do = rng.standard_normal((BH, Tq, d)).astype(np.float32)
    kpm = (rng.random((BH, Tk)) > 0.2).astype(np.uint8)
    kpm[:, -1] = 1
    scale = 1 / np.sqrt(d)
    ker = cuda_kernels_poisoned(gpu)
    dev = [cupy.asarray(x) for x in (q, k, v)]
    o, m, log_l = ker.attention_forward(*dev, cupy.asarray(kpm), causal, scale, version=fwd)
    dq, dk, dv = ker.attention_backward(*dev, o, m, log_l, cupy.asarray(do), cupy.asarray(kpm), causal, scale,
                                        version=fwd)
    for got, ref in zip((o, dq, dk, dv), _attention_ref(q, k, v, kpm, causal, scale, do)):
        assert _rel_err(got, ref) < 5e-5


def _model_step(seed):
    """A two-layer attention block: output and every gradient, as host arrays."""
    minillm.manual_seed(seed)
    lin_in, lin_out = nn.Linear(64, 3 * 64), nn.Linear(64, 50)
    x = minillm.Tensor(B.randn(4, 33, 64), requires_grad=True)
    qkv = lin_in(x).reshape(4, 33, 3, 4, 16).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
    pad = np.ones((4, 1, 1, 33), bool)
    pad[0, ..., :5] = False
    y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], mask=B.xp.asarray(pad), is_causal=True)
    out = lin_out(y.transpose(1, 2).reshape(4, 33, 64))
    loss = F.cross_entropy(out.reshape(-1, 50), B.xp.asarray(np.arange(4 * 33) % 50))
    loss.backward()
    return [B.to_numpy(t)
            for t in (loss.data, x.grad, lin_in.weight.grad, lin_out.weight.grad, lin_in.bias.grad)]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("kernels", ["ours", "library"])
def test_tensor_autograd_on_gpu_matches_numpy(kernels):
    ref = _model_step(0)
    minillm.set_backend("cupy")
    try:
        B.use_custom_kernels = kernels == "ours"
        got = _model_step(0)
    finally:
        minillm.set_backend("numpy")
        B.use_custom_kernels = True
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-5)


@pytest.mark.gpu
@needs_gpu
def test_kernels_are_used_and_switch_works(gpu, monkeypatch):
    import cupy

    calls = []
    orig = gpu.gemm
    monkeypatch.setattr(gpu, "gemm", lambda *a, **k: calls.append(1) or orig(*a, **k))
    a = cupy.ones((5, 7), cupy.float32)
    B.matmul(a, a.T)
    assert calls, "B.matmul did not use our kernel on CuPy"
    calls.clear()
    B.use_custom_kernels = False
    B.matmul(a, a.T)
    assert not calls, "use_custom_kernels=False still used our kernel"
    assert not B.fused_attention.supports(a[None], a[None], a[None], None, False)


@pytest.mark.gpu
@needs_gpu
def test_checkpoint_saved_on_gpu_loads_on_cpu(gpu, tmp_path):
    minillm.manual_seed(0)
    layer = nn.Linear(8, 4)
    minillm.save({"model": layer.state_dict()}, tmp_path / "ck")
    minillm.set_backend("numpy")
    state = minillm.load(tmp_path / "ck")["model"]
    cpu_layer = nn.Linear(8, 4)
    cpu_layer.load_state_dict(state)
    assert isinstance(cpu_layer.weight.data, np.ndarray)
    np.testing.assert_array_equal(cpu_layer.weight.data, B.to_numpy(layer.weight.data))


def test_bench_gpu_without_gpu_exits_2(capsys):
    if HAVE_GPU:
        pytest.skip("a GPU is present: `minillm bench --gpu` would run the full benchmark")
    from minillm.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "--gpu"])
    assert exc.value.code == 2
    assert "no GPU" in capsys.readouterr().err


def test_bench_gpu_flop_counts_and_table():
    from minillm.bench.gpu import attention_flops, format_table

    assert attention_flops(1, 1, 10, 4, causal=False) == 1600.0
    assert attention_flops(1, 1, 10, 4, causal=True) == 800.0
    assert attention_flops(2, 3, 10, 4, causal=False, backward=True) == 2.5 * 6 * 1600.0
    table = format_table([{"a": 1.23456, "b": "x"}], ["a", "b"])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | x |"]
