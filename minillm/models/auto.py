"""One door for every causal LM minillm can run: a minillm checkpoint (GPT or Llama, told apart by its
``kind``) or a directory in Hugging Face's layout (``config.json`` + ``model.safetensors`` + tokenizer
files), like transformers' ``AutoModelForCausalLM``. The generate, SFT and DPO commands load through it."""

from __future__ import annotations

from pathlib import Path

from minillm.checkpoint import CheckpointError, load
from minillm.models.gpt import GPT
from minillm.models.llama import Llama
from minillm.tokenizer import BPETokenizer

CAUSAL_LMS = {"gpt": GPT, "llama": Llama}  # checkpoint kind -> class


def causal_lm_class(path) -> type[GPT] | type[Llama]:
    """The class of the decoder in minillm checkpoint ``path``, from its ``kind`` (GPT when it has none)."""
    state = load(path)
    kind = str(state.get("kind", "gpt")).lower() if isinstance(state, dict) else "gpt"
    for name, cls in CAUSAL_LMS.items():
        if kind.startswith(name):
            return cls
    raise CheckpointError(f"{path} holds a {kind!r} model, not a causal LM (expected one of "
                          f"{', '.join(CAUSAL_LMS)})")


def load_causal_lm(source) -> tuple[GPT | Llama, BPETokenizer]:
    """(model, tokenizer) from a minillm checkpoint file or a Hugging Face model directory."""
    source = Path(source)
    if source.is_dir():
        from minillm.models.hf import load_pretrained

        return load_pretrained(source)
    return causal_lm_class(source).load_with_tokenizer(source)
