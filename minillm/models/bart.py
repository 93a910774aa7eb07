"""BART: a denoising sequence-to-sequence autoencoder (Lewis et al. 2020), in one file.

A bidirectional encoder reads the corrupted text (``minillm.data.objectives``: text infilling, sentence
permutation, ...); a causal decoder with cross-attention writes the original text back, token by token.
token + learned position embeddings (shared token table for encoder, decoder and the tied LM head) →
encoder blocks (no causal mask) → decoder blocks (causal self-attention + cross-attention to the encoder
output) → final LayerNorm → logits. Pre-norm blocks, GELU, as everywhere in minillm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from minillm import backend as B
from minillm import functional as F
from minillm import nn
from minillm.checkpoint import save
from minillm.models.bert import as_ids, init_weights, padding_mask, read_checkpoint
from minillm.tensor import Tensor, no_grad


@dataclass
class BARTConfig:
    vocab_size: int = 1024
    max_len: int = 128           # longest encoder input and decoder output
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
            self.d_ff = 4 * self.d_model
        if self.d_model % self.n_heads:
            raise ValueError(f"BARTConfig: d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        for name in ("vocab_size", "max_len", "d_model", "n_heads", "n_encoder_layers", "n_decoder_layers",
                     "d_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"BARTConfig: {name} must be ≥ 1, got {getattr(self, name)}")


def shift_right(labels, start_id: int, pad_id: int):
    """Decoder inputs from labels (teacher forcing): [start, y0, y1, ...], with -100 turned into padding."""
    lab = B.xp.asarray(B.unwrap(labels))
    if lab.ndim == 1:
        lab = lab[None, :]
    out = B.xp.full(lab.shape, pad_id, dtype=B.xp.int64)
    out[:, 0] = start_id
    out[:, 1:] = B.xp.where(lab[:, :-1] == -100, pad_id, lab[:, :-1])
    return out


class BART(nn.Module):
    """``forward(input_ids, labels=...)`` → (logits (B, Tdec, V), loss); ``generate`` decodes greedily."""

    def __init__(self, config: BARTConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)      # shared by encoder, decoder and LM head
        self.enc_pos_emb = nn.Embedding(c.max_len, c.d_model)
        self.dec_pos_emb = nn.Embedding(c.max_len, c.d_model)
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

    def encode(self, input_ids, attention_mask=None) -> tuple[Tensor, object]:
        """Encoder output (B, Ts, C) and the key-padding mask (B, Ts) the decoder's cross-attention needs."""
        c = self.config
        ids = as_ids(input_ids, c.vocab_size, c.max_len, "BART encoder")
        pad = padding_mask(ids, attention_mask, c.pad_id)
        x = self.drop(self.tok_emb(ids) + self.enc_pos_emb(B.xp.arange(ids.shape[1])))  # (B, Ts, C)
        for block in self.encoder:
            x = block(x, key_padding_mask=pad)
        return self.ln_enc(x), pad

    def decode(self, decoder_input_ids, memory: Tensor, memory_pad=None, past_kv: list | None = None,
               use_cache: bool = False):
        """Logits (B, Tt, V) for decoder inputs (B, Tt): causal self-attention + cross-attention to memory.

        ``past_kv`` (one (k, v) per decoder layer, from an earlier call with ``use_cache``) makes the
        inputs continue a decoded prefix: a KV cache. With ``use_cache`` returns (logits, present_kv)."""
        c = self.config
        ids = as_ids(decoder_input_ids, c.vocab_size, c.max_len, "BART decoder")
        past = 0 if past_kv is None else int(past_kv[0][0].shape[2])
        check_decoder_length(past, ids.shape[1], c.max_len, "BART")
        pos = B.xp.arange(past, past + ids.shape[1])
        x = self.drop(self.tok_emb(ids) + self.dec_pos_emb(pos))  # (B, Tt, C)
        x, present = run_decoder(self.decoder, x, memory, memory_pad, past_kv, use_cache)
        logits = self.lm_head(self.ln_dec(x))  # (B, Tt, V)
        return (logits, present) if use_cache else logits

    def forward(self, input_ids, decoder_input_ids=None, labels=None, attention_mask=None):
        """(logits, loss). ``labels`` (B, Tt): the original text, -100 where no loss; decoder inputs default
        to the labels shifted right (teacher forcing)."""
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("BART: pass labels or decoder_input_ids")
            decoder_input_ids = shift_right(labels, self.config.decoder_start_id, self.config.pad_id)
        memory, pad = self.encode(input_ids, attention_mask)
        logits = self.decode(decoder_input_ids, memory, pad)
        loss = None
        if labels is not None:
            lab = B.xp.asarray(B.unwrap(labels)).reshape(logits.shape[:2])
            loss = F.cross_entropy(logits, lab)
        return logits, loss

    def generate(self, input_ids, max_new_tokens: int = 64, attention_mask=None, use_cache: bool = True
                 ) -> list[list[int]]:
        """Greedy decoding: one list of ids per input row, without the start token, stopping at eos
        (not included). The encoder runs once; the decoder feeds one new token per step with a KV cache
        (``use_cache=False`` reruns it on the growing prefix: the same tokens, slower)."""
        return greedy_decode(self, input_ids, max_new_tokens, attention_mask, use_cache)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path, extra: dict | None = None) -> None:
        save({"kind": "bart", "config": asdict(self.config), "model": self.state_dict(), **(extra or {})},
             path)

    @classmethod
    def from_checkpoint(cls, path) -> BART:
        config, state = read_checkpoint(path, BARTConfig, "bart")
        model = cls(config)
        model.load_state_dict(state)
        return model


def check_decoder_length(past: int, new: int, max_len: int, who: str) -> None:
    if past + new > max_len:
        raise ValueError(f"{who} decoder: {past} cached + {new} new positions exceed max_len {max_len}")


def run_decoder(blocks, x: Tensor, memory: Tensor, memory_pad, past_kv, use_cache: bool, **kw):
    """Decoder blocks over x (B, Tt, C) with cross-attention to memory; each block continues its own
    cached (k, v) when ``past_kv`` is given. Returns (x, present_kv or None). Shared by BART and T5."""
    present = [] if use_cache else None
    for i, block in enumerate(blocks):
        out = block(x, context=memory, context_key_padding_mask=memory_pad, use_cache=use_cache,
                    past_kv=None if past_kv is None else past_kv[i], **kw)
        if use_cache:
            x, kv = out
            present.append(kv)
        else:
            x = out
    return x, present


def greedy_decode(model, input_ids, max_new_tokens: int, attention_mask=None, use_cache: bool = True
                  ) -> list[list[int]]:
    """Greedy decoding for an encoder-decoder with ``encode``/``decode`` and a config holding
    decoder_start_id, eos_id, pad_id and max_len (shared by BART and T5). With ``use_cache`` each step
    feeds only the newest token and the decoder's self-attention keys/values are kept; without, the
    whole prefix is decoded again each step (same tokens)."""
    c = model.config
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            memory, pad = model.encode(input_ids, attention_mask)
            Bsz = memory.shape[0]
            dec = B.xp.full((Bsz, 1), c.decoder_start_id, dtype=B.xp.int64)
            done = B.xp.zeros(Bsz, dtype=bool)
            cache = None
            for _ in range(min(max_new_tokens, c.max_len - 1)):
                if use_cache:  # the first step feeds the start token, later ones the newest token
                    step_ids = dec if cache is None else dec[:, -1:]
                    logits, cache = model.decode(step_ids, memory, pad, past_kv=cache, use_cache=True)
                else:
                    logits = model.decode(dec, memory, pad)  # (B, t, V)
                nxt = logits.data[:, -1, :].argmax(-1)
                nxt = B.xp.where(done, c.pad_id, nxt)
                dec = B.xp.concatenate([dec, nxt[:, None]], axis=1)
                done |= nxt == c.eos_id
                if bool(done.all()):
                    break
    finally:
        model.train(was_training)
    out = []
    for row in B.to_numpy(dec[:, 1:]).tolist():
        out.append(row[:row.index(c.eos_id)] if c.eos_id in row else row)
    return out
