"""One door for every causal LM minillm can run: a minillm checkpoint (GPT or Llama, told apart by its
``kind``) or a directory in Hugging Face's layout (``config.json`` + ``model.safetensors`` + tokenizer
files), like transformers' ``AutoModelForCausalLM``. The generate, SFT and DPO commands load through it."""

from __future__ import annotations

from pathlib import Path

from minillm.checkpoint import CheckpointError, load
from minillm.models.gpt import GPT
from minillm.models.hf import model_type
from minillm.models.llama import Llama
from minillm.tokenizer import BPETokenizer

CAUSAL_LMS = {"gpt": GPT, "llama": Llama}  # checkpoint kind -> class
PRETRAINED = {"gpt2": GPT, "llama": Llama}  # config.json model_type -> class


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
        return load_pretrained(source)
    return causal_lm_class(source).load_with_tokenizer(source)


def load_pretrained(directory) -> tuple[GPT | Llama, BPETokenizer]:
    """(model, tokenizer) from a Hugging Face folder, the class chosen by config.json's ``model_type``."""
    kind = model_type(directory)
    if kind not in PRETRAINED:
        raise ValueError(f"{directory}: config.json has model_type {kind!r}; minillm loads "
                         f"{', '.join(map(repr, PRETRAINED))}")
    model = PRETRAINED[kind].from_pretrained(directory)
    tokenizer = BPETokenizer.from_pretrained(directory)
    if tokenizer.vocab_size > model.config.vocab_size:  # its ids would index past the embedding
        raise CheckpointError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens, more than the "
                              f"model's vocab_size {model.config.vocab_size}")
    return model, tokenizer


def add_model_arguments(p, flag: str, dest: str, help: str) -> None:
    """``flag`` (a minillm checkpoint, GPT or Llama) or ``--from-pretrained DIR`` (a Hugging Face folder),
    not both: a command's choice of model, checked while parsing."""
    from minillm import options as opt

    group = p.add_mutually_exclusive_group()
    group.add_argument(flag, dest=dest, type=opt.input_file, help=help)
    group.add_argument("--from-pretrained", type=opt.model_folder, metavar="DIR",
                       help=f"a Hugging Face model folder (config.json, model.safetensors, tokenizer "
                            f"files) instead of {flag}")


def model_source(args, dest: str, default: str | None) -> str | None:
    """The checkpoint file or model folder ``add_model_arguments``' options chose, else ``default``."""
    return args.from_pretrained or getattr(args, dest) or default
