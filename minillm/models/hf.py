"""Hugging Face model folders: ``config.json``, ``model.safetensors`` read and written with the
``safetensors`` package (``pip install 'minillm[hf]'``), and the steps that ``GPT`` and ``Llama``'s
``from_pretrained``/``save_pretrained`` share (each keeps its own name map).

A safetensors file is an 8-byte header length, a JSON header (each tensor's dtype, shape and byte range,
plus ``__metadata__``) and the raw little-endian bytes; the package parses and validates it, this module
turns its entries into NumPy arrays. NumPy has no bfloat16: BF16 tensors (most Llama-family checkpoints)
are read as float32 exactly, since a bfloat16 is the upper half of a float32. This module knows no model:
``gpt.py`` and ``llama.py`` import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy

from minillm import backend as B
from minillm import nn
from minillm.checkpoint import CheckpointError, atomic_write

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"  # a sharded checkpoint: {"weight_map": {name: shard file}}

# safetensors dtype code → NumPy dtype (little-endian); BF16 has no NumPy dtype and is widened to float32
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}
WRITE_DTYPES = ("float64", "float32", "float16")


def safetensors_package():
    """The ``safetensors`` package, or ImportError saying how to install it."""
    try:
        import safetensors
        import safetensors.numpy  # noqa: F401  (the writer)
    except ImportError:
        raise ImportError("Hugging Face model folders need the safetensors package: "
                          "pip install 'minillm[hf]'") from None
    return safetensors


def from_bf16_bits(bits) -> numpy.ndarray:
    """uint16 bfloat16 bit patterns → float32, exactly (the bits become float32's upper half)."""
    return (numpy.asarray(bits, dtype=numpy.uint16).astype(numpy.uint32) << 16).view(numpy.float32)


# ---------------------------------------------------------------------------------------------- safetensors
def _array(name: str, entry: dict, path: Path) -> numpy.ndarray:
    """One deserialized entry ({"dtype", "shape", "data": bytes}) as a writable NumPy array."""
    code, shape = entry["dtype"], tuple(entry["shape"])
    if code == "BF16":
        return from_bf16_bits(numpy.frombuffer(entry["data"], "<u2")).reshape(shape)
    if code not in DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {code!r}; minillm reads "
                              f"{', '.join([*DTYPES, 'BF16'])}")
    return numpy.frombuffer(entry["data"], DTYPES[code]).reshape(shape).astype(DTYPES[code][1:])


def read_safetensors(path) -> dict[str, numpy.ndarray]:
    """Every tensor in safetensors file ``path`` as a NumPy array (BF16 widened to float32).

    A missing file → FileNotFoundError, a malformed one → CheckpointError, each naming the file."""
    st = safetensors_package()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        entries = st.deserialize(path.read_bytes())
    except st.SafetensorError as e:
        raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from None
    return {name: _array(name, entry, path) for name, entry in entries}


def write_safetensors(path, tensors: dict, dtype: str | None = None) -> None:
    """Write ``tensors`` (name → array) as safetensors with metadata {"format": "pt"} (what transformers
    expects), atomically. ``dtype`` ("float32", "float64", "float16") converts the floating-point tensors;
    without it each keeps its own dtype."""
    st = safetensors_package()
    if dtype is not None and dtype not in WRITE_DTYPES:
        raise ValueError(f"write_safetensors: dtype must be one of {', '.join(WRITE_DTYPES)}, got {dtype!r}")
    arrays = {}
    for name, value in tensors.items():
        a = numpy.asarray(B.to_numpy(value))
        a = a.astype(dtype) if dtype is not None and a.dtype.kind == "f" else a
        arrays[name] = numpy.array(a, dtype=a.dtype.newbyteorder("<"), order="C")  # 0-d stays 0-d
    with atomic_write(path, "wb") as f:
        f.write(st.numpy.save(arrays, metadata={"format": "pt"}))


# ---------------------------------------------------------------------------------------------- folders
def read_json(path, what: str) -> dict:
    """A JSON object from ``path``; FileNotFoundError or CheckpointError naming the file (``what`` it is)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (no {what})")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a valid {what} (bad JSON: {e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: not a valid {what} (a JSON {type(value).__name__}, not an object)")
    return value


def read_config(directory) -> dict:
    """The model folder's ``config.json`` as a dict."""
    return read_json(Path(directory) / CONFIG, "Hugging Face config.json")


def write_config(directory, config: dict) -> None:
    """Write ``config`` as the folder's ``config.json`` (indented, keys sorted, as transformers does)."""
    with atomic_write(Path(directory) / CONFIG, "w") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_weights(directory) -> dict[str, numpy.ndarray]:
    """Every tensor of the folder: ``model.safetensors``, or the shards ``model.safetensors.index.json``
    names. Neither there → FileNotFoundError naming model.safetensors."""
    d = Path(directory)
    if (d / WEIGHTS).exists() or not (d / INDEX).exists():
        return read_safetensors(d / WEIGHTS)
    weight_map = read_json(d / INDEX, "safetensors index").get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{d / INDEX}: no 'weight_map' object naming each tensor's shard")
    out: dict[str, numpy.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        out.update(read_safetensors(d / shard))
    lacking = sorted(set(weight_map) - set(out))
    if lacking:
        raise CheckpointError(f"{d / INDEX} names tensors its shards lack: {lacking[:8]}")
    return out


# ---------------------------------------------------------------------------------------------- name maps
class HFName(NamedTuple):
    """Where a minillm parameter lives in a transformers state dict: ``name``; ``transpose`` for GPT-2's
    Conv1D weights, stored (in, out); ``part`` = (index, count): rows of a fused matrix (GPT-2's c_attn)."""
    name: str
    transpose: bool = False
    part: tuple[int, int] = (0, 1)


def expand(names: dict[str, HFName], n_layers: int) -> dict[str, HFName]:
    """The name map with every ``{i}`` row written out once per layer."""
    out = {}
    for ours, hf in names.items():
        for i in range(n_layers) if "{i}" in ours else [0]:
            out[ours.format(i=i)] = hf._replace(name=hf.name.format(i=i))
    return out


def from_hf(tensors: dict, names: dict[str, HFName], where) -> dict[str, numpy.ndarray]:
    """minillm's state dict from transformers' tensors through an expanded name map; every tensor must be
    used, and every name found, or CheckpointError lists the difference."""
    missing = sorted({hf.name for hf in names.values()} - set(tensors))
    unused = sorted(set(tensors) - {hf.name for hf in names.values()})
    if missing or unused:
        parts = [f"{what} {names[:8]}{' ...' if len(names) > 8 else ''}"
                 for what, names in (("missing", missing), ("unexpected", unused)) if names]
        raise CheckpointError(f"{where}: the weights do not match config.json: {'; '.join(parts)}")
    state = {}
    for ours, hf in names.items():
        a = tensors[hf.name].T if hf.transpose else tensors[hf.name]
        index, count = hf.part
        state[ours] = numpy.split(a, count, axis=0)[index] if count > 1 else a
    return state


def to_hf(state: dict, names: dict[str, HFName]) -> dict[str, numpy.ndarray]:
    """transformers' tensors from minillm's state dict through an expanded name map: fused parts
    concatenated in order, Conv1D weights transposed back."""
    grouped: dict[str, list] = {}
    for ours, hf in sorted(names.items(), key=lambda kv: kv[1].part[0]):
        grouped.setdefault(hf.name, []).append((hf, B.to_numpy(state[ours])))
    out = {}
    for name, parts in grouped.items():
        a = numpy.concatenate([p for _, p in parts], axis=0) if len(parts) > 1 else parts[0][1]
        out[name] = numpy.ascontiguousarray(a.T if parts[0][0].transpose else a)
    return out


# ---------------------------------------------------------------------------------------------- configs
def require(config: dict, where, **allowed: tuple) -> None:
    """ValueError in one line unless each ``config[key]`` (absent: the first allowed value) is one of the
    allowed values: settings minillm's model cannot represent."""
    for key, values in allowed.items():
        value = config.get(key, values[0])
        if value not in values:
            raise ValueError(f"{where}: {key}={value!r} is not supported by minillm "
                             f"(supported: {', '.join(map(repr, values))})")


def checked(config_cls: type, where, **fields: Any) -> Any:
    """``config_cls(**fields)``, its ValueError (a bad or inconsistent value) naming the folder."""
    try:
        return config_cls(**fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: config.json does not make a valid {config_cls.__name__}: {e}") from None


def model_type(directory) -> str:
    """config.json's ``model_type`` ("gpt2", "llama", ...), or "" when it names none."""
    return str(read_config(directory).get("model_type", ""))


def _tied(names: dict[str, HFName], config: Any) -> dict[str, HFName]:
    """The name map without ``lm_head.weight`` when the head is the token embedding (stored once)."""
    return {k: v for k, v in names.items() if not (config.tie_weights and k == "lm_head.weight")}


def load_model(cls: type, config: Any, tensors: dict, names: dict[str, HFName], where, dtype=None) -> Any:
    """``cls(config)`` holding transformers' ``tensors`` (mapped by ``names``), its parameters in ``dtype``
    (default: the backend's), in eval mode as transformers returns it. minillm's RNG is left as it was."""
    names = _tied(expand(names, config.n_layers), config)
    if config.tie_weights:  # some writers store the tied head too: it is the embedding again
        tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    state = from_hf(tensors, names, where)
    if config.tie_weights:
        state["lm_head.weight"] = state["tok_emb.weight"]
    rng = B.get_rng_state()
    try:
        model = cls(config)  # its random initialisation is overwritten below
    finally:
        B.set_rng_state(rng)
    if dtype is not None:
        for p in model.parameters():  # a tied weight is one Parameter: cast once
            p.data = p.data.astype(dtype)
    model.load_state_dict(state)
    return model.eval()


def save_model(model: nn.Module, directory, config: dict, names: dict[str, HFName], tokenizer=None,
               dtype: str | None = None) -> None:
    """Write a model folder: ``config`` as config.json, the weights (mapped by ``names``; ``dtype`` as in
    ``write_safetensors``) as model.safetensors and, when given, the tokenizer's files."""
    if dtype is not None and dtype not in WRITE_DTYPES:  # before anything is written
        raise ValueError(f"save_pretrained: dtype must be one of {', '.join(WRITE_DTYPES)}, got {dtype!r}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    names = _tied(expand(names, model.config.n_layers), model.config)
    tensors = to_hf({k: B.to_numpy(v) for k, v in model.state_dict().items()}, names)
    write_config(d, {**config, "dtype": dtype or str(model.tok_emb.weight.dtype)})
    write_safetensors(d / WEIGHTS, tensors, dtype=dtype)
    if tokenizer is not None:
        tokenizer.save_pretrained(d)


def token_ids(tokenizer, vocab_size: int) -> dict:
    """config.json's bos/eos token ids: the tokenizer's ``<|endoftext|>`` (None without one), checking that
    the tokenizer's ids fit the model."""
    if tokenizer is None:
        return {"bos_token_id": None, "eos_token_id": None}
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"save_pretrained: the tokenizer has {tokenizer.vocab_size} tokens, more than the "
                         f"model's vocab_size {vocab_size}")
    eos = tokenizer.special_tokens.get("<|endoftext|>")
    return {"bos_token_id": eos, "eos_token_id": eos}
