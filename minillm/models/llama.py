"""Llama: the decoder most open models use today (Touvron et al. 2023; Qwen, Mistral share it), one file.

It is GPT-2 (``gpt.py``) with four changes, each a line or two below:

- **RMSNorm** instead of LayerNorm: scale by the root mean square, no centring, no bias (cheaper, as good).
- **Rotary positions (RoPE)** instead of a learned position table: q and k of every layer are rotated by
  an angle proportional to their position, so q·k depends on the positions' difference only.
- **SwiGLU** feed-forward: down(silu(gate(x)) ⊙ up(x)), three matrices instead of two, d_ff ≈ 8/3·d_model.
- **Grouped-query attention (GQA)**: ``n_kv_heads`` key/value heads shared by groups of the ``n_heads``
  query heads, so the KV cache is n_heads/n_kv_heads times smaller (multi-query attention at 1).

No biases anywhere; the LM head is untied by default (``tie_weights``). Module names follow ``gpt.py``
(``blocks.i.attn.q_proj``, ``blocks.i.mlp.down_proj``, ...) so LoRA, QLoRA, prefixes and adapters target it
the same way; ``HF_NAMES`` below maps them to and from Hugging Face's ``LlamaForCausalLM`` names.
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
    model_from_checkpoint,
    past_length,
    with_tokenizer,
    write_checkpoint,
)
from minillm.models.hf import (
    HFName,
    checked,
    load_model,
    read_config,
    read_weights,
    require,
    save_model,
    token_ids,
)
from minillm.tensor import Tensor, concat, no_grad
from minillm.tokenizer import BPETokenizer


@dataclass
class LlamaConfig:
    vocab_size: int = 1024
    context_length: int = 128
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int | None = None  # None → n_heads (plain multi-head attention); 1 → multi-query
    n_layers: int = 4
    d_ff: int | None = None  # None → 8/3·d_model rounded up to a multiple of 32 (≈ GPT-2's 4·d parameters)
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_weights: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None and isinstance(self.d_model, int):
            self.d_ff = -(-8 * self.d_model // 3 // 32) * 32
        check_config(self, positive=("vocab_size", "context_length", "d_model", "n_heads", "n_kv_heads",
                                     "n_layers", "d_ff"))
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"LlamaConfig: n_kv_heads {self.n_kv_heads} must divide n_heads {self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"LlamaConfig: head size {self.d_model // self.n_heads} must be even for RoPE")
        if self.rope_theta <= 1 or self.rms_norm_eps <= 0:
            raise ValueError("LlamaConfig: rope_theta must be > 1 and rms_norm_eps > 0")


# minillm parameter → its place in transformers' LlamaForCausalLM ({i}: layer), every array as it is.
# RoPE needs no permutation of q_proj/k_proj rows: F.rope pairs element i with i + head_dim/2
# ("rotate_half"), as transformers does. (Meta's original checkpoints pair 2i with 2i+1; transformers'
# convert_llama_weights_to_hf permutes their rows into the rotate_half layout a Hugging Face folder has.)
HF_NAMES = {
    "tok_emb.weight":                  HFName("model.embed_tokens.weight"),
    "blocks.{i}.ln_1.weight":          HFName("model.layers.{i}.input_layernorm.weight"),
    "blocks.{i}.attn.q_proj.weight":   HFName("model.layers.{i}.self_attn.q_proj.weight"),
    "blocks.{i}.attn.k_proj.weight":   HFName("model.layers.{i}.self_attn.k_proj.weight"),
    "blocks.{i}.attn.v_proj.weight":   HFName("model.layers.{i}.self_attn.v_proj.weight"),
    "blocks.{i}.attn.out_proj.weight": HFName("model.layers.{i}.self_attn.o_proj.weight"),
    "blocks.{i}.ln_2.weight":          HFName("model.layers.{i}.post_attention_layernorm.weight"),
    "blocks.{i}.mlp.gate_proj.weight": HFName("model.layers.{i}.mlp.gate_proj.weight"),
    "blocks.{i}.mlp.up_proj.weight":   HFName("model.layers.{i}.mlp.up_proj.weight"),
    "blocks.{i}.mlp.down_proj.weight": HFName("model.layers.{i}.mlp.down_proj.weight"),
    "ln_f.weight":                     HFName("model.norm.weight"),
    "lm_head.weight":                  HFName("lm_head.weight"),  # absent when tied to embed_tokens
}


def rope_theta(hf: dict, where) -> float:
    """RoPE's base from ``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling`` (4.x);
    ValueError for a scaled RoPE (linear, dynamic, YaRN, Llama 3's), which minillm's F.rope does not do."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    require({"rope_type": params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))},
            where, rope_type=("default",))
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict, where) -> LlamaConfig:
    """A LlamaConfig from a transformers LlamaConfig dict; ValueError on what minillm's Llama cannot
    represent: biases, another activation, a scaled RoPE, head_dim other than hidden_size/heads."""
    require(hf, where, model_type=("llama",), hidden_act=("silu",), attention_bias=(False,),
            mlp_bias=(False,))
    d, heads = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
    if hf.get("head_dim") is not None and hf["head_dim"] * heads != d:
        raise ValueError(f"{where}: head_dim={hf['head_dim']!r} is not supported by minillm (its head size "
                         f"is hidden_size / num_attention_heads = {d}/{heads})")
    return checked(LlamaConfig, where, vocab_size=hf.get("vocab_size", 32000),
                   context_length=hf.get("max_position_embeddings", 2048), d_model=d, n_heads=heads,
                   n_kv_heads=hf.get("num_key_value_heads"), n_layers=hf.get("num_hidden_layers", 32),
                   d_ff=hf.get("intermediate_size", 11008), rope_theta=rope_theta(hf, where),
                   rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
                   tie_weights=hf.get("tie_word_embeddings", False), dropout=hf.get("attention_dropout", 0.0))


def config_to_hf(c: LlamaConfig) -> dict:
    """The transformers LlamaConfig dict (config.json) of ``c``: RoPE's base both as transformers 5's
    ``rope_parameters`` and 4.x's ``rope_theta``."""
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": c.vocab_size,
            "max_position_embeddings": c.context_length, "hidden_size": c.d_model,
            "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
            "head_dim": c.d_model // c.n_heads, "num_hidden_layers": c.n_layers, "intermediate_size": c.d_ff,
            "hidden_act": "silu", "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
            "tie_word_embeddings": c.tie_weights, "attention_bias": False, "mlp_bias": False,
            "attention_dropout": c.dropout}


class LlamaAttention(nn.Module):
    """Causal self-attention with RoPE on q and k and ``n_kv_heads`` shared key/value heads."""

    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.d_model // c.n_heads
        kv_dim = c.n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.k_proj = nn.Linear(c.d_model, kv_dim, bias=False)
        self.v_proj = nn.Linear(c.d_model, kv_dim, bias=False)
        self.out_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.dropout = nn.Dropout(c.dropout)

    def _heads(self, t: Tensor, n: int) -> Tensor:
        Bsz, T, _ = t.shape
        return t.reshape(Bsz, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, hs)

    def forward(self, x: Tensor, cos, sin, past_kv: tuple | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, C), cos/sin (T, hs) for this call's positions → (y (B, T, C), present_kv): (k, v), each
        (B, n_kv, Tpast + T, hs), keys already rotated (what a KV cache keeps)."""
        Bsz, T, C = x.shape
        q = F.rope(self._heads(self.q_proj(x), self.n_heads), cos, sin)     # (B, nh, T, hs)
        k = F.rope(self._heads(self.k_proj(x), self.n_kv_heads), cos, sin)  # (B, nkv, T, hs)
        v = self._heads(self.v_proj(x), self.n_kv_heads)                    # (B, nkv, T, hs)
        if past_kv is not None:
            pk, pv = (t if isinstance(t, Tensor) else Tensor(t) for t in past_kv)
            if pk.shape[0] == 1 and Bsz > 1:  # one shared prefix for the whole batch
                ones = B.xp.ones((Bsz, 1, 1, 1), dtype=pk.dtype)
                pk, pv = pk * ones, pv * ones
            k, v = concat([pk, k], axis=2), concat([pv, v], axis=2)  # (B, nkv, Tpast + T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(Bsz, T, C)
        return self.dropout(self.out_proj(y)), (k, v)

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}"


class SwiGLUFeedForward(nn.Module):
    """down_proj(silu(gate_proj(x)) ⊙ up_proj(x)): d_model → d_ff (twice) → d_model."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        # (B, T, C) -> (B, T, d_ff) -> (B, T, C)
        return self.dropout(self.down_proj(F.swiglu(self.gate_proj(x), self.up_proj(x))))


class LlamaBlock(nn.Module):
    """x + Attn(RMSNorm(x)), then + SwiGLU(RMSNorm(x)): GPT-2's pre-norm block with Llama's parts."""

    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.ln_1 = nn.RMSNorm(c.d_model, eps=c.rms_norm_eps)
        self.attn = LlamaAttention(c)
        self.ln_2 = nn.RMSNorm(c.d_model, eps=c.rms_norm_eps)
        self.mlp = SwiGLUFeedForward(c.d_model, c.d_ff, c.dropout)

    def forward(self, x: Tensor, cos, sin, past_kv: tuple | None = None) -> tuple[Tensor, tuple]:
        a, present = self.attn(self.ln_1(x), cos, sin, past_kv=past_kv)
        x = x + a
        return x + self.mlp(self.ln_2(x)), present


class Llama(nn.Module):
    """A Llama-style language model with GPT's interface: ``forward(ids, targets)`` → (logits, loss),
    ``forward_cached(ids, past_kv)`` → (logits, present_kv), ``features``, checkpoints."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(LlamaBlock(c) for _ in range(c.n_layers))
        self.ln_f = nn.RMSNorm(c.d_model, eps=c.rms_norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        init_weights(self, c.n_layers)  # N(0, 0.02), out_proj/down_proj scaled by 1/√(2·n_layers)

    def check_ids(self, ids, past_len: int = 0) -> Any:
        """ids as an integer (B, T) array, or a clear error (out-of-vocabulary ids, over-long inputs)."""
        return check_ids(ids, self.config.vocab_size, self.config.context_length, "Llama", past_len,
                         hint="; crop it (generate() slides the window for you)")

    def features(self, ids, past_kv: list | None = None, start_pos: int | None = None
                 ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """(h (B, T, C) after the final RMSNorm, present_kv: one (k, v) per layer, each
        (B, n_kv, Tpast + T, hs)). ``past_kv``/``start_pos`` as in ``GPT.features``: RoPE rotates ids[:, t]
        by position start_pos + t, the cached keys keep the rotation they got."""
        past_len = past_length(past_kv)
        start = past_len if start_pos is None else start_pos
        ids = self.check_ids(ids, start)
        if past_kv is not None and len(past_kv) != len(self.blocks):
            raise ValueError(f"Llama: past_kv has {len(past_kv)} layers, the model has {len(self.blocks)}")
        c = self.config
        cos, sin = F.rope_angles(c.d_model // c.n_heads, B.xp.arange(start, start + ids.shape[1]),
                                 c.rope_theta, dtype=self.tok_emb.weight.dtype)  # (T, hs) each
        x = self.drop(self.tok_emb(ids))  # (B, T, C): no position table, positions live in the rotation
        present = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, cos, sin, past_kv=None if past_kv is None else past_kv[i])
            present.append(kv)
        return self.ln_f(x), present

    def forward(self, ids, targets=None, past_kv: list | None = None, start_pos: int | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """(logits (B, T, vocab_size), mean next-token cross-entropy against ``targets`` or None)."""
        h, _ = self.features(ids, past_kv=past_kv, start_pos=start_pos)
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if targets is not None:
            targets = B.xp.asarray(B.unwrap(targets)).reshape(logits.shape[:-1])
            loss = F.cross_entropy(logits, targets)
        return logits, loss

    def forward_cached(self, ids, past_kv: list | None = None, start_pos: int | None = None
                       ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """KV-cached decoding: (logits (B, T, V), present_kv, the next call's ``past_kv``)."""
        h, present = self.features(ids, past_kv=past_kv, start_pos=start_pos)
        return self.lm_head(h), present

    def kv_cache_bytes(self, n_tokens: int, batch_size: int = 1, bytes_per_value: int = 4) -> int:
        """Bytes a KV cache of ``n_tokens`` holds: 2 (k, v) · layers · n_kv_heads · head_dim per token."""
        c = self.config
        per_token = 2 * c.n_layers * c.n_kv_heads * (c.d_model // c.n_heads)
        return per_token * n_tokens * batch_size * bytes_per_value

    def attention_weights(self, ids) -> list:
        """Attention probabilities of every layer, a list of (B, nh, T, T) NumPy arrays, for plotting."""
        ids, c = self.check_ids(ids), self.config
        cos, sin = F.rope_angles(c.d_model // c.n_heads, B.xp.arange(ids.shape[1]), c.rope_theta,
                                 dtype=self.tok_emb.weight.dtype)
        maps = []
        with no_grad():
            x = self.tok_emb(ids)
            for block in self.blocks:
                attn = getattr(block.attn, "base_layer", block.attn)
                h = block.ln_1(x)
                q = F.rope(attn._heads(attn.q_proj(h), attn.n_heads), cos, sin)
                k = F.rope(attn._heads(attn.k_proj(h), attn.n_kv_heads), cos, sin)
                maps.append(B.to_numpy(F.attention_probs(q, k, is_causal=True, enable_gqa=True).data))
                x, _ = block(x, cos, sin)
        return maps

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path, tokenizer=None, dtype=None, extra: dict | None = None) -> None:
        """Write config + weights (+ the tokenizer as JSON) with ``minillm.save``, like ``GPT``'s."""
        tok = {} if tokenizer is None else {"tokenizer": json.dumps(tokenizer.to_dict(), ensure_ascii=False)}
        write_checkpoint(path, "llama", self, {**tok, **(extra or {})}, dtype=dtype)

    def save_pretrained(self, directory, tokenizer=None, dtype: str | None = None) -> None:
        """Write a Hugging Face Llama folder (config.json, model.safetensors, the tokenizer's files when
        given) that transformers' LlamaForCausalLM loads. ``dtype`` ("float16", "float32" or "float64")
        converts the weights; default: the parameters' own dtype."""
        hf = {**config_to_hf(self.config), **token_ids(tokenizer, self.config.vocab_size)}
        save_model(self, directory, hf, HF_NAMES, tokenizer, dtype)

    @classmethod
    def from_pretrained(cls, directory, dtype=None) -> Llama:
        """The Llama in a Hugging Face folder (config.json + model.safetensors, or its shards), in eval mode;
        ``dtype`` (e.g. numpy.float64) sets the parameters' dtype (default: the backend's; a BF16 file is
        widened exactly)."""
        config = config_from_hf(read_config(directory), directory)
        return load_model(cls, config, read_weights(directory), HF_NAMES, directory, dtype)

    @classmethod
    def load_with_tokenizer(cls, path) -> tuple[Llama, BPETokenizer]:
        """The Llama in a checkpoint and its tokenizer (the shipped one if the checkpoint embeds none)."""
        return with_tokenizer(cls.from_checkpoint(path), path)

    @classmethod
    def from_checkpoint(cls, path) -> Llama:
        """A Llama rebuilt from a checkpoint written by ``save_checkpoint`` or ``minillm.train.train``."""
        return model_from_checkpoint(cls, path, LlamaConfig, "llama", who="Llama")
