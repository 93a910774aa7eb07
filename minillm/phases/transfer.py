"""Transfer learning: fine-tune a pre-trained BERT with a new classification head, against the same
architecture trained from random initialisation, on 50, 200 and 1000 labelled sentiment examples.

``minillm finetune-classify`` prints the accuracy-vs-labels table; lesson 07 plots it. Both arms use the
same architecture, data, optimizer, steps and seed: the only difference is the starting weights.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy

from minillm import backend as B
from minillm import options as opt
from minillm.data.objectives import pad_sequences
from minillm.data.sentiment import cloze_prompt, sentiment_dataset
from minillm.models.bert import BERTConfig, BERTForSequenceClassification
from minillm.models.common import read_checkpoint
from minillm.nn import evaluating
from minillm.shipped import SHIPPED_BERT
from minillm.train import TrainConfig, train


def encode_texts(tok, texts: list[str], max_len: int, cloze: bool = True) -> numpy.ndarray:
    """``[CLS] text [SEP]`` per text, right-padded to the longest: (N, T) int64. With ``cloze`` the text ends
    with the template "So she was[MASK]." (``sentiment.cloze_prompt``) that a ``pooling="mask"`` head reads;
    over-long texts lose their start so the template survives."""
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cloze:
        body = [tok.encode(cloze_prompt(t), allowed_special={"[MASK]"}) for t in texts]
        seqs = [[cls_id, *b[-(max_len - 2):], sep_id] for b in body]
    else:
        seqs = [[cls_id, *tok.encode(t)[:max_len - 2], sep_id] for t in texts]
    return pad_sequences(seqs, tok.pad_id)


def accuracy(model: BERTForSequenceClassification, ids: numpy.ndarray, labels: numpy.ndarray,
             batch_size: int = 256) -> float:
    """The classifier's accuracy on (ids, labels), in eval mode, ``batch_size`` rows at a time."""
    correct = 0
    with evaluating(model):
        for i in range(0, len(ids), batch_size):
            logits, _ = model(ids[i:i + batch_size])
            correct += int((B.to_numpy(logits.data).argmax(-1) == labels[i:i + batch_size]).sum())
    return correct / max(1, len(ids))


def classification_loss(model: BERTForSequenceClassification, batch: tuple) -> tuple:
    """Cross-entropy of a (ids, labels) batch for ``minillm.train``, with its accuracy ``acc``."""
    ids, y = batch
    logits, loss = model(ids, labels=y)
    return loss, {"acc": float((B.to_numpy(logits.data).argmax(-1) == y).mean()), "tokens": int(ids.size)}


def finetune_classifier(model: BERTForSequenceClassification, ids: numpy.ndarray, labels: numpy.ndarray, *,
                        steps: int = 200, batch_size: int = 16, lr: float = 3e-4,
                        head_lr: float | None = None, seed: int = 0) -> dict:
    """Train every weight of ``model`` on (ids, labels) with minibatches drawn with replacement; the new
    head may learn faster (``head_lr``) than the encoder (``lr``): it starts from nothing."""
    n = len(ids)

    def get_batch(split, rng):
        pick = rng.integers(n, size=min(batch_size, n))
        sub = ids[pick]
        keep = int((sub != model.config.pad_id).any(0).nonzero()[0].max()) + 1  # trim shared padding
        return sub[:, :keep], labels[pick]

    cfg = TrainConfig(steps=steps, lr=lr, warmup=max(1, steps // 10), batch_size=batch_size, eval_every=0,
                      seed=seed, progress=False, weight_decay=0.01)
    head = [p for n_, p in model.named_parameters() if not n_.startswith("bert.")]
    body = [p for n_, p in model.named_parameters() if n_.startswith("bert.")]
    groups = [{"params": body, "lr": lr, "weight_decay": cfg.weight_decay}]
    if head:  # a verbalizer head has no new weights: it is the MLM head
        groups.append({"params": head, "lr": head_lr or lr, "weight_decay": 0.0})
    return train(model, classification_loss, get_batch, cfg, optimizer_params=groups)


def sentiment_verbalizer(tok) -> list[list[int]]:
    """The mood words the stories use after "So she was", as token ids per label (negative, positive)."""
    from minillm.data.sentiment import VERBALIZER

    out = []
    for words in VERBALIZER:
        ids = [tok.encode(w) for w in words]
        if any(len(i) != 1 for i in ids):
            raise ValueError(f"sentiment verbalizer: {words} must each be one token of this tokenizer, "
                             f"got {ids}")
        out.append([i[0] for i in ids])
    return out


def transfer_experiment(pretrained_path: str | Path, tok, label_counts: Sequence[int] = (50, 200, 1000), *,
                        steps: int = 200, batch_size: int = 16, lr: float = 3e-4, n_test: int = 1000,
                        seed: int = 0, pooling: str = "mask", verbalizer: bool = True,
                        verbose: bool = False) -> list[dict]:
    """For each label count: test accuracy of (scratch, pre-trained) after identical fine-tuning.

    Training examples come from sentiment seed ``seed``, the test set from another seed, so no review
    text is shared by construction except by chance. ``pooling`` is the classifier's input (see
    ``BERTForSequenceClassification``; "mask" reads a cloze template's [MASK], through the MLM head and
    the mood words ``sentiment.VERBALIZER`` when ``verbalizer``). Returns rows
    {labels, scratch, pretrained, seconds}.
    """
    config, _ = read_checkpoint(pretrained_path, BERTConfig, "bert")
    mask_id = tok.token_to_id("[MASK]")
    verb = sentiment_verbalizer(tok) if verbalizer and pooling == "mask" else None
    head = (2, pooling, mask_id, verb)  # num_labels, pooling, mask_id, verbalizer
    train_texts, train_y = sentiment_dataset(max(label_counts), seed=seed)
    test_texts, test_y = sentiment_dataset(n_test, seed=seed + 7919)
    train_ids = encode_texts(tok, train_texts, config.context_length, cloze=pooling == "mask")
    test_ids = encode_texts(tok, test_texts, config.context_length, cloze=pooling == "mask")
    rows = []
    for n in label_counts:
        row = {"labels": n}
        t0 = time.perf_counter()
        for arm in ("scratch", "pretrained"):
            B.manual_seed(seed)  # the same classifier-head initialisation in both arms
            model = (BERTForSequenceClassification.from_pretrained(pretrained_path, *head)
                     if arm == "pretrained" else BERTForSequenceClassification(config, *head))
            finetune_classifier(model, train_ids[:n], train_y[:n], steps=steps, batch_size=batch_size, lr=lr,
                                seed=seed)
            row[arm] = accuracy(model, test_ids, test_y)
        row["seconds"] = time.perf_counter() - t0
        if verbose:
            print(f"  {n:>6} labels: scratch {row['scratch']:.3f}  pre-trained {row['pretrained']:.3f}  "
                  f"({row['seconds']:.1f} s)", flush=True)
        rows.append(row)
    return rows


def format_transfer_table(rows: list[dict]) -> str:
    """``transfer_experiment``'s rows as a Markdown table: accuracy from scratch, pre-trained, the gain."""
    lines = ["| labelled examples | from scratch | pre-trained BERT | gain |",
             "| ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['labels']} | {r['scratch']:.3f} | {r['pretrained']:.3f} | "
                     f"{r['pretrained'] - r['scratch']:+.3f} |")
    return "\n".join(lines)


def main(args) -> int:
    """``minillm finetune-classify``: the transfer-learning table on the world's sentiment task."""
    from minillm.data.sentiment import bag_of_words_accuracy
    from minillm.tokenizer import BPETokenizer, load_default_tokenizer

    tok = BPETokenizer.load(args.tokenizer) if args.tokenizer else load_default_tokenizer()
    ckpt = args.ckpt or SHIPPED_BERT
    counts = args.labels
    head = args.head if args.pooling == "mask" else "linear"
    print(f"fine-tuning {ckpt} vs random init on sentiment with {counts} labels "
          f"({args.steps} steps, batch {args.batch_size}, lr {args.lr}, head {head} on {args.pooling})")
    rows = transfer_experiment(ckpt, tok, counts, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               n_test=args.n_test, seed=args.seed, pooling=args.pooling,
                               verbalizer=head == "verbalizer", verbose=True)
    print(format_transfer_table(rows))
    tr, ty = sentiment_dataset(max(counts), seed=args.seed)
    te, tey = sentiment_dataset(args.n_test, seed=args.seed + 7919)
    bow = bag_of_words_accuracy(tr, ty, te, tey)
    print(f"bag-of-words logistic regression on {max(counts)} labels: {bow:.3f} (negation defeats it)")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``minillm finetune-classify``."""
    p.add_argument("--ckpt", type=opt.input_file,
                   help="pre-trained BERT (default: the shipped minillm/checkpoints/bert_tiny.npz)")
    p.add_argument("--tokenizer", type=opt.input_file, help="tokenizer JSON (default: the shipped one)")
    p.add_argument("--labels", type=opt.positive_int_list, default=[50, 200, 1000],
                   help="comma-separated labelled-example counts (default 50,200,1000)")
    p.add_argument("--steps", type=opt.positive_int, default=200, help="fine-tuning steps per run")
    p.add_argument("--batch-size", type=opt.positive_int, default=16)
    p.add_argument("--lr", type=opt.positive_float, default=3e-4)
    p.add_argument("--pooling", choices=["mask", "cls", "mean"], default="mask",
                   help="what the new head reads: a cloze template's [MASK] state, pooled [CLS], or the mean")
    p.add_argument("--head", choices=["verbalizer", "linear"], default="verbalizer",
                   help="with --pooling mask: the MLM head scoring the mood words (PET), or a new Linear")
    p.add_argument("--n-test", type=opt.positive_int, default=1000, help="held-out test reviews")
    p.add_argument("--seed", type=opt.nonnegative_int, default=0)
