"""Next-token windows: shapes, the one-token shift, determinism, splits and file loading errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minillm.data.lm import get_batch, load_text, train_val_split


@given(st.integers(2, 300), st.integers(1, 8), st.integers(1, 32), st.integers(0, 1000))
def test_get_batch_windows_are_contiguous_and_shifted(n_extra, B, T, seed):
    tokens = np.arange(T + n_extra) * 7 % 1000  # distinct-enough values whose positions we can recover
    x, y = get_batch(tokens, B, T, np.random.default_rng(seed))
    assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == np.int64
    assert (y[:, :-1] == x[:, 1:]).all()  # y is x shifted by one
    positions = np.arange(T + n_extra)
    for b in range(B):
        start = positions[tokens == x[b, 0]][0]
        assert (x[b] == tokens[start:start + T]).all() and (y[b] == tokens[start + 1:start + T + 1]).all()


def test_get_batch_is_deterministic_and_reaches_every_window():
    tokens = np.arange(1000)
    a = get_batch(tokens, 4, 16, np.random.default_rng(5))
    b = get_batch(tokens, 4, 16, np.random.default_rng(5))
    assert all((u == v).all() for u, v in zip(a, b))
    assert not (get_batch(tokens, 4, 16, np.random.default_rng(6))[0] == a[0]).all()
    x, y = get_batch(np.arange(10), 500, 8, np.random.default_rng(0))  # exactly 2 possible windows
    assert set(x[:, 0].tolist()) == {0, 1} and y.max() == 9
    x, y = get_batch([3, 4, 5], 2, 2, np.random.default_rng(0))  # T + 1 tokens: the single window
    assert x.tolist() == [[3, 4], [3, 4]] and y.tolist() == [[4, 5], [4, 5]]


def test_get_batch_default_rng_is_minillms_seeded_generator():
    import minillm

    minillm.manual_seed(3)
    a = get_batch(np.arange(100), 3, 5)[0]
    minillm.manual_seed(3)
    assert (get_batch(np.arange(100), 3, 5)[0] == a).all()


def test_get_batch_errors():
    with pytest.raises(ValueError, match=r"has 8 tokens, but a window of context_length=8 needs at least 9"):
        get_batch(np.arange(8), 2, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="1-D"):
        get_batch(np.zeros((4, 4), dtype=np.int64), 2, 2)
    with pytest.raises(TypeError, match="integer ids"):
        get_batch(np.zeros(10), 2, 2)
    with pytest.raises(ValueError, match="must be >= 1"):
        get_batch(np.arange(10), 0, 2)


def test_train_val_split():
    train, val = train_val_split(list(range(100)), 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    assert train.dtype == np.int64
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\), got 1.5"):
        train_val_split(np.arange(10), 1.5)
    with pytest.raises(ValueError, match="3 tokens are too few"):
        train_val_split(np.arange(3), 0.1)


def test_load_text(tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes("\ufeffMia 😀 café\n".encode())
    assert load_text(good) == "Mia 😀 café\n"  # byte-order mark dropped
    with pytest.raises(FileNotFoundError, match="missing.txt' does not exist"):
        load_text(tmp_path / "missing.txt")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\u00e9 ok".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt' is not UTF-8 text: byte 0xe9 at offset 3"):
        load_text(latin)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        load_text(empty)
    with pytest.raises(IsADirectoryError):
        load_text(tmp_path)
