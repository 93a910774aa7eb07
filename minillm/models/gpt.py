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


# minillm parameter → its place in transformers' GPT2LMHeadModel ({i}: layer). GPT-2's Linear layers are
# Conv1D, weight stored (in, out): transposed both ways. Its fused c_attn (d, 3d) holds q, k and v side by
# side; minillm keeps three Linears: thirds 0, 1, 2 of the transposed (3d, d) matrix and its bias.
HF_NAMES = {
    "tok_emb.weight":                  HFName("transformer.wte.weight"),
    "pos_emb.weight":                  HFName("transformer.wpe.weight"),
    "blocks.{i}.ln_1.weight":          HFName("transformer.h.{i}.ln_1.weight"),
    "blocks.{i}.ln_1.bias":            HFName("transformer.h.{i}.ln_1.bias"),
    "blocks.{i}.attn.q_proj.weight":   HFName("transformer.h.{i}.attn.c_attn.weight", True, (0, 3)),
    "blocks.{i}.attn.k_proj.weight":   HFName("transformer.h.{i}.attn.c_attn.weight", True, (1, 3)),
    "blocks.{i}.attn.v_proj.weight":   HFName("transformer.h.{i}.attn.c_attn.weight", True, (2, 3)),
    "blocks.{i}.attn.q_proj.bias":     HFName("transformer.h.{i}.attn.c_attn.bias", part=(0, 3)),
    "blocks.{i}.attn.k_proj.bias":     HFName("transformer.h.{i}.attn.c_attn.bias", part=(1, 3)),
    "blocks.{i}.attn.v_proj.bias":     HFName("transformer.h.{i}.attn.c_attn.bias", part=(2, 3)),
    "blocks.{i}.attn.out_proj.weight": HFName("transformer.h.{i}.attn.c_proj.weight", True),
    "blocks.{i}.attn.out_proj.bias":   HFName("transformer.h.{i}.attn.c_proj.bias"),
    "blocks.{i}.ln_2.weight":          HFName("transformer.h.{i}.ln_2.weight"),
    "blocks.{i}.ln_2.bias":            HFName("transformer.h.{i}.ln_2.bias"),
    "blocks.{i}.mlp.up_proj.weight":   HFName("transformer.h.{i}.mlp.c_fc.weight", True),
    "blocks.{i}.mlp.up_proj.bias":     HFName("transformer.h.{i}.mlp.c_fc.bias"),
    "blocks.{i}.mlp.down_proj.weight": HFName("transformer.h.{i}.mlp.c_proj.weight", True),
    "blocks.{i}.mlp.down_proj.bias":   HFName("transformer.h.{i}.mlp.c_proj.bias"),
    "ln_f.weight":                     HFName("transformer.ln_f.weight"),
    "ln_f.bias":                       HFName("transformer.ln_f.bias"),
    "lm_head.weight":                  HFName("lm_head.weight"),  # absent when tied to wte
}
# F.gelu is the tanh approximation: transformers' "gelu_new" (GPT-2's) and "gelu_pytorch_tanh" compute it
GELUS = ("gelu_new", "gelu_pytorch_tanh")


def config_from_hf(hf: dict, where) -> GPTConfig:
    """A GPTConfig from a GPT2Config dict; ValueError on settings minillm's GPT cannot represent (its
    LayerNorm eps is fixed at 1e-5, its GELU the tanh one). Dropout: ``resid_pdrop``."""
    require(hf, where, model_type=("gpt2",), activation_function=GELUS, layer_norm_epsilon=(1e-5,),
            scale_attn_weights=(True,), scale_attn_by_inverse_layer_idx=(False,),
            add_cross_attention=(False,))
    return checked(GPTConfig, where, vocab_size=hf.get("vocab_size", 50257),
                   context_length=hf.get("n_positions", 1024), d_model=hf.get("n_embd", 768),
                   n_heads=hf.get("n_head", 12), n_layers=hf.get("n_layer", 12), d_ff=hf.get("n_inner"),
                   dropout=hf.get("resid_pdrop", 0.1), tie_weights=hf.get("tie_word_embeddings", True))


def config_to_hf(c: GPTConfig) -> dict:
    """The GPT2Config dict (config.json) of ``c``."""
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": c.vocab_size,
            "n_positions": c.context_length, "n_embd": c.d_model, "n_head": c.n_heads, "n_layer": c.n_layers,
            "n_inner": c.d_ff, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
            "tie_word_embeddings": c.tie_weights, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}


def gpt2_tensors(tensors: dict) -> dict:
    """transformers' names for a GPT-2 state dict: OpenAI's original upload lacks the ``transformer.``
    prefix, and older files keep each layer's causal-mask buffers (``attn.bias``, ``attn.masked_bias``)."""
    bare = not any(k.startswith("transformer.") for k in tensors)
    out = {}
    for k, v in tensors.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        out[f"transformer.{k}" if bare and k != "lm_head.weight" else k] = v
    return out


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

    def save_pretrained(self, directory, tokenizer=None, dtype: str | None = None) -> None:
        """Write a Hugging Face GPT-2 folder (config.json, model.safetensors, the tokenizer's files when
        given) that transformers' GPT2LMHeadModel loads. ``dtype`` ("float16", "float32" or "float64")
        converts the weights; default: the parameters' own dtype."""
        hf = {**config_to_hf(self.config), **token_ids(tokenizer, self.config.vocab_size)}
        save_model(self, directory, hf, HF_NAMES, tokenizer, dtype)

    @classmethod
    def from_pretrained(cls, directory, dtype=None) -> GPT:
        """The GPT in a Hugging Face GPT-2 folder (config.json + model.safetensors, or its shards), in eval
        mode; ``dtype`` (e.g. numpy.float64) sets the parameters' dtype (default: the backend's)."""
        config = config_from_hf(read_config(directory), directory)
        return load_model(cls, config, gpt2_tensors(read_weights(directory)), HF_NAMES, directory, dtype)

    @classmethod
    def load_with_tokenizer(cls, path) -> tuple[GPT, BPETokenizer]:
        """The GPT in a checkpoint and its tokenizer (the shipped one if the checkpoint embeds none)."""
        return with_tokenizer(cls.from_checkpoint(path), path)

    @classmethod
    def from_checkpoint(cls, path) -> GPT:
        """A GPT rebuilt from a checkpoint written by ``save_checkpoint`` or ``minillm.train.train``."""
        return model_from_checkpoint(cls, path, GPTConfig, "gpt", who="GPT")
