"""``minillm workshop``: the kit an instructor teaches from.

``--out DIR`` writes ``DIR/instructor/`` (the lessons with their solutions and outputs), ``DIR/student/``
(each solution between nbgrader's ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers replaced by
``# YOUR CODE HERE`` and ``raise NotImplementedError()``, outputs cleared: nbgrader's own convention, so
these files can be its source) and ``DIR/GUIDE.md``. ``--bundle DIR`` prepares an offline install for
laptops without network: minillm's wheel and every dependency with the ``lessons`` extra, installable with
``pip install --no-index --find-links DIR "minillm[lessons]"``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from minillm import options as opt

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_SOLUTION = re.compile(r"^([ \t]*)### BEGIN SOLUTION[^\n]*\n.*?^[ \t]*### END SOLUTION[^\n]*$",
                       re.MULTILINE | re.DOTALL)


def lessons_folder() -> Path:
    """The lesson notebooks of this checkout (``lessons/`` beside the package)."""
    folder = Path(__file__).resolve().parent.parent.parent / "lessons"
    if not folder.is_dir():
        raise FileNotFoundError(f"the lessons are not at {folder}: run minillm workshop from a clone of the "
                                "repository (pip install -e .)")
    return folder


def strip_solutions(source: str) -> str:
    """``source`` with every marked solution replaced by nbgrader's stub, at the solution's indentation."""
    return _SOLUTION.sub(lambda m: f"{m[1]}# YOUR CODE HERE\n{m[1]}raise NotImplementedError()", source)


def student_notebook(notebook: dict) -> dict:
    """The student copy of a notebook (as JSON): solutions stubbed, outputs and execution counts cleared."""
    nb = json.loads(json.dumps(notebook))
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if BEGIN in source:
            source = strip_solutions(source)
            cell["source"] = source.splitlines(keepends=True)
        cell["outputs"], cell["execution_count"] = [], None
    return nb


def write_kit(out: Path, lessons: Path | None = None) -> list[Path]:
    """Write the instructor and student notebooks and the guide under ``out``; returns the files written."""
    lessons = lessons or lessons_folder()
    written = []
    for path in sorted(lessons.glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        for kind, copy in (("instructor", nb), ("student", student_notebook(nb))):
            target = out / kind / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(copy, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            written.append(target)
    from minillm.exercises.guide import guide_text

    (out / "GUIDE.md").write_text(guide_text(lessons), encoding="utf-8")
    return written + [out / "GUIDE.md"]


def bundle(folder: Path, project: Path | None = None, run=subprocess.run) -> list[list[str]]:
    """Put minillm's wheel and every dependency (with the lessons extra) in ``folder`` for offline installs.

    The one step of a workshop that needs a network: do it once, copy the folder to the laptops."""
    project = project or Path(__file__).resolve().parent.parent.parent
    commands = [
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(folder), str(project)],
        [sys.executable, "-m", "pip", "download", "--dest", str(folder), f"{project}[lessons]"],
    ]
    for cmd in commands:
        run(cmd, check=True)
    return commands


def add_arguments(p) -> None:
    """The ``minillm workshop`` options."""
    p.add_argument("--out", type=opt.output_folder,
                   help="write student/ and instructor/ notebooks and GUIDE.md here")
    p.add_argument("--bundle", type=opt.output_folder,
                   help="download minillm's wheel and its dependencies here for an offline install (needs a "
                        "network once)")


def main(args) -> int:
    """``minillm workshop --out DIR`` and/or ``--bundle DIR``."""
    if not args.out and not args.bundle:
        raise ValueError("minillm workshop: give --out DIR (the notebooks and guide) and/or --bundle DIR")
    if args.out:
        files = write_kit(Path(args.out))
        print(f"wrote {len(files) - 1} notebooks and {Path(args.out) / 'GUIDE.md'}")
    if args.bundle:
        bundle(Path(args.bundle))
        print(f"offline install: pip install --no-index --find-links {args.bundle} \"minillm[lessons]\"")
    return 0
