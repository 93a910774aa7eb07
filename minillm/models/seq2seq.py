"""What BART and T5 share: an encoder-decoder language model (``EncoderDecoderLM``) with one encoder loop,
one KV-cached decoder (``run_decoder``), the teacher-forced ``forward``, greedy ``generate`` and checkpoints.
A family only says how tokens are embedded (and positions encoded) and how the final states are read out.
"""

from __future__ import annotations

from typing import Any, ClassVar

from minillm import backend as B
from minillm import functional as F
from minillm import nn
from minillm.models.common import (
    check_ids,
    model_from_checkpoint,
    padding_mask,
    past_length,
    write_checkpoint,
)
from minillm.tensor import Tensor


def shift_right(labels, start_id: int, pad_id: int) -> Any:
    """Decoder inputs from labels (teacher forcing): [start, y0, y1, ...], with -100 turned into padding."""
    lab = B.xp.asarray(B.unwrap(labels))
    if lab.ndim == 1:
        lab = lab[None, :]
    out = B.xp.full(lab.shape, pad_id, dtype=B.xp.int64)
    out[:, 0] = start_id
    out[:, 1:] = B.xp.where(lab[:, :-1] == -100, pad_id, lab[:, :-1])
    return out


def run_decoder(blocks, x: Tensor, memory: Tensor, memory_pad, past_kv: list | None = None,
                position_bias: Tensor | None = None) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Decoder blocks over x (B, Tt, C) with cross-attention to memory (B, Ts, C); each block continues its
    own cached (k, v) when ``past_kv`` is given. Returns (x (B, Tt, C), present_kv: one (k, v) per block,
    each (B, nh, Tpast + Tt, hs))."""
    present = []
    for i, block in enumerate(blocks):
        x, kv = block(x, context=memory, context_key_padding_mask=memory_pad, position_bias=position_bias,
                      past_kv=None if past_kv is None else past_kv[i])
        present.append(kv)
    return x, present


class EncoderDecoderLM(nn.Module):
    """Base of BART and T5: ``forward(input_ids, labels=...)`` → (logits (B, Tdec, V), loss);
    ``decode(...)`` → (logits, present_kv); ``generate`` decodes greedily with the KV cache.

    A subclass sets ``family`` (its name in messages), ``kind`` (stored in checkpoints) and
    ``config_class``, builds ``encoder`` and ``decoder`` (``nn.ModuleList`` of blocks), and defines the hooks
    ``_embed_encoder``, ``_encoder_output``, ``_embed_decoder`` and ``_decoder_output``. Its config holds
    vocab_size, context_length, pad_id, decoder_start_id and eos_id.
    """

    family: ClassVar[str]
    kind: ClassVar[str]
    config_class: ClassVar[type]

    # ------------------------------------------------------------------ hooks
    def _embed_encoder(self, ids) -> tuple[Tensor, Tensor | None]:
        """Encoder input (B, Ts, C) for ids (B, Ts), and the score bias its blocks share (or None)."""
        raise NotImplementedError

    def _encoder_output(self, x: Tensor) -> Tensor:
        """The memory (B, Ts, C) from the last encoder block's output."""
        raise NotImplementedError

    def _embed_decoder(self, ids, past: int) -> tuple[Tensor, Tensor | None]:
        """Decoder input (B, Tt, C) for ids at positions past .. past+Tt-1, and the self-attention score
        bias (or None)."""
        raise NotImplementedError

    def _decoder_output(self, x: Tensor) -> Tensor:
        """Logits (B, Tt, V) from the last decoder block's output."""
        raise NotImplementedError

    # ------------------------------------------------------------------ encoder, decoder
    def encode(self, input_ids, attention_mask=None) -> tuple[Tensor, Any]:
        """Encoder output (B, Ts, C) and the key-padding mask (B, Ts) (or None) the decoder's
        cross-attention needs."""
        c = self.config
        ids = check_ids(input_ids, c.vocab_size, c.context_length, f"{self.family} encoder")
        pad = padding_mask(ids, attention_mask, c.pad_id)
        x, bias = self._embed_encoder(ids)  # (B, Ts, C)
        for block in self.encoder:
            x, _ = block(x, key_padding_mask=pad, position_bias=bias)
        return self._encoder_output(x), pad

    def decode(self, decoder_input_ids, memory: Tensor, memory_pad=None, past_kv: list | None = None
               ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """(logits (B, Tt, V), present_kv) for decoder inputs (B, Tt): causal self-attention + cross-attention
        to memory. ``past_kv`` (the present_kv of an earlier call) makes the inputs continue that decoded
        prefix (a KV cache); present_kv includes it, one (k, v) per decoder layer."""
        c = self.config
        past = past_length(past_kv)
        ids = check_ids(decoder_input_ids, c.vocab_size, c.context_length, f"{self.family} decoder", past)
        x, bias = self._embed_decoder(ids, past)  # (B, Tt, C)
        x, present = run_decoder(self.decoder, x, memory, memory_pad, past_kv, position_bias=bias)
        return self._decoder_output(x), present  # (B, Tt, V)

    def forward(self, input_ids, decoder_input_ids=None, labels=None, attention_mask=None
                ) -> tuple[Tensor, Tensor | None]:
        """(logits, loss). ``labels`` (B, Tt): the target text, -100 where no loss; decoder inputs default to
        the labels shifted right (teacher forcing)."""
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError(f"{self.family}: pass labels or decoder_input_ids")
            decoder_input_ids = shift_right(labels, self.config.decoder_start_id, self.config.pad_id)
        memory, pad = self.encode(input_ids, attention_mask)
        logits, _ = self.decode(decoder_input_ids, memory, pad)
        loss = None
        if labels is not None:
            lab = B.xp.asarray(B.unwrap(labels)).reshape(logits.shape[:2])
            loss = F.cross_entropy(logits, lab)
        return logits, loss

    def generate(self, input_ids, max_new_tokens: int = 64, attention_mask=None, use_cache: bool = True
                 ) -> list[list[int]]:
        """Greedy decoding: one list of ids per input row, without the start token, stopping at eos (not
        included). The encoder runs once; with ``use_cache`` each step feeds only the newest token and the
        decoder's self-attention keys/values are kept; ``use_cache=False`` decodes the whole prefix again
        each step (the same tokens, slower)."""
        c = self.config
        with nn.evaluating(self):
            memory, pad = self.encode(input_ids, attention_mask)
            Bsz = memory.shape[0]
            dec = B.xp.full((Bsz, 1), c.decoder_start_id, dtype=B.xp.int64)
            done = B.xp.zeros(Bsz, dtype=bool)
            cache = None
            for _ in range(min(max_new_tokens, c.context_length - 1)):
                if use_cache:  # the first step feeds the start token, later ones the newest token
                    step_ids = dec if cache is None else dec[:, -1:]
                    logits, cache = self.decode(step_ids, memory, pad, past_kv=cache)
                else:
                    logits, _ = self.decode(dec, memory, pad)  # (B, t, V)
                nxt = logits.data[:, -1, :].argmax(-1)
                nxt = B.xp.where(done, c.pad_id, nxt)
                dec = B.xp.concatenate([dec, nxt[:, None]], axis=1)
                done |= nxt == c.eos_id
                if bool(done.all()):
                    break
        out = []
        for row in B.to_numpy(dec[:, 1:]).tolist():
            out.append(row[:row.index(c.eos_id)] if c.eos_id in row else row)
        return out

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path, extra: dict | None = None) -> None:
        """Write kind, config and weights (+ ``extra`` entries) with ``minillm.save``."""
        write_checkpoint(path, self.kind, self, extra)

    @classmethod
    def from_checkpoint(cls, path) -> EncoderDecoderLM:
        """The model rebuilt from ``save_checkpoint`` or a ``minillm.train`` checkpoint of this kind."""
        return model_from_checkpoint(cls, path, cls.config_class, cls.kind)
