"""What every model family shares: the token-id check, GPT-2 initialisation, the key-padding mask and the
checkpoint read/write pattern (a ``kind``, the config as a dict, the state dict)."""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, fields
from typing import Any, TypeVar

import numpy

from minillm import backend as B
from minillm import nn
from minillm.checkpoint import CheckpointError, load, save
from minillm.tokenizer import BPETokenizer, load_default_tokenizer

M = TypeVar("M", bound=nn.Module)

# config fields renamed since checkpoints were written: old name → new name
RENAMED_CONFIG_FIELDS = {"max_len": "context_length", "max_position_embeddings": "context_length"}


def check_ids(ids, vocab_size: int, context_length: int, who: str, past_len: int = 0, hint: str = "") -> Any:
    """Integer (B, T) ids (a 1-D input becomes one row), or a clear error naming the bad id or length
    (``past_len`` cached positions come before the ids; ``hint`` ends the length error)."""
    ids = B.xp.asarray(B.unwrap(ids))
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"{who}: expected integer token ids of shape (B, T), got {ids.dtype} {ids.shape}")
    if ids.size and (int(ids.max()) >= vocab_size or int(ids.min()) < 0):
        bad = int(ids.max()) if int(ids.max()) >= vocab_size else int(ids.min())
        raise IndexError(f"{who}: token id {bad} is out of range for vocab_size {vocab_size} "
                         f"(valid ids 0..{vocab_size - 1})")
    n = past_len + ids.shape[1]
    if n > context_length:
        cached = f" ({past_len} cached + {ids.shape[1]} new)" if past_len else ""
        raise ValueError(f"{who}: sequence of {n} tokens{cached} is longer than context_length "
                         f"{context_length}{hint}")
    return ids


def past_length(past_kv) -> int:
    """Positions already in a per-layer (k, v) cache, each (B, nh, Tpast, hs); 0 without one."""
    return 0 if past_kv is None else int(past_kv[0][0].shape[2])


def init_weights(model: nn.Module, n_layers: int) -> None:
    """GPT-2/BERT init: weights N(0, 0.02), biases 0; residual projections (``out_proj``, ``down_proj``)
    N(0, 0.02/√(2·n_layers)) so the residual stream's variance does not grow with depth."""
    resid_std = 0.02 / math.sqrt(2 * n_layers)
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            std = resid_std if name.endswith(("out_proj", "down_proj")) else 0.02
            m.weight.data = B.randn(*m.weight.shape) * std
            if getattr(m, "bias", None) is not None:
                m.bias.data = B.xp.zeros_like(m.bias.data)


def padding_mask(ids, attention_mask, pad_id: int | None) -> Any:
    """Boolean (B, T), True on padding keys: from ``attention_mask`` (1 = real token) or ``pad_id``;
    None when neither is given."""
    if attention_mask is not None:
        am = B.xp.asarray(B.unwrap(attention_mask))
        if am.ndim == 1:
            am = am[None, :]
        if am.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {am.shape}, the ids {ids.shape}")
        return am == 0
    if pad_id is not None:
        return ids == pad_id
    return None


def check_config(config: Any, positive: tuple[str, ...]) -> None:
    """Raise ValueError unless every field has its declared type (``int``, ``float``, ``bool``, or None
    where the annotation allows it), the ``positive`` fields are >= 1, ``dropout`` is in [0, 1), token ids
    (``*_id``) lie in the vocabulary, and ``d_model`` splits into ``n_heads`` heads. A config read from a
    hand-made checkpoint is checked the same way as one typed in code."""
    who = type(config).__name__
    for f in fields(config):
        value, kinds = getattr(config, f.name), str(f.type).replace(" ", "").split("|")
        if value is None and "None" in kinds:
            continue
        number = not isinstance(value, (bool, numpy.bool_))  # True is an int to Python, not to a config
        ok = (("bool" in kinds and isinstance(value, (bool, numpy.bool_)))
              or ("int" in kinds and number and isinstance(value, numbers.Integral))
              or ("float" in kinds and number and isinstance(value, numbers.Real) and math.isfinite(value)))
        if not ok:
            raise ValueError(f"{who}: {f.name} must be {' or '.join(kinds)}, got {value!r}")
    for name in positive:
        if getattr(config, name) < 1:
            raise ValueError(f"{who}: {name} must be >= 1, got {getattr(config, name)}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"{who}: dropout must be in [0, 1), got {config.dropout}")
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name.endswith("_id") and value is not None and not 0 <= value < config.vocab_size:
            raise ValueError(f"{who}: {f.name} {value} is not a token id of vocab_size {config.vocab_size}")
    if config.d_model % config.n_heads:
        raise ValueError(f"{who}: d_model {config.d_model} is not divisible by n_heads {config.n_heads}")


def config_from_dict(config_cls: type, d: dict) -> Any:
    """A config from a checkpoint's dict: renamed fields (``max_len`` → ``context_length``) mapped, unknown
    ones dropped."""
    known = {f.name for f in fields(config_cls)}
    d = dict(d)
    for old, new in RENAMED_CONFIG_FIELDS.items():
        if old in d and old not in known and new in known:
            d.setdefault(new, d[old])  # the new name wins when both are there
    return config_cls(**{k: v for k, v in d.items() if k in known})


def write_checkpoint(path, kind: str, model: nn.Module, extra: dict | None = None, dtype=None) -> None:
    """Save {"kind", "config", "model"} (+ ``extra`` entries) with ``minillm.save``; ``dtype="float16"``
    stores the weights at half size (they load back into float32 parameters)."""
    sd = model.state_dict()
    if dtype is not None:
        sd = {k: B.to_numpy(v).astype(dtype) for k, v in sd.items()}
    state: dict[str, Any] = {"kind": kind, "config": asdict(model.config), "model": sd}
    state.update(extra or {})
    save(state, path)


def read_checkpoint(path, config_cls: type, kind: str, who: str = "model") -> tuple[Any, dict]:
    """(config, model state) from a checkpoint, with a clear error when it holds no model or another kind
    (a checkpoint without a kind is taken as ``kind``)."""
    state = load(path)
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise CheckpointError(f"{path} holds no {who} (expected 'config' and 'model' entries)")
    found = str(state.get("kind", kind)).lower()
    if not found.startswith(kind):
        raise CheckpointError(f"{path} holds a {found!r} model, not a {kind!r} one")
    if not isinstance(state["config"], dict) or not isinstance(state["model"], dict):
        raise CheckpointError(f"{path}: 'config' and 'model' must be mappings")
    try:
        config = config_from_dict(config_cls, state["config"])
    except (TypeError, ValueError) as e:  # a hand-made or edited file
        raise CheckpointError(f"{path}: its config is not valid: {e}") from None
    return config, state["model"]


def model_from_checkpoint(cls: type[M], path, config_cls: type, kind: str, who: str = "model") -> M:
    """``cls(config)`` with the weights of the checkpoint at ``path`` loaded."""
    config, state = read_checkpoint(path, config_cls, kind, who)
    model = cls(config)
    model.load_state_dict(state)
    return model


def load_checkpoint_tokenizer(path):
    """The tokenizer embedded in a checkpoint, or None if it has none."""
    state = load(path)
    tok = state.get("tokenizer") if isinstance(state, dict) else None
    if tok is None:
        return None
    return BPETokenizer.from_dict(json.loads(tok), source=f"tokenizer in {path}")


def with_tokenizer(model: M, path) -> tuple[M, Any]:
    """(model, the tokenizer embedded in checkpoint ``path``), or the shipped tokenizer if it embeds none
    and that fits the model's vocabulary."""
    tokenizer = load_checkpoint_tokenizer(path)
    if tokenizer is None:
        tokenizer = load_default_tokenizer()
        if tokenizer.vocab_size > model.config.vocab_size:  # its ids would index past the embedding
            raise CheckpointError(f"{path} embeds no tokenizer, and the shipped one "
                                  f"({tokenizer.vocab_size} tokens) does not fit its vocab_size "
                                  f"{model.config.vocab_size}: save the model with its own tokenizer")
    return model, tokenizer
