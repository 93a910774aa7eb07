"""``minillm bench --gpu``: our CUDA kernels against cuBLAS and the composed CuPy attention, on a real GPU.

One call measures, after validating every timed kernel against a float64 reference (random inputs and a
random upstream gradient, never all-ones):

* each matmul rung (v1 naive, v2 shared tiles, v3 register blocks, and split-K for the weight gradient) vs
  ``cupy.matmul`` with ``CUPY_TF32=0`` (true fp32 cuBLAS) at 1024/2048/4096 square and at GPT shapes
  (BT×d·d×3d, BT×d·d×4d, BT×4d·4d×d, and the dW reduction Xᵀ·dY over BT): TFLOP/s and % of cuBLAS;
* fused attention forward and backward ("ours" = the register-blocked v2 kernels, "ours-v1" the simple
  ones) vs the composed path (matmul, mask, softmax, matmul) at d_head 64,
  T = 256/1024/2048, causal and not: time, TFLOP/s (forward 4·B·H·T²·d, halved if causal; backward 2.5×
  forward) and the memory pool's peak;
* a GPT training step's tokens/s on NumPy, on CuPy with the library path, and on CuPy with our kernels.

Timing: CUDA events around each launch after a warm-up, the L2 cache flushed (a 256 MB write) before every
repeat, the median reported. The table is printed and the full figures, with the date and the device, are
appended to ``kernels/BENCHMARKS.md`` and ``kernels/benchmarks.json`` (in a source checkout; the current
directory otherwise). Without a GPU it prints why and exits with status 2.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy

from minillm import backend as B

os.environ["CUPY_TF32"] = "0"  # cuBLAS in true fp32 (read by CuPy when it first does a matmul)

SQUARE = (1024, 2048, 4096)
GPT_D, GPT_BT = 768, 8192  # GPT-2 small width, batch 8 × 1024 tokens
ATTN_B, ATTN_H, ATTN_D = 8, 12, 64
ATTN_T = (256, 1024, 2048)


def attention_flops(B_: int, H: int, T: int, d: int, causal: bool, backward: bool = False) -> float:
    """Attention FLOPs as FlashAttention counts them: 4·B·H·T²·d forward (half if causal), 2.5× backward."""
    f = 4.0 * B_ * H * T * T * d / (2 if causal else 1)
    return 2.5 * f if backward else f


def results_dir() -> Path:
    """kernels/ of the source checkout this package runs from, else the current directory."""
    here = Path(__file__).resolve().parent.parent.parent / "kernels"
    return here if (here / "matmul.cu").is_file() else Path.cwd()


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` (dicts) over ``columns``; floats with 3 significant digits."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ timing
class Timer:
    """Median time of ``fn`` in ms between CUDA events, with the L2 flushed before every repeat."""

    def __init__(self, cupy, repeats: int):
        self.cupy, self.repeats = cupy, repeats
        self.flush_buf = cupy.empty(256 * 1024 * 1024 // 4, dtype=cupy.float32)

    def __call__(self, fn, setup=None) -> float:
        cp = self.cupy
        for _ in range(2):  # warm-up (compilation, pool growth)
            if setup:
                setup()
            fn()
        cp.cuda.Device().synchronize()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        times = []
        for _ in range(self.repeats):
            if setup:
                setup()
            self.flush_buf.fill(0)  # evict the operands from L2
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end))
        return statistics.median(times)


def _rel_err(cp, got, ref) -> float:
    got = got.astype(cp.float64)
    return float(cp.abs(got - ref).max() / max(1.0, float(cp.abs(ref).max())))


# ------------------------------------------------------------------------------------------------ matmul
def bench_matmul(cp, timer: Timer, quick: bool) -> list[dict]:
    from minillm.cuda.kernels import get_kernels

    ker = get_kernels()
    d, bt = (GPT_D, GPT_BT // 4) if quick else (GPT_D, GPT_BT)
    cases = [(f"{n}²", "nn", n, n, n) for n in (SQUARE[:2] if quick else SQUARE)]
    cases += [("BT×d·d×3d", "nn", bt, 3 * d, d), ("BT×d·d×4d", "nn", bt, 4 * d, d),
              ("BT×4d·4d×d", "nn", bt, d, 4 * d), ("dW=Xᵀ·dY over BT", "tn", d, 4 * d, bt)]
    rng = numpy.random.default_rng(0)
    rows = []
    for label, layout, M, N, K in cases:
        a = cp.asarray(rng.standard_normal((K, M) if layout == "tn" else (M, K), dtype=numpy.float32))
        b = cp.asarray(rng.standard_normal((K, N), dtype=numpy.float32))
        a_log = a.T if layout == "tn" else a
        ref = cp.matmul(a_log.astype(cp.float64), b.astype(cp.float64))
        flops = 2.0 * M * N * K
        t_blas = timer(lambda a_log=a_log, b=b: cp.matmul(a_log, b))
        row = {"shape": label, "M": M, "N": N, "K": K, "cuBLAS TFLOP/s": flops / t_blas / 1e9}
        variants = [(r, (lambda r=r, a=a, b=b, layout=layout: ker.gemm(a, b, layout, r)))
                    for r in ("v1", "v2", "v3")]
        if layout == "tn":
            splits = max(2, ker.splitk_splits(M, N, K))
            variants.append((f"splitK×{splits}", lambda a=a, b=b, s=splits: ker.gemm_tn_splitk(a, b, s)))
        for name, fn in variants:
            err = _rel_err(cp, fn(), ref)
            if err > 1e-4 * max(1.0, math.sqrt(K) / 8):
                raise AssertionError(f"matmul {name} {label}: relative error {err:.2e} vs float64")
            t = timer(fn)
            row[f"{name} TFLOP/s"] = flops / t / 1e9
            row[f"{name} % cuBLAS"] = 100.0 * t_blas / t
        rows.append(row)
        print(f"  matmul {label:18s} " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else ""
                                                   for k, v in row.items() if "%" in k or "cuBLAS T" in k))
    return rows


# --------------------------------------------------------------------------------------------- attention
def bench_attention(cp, timer: Timer, quick: bool) -> list[dict]:
    from minillm import functional as F
    from minillm.cuda import kernels as cuda
    from minillm.tensor import Tensor

    rng = numpy.random.default_rng(1)
    pool = cp.get_default_memory_pool()
    rows = []
    for T in (ATTN_T[:2] if quick else ATTN_T):
        for causal in (False, True):
            shape = (ATTN_B, ATTN_H, T, ATTN_D)
            q0, k0, v0, g0 = (cp.asarray(rng.standard_normal(shape, dtype=numpy.float32)) for _ in range(4))
            row = {"T": T, "causal": causal}
            outs = {}
            for path in ("float64", "composed", "ours-v1", "ours"):
                B.use_custom_kernels = path.startswith("ours")
                cuda.ATTENTION_VERSION = "v1" if path == "ours-v1" else "v2"
                dt = cp.float64 if path == "float64" else cp.float32
                leaves = [Tensor(x.astype(dt), requires_grad=True) for x in (q0, k0, v0)]

                def fwd(leaves=leaves, causal=causal):
                    return F.scaled_dot_product_attention(*leaves, is_causal=causal)

                o = fwd()
                o.backward(g0.astype(dt))
                outs[path] = [o.data] + [t.grad for t in leaves]
                if path == "float64":
                    continue
                for t in leaves:
                    t.grad = None
                pool.free_all_blocks()
                base = pool.used_bytes()
                state = {}

                def setup(fwd=fwd, leaves=leaves, state=state):
                    for t in leaves:
                        t.grad = None
                    state["o"] = fwd()

                def bwd(dt=dt, state=state, g0=g0):
                    state["o"].backward(g0.astype(dt))

                t_f = timer(fwd)
                t_b = timer(bwd, setup=setup)
                peak = (pool.total_bytes() - base) / 2**20
                flops_f = attention_flops(ATTN_B, ATTN_H, T, ATTN_D, causal)
                row.update({f"{path} fwd ms": t_f, f"{path} bwd ms": t_b,
                            f"{path} fwd TFLOP/s": flops_f / t_f / 1e9,
                            f"{path} bwd TFLOP/s": 2.5 * flops_f / t_b / 1e9, f"{path} peak MB": peak})
            for path in ("composed", "ours-v1", "ours"):
                for name, got, ref in zip(("o", "dq", "dk", "dv"), outs[path], outs["float64"]):
                    err = _rel_err(cp, got, ref)
                    if err > 1e-4:
                        raise AssertionError(f"attention {path} T={T} causal={causal}: {name} "
                                             f"error {err:.2e} vs float64")
            row["fwd speed-up"] = row["composed fwd ms"] / row["ours fwd ms"]
            row["bwd speed-up"] = row["composed bwd ms"] / row["ours bwd ms"]
            rows.append(row)
            print(f"  attention T={T:5d} causal={causal!s:5s} fwd ×{row['fwd speed-up']:.2f} "
                  f"bwd ×{row['bwd speed-up']:.2f} peak MB ours {row['ours peak MB']:.0f} "
                  f"vs composed {row['composed peak MB']:.0f}")
    B.use_custom_kernels = True
    cuda.ATTENTION_VERSION = "v2"
    return rows


# ------------------------------------------------------------------------------------------------- GPT
def _gpt_tokens_per_s(backend_name: str, ours: bool, steps: int, quick: bool) -> float:
    import minillm
    from minillm import optim
    from minillm.models.gpt import GPT, GPTConfig

    minillm.set_backend(backend_name)
    B.use_custom_kernels = ours
    try:
        minillm.manual_seed(0)
        cfg = GPTConfig(vocab_size=1024, context_length=256, d_model=256, n_heads=8, n_layers=4)
        bsz, T = (4, 128) if quick else (8, 256)
        model = GPT(cfg)
        opt = optim.AdamW(model.parameters(), lr=1e-3)
        ids = B.xp.asarray(B.rng.integers(0, cfg.vocab_size, (bsz, T + 1)))

        def step():
            opt.zero_grad()
            _, loss = model(ids[:, :-1], ids[:, 1:])
            loss.backward()
            opt.step()
            return float(loss.item())

        step()  # warm-up (kernel compilation, pool growth)
        if backend_name == "cupy":
            B.xp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if backend_name == "cupy":
            B.xp.cuda.Device().synchronize()
        return bsz * T * steps / (time.perf_counter() - t0)
    finally:
        minillm.set_backend("numpy")
        B.use_custom_kernels = True


def bench_gpt(quick: bool) -> list[dict]:
    steps = 2 if quick else 5
    row = {"model": "GPT d=256 L=4 h=8", "NumPy tok/s": _gpt_tokens_per_s("numpy", False, 2, quick),
           "CuPy library tok/s": _gpt_tokens_per_s("cupy", False, steps, quick),
           "CuPy ours tok/s": _gpt_tokens_per_s("cupy", True, steps, quick)}
    print("  gpt " + "  ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))
    return [row]


# ------------------------------------------------------------------------------------------------- main
def main(args=None) -> int:
    if not B.gpu_available():
        print("minillm bench --gpu: no GPU — this benchmark needs CuPy and an NVIDIA GPU "
              "(pip install 'minillm[gpu]'); nothing was measured.", file=sys.stderr)
        raise SystemExit(2)
    import cupy as cp

    quick = bool(getattr(args, "quick", False))
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"minillm bench --gpu on {device} ({stamp}){' [quick]' if quick else ''}")
    B.set_backend("cupy")
    try:
        timer = Timer(cp, repeats=5 if quick else 20)
        mm = bench_matmul(cp, timer, quick)
        attn = bench_attention(cp, timer, quick)
    finally:
        B.set_backend("numpy")
    gpt = bench_gpt(quick)

    mm_cols = ["shape", "M", "N", "K", "cuBLAS TFLOP/s"] + [c for c in mm[0] if c.startswith("v")]
    mm_cols += [c for r in mm for c in r if c.startswith("splitK") and c not in mm_cols]
    at_cols = ["T", "causal"] + [f"{p} {m}" for p in ("composed", "ours-v1", "ours")
                                 for m in ("fwd ms", "bwd ms", "fwd TFLOP/s", "bwd TFLOP/s", "peak MB")]
    at_cols += ["fwd speed-up", "bwd speed-up"]
    gpt_cols = list(gpt[0])
    report = (f"\n## {stamp} — {device}{' (quick)' if quick else ''}\n\n"
              f"CuPy {cp.__version__}, CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}, CUPY_TF32=0; "
              "median of CUDA-event timings, L2 flushed between repeats; every kernel validated against "
              "float64 first.\n\n### Matmul (float32)\n\n" + format_table(mm, mm_cols) +
              f"\n\n### Attention (B={ATTN_B}, H={ATTN_H}, d={ATTN_D})\n\n" + format_table(attn, at_cols) +
              "\n\n### GPT training step\n\n" + format_table(gpt, gpt_cols) + "\n")
    print(report)
    out = results_dir()
    md = out / "BENCHMARKS.md"
    if not md.exists():
        md.write_text("# GPU kernel benchmarks\n\nAppended by `minillm bench --gpu`.\n")
    with md.open("a") as f:
        f.write(report)
    js = out / "benchmarks.json"
    runs = json.loads(js.read_text()) if js.exists() else []
    runs.append({"date": stamp, "device": device, "quick": quick, "cupy": cp.__version__,
                 "matmul": mm, "attention": attn, "gpt": gpt})
    js.write_text(json.dumps(runs, indent=1))
    print(f"figures appended to {md} and {js}")
    return 0
