"""Run model-written Python against hidden unit tests in a separate, isolated process (code pass@1).

Generated code is never imported, eval'd or exec'd in this process. Each run starts ``python -I`` on a
small harness that imports ``solution.py``, calls the entry point on each test's arguments and sends the
return values back as plain JSON (exact ``None``/``bool``/``int``/finite ``float``/``str``/``list``/``dict``
with ``str`` keys; anything else, subclasses included, is rejected) over a pipe the code is not told about,
prefixed by a random per-run token. The child's stdout/stderr are only captured (1 MB each, the rest
counted and dropped, decoded with ``errors="replace"``). **Expected values never enter the child**: this
process compares them, so a forged, repeated, truncated or missing report can only fail.

Isolation (``isolation=``):

- ``"bwrap"`` path (Linux with bubblewrap, used by ``"auto"`` and ``"require"``): the child runs under
  ``bwrap --unshare-all --unshare-user --cap-drop ALL --die-with-parent --new-session`` (own user, pid,
  net, ipc, uts and cgroup namespaces: no network, no view of host processes), a read-only view of ``/``,
  a private size-limited tmpfs on ``/tmp`` (holding the code's folder) as the only writable place, and a
  scrubbed environment (bwrap itself is started with an empty environment, because the code can read
  bwrap's own environment through ``/proc/1/environ``). Killing bwrap kills the whole pid namespace.
- ``"rlimits"`` fallback (no bwrap, e.g. macOS): the same harness and limits, a scrubbed environment and a
  temporary folder, but the code can read and write the user's files, read other processes' environments
  (``/proc/<pid>/environ``) and use the network. ``"auto"`` warns once per process when it falls back;
  ``"require"`` raises :class:`SandboxUnavailable` instead.

Both paths set rlimits (CPU seconds, address space, file size, open files, processes, no core dumps). As
root ``RLIMIT_NPROC`` does not stop forks, so on Linux each run also gets its own pids cgroup
(``pids.max``) when ``/sys/fs/cgroup`` is writable (cgroup v1 ``pids`` or v2 with the pids controller);
without one, a root fork bomb is bounded only by the timeout. At the end of every run (and at the timeout)
the process tree is killed: bwrap's pid namespace, the process group, the cgroup, and (Linux) a sweep of
``/proc`` for the run's descendants and for processes carrying its random environment marker. In the
fallback without a cgroup, a process that leaves the session *and* replaces its environment can escape that
sweep (on macOS, leaving the process group is enough), and as a non-root user ``RLIMIT_NPROC`` (Linux:
the user's current task count plus ``max_procs``) is the fork bound.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunResult", "SandboxUnavailable", "bwrap_available", "pids_cgroup_available", "run_tests"]

OUTPUT_CAP = 1 << 20        # bytes kept per stream (stdout, stderr); the rest is counted and dropped
CHANNEL_CAP = 4 << 20       # a report longer than this is invalid
TMPFS_BYTES = 64 << 20      # size of the private /tmp under bwrap
FILE_BYTES = 1 << 20        # RLIMIT_FSIZE
OPEN_FILES = 64             # RLIMIT_NOFILE
STATUSES = ("passed", "failed", "error", "timeout", "crashed", "invalid")
_MARKER_VAR = "MINILLM_SANDBOX_RUN"

# The harness: reads its config (token, channel fd, entry point, arguments; never the expected values)
# from stdin before the solution is imported, keeps what it uses in closure cells bound before the
# import, converts return values strictly and writes one ``token json\n`` report on the channel fd.
_HARNESS = r'''
def _main():
    import os, sys, json
    _read, _write, _exit, _close, _type = os.read, os.write, os._exit, os.close, type
    _int_repr, _float_repr, _ord, _str_encode = int.__repr__, float.__repr__, ord, str.encode
    _list_iter, _dict_items, _BaseException = list.__iter__, dict.items, BaseException
    _name = type.__dict__["__name__"].__get__
    chunks = []
    while True:
        b = _read(0, 1 << 16)
        if not b:
            break
        chunks.append(b)
    cfg = json.loads(b"".join(chunks))
    token, chan, folder = cfg["token"].encode(), cfg["fd"], cfg["folder"]
    os.set_inheritable(chan, False)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    _close(null)
    os.closerange(3, chan)
    os.closerange(chan + 1, 1 << 16)
    del cfg["token"], chunks

    class Reject(Exception):
        pass

    def esc(s):
        out = ['"']
        for ch in s:
            o = _ord(ch)
            if 32 <= o < 127 and ch != '"' and ch != "\\":
                out.append(ch)
            elif o > 0xFFFF:
                o -= 0x10000
                out.append("\\u%04x\\u%04x" % (0xD800 + (o >> 10), 0xDC00 + (o & 0x3FF)))
            else:
                out.append("\\u%04x" % o)
        out.append('"')
        return "".join(out)

    def enc(v, depth=0):  # plain values only; exact types, no subclasses, no user methods called
        if depth > 64:
            raise Reject("nested deeper than 64")
        t = _type(v)
        if v is None:
            return "null"
        if t is bool:
            return "true" if v is True else "false"
        if t is int:
            try:
                return _int_repr(v)
            except ValueError:
                raise Reject("int too large") from None
        if t is float:
            if v != v or v in (float("inf"), float("-inf")):
                raise Reject("non-finite float")
            return _float_repr(v)
        if t is str:
            return esc(v)
        if t is list:
            return "[" + ",".join([enc(x, depth + 1) for x in _list_iter(v)]) + "]"
        if t is dict:
            parts = []
            for k, x in _dict_items(v):
                if _type(k) is not str:
                    raise Reject("dict key of type " + _name(_type(k)))
                parts.append(esc(k) + ":" + enc(x, depth + 1))
            return "{" + ",".join(parts) + "}"
        raise Reject("value of type " + _name(t))

    def why(e):
        try:
            msg = str(e)
            msg = msg[:200] if _type(msg) is str else ""
        except _BaseException:
            msg = ""
        try:
            return _name(_type(e)) + ": " + msg
        except _BaseException:
            return "exception"

    def send(text):
        for stream in (sys.stdout, sys.stderr):  # the code's own output, which os._exit would drop
            try:
                stream.flush()
            except _BaseException:
                pass
        data = token + b" " + _str_encode(text, "ascii") + b"\n"
        while data:
            data = data[_write(chan, data):]
        _exit(0)

    sys.path.insert(0, folder)
    try:
        import solution
        fn = getattr(solution, cfg["entry"])
        if not callable(fn):
            raise TypeError(cfg["entry"] + " is not callable")
    except _BaseException as e:
        send('{"load_error":' + esc(why(e)) + "}")
    results = []
    for args in cfg["args"]:
        try:
            v = fn(*args)
        except _BaseException as e:
            results.append('["raised",' + esc(why(e)) + "]")
            continue
        try:
            results.append('["ok",' + enc(v) + "]")
        except Reject as e:
            results.append('["rejected",' + esc(e.args[0]) + "]")
        except _BaseException as e:
            results.append('["rejected",' + esc("unconvertible value: " + why(e)) + "]")
    send('{"results":[' + ",".join(results) + "]}")


_main()
'''


class SandboxUnavailable(RuntimeError):
    """``isolation="require"`` was asked for but bubblewrap cannot run here."""


@dataclass
class RunResult:
    """What happened to one solution: ``status`` is one of ``STATUSES``; ``ok`` means every test passed.

    ``reasons[i]`` is ``""`` for a passed test, else why it failed; ``returned[i]`` the plain value the
    function returned (``None`` when it raised or returned something unsupported).
    """

    passed: int
    total: int
    status: str
    detail: str = ""
    reasons: list[str] = field(default_factory=list)
    returned: list[Any] = field(default_factory=list)
    isolation: str = ""          # "bwrap" or "rlimits"
    stdout: str = ""
    stderr: str = ""
    dropped: int = 0             # output bytes over the cap, counted and discarded

    @property
    def ok(self) -> bool:
        return self.status == "passed"


# --------------------------------------------------------------------------------------------- bwrap
_BWRAP_BASE = ["--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
               "--ro-bind", "/", "/"]
_BWRAP_OPTIONAL = ["--disable-userns"]   # bwrap >= 0.8
_bwrap_cache: tuple[str | None, list[str], str] | None = None
_warned = False


def _bwrap_probe() -> tuple[str | None, list[str], str]:
    """(path to a working bwrap or None, the optional flags it accepts, why it is unavailable); cached."""
    global _bwrap_cache
    if _bwrap_cache is None:
        path = shutil.which("bwrap") if sys.platform.startswith("linux") else None
        why = "bwrap is not installed" if sys.platform.startswith("linux") else f"not Linux ({sys.platform})"
        result: tuple[str | None, list[str], str] = (None, [], why)
        for optional in ([_BWRAP_OPTIONAL, []] if path else []):
            cmd = [path, *_BWRAP_BASE, *optional, "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp",
                   *_interpreter_binds(), "--proc", "/proc", "--dev", "/dev", "--",
                   sys.executable, "-I", "-c", "pass"]
            try:
                p = subprocess.run(cmd, env={}, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as e:
                result = (None, [], f"bwrap did not run: {e}")
                continue
            if p.returncode == 0:
                result = (path, optional, "")
                break
            result = (None, [], "bwrap is installed but fails here: "
                      + p.stderr.decode(errors="replace").strip()[-200:])
        _bwrap_cache = result
    return _bwrap_cache


def _interpreter_binds() -> list[str]:
    """``--ro-bind`` arguments that keep this Python visible inside the box when it lives under /tmp (a
    virtual environment made with ``mktemp -d``, as in CI), which the private tmpfs would otherwise hide."""
    places = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(sys.executable),
                                            os.path.dirname(os.path.realpath(sys.executable)))}
    args: list[str] = []
    for place in sorted(places):  # a parent sorts first; its children need no bind of their own
        covered = any(place.startswith(done + "/") for done in args[2::3])
        if (place == "/tmp" or place.startswith("/tmp/")) and not covered:
            args += ["--ro-bind", place, place]
    return args


def bwrap_available() -> bool:
    """Whether runs can be isolated with bubblewrap on this machine."""
    return _bwrap_probe()[0] is not None


def _warn_fallback(why: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"minillm.chat.sandbox: {why}, so model-written code runs with resource limits and a timeout "
            "only: it is NOT isolated from your files (it can read and write them), other processes' "
            "environments or the network. Install bubblewrap for real isolation (Debian/Ubuntu: "
            "apt-get install bubblewrap; Fedora: dnf install bubblewrap), or pass isolation='require' to "
            "refuse to run without it.", RuntimeWarning, stacklevel=3)


# ------------------------------------------------------------------------------- process bookkeeping
def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _own_cgroup(kind: str) -> str:
    """This process's cgroup path for a v1 controller (``kind``) or v2 (``""``)."""
    try:
        for line in _read("/proc/self/cgroup").decode().splitlines():
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if kind in ctrls.split(",") if kind else ctrls == "":
                return path
    except OSError:
        pass
    return "/"


_cgroup_broken = False


def _make_pids_cgroup(max_procs: int) -> str | None:
    """A fresh pids cgroup limited to ``max_procs`` tasks, or None where /sys/fs/cgroup is not writable."""
    global _cgroup_broken
    if _cgroup_broken or not sys.platform.startswith("linux"):
        return None
    name = "minillm_sandbox_" + secrets.token_hex(8)
    for base in ("/sys/fs/cgroup/pids" + _own_cgroup("pids"), "/sys/fs/cgroup" + _own_cgroup("")):
        if not os.path.exists(os.path.join(base, "cgroup.procs")):
            continue
        path = os.path.join(base, name)
        try:
            os.mkdir(path)
        except OSError:
            continue
        try:
            with open(os.path.join(path, "pids.max"), "w") as f:
                f.write(str(max_procs))
            return path
        except OSError:
            os.rmdir(path)
    _cgroup_broken = True
    return None


def pids_cgroup_available() -> bool:
    """Whether each run can get its own pids cgroup (the fork bound that also holds for root)."""
    path = _make_pids_cgroup(1)
    if path:
        os.rmdir(path)
    return path is not None


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) from /proc (Linux); empty elsewhere."""
    table = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for n in names:
        if n.isdigit():
            try:
                with open(f"/proc/{n}/stat", "rb") as f:
                    rest = f.read().rsplit(b")", 1)[1].split()
                table[int(n)] = (int(rest[1]), rest[0].decode())
            except (OSError, IndexError, ValueError):
                pass
    return table


def _leftovers(root: int, marker: bytes, cgroup: str | None) -> set[int]:
    """Live processes of this run: the cgroup's, descendants of ``root``, and those carrying ``marker``."""
    found: set[int] = set()
    if cgroup:
        try:
            found |= {int(x) for x in _read(os.path.join(cgroup, "cgroup.procs")).split()}
        except (OSError, ValueError):
            pass
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = [root]
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in found:
                found.add(c)
                stack.append(c)
    for pid, (_, state) in table.items():
        if state != "Z" and pid not in found:
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        found.add(pid)
            except OSError:
                pass
    found.discard(os.getpid())
    return {p for p in found if table.get(p, (0, ""))[1] != "Z"}


def _exited(proc: subprocess.Popen) -> bool:
    """Whether the child has exited, without reaping it: while it is a zombie its pid (= its process
    group id) cannot be reused, so killing the group or walking its descendants never hits a stranger."""
    if not hasattr(os, "waitid"):
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_tree(proc: subprocess.Popen, marker: bytes, cgroup: str | None) -> None:
    """SIGKILL the child, its process group and every leftover of the run, then reap the child."""
    for _ in range(200):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        pids = _leftovers(proc.pid, marker, cgroup)
        if not pids and _exited(proc):
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.005)
    proc.wait()
    if cgroup:
        for _ in range(100):
            try:
                os.rmdir(cgroup)
                break
            except OSError:
                time.sleep(0.01)


def _user_tasks() -> int:
    """How many tasks (threads) this user runs now (Linux), so RLIMIT_NPROC can allow ``max_procs`` more."""
    uid, n = os.getuid(), 0
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += int(_read(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()[17])
            except (OSError, IndexError, ValueError):
                pass
    return n


def _preexec(cpu_seconds: int, memory_mb: int, max_procs: int, cgroup: str | None):
    nproc = (_user_tasks() + max_procs) if os.getuid() != 0 and os.path.isdir("/proc") else None

    def apply() -> None:  # runs in the child between fork and exec (POSIX only)
        import resource

        if cgroup:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return apply


# ------------------------------------------------------------------------------------------ reading
class _Stream:
    """A non-blocking pipe read into a capped buffer; bytes over ``cap`` are counted and dropped."""

    def __init__(self, fd: int, cap: int):
        self.fd, self.cap, self.buf, self.dropped = fd, cap, bytearray(), 0
        os.set_blocking(fd, False)
        try:  # a bigger pipe buffer (Linux) means fewer reads of a flood of output
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        except (ImportError, AttributeError, OSError):
            pass

    def read(self) -> bool:
        """Read what is there; False at end of file."""
        while True:
            try:
                b = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not b:
                return False
            room = self.cap - len(self.buf)
            self.buf += b[:room]
            self.dropped += max(0, len(b) - room)

    def text(self) -> str:
        return self.buf.decode("utf-8", errors="replace")


def _collect(proc: subprocess.Popen, streams: list[_Stream], timeout: float) -> bool:
    """Read all streams until they close or the child exits (plus a short grace); True on timeout."""
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    for s in streams:
        sel.register(s.fd, selectors.EVENT_READ, s)
    exited_at = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                return not _exited(proc)
            if _exited(proc):
                exited_at = exited_at or now
                if now - exited_at > 0.3:  # descendants still hold the pipes: they are killed next
                    break
            for key, _ in sel.select(min(deadline - now, 0.05)):
                if not key.data.read():
                    sel.unregister(key.fd)
        return False
    finally:
        sel.close()


# ------------------------------------------------------------------------------------------- verdict
def _same(got: Any, want: Any) -> bool:
    """Strict structural equality of plain JSON values; floats within 1e-6 (absolute or relative)."""
    if type(want) is float and type(got) in (int, float):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6)
    if type(got) is not type(want):
        return False
    if type(want) is list:
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    if type(want) is dict:
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    return got == want


def _short(v: Any) -> str:
    s = json.dumps(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def _verdict(channel: bytes, token: bytes, wants: list, base: dict) -> RunResult:
    """Parse the child's report strictly and compare its values with ``wants`` here, in the parent."""
    total = len(wants)

    def invalid(why: str) -> RunResult:
        return RunResult(0, total, "invalid", f"invalid report: {why}", ["invalid report"] * total,
                         [None] * total, **base)

    prefix = token + b" "
    if not channel.startswith(prefix):
        return invalid("does not start with this run's token")
    body = channel[len(prefix):]
    if not body.endswith(b"\n") or b"\n" in body[:-1] or token in body:
        return invalid("not exactly one report line")
    try:
        report = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        return invalid(f"not JSON ({type(e).__name__})")
    if type(report) is not dict or len(report) != 1:
        return invalid("not a single-key object")
    if "load_error" in report:
        if type(report["load_error"]) is not str:
            return invalid("bad load_error")
        msg = "load: " + report["load_error"][:300]
        return RunResult(0, total, "error", msg, [msg] * total, [None] * total, **base)
    results = report.get("results")
    if type(results) is not list or len(results) != total:
        return invalid(f"expected {total} results")
    reasons, returned, raised = [], [], None
    for got, want in zip(results, wants):
        if type(got) is not list or len(got) != 2 or got[0] not in ("ok", "raised", "rejected"):
            return invalid("malformed result")
        kind, value = got
        if kind != "ok" and type(value) is not str:
            return invalid("malformed result")
        returned.append(value if kind == "ok" else None)
        if kind == "raised":
            raised = raised or value[:300]
            reasons.append("raised " + value[:300])
        elif kind == "rejected":
            reasons.append("returned an unsupported value: " + value[:300])
        elif _same(value, want):
            reasons.append("")
        else:
            reasons.append(f"got {_short(value)}, expected {_short(want)}")
    passed = reasons.count("")
    status = "passed" if passed == total else ("error" if raised else "failed")
    detail = raised or next((r for r in reasons if r), "")
    return RunResult(passed, total, status, detail, reasons, returned, **base)


# ---------------------------------------------------------------------------------------------- run
def _write_all(fd: int, data: bytes) -> None:
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except (BrokenPipeError, OSError):
        pass


def _choose_isolation(isolation: str) -> tuple[str | None, list[str]]:
    """(bwrap path or None, its optional flags) for ``isolation``; warns or raises as the mode asks."""
    if isolation not in ("auto", "require", "rlimits"):
        raise ValueError(f"isolation must be 'auto', 'require' or 'rlimits', not {isolation!r}")
    if os.name != "posix":
        raise SandboxUnavailable("minillm.chat.sandbox needs a POSIX system (Linux, macOS)")
    bwrap, optional, why = _bwrap_probe() if isolation != "rlimits" else (None, [], "")
    if bwrap is None and isolation == "require":
        raise SandboxUnavailable(f"isolation='require' but {why}; install bubblewrap (apt-get install "
                                 "bubblewrap) or use isolation='auto'")
    if bwrap is None and isolation == "auto":
        _warn_fallback(why)
    return bwrap, optional


def _child_argv(folder: str, env: dict, files: dict[str, int], bwrap: str | None, optional: list[str]
                ) -> tuple[list[str], dict]:
    """(argv, the environment to start it with): the harness under bwrap, or directly in the fallback."""
    python = [sys.executable, "-I", "-B", os.path.join(folder, "harness.py")]
    if bwrap is None:
        return python, env
    argv = [bwrap, *_BWRAP_BASE, *optional, "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp",
            *_interpreter_binds(), "--proc", "/proc", "--dev", "/dev", "--dir", folder, "--chdir", folder,
            "--clearenv"]
    for name, fd in files.items():
        argv += ["--file", str(fd), f"{folder}/{name}"]
    for k, v in env.items():
        argv += ["--setenv", k, v]
    return argv + ["--", *python], {}  # bwrap's own environment is readable inside as /proc/1/environ


def _close(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None and fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _run_child(argv: list[str], env: dict, host_dir: str, files: dict[str, int], cfg: dict, timeout: float,
               memory_mb: int, max_procs: int, marker: bytes) -> tuple[list[_Stream], bool, int]:
    """Start the child, send it ``cfg`` on stdin, read stdout/stderr/the channel until it ends or the
    timeout, then kill the whole tree. Returns (streams, timed out, exit code). Closes ``files``."""
    chan_r, chan_w = os.pipe()
    cfg = {**cfg, "fd": chan_w}
    cgroup = _make_pids_cgroup(max_procs)
    proc, killed, fds = None, False, [chan_r]
    try:
        proc = subprocess.Popen(
            argv, cwd=host_dir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, pass_fds=(chan_w, *files.values()), start_new_session=True,
            preexec_fn=_preexec(int(timeout) + 1, memory_mb, max_procs, cgroup))
        _close(chan_w, *files.values())
        chan_w = -1
        files.clear()  # closed here: the caller must not close these numbers again (they may be reused)
        stdin_fd = os.dup(proc.stdin.fileno())
        fds += [os.dup(proc.stdout.fileno()), os.dup(proc.stderr.fileno())]
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()
        threading.Thread(target=_write_all, args=(stdin_fd, json.dumps(cfg).encode()), daemon=True).start()
        streams = [_Stream(fds[1], OUTPUT_CAP), _Stream(fds[2], OUTPUT_CAP), _Stream(chan_r, CHANNEL_CAP)]
        timed_out = _collect(proc, streams, timeout)
        _kill_tree(proc, marker, cgroup)
        killed = True
        for s in streams:
            s.read()
        return streams, timed_out, proc.returncode
    finally:
        if proc is not None and not killed:  # interrupted (e.g. Ctrl-C): still kill everything
            _kill_tree(proc, marker, cgroup)
        elif proc is None and cgroup:
            try:
                os.rmdir(cgroup)
            except OSError:
                pass
        _close(chan_w, *fds, *files.values())


def run_tests(code: str, entry_point: str, tests: list[dict], timeout: float = 5.0, memory_mb: int = 512,
              isolation: str = "auto", max_procs: int = 64) -> RunResult:
    """Run ``code`` (which should define ``entry_point``) on ``tests`` (``{"args": [...], "expected": ...}``)
    in an isolated child process and compare the returned values here; never raises for what the code does.

    ``isolation``: ``"auto"`` (bwrap where it works, else the rlimit-only fallback with one warning),
    ``"require"`` (raise :class:`SandboxUnavailable` without bwrap) or ``"rlimits"`` (force the fallback).
    """
    bwrap, optional = _choose_isolation(isolation)
    mode, total = ("bwrap" if bwrap else "rlimits"), len(tests)
    wants = [json.loads(json.dumps(t["expected"])) for t in tests]  # normalised as the child's values are
    if not entry_point.isidentifier():
        return RunResult(0, total, "error", f"entry point {entry_point!r} is not an identifier",
                         isolation=mode)
    token, marker = secrets.token_hex(16).encode(), secrets.token_hex(16)
    host_dir = tempfile.mkdtemp(prefix="minillm_sandbox_")
    folder = host_dir if bwrap is None else "/tmp/" + os.path.basename(host_dir)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "HOME": folder,
           "LANG": "C.UTF-8", _MARKER_VAR: marker}
    files: dict[str, int] = {}
    try:
        for name, text in (("solution.py", code), ("harness.py", _HARNESS)):
            with open(os.path.join(host_dir, name), "w", encoding="utf-8") as f:
                f.write(text)
            if bwrap is not None:  # handed to bwrap as open files, so the box needs no view of host_dir
                files[name] = os.open(os.path.join(host_dir, name), os.O_RDONLY)
        argv, popen_env = _child_argv(folder, env, files, bwrap, optional)
        cfg = {"token": token.decode(), "folder": folder, "entry": entry_point,
               "args": [list(t["args"]) for t in tests]}
        streams, timed_out, returncode = _run_child(argv, popen_env, host_dir, files, cfg, timeout, memory_mb,
                                                    max_procs, f"{_MARKER_VAR}={marker}".encode())
    finally:
        _close(*files.values())
        shutil.rmtree(host_dir, ignore_errors=True)
    return _result(streams, timed_out, returncode, token, wants, f"no result within {timeout:g} s", mode)


def _result(streams: list[_Stream], timed_out: bool, returncode: int, token: bytes, wants: list,
            timeout_detail: str, mode: str) -> RunResult:
    """The verdict on one run from what the child left in its three streams."""
    out, err, chan = streams
    total = len(wants)
    base = {"isolation": mode, "stdout": out.text(), "stderr": err.text(),
            "dropped": out.dropped + err.dropped}
    if timed_out:
        return RunResult(0, total, "timeout", timeout_detail, ["timeout"] * total, [None] * total, **base)
    if chan.dropped:
        return RunResult(0, total, "invalid", "invalid report: too long", ["invalid report"] * total,
                         [None] * total, **base)
    if not chan.buf:
        signal_number = -returncode if returncode < 0 else 0
        if mode == "bwrap" and returncode > 128:  # bwrap reports its child's death by signal N as 128 + N
            signal_number = returncode - 128
        how = f"killed by signal {signal_number}" if signal_number else f"exit code {returncode}"
        return RunResult(0, total, "crashed", f"{how} without a report: {base['stderr'].strip()[-300:]}",
                         ["no report"] * total, [None] * total, **base)
    return _verdict(bytes(chan.buf), token, wants, base)
