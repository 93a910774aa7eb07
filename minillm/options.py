"""Option types the ``minillm`` commands share: each checks its value while the command line is parsed.

A bad value stops the command before any work with one line and exit status 2 (argparse's
``minillm pretrain: error: argument --steps: must be a whole number >= 1, got '0'``), instead of a
traceback later or a run that silently does nothing. Files are checked again when they are opened, where
a bad line can be named.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path


def _bounded(kind: type, low: float | None, high: float | None, low_open: bool, high_open: bool,
             name: str) -> Callable[[str], float]:
    """An argparse type: parse ``text`` as ``kind`` and keep it inside [low, high] (or open ends)."""
    words = {int: "a whole number", float: "a finite number"}[kind]
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    expected = f"{words} {' and '.join(bounds)}".strip()

    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if (kind is float and not math.isfinite(value)) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


positive_int = _bounded(int, 1, None, False, False, "positive_int")
nonnegative_int = _bounded(int, 0, None, False, False, "nonnegative_int")
positive_float = _bounded(float, 0, None, True, False, "positive_float")
nonnegative_float = _bounded(float, 0, None, False, False, "nonnegative_float")
probability = _bounded(float, 0, 1, False, True, "probability")            # dropout, masking: [0, 1)
top_p_value = _bounded(float, 0, 1, True, False, "top_p_value")            # nucleus mass: (0, 1]
fraction = _bounded(float, 0, 1, False, False, "fraction")                 # a share: [0, 1]


def positive_int_list(text: str) -> list[int]:
    """Comma-separated whole numbers >= 1, e.g. ``50,200,1000``."""
    try:
        return [positive_int(part.strip()) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be whole numbers >= 1 separated by commas, "
                                         f"got {text!r}") from None


def input_file(text: str) -> str:
    """A file that must exist and be a regular file (read later; errors in it name the line)."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file" if path.exists()
                                         else f"{text!r} does not exist")
    return text


def model_folder(text: str) -> str:
    """A Hugging Face model folder (``config.json`` + weights + tokenizer files) that must exist."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder" if path.exists()
                                         else f"{text!r} does not exist")
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a Hugging Face model folder (no config.json)")
    return text


def output_file(text: str) -> str:
    """A file path to write: checked before any training, so a run is never lost at the last step."""
    check_writable(Path(text), folder=False)
    return text


def output_folder(text: str) -> str:
    """A folder to write into (created if missing): checked before any training."""
    check_writable(Path(text), folder=True)
    return text


def check_writable(path: Path, folder: bool) -> None:
    """Raise ArgumentTypeError unless ``path`` (a file, or with ``folder`` a directory) can be written."""
    if folder and path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{str(path)!r} exists and is not a folder")
    if not folder and path.is_dir():
        raise argparse.ArgumentTypeError(f"{str(path)!r} is a folder, not a file")
    parent = path if folder else path.parent
    for up in (parent, *parent.parents):  # the first part of the path that exists must be a folder
        if up.exists():
            if not up.is_dir():
                raise argparse.ArgumentTypeError(f"cannot write {str(path)!r}: {str(up)!r} is a file")
            if not os.access(up, os.W_OK):
                raise argparse.ArgumentTypeError(f"cannot write {str(path)!r}: {str(up)!r} is not writable")
            return


__all__ = [
    "check_writable", "fraction", "input_file", "nonnegative_float", "nonnegative_int", "output_file",
    "output_folder", "positive_float", "positive_int", "positive_int_list", "probability", "top_p_value",
]


def check_after_parsing(p: argparse.ArgumentParser,
                        check: Callable[[argparse.Namespace], str | None]) -> None:
    """Run ``check(args)`` right after ``p`` parses (argparse has no cross-option hook); a problem it returns
    becomes the parser's one-line error, so combinations of options are validated at parse time too."""
    parse = p.parse_known_args

    def parse_and_check(args=None, namespace=None):
        ns, rest = parse(args, namespace)
        problem = check(ns)
        if problem:
            p.error(problem)
        return ns, rest

    p.parse_known_args = parse_and_check
