"""JSON Lines import/export (the SFT data sets, DPO's preference pairs), so users can inspect ours or bring
their own.

SFT: one example per line: ``{"task": ..., "messages": [OpenAI-style message dicts], "meta": {...}}``.
``meta`` carries what evaluation needs (hidden unit tests, the expected answer or tool call); examples
without it can still be trained on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from minillm.chat.template import check_conversation
from minillm.checkpoint import atomic_write


def write_jsonl(examples: list[dict], path) -> None:
    """Write examples one JSON object per line (atomically: temp file + rename)."""
    with atomic_write(path, "w") as f:
        for ex in examples:
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")


def conversation(obj) -> dict:
    """``obj`` if it is an SFT example (an object with a ``messages`` list of well-formed messages),
    else ValueError saying what is wrong."""
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        raise ValueError("each line must be an object with a 'messages' list")
    check_conversation(obj["messages"])
    return obj


def read_jsonl(path, parse: Callable[[Any], dict] = conversation) -> list[dict]:
    """The objects of a JSONL file, one per non-blank line, each passed through ``parse``.

    ``parse`` checks (and may normalise) one decoded line and raises ValueError saying what is wrong; the
    default, ``conversation``, accepts the SFT examples ``write_jsonl`` writes. Any bad line raises
    ValueError as "FILE:LINE: what is wrong", so a hand-edited file points at its own mistake.
    """
    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            except (ValueError, RecursionError) as e:  # a number of over 4300 digits, nesting too deep
                raise ValueError(f"{path}:{n}: unreadable JSON ({type(e).__name__})") from None
            try:
                out.append(parse(obj))
            except ValueError as e:
                raise ValueError(f"{path}:{n}: {e}") from None
    return out
