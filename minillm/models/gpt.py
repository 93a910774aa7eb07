"""GPT: a decoder-only transformer language model (Radford et al. 2018/2019), nanoGPT-style in one file.

token embedding + learned position embedding → n_layers causal pre-norm blocks → final LayerNorm → LM head
(tied to the token embedding by default). Trained by next-token prediction: logits at position t score
token t+1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from minillm import backend as B
from minillm import functional as F
from minillm import nn
from minillm.models.common import (
    check_config,
    check_ids,
    init_weights,
    load_checkpoint_tokenizer,  # noqa: F401  (re-exported: lessons import it from here)
    model_from_checkpoint,
    past_length,
    with_tokenizer,
    write_checkpoint,
)
from minillm.tensor import Tensor, no_grad
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
            self.d_ff = 4 * self.d_model if isinstance(self.d_model, int) else self.d_model
        check_config(self, positive=("vocab_size", "context_length", "d_model", "n_heads", "n_layers",
                                     "d_ff"))


class GPT(nn.Module):
    """A GPT language model. ``forward(ids, targets)`` → (logits (B, T, V), loss or None);
    ``forward_cached(ids, past_kv)`` → (logits, present_kv) for KV-cached decoding."""

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
        init_weights(self, c.n_layers)  # GPT-2 init: N(0, 0.02), residual projections / √(2·n_layers)

    # ------------------------------------------------------------------ forward
    def check_ids(self, ids, past_len: int = 0) -> Any:
        """ids as an integer (B, T) array, or a clear error: out-of-vocabulary ids and over-long inputs."""
        return check_ids(ids, self.config.vocab_size, self.config.context_length, "GPT", past_len,
                         hint="; crop it (generate() slides the window for you)")

    def features(self, ids, past_kv: list | None = None, start_pos: int | None = None
                 ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """(h, present_kv): final hidden states h (B, T, C) after ln_f (for LM heads, classifiers, reward
        models) and one (k, v) per layer, each (B, nh, Tpast + T, hs), including the past.

        ``past_kv``: one (k, v) per layer, each (B, nh, Tpast, hs), from a previous call's present_kv (a KV
        cache) or trainable prefixes. ``start_pos``: position of ids[:, 0] (default: the cached length).
        """
        past_len = past_length(past_kv)
        start = past_len if start_pos is None else start_pos
        ids = self.check_ids(ids, start)
        T = ids.shape[1]
        if past_kv is not None and len(past_kv) != len(self.blocks):
            raise ValueError(f"GPT: past_kv has {len(past_kv)} layers, the model has {len(self.blocks)}")
        pos = B.xp.arange(start, start + T)
        x = self.drop(self.tok_emb(ids) + self.pos_emb(pos))  # (B, T, C) + (T, C)
        present = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, past_kv=None if past_kv is None else past_kv[i])
            present.append(kv)
        return self.ln_f(x), present

    def forward(self, ids, targets=None, past_kv: list | None = None, start_pos: int | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """(logits (B, T, vocab_size), loss): loss is the mean next-token cross-entropy against ``targets``
        (B, T) (ignore_index -100), None without targets. ``past_kv``/``start_pos`` as in ``features``
        (prefix tuning passes its prefixes here); ``forward_cached`` also returns the new cache."""
        h, _ = self.features(ids, past_kv=past_kv, start_pos=start_pos)
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if targets is not None:
            targets = B.xp.asarray(B.unwrap(targets)).reshape(logits.shape[:-1])
            loss = F.cross_entropy(logits, targets)
        return logits, loss

    def forward_cached(self, ids, past_kv: list | None = None, start_pos: int | None = None
                       ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """KV-cached decoding: (logits (B, T, V), present_kv), present_kv (one (k, v) per layer, the past
        included) being the next call's ``past_kv``. Without a past it prefills the cache."""
        h, present = self.features(ids, past_kv=past_kv, start_pos=start_pos)
        return self.lm_head(h), present  # (B, T, V)

    def attention_weights(self, ids) -> list:
        """Attention probabilities of every layer for ``ids``: a list of (B, nh, T, T) NumPy arrays
        (row t = how much position t attends to each earlier position), for plotting."""
        ids = self.check_ids(ids)
        maps = []
        with no_grad():
            x = self.tok_emb(ids) + self.pos_emb(B.xp.arange(ids.shape[1]))  # (B, T, C)
            for block in self.blocks:
                attn = getattr(block.attn, "base_layer", block.attn)  # under an adapter: the attention itself
                w = attn.attention_weights(block.ln_1(x), is_causal=True)  # (B, nh, T, T)
                maps.append(B.to_numpy(w.data))
                x, _ = block(x)
        return maps

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path, tokenizer=None, dtype=None, extra: dict | None = None) -> None:
        """Write config + weights (+ the tokenizer, embedded as JSON) with ``minillm.save``.

        ``dtype="float16"`` halves the file (weights load back into float32 parameters).
        """
        tok = {} if tokenizer is None else {"tokenizer": json.dumps(tokenizer.to_dict(), ensure_ascii=False)}
        write_checkpoint(path, "gpt", self, {**tok, **(extra or {})}, dtype=dtype)

    @classmethod
    def load_with_tokenizer(cls, path) -> tuple[GPT, BPETokenizer]:
        """The GPT in a checkpoint and its tokenizer (the shipped one if the checkpoint embeds none)."""
        return with_tokenizer(cls.from_checkpoint(path), path)

    @classmethod
    def from_checkpoint(cls, path) -> GPT:
        """A GPT rebuilt from a checkpoint written by ``save_checkpoint`` or ``minillm.train.train``."""
        return model_from_checkpoint(cls, path, GPTConfig, "gpt", who="GPT")
