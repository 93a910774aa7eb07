"""The CUDA kernels compile, with no GPU: NVRTC (CuPy's low-level bindings) for sm_80 and sm_90, and where
``nvcc`` exists, ptxas's resource report (no register spills, shared memory within the 48 KB static
limit, registers × threads within one SM's register file). Also: the .cu files ship in the wheel."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minillm.cuda.kernels import kernel_path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["matmul.cu", "attention.cu"]
STATIC_SMEM_LIMIT = 48 * 1024
REGISTER_FILE = 64 * 1024  # 32-bit registers per SM (sm_80, sm_90)


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
    except ImportError as e:  # no cupy on this platform (the dev extras install it on Linux)
        pytest.skip(f"NVRTC check needs cupy-cuda12x + nvidia-cuda-nvrtc-cu12 (pip install -e '.[dev]'): {e}")
    return nvrtc


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("source", SOURCES)
def test_nvrtc_compiles(source, arch):
    nvrtc = _nvrtc()
    src = kernel_path(source).read_text()
    prog = nvrtc.createProgram(src, source, [], [])
    try:
        nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", "-std=c++17"])
    except Exception as e:
        pytest.fail(f"NVRTC failed to compile {source} for {arch}: {e}\n{nvrtc.getProgramLog(prog)}")
    ptx = nvrtc.getPTX(prog)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    kernels = re.findall(r"\.entry\s+(\w+)", ptx)
    declared = re.findall(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)', src)
    instantiated = re.findall(r"^SGEMM_V\d\((\w+),", src, flags=re.MULTILINE)  # the macro-made kernels
    expected = (set(declared) - {"name", "__launch_bounds__"}) | set(instantiated)
    assert expected and expected <= set(kernels), f"missing from PTX: {expected - set(kernels)}"


def _ptxas_report(source: str, tmp_path: Path) -> dict[str, dict]:
    out = tmp_path / (source + ".cubin")
    res = subprocess.run(["nvcc", "-arch=sm_90", "-cubin", "-Xptxas", "-v", "-o", str(out),
                          str(kernel_path(source))], capture_output=True, text=True)
    assert res.returncode == 0, f"nvcc failed on {source}:\n{res.stderr}"
    report, current = {}, None
    for line in res.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = report.setdefault(m.group(1), {"regs": 0, "smem": 0, "spill": 0})
            continue
        if current is None:
            continue
        if (m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            current["spill"] = int(m.group(1)) + int(m.group(2))
        if (m := re.search(r"Used (\d+) registers", line)):
            current["regs"] = int(m.group(1))
        if (m := re.search(r"(\d+) bytes smem", line)):
            current["smem"] = int(m.group(1))
    return report


def _threads_per_block(source: str) -> dict[str, int]:
    """Threads per block of each kernel at the default tiles, from the launch code's own formulas."""
    from minillm.cuda.kernels import DEFAULT_TILES as t

    v3 = (t["V3_BM"] // t["V3_TM"]) * (t["V3_BN"] // t["V3_TN"])
    tpr = t["ATTN_TPR"]
    return {"sgemm_v1": t["V1_BLOCK"] ** 2, "sgemm_v2": t["V2_TILE"] ** 2, "sgemm_v3": v3,
            "splitk_reduce": 256, "attn_bwd_preprocess": 256,
            "flash_fwd_d64": t["FWD64_BM"] * tpr, "flash_fwd_d128": t["FWD128_BM"] * tpr,
            "flash_fwd_v2_d64": (t["FWD2_BM"] // 4) * 16, "flash_bwd_dkdv_v2_d64": (t["BWD2_BN"] // 4) * 8,
            "flash_bwd_dq_v2_d64": (t["DQ2_BM"] // 4) * 8,
            "flash_bwd_dkdv_d64": t["BWD64_BN"] * tpr, "flash_bwd_dkdv_d128": t["BWD128_BN"] * tpr,
            "flash_bwd_dq_d64": t["BWD64_BM"] * tpr, "flash_bwd_dq_d128": t["BWD128_BM"] * tpr}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH: ptxas resource check skipped")
@pytest.mark.parametrize("source", SOURCES)
def test_ptxas_resources(source, tmp_path):
    report = _ptxas_report(source, tmp_path)
    assert report, "ptxas reported no kernels"
    threads = _threads_per_block(source)
    for name, r in report.items():
        assert r["spill"] == 0, f"{name}: {r['spill']} bytes of register spills"
        assert r["smem"] <= STATIC_SMEM_LIMIT, f"{name}: {r['smem']} B static shared memory > 48 KB"
        nt = next(v for k, v in threads.items() if name.startswith(k))
        assert r["regs"] * nt <= REGISTER_FILE, f"{name}: {r['regs']} regs × {nt} threads > an SM's registers"


def test_kernels_ship_in_the_wheel_config():
    """pyproject maps minillm.kernels -> kernels/ and lists every sub-package (no packages.find there)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"]["minillm.kernels"] == "kernels"
    assert {"*.cu", "*.h"} <= set(cfg["package-data"]["minillm.kernels"])
    subpackages = {"minillm." + ".".join(p.parent.relative_to(ROOT / "minillm").parts)
                   for p in (ROOT / "minillm").rglob("__init__.py") if p.parent != ROOT / "minillm"}
    missing = subpackages - set(cfg["packages"])
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    for source in SOURCES + ["cuda_emulator.h"]:
        assert (ROOT / "kernels" / source).is_file()
