"""GPT: a decoder-only transformer language model (Radford et al. 2018/2019), nanoGPT-style in one file.

token embedding + learned position embedding → n_layers causal pre-norm blocks → final LayerNorm → LM head
(tied to the token embedding by default). Trained by next-token prediction: logits at position t score
token t+1.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

from minillm import backend as B
from minillm import functional as F
from minillm import nn
from minillm.checkpoint import CheckpointError, load, save
from minillm.tokenizer import BPETokenizer


@dataclass
class GPTConfig:
    vocab_size: int = 1024
    context_length: int = 128
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    dropout: float = 0.0
    tie_weights: bool = True
    d_ff: int | None = None  # None → 4·d_model

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.d_model % self.n_heads:
            raise ValueError(f"GPTConfig: d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        for name in ("vocab_size", "context_length", "d_model", "n_heads", "n_layers", "d_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig: {name} must be ≥ 1, got {getattr(self, name)}")


class GPT(nn.Module):
    """A GPT language model. ``forward(ids)`` → (logits (B, T, V), loss or None)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.context_length, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(nn.TransformerBlock(c.d_model, c.n_heads, c.d_ff, c.dropout, causal=True)
                                    for _ in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight  # one matrix both embeds and un-embeds tokens
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 init: weights N(0, 0.02), biases 0, norms 1; residual projections N(0, 0.02/√(2·n_layers))
        so the residual stream's variance does not grow with depth."""
        resid_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, m in self.named_modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                std = resid_std if name.endswith(("out_proj", "down_proj")) else 0.02
                m.weight.data = B.randn(*m.weight.shape) * std
                if getattr(m, "bias", None) is not None:
                    m.bias.data = B.xp.zeros_like(m.bias.data)

    # ------------------------------------------------------------------ forward
    def check_ids(self, ids, past_len: int = 0):
        """ids as an integer (B, T) array, or a clear error: out-of-vocabulary ids and over-long inputs."""
        ids = B.xp.asarray(B.unwrap(ids))
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(f"GPT: expected integer token ids of shape (B, T), got {ids.dtype} {ids.shape}")
        V, ctx = self.config.vocab_size, self.config.context_length
        if ids.size and (int(ids.max()) >= V or int(ids.min()) < 0):
            bad = int(ids.max()) if int(ids.max()) >= V else int(ids.min())
            raise IndexError(f"GPT: token id {bad} is out of range for vocab_size {V} (valid ids 0..{V - 1})")
        if past_len + ids.shape[1] > ctx:
            raise ValueError(f"GPT: sequence of {past_len + ids.shape[1]} tokens"
                             f"{f' ({past_len} cached + {ids.shape[1]} new)' if past_len else ''} is longer "
                             f"than context_length {ctx}; crop it (generate() slides the window for you)")
        return ids

    def features(self, ids, past_kv: list | None = None, use_cache: bool = False,
                 start_pos: int | None = None):
        """Final hidden states (B, T, C) after ln_f (for LM heads, classifiers, reward models).

        ``past_kv``: one (k, v) per layer, each (B, nh, Tpast, hs), from a previous ``use_cache`` call or
        trainable prefixes. ``start_pos``: position of ids[:, 0] (default: the cached length).
        Returns h, or (h, present_kv) with ``use_cache``.
        """
        past_len = 0 if past_kv is None else int(past_kv[0][0].shape[2])
        start = past_len if start_pos is None else start_pos
        ids = self.check_ids(ids, start)
        T = ids.shape[1]
        if past_kv is not None and len(past_kv) != len(self.blocks):
            raise ValueError(f"GPT: past_kv has {len(past_kv)} layers, the model has {len(self.blocks)}")
        pos = B.xp.arange(start, start + T)
        x = self.drop(self.tok_emb(ids) + self.pos_emb(pos))  # (B, T, C) + (T, C)
        present = []
        for i, block in enumerate(self.blocks):
            x = block(x, past_kv=None if past_kv is None else past_kv[i], use_cache=use_cache)
            if use_cache:
                x, kv = x
                present.append(kv)
        h = self.ln_f(x)
        return (h, present) if use_cache else h

    def forward(self, ids, targets=None, past_kv: list | None = None, use_cache: bool = False,
                start_pos: int | None = None):
        """Logits (B, T, vocab_size), and the mean next-token cross-entropy if ``targets`` (B, T) are given
        (ignore_index -100). Returns (logits, loss) — loss is None without targets — plus present_kv
        (a list of per-layer (k, v)) with ``use_cache``.
        """
        h = self.features(ids, past_kv=past_kv, use_cache=use_cache, start_pos=start_pos)
        h, present = h if use_cache else (h, None)
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if targets is not None:
            targets = B.xp.asarray(B.unwrap(targets)).reshape(logits.shape[:-1])
            loss = F.cross_entropy(logits, targets)
        return (logits, loss, present) if use_cache else (logits, loss)

    def attention_weights(self, ids) -> list:
        """Attention probabilities of every layer for ``ids``: a list of (B, nh, T, T) NumPy arrays
        (row t = how much position t attends to each earlier position), for plotting."""
        from minillm.tensor import no_grad

        ids = self.check_ids(ids)
        maps = []
        with no_grad():
            x = self.tok_emb(ids) + self.pos_emb(B.xp.arange(ids.shape[1]))
            for block in self.blocks:
                _, w = block.attn(block.ln_1(x), is_causal=True, need_weights=True)
                maps.append(B.to_numpy(w.data))
                x = block(x)
        return maps

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path, tokenizer=None, dtype=None, extra: dict | None = None) -> None:
        """Write config + weights (+ the tokenizer, embedded as JSON) with ``minillm.save``.

        ``dtype="float16"`` halves the file (weights load back into float32 parameters).
        """
        sd = self.state_dict()
        if dtype is not None:
            sd = {k: B.to_numpy(v).astype(dtype) for k, v in sd.items()}
        state = {"kind": "gpt", "config": asdict(self.config), "model": sd}
        if tokenizer is not None:
            state["tokenizer"] = json.dumps(tokenizer.to_dict(), ensure_ascii=False)
        state.update(extra or {})
        save(state, path)

    @classmethod
    def load_with_tokenizer(cls, path) -> tuple[GPT, BPETokenizer]:
        """The GPT in a checkpoint and its tokenizer (the shipped one if the checkpoint embeds none)."""
        from minillm.tokenizer import load_default_tokenizer

        return cls.from_checkpoint(path), load_checkpoint_tokenizer(path) or load_default_tokenizer()

    @classmethod
    def from_checkpoint(cls, path) -> GPT:
        """A GPT rebuilt from a checkpoint written by ``save_checkpoint`` or ``minillm.train.train``."""
        state = load(path)
        if not isinstance(state, dict) or "config" not in state or "model" not in state:
            raise CheckpointError(f"{path} holds no GPT (expected 'config' and 'model' entries)")
        known = {f.name for f in fields(GPTConfig)}
        model = cls(GPTConfig(**{k: v for k, v in state["config"].items() if k in known}))
        model.load_state_dict(state["model"])
        return model


def load_checkpoint_tokenizer(path):
    """The tokenizer embedded in a checkpoint, or None if it has none."""

    state = load(path)
    tok = state.get("tokenizer") if isinstance(state, dict) else None
    if tok is None:
        return None
    return BPETokenizer.from_dict(json.loads(tok), source=f"tokenizer in {path}")
