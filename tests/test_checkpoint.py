"""Checkpoints: nested state round-trips; truncated or corrupted files and failed saves are handled."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import minillm
from minillm import CheckpointError, F, Tensor, nn, optim


def nested_state() -> dict:
    """A model, its AdamW state after one step, a config and scalars of every supported kind."""
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.LayerNorm(4))
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    loss = F.mse_loss(model(Tensor(np.ones((2, 3)))), np.zeros((2, 4)))
    loss.backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "config": {"n_layer": 2, "dropout": 0.1, "name": "tiny-gpt", "bias": False, "eos": None,
                   "betas": [0.9, 0.95]},
        "step": 7,
        "loss_history": [2.5, 1.25],
        "arrays": {"ids": np.arange(5, dtype=np.int64), "mask": np.array([True, False]),
                   "half": np.ones((2, 2), np.float16), "scalar": np.float64(3.5), "zero_d": np.array(2.0)},
        "rng": minillm.backend.get_rng_state(),
    }


def assert_same(a, b, where="state"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(map(str, a)) == sorted(b), where
        for k, v in a.items():
            assert_same(v, b[str(k)], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b and type(a) is type(b) or (isinstance(a, np.generic) and a.item() == b), where


def test_nested_state_round_trips(tmp_path):
    state = nested_state()
    path = tmp_path / "run" / "ckpt.npz"  # parent folders are created
    minillm.save(state, path)
    back = minillm.load(path)
    assert_same(state, back)
    assert isinstance(back["config"]["betas"], list) and back["optimizer"]["state"]["0"]["t"] == 1


def test_a_loaded_checkpoint_restores_the_model(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    minillm.save({"model": model.state_dict()}, tmp_path / "m.npz")
    other = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    other.load_state_dict(minillm.load(tmp_path / "m.npz")["model"])
    x = Tensor(np.ones((1, 3)))
    np.testing.assert_array_equal(model(x).numpy(), other(x).numpy())


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1], ids=["empty", "10_bytes", "half", "last_byte_missing"])
def test_truncated_file_raises_checkpoint_error_naming_the_path(tmp_path, keep):
    path = tmp_path / "ckpt.npz"
    minillm.save(nested_state(), path)
    raw = path.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else keep % len(raw)
    path.write_bytes(raw[:n])
    with pytest.raises(CheckpointError, match=str(path)):
        minillm.load(path)


def test_flipped_byte_in_the_weights_raises_checkpoint_error(tmp_path):
    path = tmp_path / "ckpt.npz"
    w = np.full((16, 16), 1.0, np.float32)
    minillm.save({"w": w}, path)
    raw = bytearray(path.read_bytes())
    at = bytes(raw).index(w.tobytes()) + 100  # inside the array's data
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=f"{path}.*(corrupt|checksum)"):
        minillm.load(path)


def test_any_flipped_byte_is_reported_or_harmless(tmp_path):
    """Flip every byte of a small checkpoint in turn: each load either raises CheckpointError naming the
    file, or (a byte of zip bookkeeping such as a timestamp) returns exactly the saved state."""
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": 3, "name": "x"}
    path = tmp_path / "small.npz"
    minillm.save(state, path)
    raw = path.read_bytes()
    bad = tmp_path / "flipped.npz"
    reported = 0
    for i in range(len(raw)):
        flipped = bytearray(raw)
        flipped[i] ^= 0xFF
        bad.write_bytes(bytes(flipped))
        try:
            back = minillm.load(bad)
        except CheckpointError as e:
            assert str(bad) in str(e)
            reported += 1
            continue
        assert_same(state, back, f"byte {i}")
    assert reported > len(raw) // 2


def test_missing_and_foreign_files_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        minillm.load(tmp_path / "nope.npz")
    foreign = tmp_path / "plain.npz"
    np.savez(foreign, x=np.ones(3))
    with pytest.raises(CheckpointError, match="not a minillm checkpoint"):
        minillm.load(foreign)


def test_failed_save_leaves_the_previous_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    minillm.save({"step": 1, "w": np.ones(3)}, path)
    before = path.read_bytes()

    with pytest.raises(TypeError, match=r"cannot store object at /extra"):
        minillm.save({"step": 2, "w": np.zeros(3), "extra": object()}, path)
    assert path.read_bytes() == before

    def write_half_then_fail(f, **arrays):  # a crash (disk full, kill) halfway through writing
        f.write(b"PK\x03\x04partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        minillm.save({"step": 3, "w": np.zeros(3)}, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]  # no temp file left behind
    monkeypatch.undo()
    assert minillm.load(path)["step"] == 1


def test_files_that_only_look_like_checkpoints_are_reported(tmp_path):
    npy = tmp_path / "weights.npy"
    np.save(npy, np.ones(3))
    renamed = npy.rename(tmp_path / "weights.npz")  # a .npy with the wrong ending
    with pytest.raises(CheckpointError, match="not an .npz archive"):
        minillm.load(renamed)
    with pytest.raises(CheckpointError, match="is a folder"):
        minillm.load(tmp_path)
    for meta, match in ((b"[1, 2]", "format 'list'"), (None, "inconsistent metadata")):
        path = tmp_path / "hand_made.npz"
        minillm.save({"w": np.ones(2)}, path)
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        if meta is None:  # a valid checksum, but the tree names an array the file does not hold
            m = json.loads(bytes(arrays["__meta__"]).decode())
            m["tree"] = {"w": {"__array__": "missing"}}
            meta = json.dumps(m).encode()
        arrays["__meta__"] = np.frombuffer(meta, dtype=np.uint8)
        np.savez(path, **arrays)
        with pytest.raises(CheckpointError, match=match):
            minillm.load(path)


def test_a_save_removes_the_temp_files_of_an_interrupted_one(tmp_path):
    path = tmp_path / "ckpt.npz"
    stale = tmp_path / ".ckpt.npz.abc123.tmp"  # what a write killed mid-way leaves beside its target
    stale.write_bytes(b"PK\x03\x04half")
    other = tmp_path / ".other.npz.abc123.tmp"  # another file's temp: not ours to remove
    other.write_bytes(b"x")
    minillm.save({"step": 1}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.npz.abc123.tmp", "ckpt.npz"]
