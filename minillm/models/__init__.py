"""Model families, one file each: ``gpt`` (decoder-only)."""

from minillm.models.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
