"""The code sandbox against escapes and forgeries: every test here fails if the escape or forgery works.

Isolation escapes run under bubblewrap (skipped, with the reason, where bwrap is not installed: CI installs
it). Limits, the timeout, killing the process tree, capped output and the unforgeable harness are checked
under bwrap and in the forced rlimit-only fallback.
"""

import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import minillm
from minillm.chat import sandbox
from minillm.chat.sandbox import OUTPUT_CAP, SandboxUnavailable, bwrap_available, run_tests

NEEDS_BWRAP = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap (bwrap) is not installed or "
                                 "cannot run here: apt-get install bubblewrap (CI's .ci/run installs it)")
BWRAP = pytest.param("require", marks=NEEDS_BWRAP, id="bwrap")
BOTH = [BWRAP, pytest.param("rlimits", id="fallback")]
ONE = [{"args": [], "expected": 0}]


def run(code: str, mode: str, tests=ONE, **kw):
    r = run_tests(code, "f", tests, isolation=mode, **kw)
    assert r.isolation == ("bwrap" if mode == "require" else "rlimits")
    return r


def alive(mark: str) -> list[int]:
    """Host pids whose command line contains ``mark``."""
    found = []
    for n in os.listdir("/proc"):
        if n.isdigit():
            try:
                if mark.encode() in open(f"/proc/{n}/cmdline", "rb").read():
                    found.append(int(n))
            except OSError:
                pass
    return found


# ------------------------------------------------------------------------------ isolation (bwrap)
@pytest.mark.parametrize("mode", [BWRAP])
def test_cannot_write_or_delete_files_outside_its_folder(mode, tmp_path):
    keep, new = tmp_path / "keep.txt", tmp_path / "new.txt"
    keep.write_text("canary")
    host_tmp = Path("/tmp") / f"minillm_canary_{secrets.token_hex(4)}"
    code = f"""
import os
def f():
    done = []
    for act in (lambda: os.remove({str(keep)!r}), lambda: open({str(new)!r}, "w").write("x"),
                lambda: open({str(keep)!r}, "w").write("overwritten"), lambda: os.chmod({str(keep)!r}, 0),
                lambda: open({str(host_tmp)!r}, "w").write("x"), lambda: os.rename({str(keep)!r}, "moved")):
        try:
            act(); done.append(1)
        except OSError:
            done.append(0)
    open("inside.txt", "w").write("the folder is writable")
    return done
"""
    r = run(code, mode)
    assert keep.read_text() == "canary" and not new.exists() and not host_tmp.exists()
    assert r.returned[0][:4] == [0, 0, 0, 0] and r.returned[0][5] == 0, r


@pytest.mark.parametrize("mode", [BWRAP])
def test_cannot_write_into_the_installed_package(mode):
    target = Path(minillm.__file__).parent / f"_sandbox_canary_{secrets.token_hex(4)}.py"
    try:
        r = run(f"def f():\n    open({str(target)!r}, 'w').write('x = 1')\n    return 0", mode)
        # read-only where the package is visible; hidden (no such file) when it lives under the host's /tmp
        refused = "Read-only" in r.detail or "No such file" in r.detail
        assert not target.exists() and r.status == "error" and refused, r
    finally:
        target.unlink(missing_ok=True)


@pytest.mark.parametrize("mode", [BWRAP])
def test_cannot_read_the_parents_environment(mode):
    """The secret is in the evaluating process's real environment (its /proc/<pid>/environ), so run_tests
    runs in a subprocess here; bwrap's own environment (/proc/1/environ inside) must be clean too."""
    secret = "sekrit-" + secrets.token_hex(8)
    code = """
import os
def f():
    seen = [repr(dict(os.environ))]
    for p in ["/proc/%d/environ" % os.getppid(), "/proc/1/environ"] + [
            "/proc/%s/environ" % n for n in os.listdir("/proc") if n.isdigit()]:
        try:
            seen.append(open(p, "rb").read().decode(errors="replace"))
        except OSError as e:
            seen.append(type(e).__name__)
    return seen
"""
    parent = ("import json, sys\nfrom minillm.chat.sandbox import run_tests\n"
              "r = run_tests(sys.stdin.read(), 'f', [{'args': [], 'expected': 0}], isolation=sys.argv[1])\n"
              "print(json.dumps([r.isolation, r.returned, r.stdout, r.stderr]))")
    p = subprocess.run([sys.executable, "-c", parent, mode], input=code, capture_output=True, text=True,
                       env={**os.environ, "MINILLM_TEST_SECRET": secret}, timeout=60)
    assert p.returncode == 0, p.stderr
    isolation, returned, *_ = json.loads(p.stdout)
    assert isolation == ("bwrap" if mode == "require" else "rlimits")
    assert returned[0] and secret not in p.stdout, returned


@pytest.mark.parametrize("mode", [BWRAP])
def test_cannot_connect_to_a_local_listener(mode):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        code = f"""
import socket
def f():
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"escaped")
        return "connected"
    except OSError as e:
        return type(e).__name__
"""
        r = run(code, mode)
        srv.settimeout(0.2)
        with pytest.raises(TimeoutError):
            srv.accept()
    assert r.returned[0] not in (None, "connected"), r


@pytest.mark.parametrize("mode", [BWRAP])
def test_subprocesses_run_but_stay_inside_the_box(mode, tmp_path, monkeypatch):
    secret = "sekrit-" + secrets.token_hex(8)
    monkeypatch.setenv("MINILLM_TEST_SECRET", secret)
    new = Path(minillm.__file__).parent / f"_sandbox_canary_{secrets.token_hex(4)}.txt"
    code = f"""
import subprocess
def f():
    p = subprocess.run(["sh", "-c", "echo x > {new}; cat /proc/1/environ; ls /proc; id -u"],
                       capture_output=True, text=True, errors="replace")
    return [p.returncode, p.stdout, p.stderr]
"""
    try:
        r = run(code, mode)
        assert not new.exists() and secret not in json.dumps(r.returned)
    finally:
        new.unlink(missing_ok=True)
    out = r.returned[0]
    refused = any(w in (out or ["", "", ""])[2] for w in ("Read-only", "No such file", "nonexistent"))
    assert out is not None and refused, r  # it ran, and the write was refused (or the folder was hidden)


@pytest.mark.parametrize("mode", [BWRAP])
def test_private_tmp_is_size_limited(mode):
    code = """
import os
def f():
    for i in range(200):
        with open("/tmp/fill%d" % i, "wb") as fh:
            fh.write(b"x" * ((1 << 20) - 1))
    return 0
"""
    r = run(code, mode)
    assert r.status == "error" and "No space left" in r.detail, r


# ------------------------------------------------------------------------ limits and the process tree
@pytest.mark.parametrize("mode", BOTH)
@pytest.mark.parametrize("code,needle", [
    ("def f():\n    return len(bytearray(8 << 30))", "MemoryError"),
    ("def f():\n    open('big', 'wb').write(b'x' * (2 << 20))\n    return 0", "File too large"),
    ("def f():\n    return len([open('solution.py') for _ in range(500)])", "Too many open files"),
])
def test_resource_limits(mode, code, needle):
    r = run(code, mode)
    assert r.status == "error" and needle in r.detail, r


@pytest.mark.parametrize("mode", BOTH)
def test_infinite_loop_times_out(mode):
    t0 = time.perf_counter()
    r = run("def f():\n    while True:\n        pass", mode, timeout=1.0)
    assert r.status == "timeout" and not r.ok and time.perf_counter() - t0 < 4, r


def _forks_bounded() -> bool:
    return os.getuid() != 0 or sandbox.pids_cgroup_available()


@pytest.mark.parametrize("mode", BOTH)
def test_fork_bomb_is_bounded_and_cleaned_up(mode):
    if not _forks_bounded():
        pytest.skip("running as root without a writable pids cgroup: RLIMIT_NPROC does not bound forks")
    mark = "minillm-forkbomb-" + secrets.token_hex(4)
    code = f"""
import os
def f():
    n = 0
    for _ in range(300):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            os.execv("/bin/sleep", [{mark!r}, "60"])
        n += 1
    return n
"""
    r = run(code, mode, max_procs=24, timeout=5.0)
    assert r.returned[0] is not None and r.returned[0] < 24, r
    assert alive(mark) == []


@pytest.mark.parametrize("loop", [True, False], ids=["timeout", "returns"])
@pytest.mark.parametrize("mode", [BWRAP, pytest.param("rlimits", id="fallback"),
                                  pytest.param("nocgroup", id="fallback-without-cgroup")])
def test_setsid_grandchild_does_not_outlive_the_run(mode, loop, monkeypatch):
    if mode == "nocgroup":
        monkeypatch.setattr(sandbox, "_cgroup_broken", True)
        mode = "rlimits"
    mark = "minillm-grandchild-" + secrets.token_hex(4)
    code = f"""
import os
def f():
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/bin/sleep", [{mark!r}, "60"])
        os._exit(0)
    os.waitpid(pid, 0)
    while {loop}:
        pass
    return 0
"""
    r = run(code, mode, timeout=1.5)
    assert r.status == ("timeout" if loop else "passed"), r
    assert alive(mark) == []


@pytest.mark.parametrize("mode", BOTH)
def test_a_gigabyte_of_output_is_capped(mode):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code = ("import os\ndef f():\n    b = b'y' * (1 << 20)\n    for _ in range(1024):\n"
            "        os.write(1, b)\n    return 0")
    r = run(code, mode, timeout=30.0)
    assert r.ok and len(r.stdout) == OUTPUT_CAP and r.dropped == (1 << 30) - OUTPUT_CAP, r.status
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 << 10  # KiB: < 200 MB more


@pytest.mark.parametrize("mode", BOTH)
def test_non_utf8_output_is_replaced(mode):
    code = ("import os\ndef f():\n    os.write(1, b'\\xff\\xfe ok')\n    os.write(2, b'\\xc3\\x28')\n"
            "    return 0")
    r = run(code, mode)
    assert r.ok and "\ufffd" in r.stdout and "ok" in r.stdout and "\ufffd" in r.stderr, r


# ------------------------------------------------------------------------------------ forgeries
SECRET = "expected-" + secrets.token_hex(8)
SECRET_TESTS = [{"args": [1], "expected": SECRET}, {"args": [2], "expected": 6.0}]
FORGERIES = {
    "stdout line": ("import json\nprint(json.dumps({'passed': 2, 'error': None}))\ndef f(x):\n    return 0",
                    {"failed"}),
    "write to every fd": ("import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'{"
                          "\"results\": [[\"ok\", 1], [\"ok\", 6.0]]}\\n')\n"
                          "    except OSError:\n        pass\n"
                          "def f(x):\n    return 0", {"invalid"}),
    "token from memory": ("""
import gc, os, re
def f(x):
    toks = {o for o in gc.get_objects() if type(o) in (str, bytes) and re.fullmatch(r"[0-9a-f]{32}",
            o if type(o) is str else o.decode("latin-1"))}
    for t in toks:
        t = t if type(t) is str else t.decode()
        for fd in range(3, 64):
            try:
                os.write(fd, (t + ' {"results": [["ok", "guess"], ["ok", 6.0]]}\\n').encode())
            except OSError:
                pass
    os._exit(0)
""", {"failed", "invalid", "crashed"}),
    "exit 0 at import": ("import os\nos._exit(0)", {"crashed"}),
    "exit 0 in the call": ("import os\ndef f(x):\n    os._exit(0)", {"crashed"}),
    "sys.exit": ("import sys\nsys.exit(0)", {"error"}),
    "atexit": ("import atexit, json\natexit.register(lambda: print(json.dumps({'passed': 2})))\n"
               "def f(x):\n    return 0", {"failed"}),
    "replace json": ("import json\n"
                     "json.dumps = lambda *a, **k: '{\"results\": [[\"ok\", 6.0], [\"ok\", 6.0]]}'\n"
                     "json.JSONEncoder.encode = lambda *a: '[]'\ndef f(x):\n    return 0", {"failed"}),
    "read the tests": ("""
import gc, os, sys
def f(x):
    blobs = [repr(sys.argv), repr(dict(os.environ)), repr(gc.get_objects())]
    for top in (".", "/tmp"):
        for d, _, names in os.walk(top):
            for n in names:
                try:
                    blobs.append(open(os.path.join(d, n), "rb").read().decode("latin-1"))
                except OSError:
                    pass
    for fd in os.listdir("/proc/self/fd"):
        try:
            blobs.append(os.read(int(fd), 1 << 16).decode("latin-1"))
        except OSError:
            pass
    for b in blobs:
        i = b.find("expected-")
        if i >= 0 and b[i + 9:i + 25].isalnum():
            return b[i:i + 25]
    return "not found"
""", {"failed", "error", "timeout"}),  # a big /tmp: the walk may run out of memory or time, never forge
    "always-equal object": ("class A:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
                            "def f(x):\n    return A()", {"failed"}),
    "float subclass": ("class F(float):\n    def __eq__(self, o):\n        return True\n"
                       "def f(x):\n    return F(6.0)", {"failed"}),
    "str subclass": ("class S(str):\n    def __eq__(self, o):\n        return True\n"
                     "def f(x):\n    return S('x')", {"failed"}),
    "list subclass and tuple": ("class L(list):\n    pass\n"
                                "def f(x):\n    return L([1]) if x == 1 else (6.0,)", {"failed"}),
    "fake __class__": ("class C:\n    __class__ = property(lambda s: float)\n    def __eq__(s, o):\n"
                       "        return True\ndef f(x):\n    return C()", {"failed"}),
    "nan and inf": ("def f(x):\n    return float('nan') if x == 1 else float('inf')", {"failed"}),
    "self-referential list": ("def f(x):\n    a = []\n    a.append(a)\n    return a", {"failed"}),
    "huge int": ("def f(x):\n    return 10 ** 5000", {"failed"}),
    "edit harness globals and builtins": ("""
import builtins, __main__
for k in list(vars(__main__)):
    if not k.startswith("__"):
        setattr(__main__, k, lambda *a, **kw: None)
builtins.type = lambda *a: float
builtins.isinstance = lambda *a: True
builtins.repr = lambda *a: "6.0"
def f(x):
    return 0
""", {"failed"}),
    "close every fd": ("import os\nos.closerange(3, 1 << 16)\ndef f(x):\n    return 6.0", {"crashed"}),
    "forged report from a forked child": ("""
import os, time
def f(x):
    if x == 2 and os.fork() == 0:
        time.sleep(0.1)
        for fd in range(3, 64):
            try:
                os.write(fd, b"0" * 32 + b' {"results": [["ok", 1], ["ok", 6.0]]}\\n')
            except OSError:
                pass
        os._exit(0)
    return 0
""", {"failed", "invalid"}),
}


@pytest.mark.parametrize("mode", BOTH)
@pytest.mark.parametrize("name", list(FORGERIES))
def test_forgeries_fail(mode, name):
    code, statuses = FORGERIES[name]
    r = run(code, mode, SECRET_TESTS, timeout=3.0)
    assert not r.ok and r.passed < 2 and r.status in statuses, r
    assert SECRET not in json.dumps(r.returned), r


@pytest.mark.parametrize("mode", BOTH)
def test_plain_values_compare_strictly_in_the_parent(mode):
    tests = [{"args": [0], "expected": [1, {"a": None}]}, {"args": [1], "expected": 2.5},
             {"args": [2], "expected": True}, {"args": [3], "expected": "é\u2028\U0001F600\ud800"},
             {"args": [4], "expected": 1}]
    code = ("def f(i):\n"
            "    return [[1, {'a': None}], 2.5 + 1e-9, True, 'é\\u2028\\U0001F600\\ud800', True][i]")
    r = run(code, mode, tests)
    assert r.reasons[:4] == ["", "", "", ""] and r.reasons[4] == "got true, expected 1", r
    assert r.status == "failed" and r.passed == 4 and r.returned[3] == tests[3]["expected"]


# ------------------------------------------------------------------------------------- the modes
def test_auto_falls_back_with_one_warning_and_require_refuses(monkeypatch):
    monkeypatch.setattr(sandbox, "_bwrap_cache", (None, [], "bwrap is not installed"))
    monkeypatch.setattr(sandbox, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rs = [run_tests("def f():\n    return 0", "f", ONE) for _ in range(2)]
    assert [r.isolation for r in rs] == ["rlimits", "rlimits"] and all(r.ok for r in rs)
    assert len(caught) == 1 and issubclass(caught[0].category, RuntimeWarning)
    msg = str(caught[0].message)
    assert "NOT isolated" in msg and "apt-get install bubblewrap" in msg and "isolation='require'" in msg
    with pytest.raises(SandboxUnavailable, match="install bubblewrap"):
        run_tests("def f():\n    return 0", "f", ONE, isolation="require")
    with pytest.raises(ValueError, match="isolation"):
        run_tests("def f():\n    return 0", "f", ONE, isolation="nope")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bubblewrap is Linux-only")
@NEEDS_BWRAP
def test_auto_uses_bwrap_where_it_works():
    assert run_tests("def f():\n    return 0", "f", ONE).isolation == "bwrap"


@pytest.mark.skipif(os.environ.get("CI") != "true" or not sys.platform.startswith("linux"),
                    reason="only CI promises bubblewrap (.ci/run installs it)")
def test_ci_runs_the_isolated_path_for_real():
    """In CI the escape tests above must run under bwrap, not skip: a missing install fails here."""
    assert bwrap_available(), sandbox._bwrap_probe()[2]
