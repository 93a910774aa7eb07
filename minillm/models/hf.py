"""Hugging Face model folders, from scratch: the safetensors format, ``config.json``, and the steps that
``GPT`` and ``Llama``'s ``from_pretrained``/``save_pretrained`` share (each keeps its own name map).

safetensors (https://github.com/huggingface/safetensors): an 8-byte little-endian header length n, n bytes
of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`` (offsets
counted from the end of the header), then the tensors' raw little-endian bytes, C order. NumPy has no
bfloat16: BF16 is read as float32 (its 16 bits are float32's upper half) and written from float32 by
rounding to nearest, ties to even. This module knows no model: ``gpt.py`` and ``llama.py`` import it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy

from minillm import backend as B
from minillm import nn
from minillm.checkpoint import CheckpointError, atomic_write

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"  # a sharded checkpoint: {"weight_map": {name: shard file}}

# safetensors dtype ↔ NumPy dtype (little-endian); BF16 has no NumPy dtype and is handled apart
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}
NAME_OF = {numpy.dtype(v): k for k, v in DTYPES.items()}
WRITE_AS = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}


# ---------------------------------------------------------------------------------------------- bfloat16
def bf16_bits(a) -> numpy.ndarray:
    """float32 → the uint16 bit patterns of the nearest bfloat16 (ties to even; NaN stays a quiet NaN)."""
    u = numpy.ascontiguousarray(a, dtype=numpy.float32).view(numpy.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # add half an ulp, plus 1 if the kept part is odd
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    return numpy.where(nan, (u >> 16) | 0x0040, rounded).astype(numpy.uint16)


def from_bf16_bits(bits) -> numpy.ndarray:
    """uint16 bfloat16 bit patterns → float32, exactly (the bits become float32's upper half)."""
    return (numpy.asarray(bits, dtype=numpy.uint16).astype(numpy.uint32) << 16).view(numpy.float32)


# ---------------------------------------------------------------------------------------------- safetensors
def _header(raw: bytes, path: Path) -> tuple[dict, int]:
    """(the JSON header, where the data starts), or CheckpointError naming ``path``."""
    if len(raw) < 8:
        raise CheckpointError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise CheckpointError(f"{path}: header length {n} runs past the end of the {len(raw)}-byte file")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    return header, 8 + n


def _entry(name: str, info: Any, path: Path, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, checked against the data's size."""
    try:
        dtype, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from e
    if dtype not in DTYPES and dtype != "BF16":
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype!r}; minillm reads "
                              f"{', '.join([*DTYPES, 'BF16'])}")
    itemsize = 2 if dtype == "BF16" else numpy.dtype(DTYPES[dtype]).itemsize
    if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_size) \
            or end - begin != itemsize * int(numpy.prod(shape)) or min(shape, default=0) < 0:
        raise CheckpointError(f"{path}: tensor {name!r} ({dtype} {list(shape)}) has data_offsets "
                              f"{[begin, end]} that do not fit its shape or the {data_size} data bytes")
    return dtype, shape, begin, end


def read_safetensors(path) -> dict[str, numpy.ndarray]:
    """Every tensor in safetensors file ``path`` as a NumPy array (BF16 widened to float32).

    A missing file → FileNotFoundError, a malformed one → CheckpointError, each naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    raw = path.read_bytes()
    header, start = _header(raw, path)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _entry(name, info, path, len(raw) - start)
        chunk = raw[start + begin:start + end]
        if dtype == "BF16":
            out[name] = from_bf16_bits(numpy.frombuffer(chunk, "<u2")).reshape(shape)
        else:  # a copy in native byte order, not a read-only view of the file's bytes
            out[name] = numpy.frombuffer(chunk, DTYPES[dtype]).reshape(shape).astype(DTYPES[dtype][1:])
    return out


def write_safetensors(path, tensors: dict, dtype: str | None = None) -> None:
    """Write ``tensors`` (name → array) as safetensors, atomically: keys sorted, metadata {"format": "pt"},
    the header padded with spaces to a multiple of 8 bytes, as the reference writer does.

    ``dtype`` ("float32", "float64", "float16", "bfloat16") converts the floating-point tensors; without
    it each keeps its own dtype (float64/32/16, int64/32)."""
    if dtype is not None and dtype not in WRITE_AS:
        raise ValueError(f"write_safetensors: dtype must be one of {sorted(WRITE_AS)}, got {dtype!r}")
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        a = numpy.asarray(B.to_numpy(tensors[name]))
        floating = dtype is not None and a.dtype.kind == "f"
        code = WRITE_AS[dtype] if floating else NAME_OF.get(a.dtype.newbyteorder("<"))
        if code is None:
            raise ValueError(f"write_safetensors: tensor {name!r} has dtype {a.dtype}; safetensors files "
                             f"here hold {', '.join(sorted(WRITE_AS))}, int64 or int32")
        blob = bf16_bits(a).astype("<u2").tobytes() if code == "BF16" else a.astype(DTYPES[code]).tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with atomic_write(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for blob in blobs:
            f.write(blob)


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
        raise CheckpointError(f"{where}: weights do not match the config: missing {missing[:8]}, "
                              f"unexpected {unused[:8]}")
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


def model_type(directory) -> str:
    """config.json's ``model_type`` ("gpt2", "llama", ...), or "" when it names none."""
    return str(read_config(directory).get("model_type", ""))


def build(cls: type, config: Any, state: dict, dtype=None) -> Any:
    """``cls(config)`` holding ``state``, its parameters in ``dtype`` (default: the backend's), in eval mode
    as transformers returns it. The random initialisation it overwrites leaves minillm's RNG as it was."""
    rng = B.get_rng_state()
    try:
        model = cls(config)
    finally:
        B.set_rng_state(rng)
    if dtype is not None:
        for p in model.parameters():  # a tied weight is one Parameter: cast once
            p.data = p.data.astype(dtype)
    model.load_state_dict(state)
    return model.eval()


def state_of(model: nn.Module) -> dict[str, numpy.ndarray]:
    """The model's state dict as host NumPy arrays."""
    return {k: B.to_numpy(v) for k, v in model.state_dict().items()}


def save_folder(directory, config: dict, tensors: dict, tokenizer=None, dtype: str | None = None) -> None:
    """Write a model folder: config.json, model.safetensors (``dtype`` as in ``write_safetensors``) and,
    when given, the tokenizer's files (its ``save_pretrained``)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        config = {**config, "dtype": dtype}
    write_config(d, config)
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
