"""Lesson 14: the online-softmax update in NumPy tiles, and the tiled matmul's inner loop in CUDA C.

``14.tiled_matmul_cuda`` is checked by running the learner's CUDA C: their function returns the inner loop
as a string, which is put in place of the marker line of ``kernels/exercise_tiled_matmul.cu``, compiled with
the CPU emulator (``minillm.cuda.emulator``, g++; no GPU needed) and launched on shapes that are not
multiples of the tile. The comparison of two snippets is the comparison of the C matrices they compute
(NumPy's ``A @ B`` for the reference), so run_check's mistake matching works on what the kernels do. A
compile error, a crash, an endless loop or a missing g++ comes back as the reason the check fails, never as
an exception; the launches run in a child process, so a kernel that writes out of bounds cannot take the
notebook's Python down with it.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy

from minillm.exercises.checking import Case, Exercise, same_values, same_values_and_nonfinite, seeded


# ---------------------------------------------------------------------------------------- online softmax
def softmax_weighted_sum(scores: numpy.ndarray, V: numpy.ndarray, tile: int) -> numpy.ndarray:
    """The textbook result, all keys at once: softmax(scores) @ V row by row (``tile`` is not needed)."""
    s = numpy.asarray(scores, dtype=numpy.float64)
    p = numpy.exp(s - s.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)) @ numpy.asarray(V, dtype=numpy.float64)


def _online(rescale_l: bool = True, rescale_acc: bool = True, shift: bool = True, divide: bool = True):
    """The online update with parts left out: the common wrong versions."""
    def fn(scores, V, tile):
        R, T = scores.shape
        m, l, acc = numpy.full((R, 1), -numpy.inf), numpy.zeros((R, 1)), numpy.zeros((R, V.shape[1]))
        with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for j0 in range(0, T, tile):
                s = scores[:, j0:j0 + tile]
                m_new = numpy.maximum(m, s.max(axis=1, keepdims=True)) if shift else numpy.zeros_like(m)
                alpha = numpy.exp(m - m_new) if shift else numpy.ones_like(m)
                p = numpy.exp(s - m_new)
                l = (l * alpha if rescale_l else l) + p.sum(axis=1, keepdims=True)
                acc = (acc * alpha if rescale_acc else acc) + p @ V[j0:j0 + tile]
                m = m_new
            return acc / l if divide else acc
    return fn


def _rising(rng, R: int, T: int, scale: float, base: float = 0.0) -> numpy.ndarray:
    """Scores whose running max rises from tile to tile (each row on its own slope)."""
    slope = rng.uniform(0.5, 1.5, (R, 1))
    return base + scale * (slope * numpy.arange(T) / T + 0.3 * rng.standard_normal((R, T)))


def _online_cases():
    rng = seeded(1401)
    v = lambda T, d: rng.standard_normal((T, d))
    yield Case((_rising(rng, 3, 12, 6.0), v(12, 4), 4), label="the running max rises in every tile")
    yield Case((3 * rng.standard_normal((2, 10)), v(10, 5), 4), label="ragged: tiles of 4, 4 and 2 keys")
    yield Case((rng.standard_normal((2, 5)), v(5, 3), 8), label="one tile bigger than the row")
    yield Case((_rising(rng, 3, 7, 4.0), v(7, 2), 1), label="tiles of one key")
    yield Case((-_rising(rng, 2, 9, 6.0), v(9, 3), 4), label="the max is in the first tile")
    peaks = rng.standard_normal((4, 16))
    peaks[numpy.arange(4), [1, 6, 10, 15]] += 8.0
    yield Case((peaks, v(16, 3), 4), label="each row's max in a different tile")
    yield Case((_rising(rng, 2, 11, 60.0, base=800.0), v(11, 4), 3),
               label="large scores near +800: e^s overflows")
    yield Case((_rising(rng, 2, 11, 60.0, base=-900.0), v(11, 4), 5),
               label="large negative scores near -900: e^s underflows to 0")


ONLINE_SOFTMAX = Exercise(
    name="14.online_softmax", lesson=14,
    task="Write FlashAttention's online softmax for a block of query rows: scores (R, T) and values V "
         "(T, d) arrive in key tiles of `tile` columns (the last one may be shorter). Keep per row a running "
         "max m, a running sum l of e^(s - m) and an unnormalised output a; for each tile compute "
         "m' = max(m, max s), "
         "rescale l and a by e^(m - m') (what was summed so far is relative to the old max), add the tile's "
         "e^(s - m') and e^(s - m') @ V, and return a / l: the same (R, d) as softmax(scores) @ V.",
    signature="def online_softmax(scores: np.ndarray, V: np.ndarray, tile: int) -> np.ndarray",
    reference=softmax_weighted_sum,
    cases=_online_cases,
    compare=same_values_and_nonfinite,
    mistakes={
        "no rescale": (_online(rescale_l=False, rescale_acc=False),
                       "when a tile raises the running max, l and the accumulator still hold sums relative "
                       "to the old max: multiply both by e^(m - m') before adding the new tile."),
        "l rescaled, accumulator not": (_online(rescale_acc=False),
                                        "you rescale l but not the accumulator: a is a sum relative to the "
                                        "running max too, so it needs the same factor e^(m - m')."),
        "no max subtracted": (_online(shift=False),
                              "e^s of a raw score overflows (e^800 = inf) or underflows to 0 (e^-900): "
                              "exponentiate s - m', the scores minus the running max."),
        "no final division": (_online(divide=False),
                              "the accumulator holds unnormalised weights: return a / l at the end."),
    },
)


# ------------------------------------------------------------------------------ tiled matmul in CUDA C
TEMPLATE = "exercise_tiled_matmul.cu"
MARKER = "/* YOUR INNER LOOP */"
KERNEL = "tiled_matmul"
TILE = 8  # 64 host threads per block on the emulator
SHAPES = ((13, 21, 19), (8, 16, 8), (1, 5, 3), (20, 9, 33))  # (M, N, K): ragged, whole tiles, tiny, deep K
RUN_TIMEOUT_S = 30.0
NO_COMPILER = ("cannot run CUDA C here: g++ was not found on PATH (the CPU emulator compiles the kernel with "
               "g++, C++20; install it, e.g. `apt-get install g++`, and run the check again)")
_SNIPPET_FILE = "your snippet"

_REFERENCE = "for (int k = 0; k < TILE; ++k) acc += As[ty][k] * Bs[k][tx];"


def tiled_matmul_inner_loop() -> str:
    """minillm's inner loop: this thread's row ty of As times column tx of Bs, added into acc."""
    return _REFERENCE


def _snippet(text: str):
    fn = lambda: text
    fn.__name__ = "tiled_matmul_inner_loop"
    return fn


def kernel_source(snippet: str) -> str:
    """``kernels/exercise_tiled_matmul.cu`` with ``snippet`` in place of its marker line. ``#line``
    directives make the compiler call the snippet's lines ``your snippet:LINE``, the rest the template's."""
    from minillm.cuda.kernels import kernel_path

    lines = kernel_path(TEMPLATE).read_text().splitlines()
    i = next(j for j, line in enumerate(lines) if MARKER in line)
    body = [f'#line 1 "{_SNIPPET_FILE}"', *snippet.splitlines(), f'#line {i + 2} "{TEMPLATE}"']
    return "\n".join(lines[:i] + body + lines[i + 1:]) + "\n"


def _source_file(snippet: str) -> Path:
    """The spliced source, written once per snippet under the temp directory (the build cache keys on it)."""
    text = kernel_source(snippet)
    folder = Path(tempfile.gettempdir()) / "minillm-exercises"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tiled_matmul_{hashlib.sha256(text.encode()).hexdigest()[:16]}.cu"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # atomic: a concurrent check never reads half a file
    return path


def first_compile_error(output: str) -> str:
    """The compiler's first error line, with the file named as the learner knows it."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = (line for line in lines if re.search(r"\berror\b", line) and not line.startswith("g++ failed"))
    error = next(errors, lines[-1] if lines else "no compiler output")
    m = re.match(rf"{re.escape(_SNIPPET_FILE)}:(\d+):(?:\d+:)?\s*(?:fatal )?error:\s*(.*)", error)
    if m:
        return f"line {m[1]} of your snippet: {m[2]}"
    return re.sub(r"(?:/[^\s:/]+)+/([^\s:/]+:)", r"\1", error)  # /tmp/.../x.cu:12: -> x.cu:12:


_CHILD = r"""
import sys
import numpy as np
from minillm.cuda.emulator import EmulatedModule
job = np.load(sys.argv[1])
tile = int(job["tile"])
kernel = EmulatedModule(str(job["path"]), defines={"TILE": tile}).get_function(str(job["kernel"]))
out = {}
for i in range(int(job["count"])):
    a, b = job[f"a{i}"], job[f"b{i}"]
    M, K = a.shape
    N = b.shape[1]
    c = np.full((M, N), np.nan, np.float32)  # an element never written stays NaN
    grid = ((N + tile - 1) // tile, (M + tile - 1) // tile, 1)
    kernel(grid, (tile, tile, 1), (a, b, c, np.int32(M), np.int32(N), np.int32(K)))
    out[f"c{i}"] = c
np.savez(sys.argv[2], **out)
"""


def _run_child(path: Path, operands: list[tuple[numpy.ndarray, numpy.ndarray]]) -> list[numpy.ndarray] | str:
    """Launch the compiled kernel on each (A, B) in a child process: the C matrices, or what went wrong."""
    import minillm

    with tempfile.TemporaryDirectory(prefix="minillm-exercise-") as tmp:
        job, out = Path(tmp) / "job.npz", Path(tmp) / "out.npz"
        arrays = {f"{x}{i}": m for i, pair in enumerate(operands) for x, m in zip("ab", pair)}
        numpy.savez(job, path=str(path), kernel=KERNEL, tile=TILE, count=len(operands), **arrays)
        root = str(Path(minillm.__file__).resolve().parent.parent)
        path_list = (root, os.environ.get("PYTHONPATH"))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path_list if p))
        try:
            res = subprocess.run([sys.executable, "-c", _CHILD, str(job), str(out)], capture_output=True,
                                 text=True, env=env, timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return (f"the kernel did not finish within {RUN_TIMEOUT_S:.0f} s: an endless loop, or a "
                    "__syncthreads() that not every thread of the block reaches?")
        if res.returncode < 0:
            try:
                name = signal.Signals(-res.returncode).name
            except ValueError:
                name = f"signal {-res.returncode}"
            return (f"the kernel crashed ({name}): it read or wrote memory outside the tiles or the "
                    "matrices (check every index)")
        if res.returncode != 0:
            tail = [line for line in res.stderr.splitlines() if line.strip()]
            return f"the emulated launch failed: {tail[-1] if tail else f'exit status {res.returncode}'}"
        with numpy.load(out) as data:
            return [data[f"c{i}"] for i in range(len(operands))]


def _operands() -> list[tuple[numpy.ndarray, numpy.ndarray]]:
    rng = seeded(1402)
    f32 = numpy.float32
    return [(rng.standard_normal((M, K), dtype=f32), rng.standard_normal((K, N), dtype=f32))
            for M, N, K in SHAPES]


_RUNS: dict[str, list[numpy.ndarray] | str] = {}


def emulate(snippet: str) -> list[numpy.ndarray] | str:
    """C for each shape in ``SHAPES`` with ``snippet`` as the inner loop, or a sentence saying why there is
    none (no g++, a compile error, a crash, a timeout). Remembered per snippet: each compiles, runs once."""
    from minillm.cuda import emulator

    if not emulator.have_compiler():
        return NO_COMPILER
    if snippet not in _RUNS:
        try:
            path = _source_file(snippet)
            emulator.EmulatedModule(path, defines={"TILE": TILE})  # compiles here (cached by source)
        except emulator.EmulatorError as e:
            _RUNS[snippet] = f"the kernel does not compile: {first_compile_error(str(e))}"
        else:
            _RUNS[snippet] = _run_child(path, _operands())
    return _RUNS[snippet]


def _same_matrix(got: numpy.ndarray, want: numpy.ndarray, K: int) -> str | None:
    """Within float32 rounding, with nan exactly where ``want`` has nan (a wrong kernel's output may)."""
    g, w = numpy.asarray(got, dtype=numpy.float64), numpy.asarray(want, dtype=numpy.float64)
    gn, wn = numpy.isnan(g), numpy.isnan(w)
    if not numpy.array_equal(gn, wn):
        i = tuple(int(j) for j in numpy.argwhere(gn != wn)[0])
        extra = (" (the guard cells past the tiles hold NaN: does your loop read one element too far?)"
                 if gn[i] else "")
        return f"at index {i}: expected {w[i]:.6g}, got {g[i]:.6g}{extra}"
    return same_values(numpy.where(gn, 0.0, g), numpy.where(wn, 0.0, w), rtol=1e-4, atol=4e-5 * numpy.sqrt(K))


def compare_kernels(got, want) -> str | None:
    """Two inner-loop snippets agree when the kernels they make compute the same C on every shape; the
    reference's C is NumPy's ``A @ B`` (float64)."""
    if not isinstance(got, str):
        if got is None:
            return "your function returned None: return the CUDA C of the inner loop as a string"
        return f"expected the inner loop as a string of CUDA C, got {type(got).__name__}"
    mine = emulate(got)
    if isinstance(mine, str):
        return mine
    if want == _REFERENCE:
        expected = [a.astype(numpy.float64) @ b.astype(numpy.float64) for a, b in _operands()]
    else:
        expected = emulate(want)
        if isinstance(expected, str):
            return f"(the snippet compared with) {expected}"
    for (M, N, K), c, e in zip(SHAPES, mine, expected):
        why = _same_matrix(c, e, K)
        if why is not None:
            return f"C = A·B with M={M}, N={N}, K={K} (TILE {TILE}, so partial tiles at the edges): {why}"
    return None


def _matmul_cases():
    yield Case((), label="")  # one run of the kernel covers every shape (see SHAPES)


TILED_MATMUL_CUDA = Exercise(
    name="14.tiled_matmul_cuda", lesson=14,
    task="Write the inner loop of the shared-memory tiled matmul in CUDA C, returned as a string: in "
         "kernels/exercise_tiled_matmul.cu, after __syncthreads() the block's tiles are staged as "
         "As[r][c] = A[m0 + r][k0 + c] and Bs[r][c] = B[k0 + r][n0 + c]; thread (tx, ty) must add the TILE "
         "products of row ty of As and column tx of Bs into its accumulator acc. The check compiles the "
         "kernel with the CPU emulator (g++) and compares C with A @ B on shapes that are not multiples of "
         "TILE.",
    signature="def tiled_matmul_inner_loop() -> str",
    reference=tiled_matmul_inner_loop,
    cases=_matmul_cases,
    compare=compare_kernels,
    mistakes={
        "indices swapped": (_snippet("for (int k = 0; k < TILE; ++k) acc += As[k][ty] * Bs[tx][k];"),
                            "the tiles are indexed [row][column]: this thread needs row ty of As (As[ty][k]) "
                            "and column tx of Bs (Bs[k][tx]), k running along the shared dimension."),
        "overwrites acc": (_snippet("for (int k = 0; k < TILE; ++k) acc = As[ty][k] * Bs[k][tx];"),
                           "`acc = ...` keeps only the last product: accumulate with `acc += ...`."),
        "a new accumulator": (_snippet("float acc = 0.f;\nfor (int k = 0; k < TILE; ++k) acc += As[ty][k] * "
                                       "Bs[k][tx];"),
                              "C comes out all zeros: your products never reach the kernel's acc (declared "
                              "before the k0 loop). A `float acc` or `sum` declared in the snippet is a new "
                              "variable that is gone after this tile: add into the existing acc."),
        "one past the tile": (_snippet("for (int k = 0; k <= TILE; ++k) acc += As[ty][k] * Bs[k][tx];"),
                              "the loop runs TILE + 1 times: a tile has TILE elements, k = 0 .. TILE - 1, so "
                              "the bound is k < TILE (index TILE is a guard cell holding NaN)."),
    },
)


def tiled_matmul(snippet: str, A: numpy.ndarray, B: numpy.ndarray) -> numpy.ndarray:
    """C = A @ B computed by the exercise kernel with ``snippet`` as its inner loop, on the CPU emulator
    (in a child process). Raises RuntimeError with the reason when it cannot (no g++, a compile error...)."""
    from minillm.cuda import emulator

    A, B = numpy.ascontiguousarray(A, numpy.float32), numpy.ascontiguousarray(B, numpy.float32)
    if not emulator.have_compiler():
        raise RuntimeError(NO_COMPILER)
    try:
        path = _source_file(snippet)
        emulator.EmulatedModule(path, defines={"TILE": TILE})
    except emulator.EmulatorError as e:
        raise RuntimeError(f"the kernel does not compile: {first_compile_error(str(e))}") from None
    out = _run_child(path, [(A, B)])
    if isinstance(out, str):
        raise RuntimeError(out)
    return out[0]


EXERCISES = [ONLINE_SOFTMAX, TILED_MATMUL_CUDA]
