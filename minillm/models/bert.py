"""BERT: a bidirectional transformer encoder pre-trained by masked LM and next-sentence prediction
(Devlin et al. 2019), in one file.

token + position + segment embeddings → n_layers pre-norm blocks with NO causal mask (every token sees
every real token; padding keys are masked out) → final LayerNorm → two heads:
- MLM head: dense + GELU + LayerNorm, then the token embedding matrix (tied) + a bias → vocabulary logits;
- NSP head: the pooler (dense + tanh on the [CLS] vector) → 2 logits (0 = IsNext, 1 = NotNext).
``BERTForSequenceClassification`` puts a fresh classifier on the pooled [CLS] vector for transfer learning.
(The original BERT is post-norm; we reuse the pre-norm blocks every family here shares.)
"""

from __future__ import annotations

from dataclasses import dataclass

from minillm import backend as B
from minillm import functional as F
from minillm import nn
from minillm.models.common import (
    check_config,
    check_ids,
    init_weights,
    model_from_checkpoint,
    padding_mask,
    read_checkpoint,
    write_checkpoint,
)
from minillm.tensor import Tensor, concat


@dataclass
class BERTConfig:
    vocab_size: int = 1024
    context_length: int = 128   # longest input (position embeddings)
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int | None = None     # None → 4·d_model
    type_vocab_size: int = 2    # segments A and B
    dropout: float = 0.0
    pad_id: int | None = None   # when set, padding is found from the ids if no attention_mask is given

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if isinstance(self.d_model, int) else self.d_model
        check_config(self, positive=("vocab_size", "context_length", "d_model", "n_heads", "n_layers", "d_ff",
                                     "type_vocab_size"))


class BERT(nn.Module):
    """BERT encoder with its MLM and NSP heads.

    ``features(ids, token_type_ids, attention_mask)`` → hidden states (B, T, C);
    ``forward(...)`` → (mlm_logits, nsp_logits, loss).
    """

    def __init__(self, config: BERTConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.context_length, c.d_model)
        self.seg_emb = nn.Embedding(c.type_vocab_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(nn.TransformerBlock(c.d_model, c.n_heads, c.d_ff, c.dropout, causal=False)
                                    for _ in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.d_model)
        # MLM head: transform, then the tied embedding (as a Linear whose weight IS tok_emb.weight)
        self.mlm_dense = nn.Linear(c.d_model, c.d_model)
        self.mlm_ln = nn.LayerNorm(c.d_model)
        self.mlm_decoder = nn.Linear(c.d_model, c.vocab_size)
        # NSP head on the pooled [CLS] vector
        self.pooler = nn.Linear(c.d_model, c.d_model)
        self.nsp_head = nn.Linear(c.d_model, 2)
        init_weights(self, c.n_layers)
        self.mlm_decoder.weight = self.tok_emb.weight  # tied: one matrix embeds and un-embeds tokens

    def features(self, input_ids, token_type_ids=None, attention_mask=None) -> Tensor:
        """Final hidden states (B, T, C). Padding keys (attention_mask == 0, or pad_id) are never attended to,
        so outputs at real positions do not depend on how much padding follows."""
        c = self.config
        ids = check_ids(input_ids, c.vocab_size, c.context_length, "BERT")
        Bsz, T = ids.shape
        if token_type_ids is None:
            types = B.xp.zeros_like(ids)
        else:
            types = B.xp.asarray(B.unwrap(token_type_ids)).reshape(ids.shape)
        pad = padding_mask(ids, attention_mask, c.pad_id)
        x = self.tok_emb(ids) + self.pos_emb(B.xp.arange(T)) + self.seg_emb(types)  # (B, T, C)
        x = self.drop(x)
        for block in self.blocks:
            x, _ = block(x, key_padding_mask=pad)
        return self.ln_f(x)

    def pooled(self, h: Tensor) -> Tensor:
        """tanh(W h[CLS] + b): the sequence summary the NSP head and classifiers read, (B, C)."""
        return self.pooler(h[:, 0, :]).tanh()

    def mlm_logits(self, h: Tensor) -> Tensor:
        """Vocabulary logits for hidden states h (..., C) → (..., V)."""
        return self.mlm_decoder(self.mlm_ln(F.gelu(self.mlm_dense(h))))

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                next_sentence_label=None):
        """Returns (mlm_logits, nsp_logits, loss).

        Without ``labels`` mlm_logits is (B, T, V). With ``labels`` (B, T; -100 where no loss) the MLM head
        runs only on the labelled positions, so mlm_logits is (N, V) in row-major order of those positions
        (85% of positions carry no loss: skipping them saves most of the head's work).
        nsp_logits is (B, 2). loss = MLM cross-entropy [+ NSP cross-entropy], or None without labels.
        """
        h = self.features(input_ids, token_type_ids, attention_mask)  # (B, T, C)
        nsp_logits = self.nsp_head(self.pooled(h))  # (B, 2)
        loss = None
        if labels is None:
            mlm_logits = self.mlm_logits(h)  # (B, T, V)
        else:
            lab = B.xp.asarray(B.unwrap(labels)).reshape(h.shape[:2])
            idx = B.xp.flatnonzero(lab.reshape(-1) != -100)
            mlm_logits = self.mlm_logits(h.reshape(-1, h.shape[-1])[idx])  # (N, V)
            if idx.size:
                loss = F.cross_entropy(mlm_logits, lab.reshape(-1)[idx])
        if next_sentence_label is not None:
            nsl = B.xp.asarray(B.unwrap(next_sentence_label)).reshape(-1)
            nsp_loss = F.cross_entropy(nsp_logits, nsl)
            loss = nsp_loss if loss is None else loss + nsp_loss
        return mlm_logits, nsp_logits, loss

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path, extra: dict | None = None) -> None:
        write_checkpoint(path, "bert", self, extra)

    @classmethod
    def from_checkpoint(cls, path) -> BERT:
        """A BERT rebuilt from ``save_checkpoint`` or a ``minillm.train`` checkpoint of a BERT."""
        return model_from_checkpoint(cls, path, BERTConfig, "bert")


class BERTForSequenceClassification(nn.Module):
    """A BERT encoder plus a new classifier (Devlin et al. 2019, §4.1).

    ``pooling``: what the classifier reads — ``"cls"``, BERT's pooled [CLS] vector (trained by NSP), or
    ``"mean"``, the mean of the final hidden states over the real tokens (as in Sentence-BERT), or
    ``"mask"``, the hidden state at the input's first ``[MASK]`` (``mask_id``): the input ends with a cloze
    template such as "So she was [MASK]." and the head reads what MLM pre-training taught that position
    to hold (cloze-style fine-tuning, Schick & Schütze 2021).
    ``verbalizer`` (with ``pooling="mask"``): one list of token ids per label, e.g. [[" sad", " upset"],
    [" glad", " happy"]] as ids. There is then no new classifier at all: label c's logit is the logsumexp
    of the MLM head's logits for its words at the [MASK] (PET), so a pre-trained model starts from what
    pre-training taught it to predict there, and fine-tuning adjusts that.
    ``forward(ids, ..., labels=None)`` → (logits (B, num_labels), loss or None). ``from_pretrained`` starts
    the encoder (and MLM head) from a BERT checkpoint; a classifier always starts fresh.
    """

    def __init__(self, config: BERTConfig, num_labels: int = 2, pooling: str = "cls",
                 mask_id: int | None = None, verbalizer: list[list[int]] | None = None):
        super().__init__()
        if pooling not in ("cls", "mean", "mask"):
            raise ValueError(f"BERTForSequenceClassification: pooling must be 'cls', 'mean' or 'mask', "
                             f"got {pooling!r}")
        if pooling == "mask" and mask_id is None:
            raise ValueError("BERTForSequenceClassification: pooling='mask' needs mask_id (the [MASK] id)")
        if verbalizer is not None:
            if pooling != "mask" or len(verbalizer) != num_labels or not all(verbalizer):
                raise ValueError(f"BERTForSequenceClassification: a verbalizer needs pooling='mask' and one "
                                 f"non-empty list of token ids per label ({num_labels}), got {verbalizer!r}")
            bad = [t for ws in verbalizer for t in ws if not 0 <= int(t) < config.vocab_size]
            if bad:
                raise ValueError(f"BERTForSequenceClassification: verbalizer ids {bad} are outside the "
                                 f"vocabulary [0, {config.vocab_size})")
        self.config, self.num_labels, self.pooling, self.mask_id = config, num_labels, pooling, mask_id
        self.verbalizer = None if verbalizer is None else [[int(t) for t in ws] for ws in verbalizer]
        self.bert = BERT(config)
        self.drop = nn.Dropout(config.dropout)
        if self.verbalizer is None:
            self.classifier = nn.Linear(config.d_model, num_labels)
            init_weights(self.classifier, config.n_layers)

    @classmethod
    def from_pretrained(cls, path, num_labels: int = 2, pooling: str = "cls", mask_id: int | None = None,
                        verbalizer: list[list[int]] | None = None) -> BERTForSequenceClassification:
        config, state = read_checkpoint(path, BERTConfig, "bert")
        model = cls(config, num_labels, pooling, mask_id, verbalizer)
        model.bert.load_state_dict(state)
        return model

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None):
        h = self.bert.features(input_ids, token_type_ids, attention_mask)  # (B, T, C)
        if self.pooling == "cls":
            pooled = self.bert.pooled(h)  # (B, C)
        elif self.pooling == "mask":
            ids = B.xp.asarray(B.unwrap(input_ids)).reshape(h.shape[:2])
            has = (ids == self.mask_id).any(axis=1)
            if not bool(has.all()):
                raise ValueError(f"BERTForSequenceClassification(pooling='mask'): rows "
                                 f"{B.to_numpy(B.xp.flatnonzero(~has)).tolist()} have no [MASK] token")
            pos = (ids == self.mask_id).argmax(axis=1)  # first [MASK] per row
            pooled = h[B.xp.arange(ids.shape[0]), pos]  # (B, C)
        else:
            ids = check_ids(input_ids, self.config.vocab_size, self.config.context_length, "BERT")
            pad = padding_mask(ids, attention_mask, self.config.pad_id)
            real = B.xp.ones(ids.shape, dtype=h.dtype) if pad is None else (~pad).astype(h.dtype)  # (B, T)
            w = Tensor((real / real.sum(axis=1, keepdims=True))[:, :, None])  # (B, T, 1)
            pooled = (h * w).sum(axis=1)  # (B, C)
        if self.verbalizer is None:
            logits = self.classifier(self.drop(pooled))  # (B, num_labels)
        else:  # PET: each label's words' MLM logits at the [MASK], pooled by logsumexp
            vocab = self.bert.mlm_logits(self.drop(pooled))  # (B, V)
            logits = concat([F.logsumexp(vocab[:, ws], axis=-1, keepdims=True) for ws in self.verbalizer],
                            axis=-1)  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, B.xp.asarray(B.unwrap(labels)).reshape(-1))
        return logits, loss
