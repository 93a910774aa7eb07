"""BART: a denoising sequence-to-sequence autoencoder (Lewis et al. 2020); the encoder-decoder loop, KV cache
and greedy decoding it shares with T5 are in ``minillm.models.seq2seq``.

A bidirectional encoder reads the corrupted text (``minillm.data.objectives``: text infilling, sentence
permutation, ...); a causal decoder with cross-attention writes the original text back, token by token.
token + learned position embeddings (shared token table for encoder, decoder and the tied LM head) →
encoder blocks (no causal mask) → decoder blocks (causal self-attention + cross-attention to the encoder
output) → final LayerNorm → logits. Pre-norm blocks, GELU, as everywhere in minillm.
"""

from __future__ import annotations

from dataclasses import dataclass

from minillm import backend as B
from minillm import nn
from minillm.models.common import check_config, init_weights
from minillm.models.seq2seq import EncoderDecoderLM, shift_right
from minillm.tensor import Tensor

__all__ = ["BART", "BARTConfig", "shift_right"]


@dataclass
class BARTConfig:
    vocab_size: int = 1024
    context_length: int = 128    # longest encoder input and decoder output
    d_model: int = 128
    n_heads: int = 4
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    d_ff: int | None = None      # None → 4·d_model
    dropout: float = 0.0
    pad_id: int = 0              # padding in inputs and decoder inputs (its labels are -100)
    decoder_start_id: int = 0    # first decoder input (BART uses </s>; we use <|endoftext|>)
    eos_id: int = 0              # ends every target; generation stops on it

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if isinstance(self.d_model, int) else self.d_model
        check_config(self, positive=("vocab_size", "context_length", "d_model", "n_heads", "n_encoder_layers",
                                     "n_decoder_layers", "d_ff"))


class BART(EncoderDecoderLM):
    """``forward(input_ids, labels=...)`` → (logits (B, Tdec, V), loss); ``generate`` decodes greedily
    (``EncoderDecoderLM``)."""

    family, kind, config_class = "BART", "bart", BARTConfig

    def __init__(self, config: BARTConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)      # shared by encoder, decoder and LM head
        self.enc_pos_emb = nn.Embedding(c.context_length, c.d_model)
        self.dec_pos_emb = nn.Embedding(c.context_length, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.encoder = nn.ModuleList(nn.TransformerBlock(c.d_model, c.n_heads, c.d_ff, c.dropout,
                                                         causal=False)
                                     for _ in range(c.n_encoder_layers))
        self.ln_enc = nn.LayerNorm(c.d_model)
        self.decoder = nn.ModuleList(nn.TransformerBlock(c.d_model, c.n_heads, c.d_ff, c.dropout, causal=True,
                                                         cross_attention=True)
                                     for _ in range(c.n_decoder_layers))
        self.ln_dec = nn.LayerNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        init_weights(self, c.n_encoder_layers + c.n_decoder_layers)
        self.lm_head.weight = self.tok_emb.weight  # tied

    def _embed_encoder(self, ids) -> tuple[Tensor, None]:
        return self.drop(self.tok_emb(ids) + self.enc_pos_emb(B.xp.arange(ids.shape[1]))), None  # (B, Ts, C)

    def _encoder_output(self, x: Tensor) -> Tensor:
        return self.ln_enc(x)

    def _embed_decoder(self, ids, past: int) -> tuple[Tensor, None]:
        pos = B.xp.arange(past, past + ids.shape[1])  # positions continue the cached prefix
        return self.drop(self.tok_emb(ids) + self.dec_pos_emb(pos)), None  # (B, Tt, C)

    def _decoder_output(self, x: Tensor) -> Tensor:
        return self.lm_head(self.ln_dec(x))  # (B, Tt, V)
