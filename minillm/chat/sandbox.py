"""Run model-written Python against hidden unit tests in a separate, limited process (code pass@1).

Generated code is never imported into this process. Each run writes ``solution.py`` and the tests as
JSON into a fresh temporary directory and starts ``python -I`` (isolated: no user site-packages, no
PYTHON* environment variables, no script directory on ``sys.path``) there with a wall-clock timeout and,
on POSIX, resource limits (CPU seconds, address space, file size, no core dumps) set in the child before
it runs. A solution that hangs, crashes, exhausts memory or prints garbage is a failed test, never an
exception in the evaluator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_HARNESS = r"""
import json, math, sys
sys.path.insert(0, ".")
cases = json.load(open("tests.json"))
passed = 0
try:
    import solution
    fn = getattr(solution, sys.argv[1])
except BaseException as e:
    print(json.dumps({"passed": 0, "error": "load: " + type(e).__name__ + ": " + str(e)[:200]}))
    sys.exit(0)
err = None
for case in cases:
    try:
        got = fn(*case["args"])
        want = case["expected"]
        ok = (abs(got - want) < 1e-6 if isinstance(want, float) and isinstance(got, (int, float))
              else got == want and type(got) is type(want))
    except BaseException as e:
        ok, err = False, type(e).__name__ + ": " + str(e)[:200]
    passed += bool(ok)
print(json.dumps({"passed": passed, "error": err}))
"""


@dataclass
class RunResult:
    passed: int
    total: int
    status: str          # "passed", "failed", "error", "timeout", "crashed"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "passed"


def _limits(cpu_seconds: int, memory_mb: int):
    def apply():  # runs in the child between fork and exec (POSIX only)
        import resource

        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _kill(proc, posix: bool) -> None:
    """Kill the child and anything it started (its own session), then reap it."""
    try:
        if posix:
            os.killpg(proc.pid, 9)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    proc.communicate()


def run_tests(code: str, entry_point: str, tests: list[dict], timeout: float = 5.0, memory_mb: int = 512
              ) -> RunResult:
    """Run ``code`` (which should define ``entry_point``) on ``tests`` (``{"args": [...], "expected": ...}``)
    in a separate isolated Python process; returns how many passed and why not all did."""
    total = len(tests)
    if not entry_point.isidentifier():
        return RunResult(0, total, "error", f"entry point {entry_point!r} is not an identifier")
    with tempfile.TemporaryDirectory(prefix="minillm_sandbox_") as tmp:
        with open(os.path.join(tmp, "solution.py"), "w", encoding="utf-8") as f:
            f.write(code)
        with open(os.path.join(tmp, "tests.json"), "w", encoding="utf-8") as f:
            json.dump(tests, f)
        with open(os.path.join(tmp, "harness.py"), "w", encoding="utf-8") as f:
            f.write(_HARNESS)
        posix = os.name == "posix"
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": tmp}
        proc = subprocess.Popen(
            [sys.executable, "-I", "harness.py", entry_point], cwd=tmp, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, start_new_session=posix,
            preexec_fn=_limits(int(timeout) + 1, memory_mb) if posix else None)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc, posix)
            return RunResult(0, total, "timeout", f"no result within {timeout:g} s")
        last = stdout.strip().splitlines()[-1:] if stdout.strip() else []
        try:
            report = json.loads(last[0]) if last else None
        except json.JSONDecodeError:
            report = None
        if not isinstance(report, dict) or not isinstance(report.get("passed"), int):
            return RunResult(0, total, "crashed", f"exit code {proc.returncode}: {stderr.strip()[-300:]}")
        passed = min(report["passed"], total)
        status = "passed" if passed == total else ("error" if report.get("error") else "failed")
        return RunResult(passed, total, status, report.get("error") or "")
