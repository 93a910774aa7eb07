"""One checkpoint format for every phase: ``.npz`` arrays plus JSON metadata, written atomically, checksummed.

``save(state, path)`` takes a nested dict/list of arrays, numbers, strings, booleans and None (a model's
``state_dict()``, an optimizer's, a config, the step, the RNG state...). Arrays are stored as host
NumPy arrays, so a checkpoint written on the GPU loads on the CPU and back. The file is first written
beside its destination and then renamed over it, so a crash mid-write never leaves a half-written
checkpoint; a SHA-256 over every array detects a truncated or corrupted file on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy

from minillm import backend as B

FORMAT = "minillm-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or not a minillm checkpoint."""


def _flatten(obj, prefix: str, arrays: dict):
    """Replace each array in ``obj`` by a reference ``{"__array__": key}`` and collect it in ``arrays``."""
    if isinstance(obj, dict):
        return {str(k): _flatten(v, f"{prefix}/{k}", arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}/{i}", arrays) for i, v in enumerate(obj)]
    if hasattr(obj, "shape") and hasattr(obj, "dtype") and not isinstance(obj, numpy.generic):
        key = f"a{len(arrays)}"
        arrays[key] = B.to_numpy(obj)
        return {"__array__": key, "name": prefix}
    if isinstance(obj, numpy.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"save: cannot store {type(obj).__name__} at {prefix or '/'}; "
                    "use arrays, numbers, strings, lists and dicts")


def _unflatten(obj, arrays):
    if isinstance(obj, dict):
        if "__array__" in obj:
            return arrays[obj["__array__"]]
        return {k: _unflatten(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, arrays) for v in obj]
    return obj


def _digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = numpy.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temp file beside ``path`` for writing; on success it is fsynced and renamed over ``path``,
    on any error removed. A crash mid-write therefore never leaves half a file at ``path``, and temp
    files that an earlier, killed write left behind are removed here first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    for stale in path.parent.glob(f"{glob_escape(prefix)}*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; checkpoints and data are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters quoted, so it matches only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def save(state, path) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict = {}
    tree = _flatten(state, "", arrays)
    meta = {"format": FORMAT, "version": VERSION, "sha256": _digest(arrays), "tree": tree}
    payload = dict(arrays)
    payload["__meta__"] = numpy.frombuffer(json.dumps(meta).encode(), dtype=numpy.uint8)
    with atomic_write(path, "wb") as f:
        numpy.savez(f, **payload)


def load(path):
    """Read a checkpoint written by ``save``; arrays come back as host NumPy arrays.

    Raises CheckpointError naming the file when it is missing, truncated, corrupt or fails its checksum.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"PK\x03\x04":  # every .npz is a zip archive; a .npy or a text file is not
            raise CheckpointError(f"{path} is not a minillm checkpoint (not an .npz archive)")
        with numpy.load(path, allow_pickle=False) as z:
            if "__meta__" not in z.files:
                raise CheckpointError(f"{path} is not a minillm checkpoint (no metadata)")
            meta = json.loads(bytes(z["__meta__"]).decode())
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, UnicodeDecodeError,
            NotImplementedError) as e:  # a flipped header byte can claim an unknown zip version/method
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {type(e).__name__}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path} is not a minillm checkpoint (format {found!r})")
    if _digest(arrays) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path} failed its checksum: the file is corrupt")
    try:
        return _unflatten(meta["tree"], arrays)
    except (KeyError, TypeError) as e:  # a hand-made file whose tree names arrays it does not hold
        raise CheckpointError(f"checkpoint {path} has inconsistent metadata: {type(e).__name__}: {e}") from e
