"""Run the CUDA kernels in ``kernels/*.cu`` on the CPU: a test and teaching tool, not a product.

The unmodified ``.cu`` source is compiled with ``g++ -std=c++20 -pthread`` behind ``kernels/cuda_emulator.h``
(which maps ``__global__``/``__shared__``/``__syncthreads`` onto host threads, statics and a ``std::barrier``;
read its header comment for the model). Every ``extern "C" __global__`` kernel gets a generated launcher,
called through ctypes, and the launch API mirrors CuPy's, so ``minillm.cuda.kernels`` drives the emulator with
the very code that launches the kernels on a GPU::

    mod = EmulatedModule(kernel_path("matmul.cu"))
    mod.get_function("sgemm_v2_nn")((gx, gy, 1), (32, 32, 1), (a, b, c, numpy.int32(M), ...))

Arguments are checked like a strict driver would: arrays must be C-contiguous with the pointer's element
type, scalars numpy scalars of the parameter's exact type (a Python int would be sent as 64 bits by CuPy).
``run_sanitized`` runs one launch in a separate executable built with ``-fsanitize=thread`` (reports data
races: a missing ``__syncthreads()``) or ``-fsanitize=address`` (reports out-of-bounds global reads/writes).
Builds are cached in the temp directory, keyed by a hash of the sources, defines and flags.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy

from minillm.cuda.kernels import kernel_path

_HEADER = "cuda_emulator.h"
_CACHE = Path(tempfile.gettempdir()) / "minillm-cuda-emulator"
_BASE_FLAGS = ["-std=c++20", "-pthread", "-w"]

# C type -> (ctypes type, numpy dtype)
_SCALARS = {
    "int": (ctypes.c_int, numpy.int32),
    "unsigned": (ctypes.c_uint, numpy.uint32),
    "unsigned int": (ctypes.c_uint, numpy.uint32),
    "long long": (ctypes.c_longlong, numpy.int64),
    "float": (ctypes.c_float, numpy.float32),
}
_POINTEES = {"float": numpy.float32, "unsigned char": numpy.uint8, "int": numpy.int32}


class EmulatorError(RuntimeError):
    """The emulator could not build or run a kernel (the message carries the compiler's output)."""


def have_compiler() -> bool:
    """True when g++ is on PATH (the emulator needs it)."""
    return shutil.which("g++") is not None


@dataclass
class Param:
    ctype: str  # e.g. "const float*", "int"
    base: str  # "float", "int", "unsigned char", "long long"
    pointer: bool


def _define_flags(defines: dict | None) -> list[str]:
    return [f"-D{k}={v}" for k, v in sorted((defines or {}).items())]


def parse_kernels(path: Path, defines: dict | None = None) -> dict[str, list[Param]]:
    """Names and parameter lists of the ``extern "C" __global__`` kernels, read after preprocessing."""
    cmd = ["g++", "-E", "-P", "-x", "c++", "-std=c++20", "-D__launch_bounds__(...)=", *_define_flags(defines),
           str(path)]
    pre = subprocess.run(cmd, capture_output=True, text=True)
    if pre.returncode != 0:
        raise EmulatorError(f"preprocessing {path} failed:\n{pre.stderr}")
    kernels = {}
    for m in re.finditer(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', pre.stdout):
        params = []
        for raw in m.group(2).split(","):
            raw = " ".join(raw.replace("*", " * ").split())
            words = raw.split(" ")[:-1]  # drop the parameter's name
            pointer = "*" in words
            base = " ".join(w for w in words if w not in ("const", "*", "__restrict__"))
            if (pointer and base not in _POINTEES) or (not pointer and base not in _SCALARS):
                raise EmulatorError(f"kernel {m.group(1)}: unsupported parameter type in {raw!r}")
            params.append(Param(" ".join(words).replace(" *", "*"), base, pointer))
        kernels[m.group(1)] = params
    if not kernels:
        raise EmulatorError(f'no extern "C" __global__ kernels found in {path}')
    return kernels


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(source: str, out_name: str, flags: list[str], header_dir: Path) -> Path:
    """Compile generated C++ ``source`` once per content+flags; returns the cached output path."""
    key = hashlib.sha256((source + "\0" + " ".join(flags) + "\0" +
                          (header_dir / _HEADER).read_text()).encode()).hexdigest()[:20]
    out_dir = _CACHE / key
    out = out_dir / out_name
    if out.exists():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / "emulated.cpp"
    src.write_text(source)
    tmp = out_dir / f".{out_name}.{os.getpid()}.tmp"
    cmd = ["g++", *_BASE_FLAGS, *flags, "-I", str(header_dir), str(src), "-o", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise EmulatorError(f"g++ failed ({' '.join(cmd)}):\n{res.stderr[-6000:]}")
    os.replace(tmp, out)  # atomic: concurrent builders never see half a file
    return out


def _check_args(name: str, params: list[Param], args) -> list:
    if len(args) != len(params):
        raise EmulatorError(f"kernel {name}: expected {len(params)} arguments, got {len(args)}")
    out = []
    for i, (p, a) in enumerate(zip(params, args)):
        if p.pointer:
            want = _POINTEES[p.base]
            if not isinstance(a, numpy.ndarray) or a.dtype != want or not a.flags.c_contiguous:
                got = f"{type(a).__name__} {getattr(a, 'dtype', '')}"
                raise EmulatorError(f"kernel {name}: argument {i} ({p.ctype}) needs a C-contiguous "
                                    f"{want.__name__} array, got {got}")
            out.append(a)
        else:
            want = _SCALARS[p.base][1]
            if not isinstance(a, numpy.generic) or a.dtype != want:
                raise EmulatorError(f"kernel {name}: argument {i} ({p.ctype}) needs numpy.{want.__name__}, "
                                    f"got {type(a).__name__} (CuPy sends a Python int/float as 64 bits)")
            out.append(a)
    return out


class EmulatedKernel:
    """One kernel: call it as ``kernel(grid, block, args)`` (CuPy's RawKernel convention)."""

    def __init__(self, module: EmulatedModule, name: str, params: list[Param]):
        self.module, self.name, self.params = module, name, params
        fn = getattr(module.lib, f"emu_launch_{name}")
        fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_void_p if p.pointer else _SCALARS[p.base][0]
                                             for p in params]
        fn.restype = None
        self._fn = fn

    def __call__(self, grid, block, args, **_ignored):
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        if min(grid) < 1 or min(block) < 1 or numpy.prod(block) > 1024:
            raise EmulatorError(f"kernel {self.name}: bad launch grid {grid} / block {block}")
        checked = _check_args(self.name, self.params, args)
        cargs = [a.ctypes.data if p.pointer else a.item() for p, a in zip(self.params, checked)]
        self._fn(*[int(g) for g in grid], *[int(b) for b in block], *cargs)


class EmulatedModule:
    """A ``.cu`` file compiled for the CPU; ``get_function(name)`` mirrors ``cupy.RawModule``.

    ``defines`` override the file's ``#ifndef`` tile macros (smaller tiles mean fewer host threads).
    """

    def __init__(self, path, defines: dict | None = None, opt: str = "-O1"):
        if not have_compiler():
            raise EmulatorError("the CUDA emulator needs g++ on PATH")
        self.path = Path(path).resolve()
        self.defines = dict(defines or {})
        self.kernels = parse_kernels(self.path, self.defines)
        lines = [f'#include "{_HEADER}"', f'#include "{self.path}"']
        for name, params in self.kernels.items():
            decl = ", ".join(f"{p.ctype} a{i}" for i, p in enumerate(params))
            call = ", ".join(f"a{i}" for i in range(len(params)))
            lines.append('extern "C" __attribute__((visibility("default")))\n'
                         f'void emu_launch_{name}(unsigned gx, unsigned gy, unsigned gz, '
                         f'unsigned bx, unsigned by, unsigned bz{", " if decl else ""}{decl}) {{\n'
                         f'    emu_launch(dim3(gx, gy, gz), dim3(bx, by, bz), [&] {{ {name}({call}); }});\n'
                         '}')
        source = "\n".join(lines) + f"\n// source {_digest(self.path)}\n"  # the cache key covers the .cu text
        # hidden + no gnu-unique: two builds of one .cu (other tile sizes) loaded in one process must not
        # share their `static` (shared-memory) arrays through the dynamic linker
        flags = [opt, "-shared", "-fPIC", "-fvisibility=hidden", "-fno-gnu-unique", "-Wl,-Bsymbolic",
                 *_define_flags(self.defines)]
        self.lib_path = _build(source, "emulated.so", flags, kernel_path(_HEADER).parent)
        self.lib = ctypes.CDLL(str(self.lib_path))
        self._functions: dict[str, EmulatedKernel] = {}

    def get_function(self, name: str) -> EmulatedKernel:
        if name not in self.kernels:
            raise EmulatorError(f"no kernel {name!r} in {self.path.name}; it has {sorted(self.kernels)}")
        if name not in self._functions:
            self._functions[name] = EmulatedKernel(self, name, self.kernels[name])
        return self._functions[name]


def _sanitized_source(path: Path, kernels: dict[str, list[Param]]) -> str:
    """A ``main`` that runs one launch named on its command line; arrays come from files, scalars as text."""
    lines = [f'#include "{_HEADER}"', f'#include "{path}"', "#include <cstdio>", "#include <cstdlib>",
             "static void* emu_read(const char* p) {",
             '    FILE* f = std::fopen(p, "rb"); std::fseek(f, 0, SEEK_END); long n = std::ftell(f);',
             "    std::rewind(f); void* buf = std::malloc(n > 0 ? n : 1);",
             "    if (std::fread(buf, 1, n, f) != (size_t)n) std::abort(); std::fclose(f); return buf;",
             "}",
             "int main(int argc, char** argv) {",
             "    dim3 g(std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]));",
             "    dim3 b(std::atoi(argv[5]), std::atoi(argv[6]), std::atoi(argv[7]));",
             "    int i = 8;"]
    conv = {"int": "(int)std::strtol(argv[i++], nullptr, 10)",
            "unsigned": "(unsigned)std::strtoul(argv[i++], nullptr, 10)",
            "unsigned int": "(unsigned)std::strtoul(argv[i++], nullptr, 10)",
            "long long": "std::strtoll(argv[i++], nullptr, 10)",
            "float": "std::strtof(argv[i++], nullptr)"}
    for name, params in kernels.items():
        lines.append(f'    if (!std::strcmp(argv[1], "{name}")) {{')
        for j, p in enumerate(params):
            val = f"({p.ctype})emu_read(argv[i++])" if p.pointer else conv[p.base]
            lines.append(f"        {p.ctype} a{j} = {val};")
        call = ", ".join(f"a{j}" for j in range(len(params)))
        lines.append(f"        emu_launch(g, b, [&] {{ {name}({call}); }});\n        return 0;\n    }}")
    lines += ['    std::fprintf(stderr, "unknown kernel %s\\n", argv[1]);', "    return 3;", "}"]
    return "\n".join(lines) + f"\n// source {_digest(path)}\n"


def run_sanitized(path, name: str, grid, block, args, defines: dict | None = None,
                  sanitizer: str = "thread") -> str:
    """Run one launch under ``-fsanitize=thread`` (or ``address``); the sanitizer's report, "" if clean."""
    if sanitizer not in ("thread", "address"):
        raise ValueError(f"sanitizer must be 'thread' or 'address', got {sanitizer!r}")
    path = Path(path).resolve()
    kernels = parse_kernels(path, defines)
    if name not in kernels:
        raise EmulatorError(f"no kernel {name!r} in {path.name}")
    checked = _check_args(name, kernels[name], args)
    flags = ["-O1", "-g", f"-fsanitize={sanitizer}", *_define_flags(defines)]
    exe = _build(_sanitized_source(path, kernels), f"sanitized_{sanitizer}", flags,
                 kernel_path(_HEADER).parent)
    grid = tuple(grid) + (1,) * (3 - len(grid))
    block = tuple(block) + (1,) * (3 - len(block))
    with tempfile.TemporaryDirectory() as tmp:
        argv = [str(exe), name, *map(str, grid), *map(str, block)]
        for j, (p, a) in enumerate(zip(kernels[name], checked)):
            if p.pointer:
                f = Path(tmp) / f"a{j}.bin"
                a.tofile(f)
                argv.append(str(f))
            else:
                argv.append(float(a).hex() if p.base == "float" else str(int(a)))
        env = dict(os.environ, TSAN_OPTIONS="halt_on_error=0 exitcode=66 report_signal_unsafe=0",
                   ASAN_OPTIONS="detect_leaks=0 exitcode=66")
        res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    report = res.stderr
    if res.returncode not in (0, 66):
        raise EmulatorError(f"sanitized run of {name} failed (exit {res.returncode}):\n{report[-4000:]}")
    return report if ("ThreadSanitizer" in report or "AddressSanitizer" in report) else ""
