"""Language-model data: read a text file, split a token stream, and cut random next-token windows.

A causal LM learns to predict token ``t+1`` from tokens ``..t``; a batch is ``B`` random windows of
``T + 1`` consecutive tokens, split into inputs ``x = w[:, :-1]`` and targets ``y = w[:, 1:]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy


def load_text(path) -> str:
    """Read a UTF-8 text file (``--data FILE``); a missing, empty or non-UTF-8 file raises a clear error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"data file {str(path)!r} is a directory, expected a UTF-8 text file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"data file {str(path)!r} is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset "
                         f"{e.start} ({e.reason}); convert it, e.g. `iconv -t UTF-8`") from None
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark is not part of the text
    if not text.strip():
        raise ValueError(f"data file {str(path)!r} is empty")
    return text


def _as_tokens(tokens, who: str) -> numpy.ndarray:
    arr = numpy.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{who}: tokens must be a 1-D sequence of ids, got shape {arr.shape}")
    if arr.size and not numpy.issubdtype(arr.dtype, numpy.integer):
        raise TypeError(f"{who}: tokens must be integer ids, got dtype {arr.dtype}")
    return arr.astype(numpy.int64, copy=False)


def train_val_split(tokens, val_fraction: float = 0.1) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Split a token stream into (train, val): the last ``val_fraction`` of it is validation.

    A contiguous tail (not random tokens) so no validation window overlaps a training window.
    """
    arr = _as_tokens(tokens, "train_val_split")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"train_val_split: val_fraction must be in (0, 1), got {val_fraction}")
    n_val = int(round(len(arr) * val_fraction))
    if n_val < 1 or n_val >= len(arr):
        raise ValueError(f"train_val_split: {len(arr)} tokens are too few to split with val_fraction="
                         f"{val_fraction} (gives {n_val} validation tokens)")
    return arr[: len(arr) - n_val], arr[len(arr) - n_val:]


def get_batch(tokens, batch_size: int, context_length: int,
              rng: numpy.random.Generator | None = None) -> tuple[numpy.ndarray, numpy.ndarray]:
    """``batch_size`` random windows as ``x`` (B, T) and ``y`` (B, T), both int64, where ``y`` is ``x``
    shifted left by one token (``y[:, t]`` is the token after ``x[:, t]``). Starts are drawn from ``rng``
    (default: minillm's seeded generator), so a seeded ``rng`` gives the same batches every run."""
    arr = _as_tokens(tokens, "get_batch")
    if batch_size < 1 or context_length < 1:
        raise ValueError(f"get_batch: batch_size and context_length must be >= 1, got {batch_size} and "
                         f"{context_length}")
    if len(arr) < context_length + 1:
        raise ValueError(f"get_batch: the data has {len(arr)} tokens, but a window of context_length="
                         f"{context_length} needs at least {context_length + 1} (inputs plus the next-token "
                         f"target); use more data or a shorter context_length")
    if rng is None:
        from minillm import backend

        rng = backend.rng
    starts = rng.integers(0, len(arr) - context_length, size=batch_size)  # last valid start: len - T - 1
    windows = numpy.lib.stride_tricks.sliding_window_view(arr, context_length + 1)[starts]  # (B, T+1)
    return (numpy.ascontiguousarray(windows[:, :-1], dtype=numpy.int64),
            numpy.ascontiguousarray(windows[:, 1:], dtype=numpy.int64))
