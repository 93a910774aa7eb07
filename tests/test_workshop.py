"""`minillm workshop`: the student copies follow nbgrader's convention, the instructor copies are the
lessons, the guide covers every lesson and exercise, and the offline bundle asks pip for the right things."""

from __future__ import annotations

import json

import pytest

from minillm.cli import main
from minillm.exercises import EXERCISES
from minillm.exercises.workshop import bundle, lessons_folder, strip_solutions, student_notebook

SOURCE = '''def f(x):
    """Doc."""
    ### BEGIN SOLUTION
    y = x + 1
    return y
    ### END SOLUTION


print(check("01.f", f))
'''


def test_a_solution_becomes_nbgraders_stub_at_its_indentation():
    out = strip_solutions(SOURCE)
    assert "### BEGIN SOLUTION" not in out and "y = x + 1" not in out
    assert '    """Doc."""\n    # YOUR CODE HERE\n    raise NotImplementedError()\n' in out
    assert out.startswith("def f(x):") and out.endswith('print(check("01.f", f))\n')
    two = strip_solutions(SOURCE + "\n" + SOURCE.replace("f(", "g("))
    assert two.count("raise NotImplementedError()") == 2 and "return y" not in two


def test_the_kit_has_both_copies_of_every_lesson_and_a_guide(tmp_path, capsys):
    assert main(["workshop", "--out", str(tmp_path)]) == 0
    lessons = sorted(lessons_folder().glob("[0-9][0-9]_*.ipynb"))
    assert len(lessons) == 16
    for path in lessons:
        original = json.loads(path.read_text(encoding="utf-8"))
        assert json.loads((tmp_path / "instructor" / path.name).read_text()) == original
        student = json.loads((tmp_path / "student" / path.name).read_text())
        assert student == student_notebook(original)
        text = "".join("".join(c["source"]) for c in student["cells"])
        assert "### BEGIN SOLUTION" not in text and "### END SOLUTION" not in text
        assert all(not c.get("outputs") for c in student["cells"] if c["cell_type"] == "code")
        assert text.count("raise NotImplementedError()") >= 1, f"{path.name} has no exercise"
    guide = (tmp_path / "GUIDE.md").read_text()
    for name in EXERCISES:
        assert f"`{name}`" in guide
    for n in range(1, 17):
        assert f"| {n:02d} |" in guide
    assert "not measured" not in guide, "every lesson's run time is a measured range"
    assert "## A 90-minute session" in guide and "## A full day" in guide
    assert "--no-index --find-links" in guide


def test_the_bundle_downloads_the_wheel_and_the_lessons_dependencies(tmp_path):
    calls = []
    commands = bundle(tmp_path / "b", run=lambda cmd, check: calls.append(cmd))
    assert calls == commands and len(commands) == 2
    wheel, deps = commands
    assert wheel[2:5] == ["pip", "wheel", "--no-deps"] and str(tmp_path / "b") in wheel
    assert deps[2:4] == ["pip", "download"] and deps[-1].endswith("[lessons]")


def test_workshop_needs_a_target(tmp_path):
    with pytest.raises(ValueError, match="give --out"):
        main(["workshop"])
