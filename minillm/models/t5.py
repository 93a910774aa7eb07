"""T5: the text-to-text transformer (Raffel et al. 2020); what it shares with BART is in ``seq2seq``.

Every task is text in, text out, named by a prefix ("summarize: ...", "translate English to Worldish: ...");
pre-training is span corruption with sentinels <extra_id_0>, <extra_id_1>, ... (``minillm.data.objectives``).
What sets it apart from BART:
- no position embeddings: a learned scalar bias per (head, relative-distance bucket) is added to the
  attention scores (§2.1). Distances are bucketed: exact for small ones, log-spaced up to ``max_distance``.
  The encoder's buckets are bidirectional, the decoder's causal; one table per stack, computed once and
  shared by all its layers (as in the paper); cross-attention has none;
- RMS-style LayerNorm without bias or mean subtraction, ReLU feed-forward, no biases in any Linear;
- the tied LM head rescales the decoder output by d_model^-0.5 (T5 1.0).
(We keep the 1/√head_dim attention scale of the shared attention; T5 folds it into its initialisation.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy

from minillm import backend as B
from minillm import nn
from minillm.models.common import check_config, init_weights
from minillm.models.seq2seq import EncoderDecoderLM
from minillm.tensor import Tensor


@dataclass
class T5Config:
    vocab_size: int = 1024
    context_length: int = 128     # longest encoder input and decoder output (no position table: a guard)
    d_model: int = 128
    n_heads: int = 4
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    d_ff: int | None = None       # None → 4·d_model
    dropout: float = 0.0
    num_buckets: int = 32         # relative-position buckets
    max_distance: int = 128       # distances beyond this share the last bucket
    pad_id: int = 0
    decoder_start_id: int = 0     # T5 starts the decoder with the pad token
    eos_id: int = 0

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if isinstance(self.d_model, int) else self.d_model
        check_config(self, positive=("vocab_size", "context_length", "d_model", "n_heads", "n_encoder_layers",
                                     "n_decoder_layers", "d_ff", "max_distance"))
        if self.num_buckets < 4:
            raise ValueError(f"T5Config: num_buckets must be >= 4, got {self.num_buckets}")


def relative_position_bucket(relative_position: numpy.ndarray, bidirectional: bool, num_buckets: int = 32,
                             max_distance: int = 128) -> numpy.ndarray:
    """Bucket index for each ``key_pos - query_pos`` (Raffel et al. 2020, §2.1; the reference code's rule).

    Bidirectional: half the buckets for keys after the query, half for before. Within a half, distances
    below ``num_buckets/4`` (bidirectional) or ``/2`` (causal) get a bucket each; larger ones share
    log-spaced buckets up to ``max_distance``; anything farther falls in the last one. Causal: keys after the
    query (masked anyway) map to bucket 0.
    """
    n = -numpy.asarray(relative_position, dtype=numpy.int64)  # query - key: > 0 means the key is earlier
    ret = numpy.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0) * num_buckets
        n = numpy.abs(n)
    else:
        n = numpy.maximum(n, 0)
    max_exact = num_buckets // 2
    with numpy.errstate(divide="ignore"):
        large = max_exact + (numpy.log(numpy.maximum(n, 1) / max_exact) / math.log(max_distance / max_exact)
                             * (num_buckets - max_exact)).astype(numpy.int64)
    large = numpy.minimum(large, num_buckets - 1)
    return ret + numpy.where(n < max_exact, n, large)


class RelativePositionBias(nn.Module):
    """One learned scalar per (bucket, head): ``forward(Tq, Tk)`` → additive score bias (1, nh, Tq, Tk)."""

    def __init__(self, n_heads: int, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.bidirectional, self.num_buckets, self.max_distance = bidirectional, num_buckets, max_distance
        self.embedding = nn.Embedding(num_buckets, n_heads)

    def forward(self, Tq: int, Tk: int, offset: int = 0) -> Tensor:
        """Queries sit at positions offset .. offset+Tq-1, keys at 0 .. Tk-1."""
        q = numpy.arange(offset, offset + Tq)[:, None]
        k = numpy.arange(Tk)[None, :]
        buckets = relative_position_bucket(k - q, self.bidirectional, self.num_buckets, self.max_distance)
        bias = self.embedding(B.xp.asarray(buckets))  # (Tq, Tk, nh)
        return bias.transpose(2, 0, 1).reshape(1, -1, Tq, Tk)  # (1, nh, Tq, Tk)

    def extra_repr(self) -> str:
        return f"bidirectional={self.bidirectional}, num_buckets={self.num_buckets}"


class T5(EncoderDecoderLM):
    """``forward(input_ids, labels=...)`` → (logits (B, Tdec, V), loss); ``generate`` decodes greedily
    (``EncoderDecoderLM``)."""

    family, kind, config_class = "T5", "t5", T5Config

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = c = config
        block = dict(d_ff=c.d_ff, dropout=c.dropout, norm="rmsnorm", activation="relu", bias=False)
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)  # shared by encoder, decoder and LM head
        self.drop = nn.Dropout(c.dropout)
        self.enc_rel_bias = RelativePositionBias(c.n_heads, True, c.num_buckets, c.max_distance)
        self.encoder = nn.ModuleList(nn.TransformerBlock(c.d_model, c.n_heads, causal=False, **block)
                                     for _ in range(c.n_encoder_layers))
        self.ln_enc = nn.RMSNorm(c.d_model)
        self.dec_rel_bias = RelativePositionBias(c.n_heads, False, c.num_buckets, c.max_distance)
        self.decoder = nn.ModuleList(nn.TransformerBlock(c.d_model, c.n_heads, causal=True,
                                                         cross_attention=True, **block)
                                     for _ in range(c.n_decoder_layers))
        self.ln_dec = nn.RMSNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        init_weights(self, c.n_encoder_layers + c.n_decoder_layers)
        self.tok_emb.weight.data = B.randn(c.vocab_size, c.d_model)  # N(0, 1): the head rescales by √d
        self.lm_head.weight = self.tok_emb.weight  # tied

    def _embed_encoder(self, ids) -> tuple[Tensor, Tensor]:
        T = ids.shape[1]
        bias = self.enc_rel_bias(T, T)  # (1, nh, T, T): computed once, shared by every layer
        return self.drop(self.tok_emb(ids)), bias  # (B, T, C)

    def _encoder_output(self, x: Tensor) -> Tensor:
        return self.drop(self.ln_enc(x))

    def _embed_decoder(self, ids, past: int) -> tuple[Tensor, Tensor]:
        T = ids.shape[1]
        bias = self.dec_rel_bias(T, past + T, offset=past)  # (1, nh, T, past + T), causal buckets
        return self.drop(self.tok_emb(ids)), bias  # (B, T, C)

    def _decoder_output(self, x: Tensor) -> Tensor:
        h = self.drop(self.ln_dec(x)) * (self.config.d_model ** -0.5)  # T5's rescale before the tied head
        return self.lm_head(h)  # (B, Tt, V)
