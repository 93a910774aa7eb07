"""JSON Lines import/export for the SFT data sets, so users can inspect ours or bring their own.

One example per line: ``{"task": ..., "messages": [OpenAI-style message dicts], "meta": {...}}``.
``meta`` carries what evaluation needs (hidden unit tests, the expected answer or tool call); examples
without it can still be trained on.
"""

from __future__ import annotations

import json

from minillm.checkpoint import atomic_write


def write_jsonl(examples: list[dict], path) -> None:
    """Write examples one JSON object per line (atomically: temp file + rename)."""
    with atomic_write(path, "w") as f:
        for ex in examples:
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")


def read_jsonl(path) -> list[dict]:
    """Read examples written by ``write_jsonl`` (or by hand); a bad line raises naming its number."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(ex, dict) or not isinstance(ex.get("messages"), list):
                raise ValueError(f"{path}:{n}: each line must be an object with a 'messages' list")
            out.append(ex)
    return out
