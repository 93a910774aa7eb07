"""Every lesson notebook runs top to bottom (nbclient), from a temporary copy; the committed one stays as is.

Each ``lessons/*.ipynb`` is its own test. The kernel (``python3``) starts in a temporary ``lessons/``
folder that holds the copy and links to everything else in the repository's ``lessons/`` (and, one level
up, to the repository's top-level entries), so relative paths a lesson uses resolve as they would in a
checkout. Plots go to the non-interactive Agg backend. The first failing cell stops the run, and the
test's message shows that cell's source and its error.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from nbclient.exceptions import CellExecutionError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "lessons").glob("*.ipynb"))
CELL_TIMEOUT_S = 300
MAX_NOTEBOOK_BYTES = 1_000_000
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in IPython tracebacks


def _workdir(tmp_path: Path, notebook: Path) -> Path:
    """tmp/lessons/ with links to the repository's lesson files; tmp/ with links to its top level."""
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.name != "lessons":
            (tmp_path / entry.name).symlink_to(entry)
    work = tmp_path / "lessons"
    work.mkdir()
    for entry in notebook.parent.iterdir():
        if entry.suffix != ".ipynb" and not entry.name.startswith("."):
            (work / entry.name).symlink_to(entry)
    return work


def _failed_cell(nb) -> tuple[int, str, str]:
    """(index, source, error) of the first code cell with an error output."""
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return i, cell.source, f"{out.get('ename')}: {out.get('evalue')}"
    return -1, "", ""


@pytest.mark.slow
@pytest.mark.parametrize("copy", ["instructor", "student"])
@pytest.mark.parametrize("notebook", LESSONS, ids=[p.name for p in LESSONS])
def test_lesson_runs_without_errors(notebook: Path, copy: str, tmp_path: Path, monkeypatch):
    """The lesson as committed (the instructor's copy: every exercise's check passes) and the student copy
    ``minillm workshop`` writes (every exercise a stub: each check says "not attempted yet", and the
    later cells run on minillm's implementation) both run to the end."""
    import json

    from minillm.exercises.workshop import student_notebook

    raw = json.loads(notebook.read_text(encoding="utf-8"))
    nb = nbformat.reads(json.dumps(student_notebook(raw) if copy == "student" else raw), as_version=4)
    work = _workdir(tmp_path, notebook)
    monkeypatch.setenv("MPLBACKEND", "Agg")  # the kernel inherits this environment
    # Lessons run many small matmuls: one BLAS thread per kernel keeps their run time predictable on a
    # busy 2-core machine (threaded OpenBLAS was measured 5-10x slower there under load).
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=False,
                                     resources={"metadata": {"path": str(work)}})
    try:
        client.execute(cwd=str(work))
    except CellExecutionError as e:
        i, source, error = _failed_cell(nb)
        pytest.fail(f"{notebook.name}: cell {i} failed with {error}\n--- cell source ---\n{source}\n"
                    f"--- traceback ---\n{ANSI.sub('', str(e))}", pytrace=False)
    nbformat.write(nb, tmp_path / notebook.name)  # the executed copy, for a look when debugging
    printed = "".join(out.get("text", "") for c in nb.cells for out in c.get("outputs", []))
    if copy == "instructor":
        assert "✗" not in printed and "not attempted yet" not in printed, f"{notebook.name}: a check failed"
    else:
        assert "✓" not in printed, f"{notebook.name}: a student stub passed its check"


@pytest.mark.parametrize("notebook", LESSONS, ids=[p.name for p in LESSONS])
def test_committed_lesson_is_clean(notebook: Path):
    """The committed notebook is small, carries its outputs, and none of them is an error."""
    assert notebook.stat().st_size < MAX_NOTEBOOK_BYTES, f"{notebook.name} is over 1 MB"
    nb = nbformat.read(notebook, as_version=4)
    i, source, error = _failed_cell(nb)
    assert i < 0, f"{notebook.name}: committed cell {i} shows an error ({error}):\n{source}"
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code and all(c.get("outputs") is not None for c in code)
    assert any(c.get("outputs") for c in code), f"{notebook.name} was committed without outputs"
    assert nb.cells[0].cell_type == "markdown", f"{notebook.name} should open with prose, not code"
    for cell in code:  # executed with a non-inline backend (Agg), a plot leaves no image behind
        if "plt.show()" in cell.source:
            assert any("image/png" in out.get("data", {}) for out in cell.outputs), (
                f"{notebook.name}: a plotting cell was committed without its figure:\n{cell.source[:200]}")
