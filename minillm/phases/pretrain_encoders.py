"""Pre-training the encoder families on the world corpus: BERT (MLM, NSP), BART (denoising), T5 (spans).

Used by ``minillm pretrain --objective mlm|nsp|mlm+nsp|denoise|span``, by ``minillm pipeline`` and to make
the shipped ``minillm/checkpoints/bert_tiny.npz``, ``bart_tiny.npz`` and ``t5_tiny.npz``. Batches come
from ``minillm.data.documents``; the loop is ``minillm.train.train``; this module adds the loss functions,
their accuracy metrics and the evaluation each model card reports.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy

from minillm import backend as B
from minillm.data import documents as D
from minillm.data.objectives import IGNORE_INDEX
from minillm.models.bart import BART, BARTConfig
from minillm.models.bert import BERT, BERTConfig
from minillm.models.t5 import T5, T5Config
from minillm.shipped import SHIPPED_BART, SHIPPED_BERT, SHIPPED_T5
from minillm.tensor import no_grad
from minillm.train import TrainConfig, train

FAMILY = {"mlm": "bert", "nsp": "bert", "mlm+nsp": "bert", "denoise": "bart", "span": "t5"}


# ---------------------------------------------------------------------------------------------- losses
def _acc(logits, labels) -> tuple[float, int]:
    """Accuracy of argmax(logits) on the labels that are not -100, and how many there were."""
    lab = B.to_numpy(labels).reshape(-1)
    pred = B.to_numpy(logits.data).reshape(lab.size, -1).argmax(-1)
    keep = lab != IGNORE_INDEX
    n = int(keep.sum())
    return (float((pred[keep] == lab[keep]).mean()) if n else 0.0), n


def bert_loss(model, batch: dict) -> tuple:
    """MLM [+ NSP] loss with masked-token accuracy ``mlm_acc`` and ``nsp_acc`` as metrics."""
    mlm_logits, nsp_logits, loss = model(batch["input_ids"], batch.get("token_type_ids"),
                                         batch.get("attention_mask"), batch.get("labels"),
                                         batch.get("next_sentence_label"))
    metrics = {"tokens": int(numpy.size(batch["input_ids"]))}
    if batch.get("labels") is not None:
        lab = numpy.asarray(batch["labels"]).reshape(-1)
        metrics["mlm_acc"] = _acc(mlm_logits, lab[lab != IGNORE_INDEX])[0]
    if batch.get("next_sentence_label") is not None:
        metrics["nsp_acc"] = _acc(nsp_logits, batch["next_sentence_label"])[0]
    return loss, metrics


def seq2seq_loss(model, batch: dict) -> tuple:
    """Teacher-forced cross-entropy of an encoder-decoder, with next-token accuracy ``token_acc``."""
    logits, loss = model(batch["input_ids"], labels=batch["labels"])
    return loss, {"tokens": int(numpy.size(batch["input_ids"]) + numpy.size(batch["labels"])),
                  "token_acc": _acc(logits, batch["labels"])[0]}


def trim_padding(batch: dict, pad_id: int) -> dict:
    """Drop the columns that are padding in every row (batches are padded to max_len)."""
    ids = numpy.asarray(batch["input_ids"])
    real = ids != pad_id
    if "attention_mask" in batch:
        real = numpy.asarray(batch["attention_mask"]) != 0
    n = int(real.any(0).nonzero()[0].max()) + 1 if real.any() else 1
    cols = ("input_ids", "attention_mask", "token_type_ids", "labels")
    return {k: (v[:, :n] if k in cols and numpy.ndim(v) == 2 and numpy.shape(v)[1] == ids.shape[1] else v)
            for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------- data
def batch_fn(objective: str, docs, sp: D.SpecialIds, vocab_size: int, batch_size: int, max_len: int,
             text2text_pairs=None, mix: float = 0.0):
    """``get(rng)`` → one batch of ``objective`` from ``docs`` (T5: a fraction ``mix`` of the batches are
    prefixed text-to-text tasks instead of span corruption: multi-task pre-training, T5 §3.7). ``mlm+nsp``
    alternates at random between masked NSP pairs and masked whole-story windows."""
    if objective == "mlm":
        fn = partial(D.mlm_batch, batch_size=batch_size, max_len=max_len, sp=sp, vocab_size=vocab_size)
    elif objective == "nsp":
        fn = partial(D.nsp_batch, batch_size=batch_size, max_len=max_len, sp=sp, vocab_size=vocab_size,
                     mlm=False)
    elif objective == "mlm+nsp":
        # half the batches: masked NSP pairs (both losses); half: masked whole-story windows (MLM only),
        # which carry far more cross-sentence context per example than two single sentences do
        size = dict(batch_size=batch_size, max_len=max_len, sp=sp, vocab_size=vocab_size)
        pairs_fn, windows_fn = partial(D.nsp_batch, **size), partial(D.mlm_batch, **size)
        fn = lambda docs_, rng: (pairs_fn if rng.random() < 0.5 else windows_fn)(docs_, rng)
    elif objective == "denoise":
        fn = partial(D.denoise_batch, batch_size=batch_size, max_len=max_len, sp=sp)
    elif objective == "span":
        fn = partial(D.span_batch, batch_size=batch_size, max_len=max_len, sp=sp)
    else:
        raise ValueError(f"unknown objective {objective!r}; choose from {sorted(FAMILY)}")

    def get(rng):
        if text2text_pairs and rng.random() < mix:
            return D.seq2seq_batch(text2text_pairs, rng, batch_size=batch_size, sp=sp)
        b = fn(docs, rng)
        return trim_padding(b, sp.pad) if FAMILY[objective] == "bert" else b
    return get


# ---------------------------------------------------------------------------------------------- models
def build_model(objective: str, tok, *, d_model: int, n_layers: int, n_heads: int, max_len: int,
                d_ff: int | None = None, dropout: float = 0.0):
    """The model family an objective trains, sized from the arguments (vocabulary from the tokenizer)."""
    sp = D.SpecialIds.from_tokenizer(tok)
    common = dict(vocab_size=tok.vocab_size, max_len=max_len, d_model=d_model, n_heads=n_heads, d_ff=d_ff,
                  dropout=dropout)
    family = FAMILY[objective]
    if family == "bert":
        return BERT(BERTConfig(n_layers=n_layers, pad_id=sp.pad, **common))
    seq = dict(n_encoder_layers=n_layers, n_decoder_layers=n_layers, pad_id=sp.pad, eos_id=sp.eos, **common)
    if family == "bart":
        return BART(BARTConfig(decoder_start_id=sp.eos, **seq))
    return T5(T5Config(decoder_start_id=sp.pad, **seq))


def load_pretrained(path):
    """A BERT, BART or T5 from a checkpoint, whichever it holds."""
    from minillm.checkpoint import CheckpointError, load

    kind = str(load(path).get("kind", "")).lower()
    for name, cls in (("bert", BERT), ("bart", BART), ("t5", T5)):
        if kind.startswith(name):
            return cls.from_checkpoint(path)
    raise CheckpointError(f"{path} holds a {kind!r} model, not a BERT, BART or T5")


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate_bert(model, docs, sp: D.SpecialIds, vocab_size: int, n_batches: int = 8, batch_size: int = 64,
                  max_len: int = 64, seed: int = 1234) -> dict:
    """Masked-token accuracy (MLM on NSP pairs) and NSP accuracy on held-out documents."""
    rng = numpy.random.default_rng(seed)
    correct = total = nsp_ok = nsp_n = 0
    was = model.training
    model.eval()
    with no_grad():
        for _ in range(n_batches):
            b = trim_padding(D.nsp_batch(docs, rng, batch_size=batch_size, max_len=max_len, sp=sp,
                                         vocab_size=vocab_size), sp.pad)
            mlm_logits, nsp_logits, _ = model(b["input_ids"], b["token_type_ids"], b["attention_mask"],
                                              b["labels"])
            lab = b["labels"].reshape(-1)
            acc, n = _acc(mlm_logits, lab[lab != IGNORE_INDEX])
            correct, total = correct + acc * n, total + n
            acc, n = _acc(nsp_logits, b["next_sentence_label"])
            nsp_ok, nsp_n = nsp_ok + acc * n, nsp_n + n
    model.train(was)
    return {"mlm_acc": correct / max(1, total), "nsp_acc": nsp_ok / max(1, nsp_n), "masked_tokens": total}


def evaluate_seq2seq(model, batches: list[dict], generate: bool = True, max_new_tokens: int = 64) -> dict:
    """Teacher-forced token accuracy and, with ``generate``, greedy-decoding exact match and token accuracy
    (position by position against the label) on the given batches."""
    was = model.training
    model.eval()
    tf_ok = tf_n = ex_ok = ex_n = tok_ok = tok_n = 0
    with no_grad():
        for b in batches:
            logits, _ = model(b["input_ids"], labels=b["labels"])
            acc, n = _acc(logits, b["labels"])
            tf_ok, tf_n = tf_ok + acc * n, tf_n + n
            if generate:
                outs = model.generate(b["input_ids"], max_new_tokens=max_new_tokens)
                for out, lab in zip(outs, numpy.asarray(b["labels"])):
                    ref = [t for t in lab.tolist() if t != IGNORE_INDEX][:-1]  # without eos
                    ex_ok += out == ref
                    ex_n += 1
                    tok_ok += sum(a == r for a, r in zip(out, ref))
                    tok_n += max(len(ref), len(out))
    model.train(was)
    res = {"token_acc": tf_ok / max(1, tf_n)}
    if generate:
        res.update({"greedy_exact_match": ex_ok / max(1, ex_n), "greedy_token_acc": tok_ok / max(1, tok_n)})
    return res


# ---------------------------------------------------------------------------------------------- pre-training
def pretrain(objective: str, tok, *, steps: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
             max_len: int = 64, d_ff: int | None = None, batch_size: int = 32, lr: float = 2e-3,
             warmup: int = 50, num_stories: int = 5000, seed: int = 0, mix_tasks: float = 0.0,
             num_task_examples: int = 4000, out_dir: str | None = None, export: str | None = None,
             eval_every: int = 0, progress: bool = True, data: str | None = None,
             story_weights: dict[str, float] | None = None, init: str | None = None) -> dict:
    """Pre-train the family ``objective`` calls for; returns the model, history, evaluation and timing.

    ``mix_tasks`` (T5/BART): that fraction of batches are prefixed "summarize: " / "translate English to
    Worldish: " pairs from ``minillm.data.text2text`` (multi-task pre-training). ``data``: a UTF-8 text
    file to use instead of the world's stories (documents separated by blank lines). ``story_weights``: the
    mix of story kinds (``minillm.data.world.story_weights``). ``init``: a checkpoint of the same family to
    continue from instead of a random initialisation (continued or domain-adaptive pre-training,
    Gururangan et al. 2020); the model's size then comes from it, not from the size arguments.
    """
    from minillm.data.text2text import text2text_examples

    if objective not in FAMILY:
        raise ValueError(f"pretrain: unknown objective {objective!r}; choose from {sorted(FAMILY)}")
    sp = D.SpecialIds.from_tokenizer(tok)
    if data is not None:
        from minillm.data.lm import load_text

        texts = [t for t in load_text(data).split("\n\n") if t.strip()]
        docs = D.tokenize_documents(tok, texts)
        if len(docs) < 4:
            raise ValueError(f"pretrain: {data} has {len(docs)} documents (blank-line separated); need ≥ 4")
    else:
        docs = D.world_documents(tok, num_stories, seed, story_weights)
    train_docs, val_docs = D.split_documents(docs)
    family = FAMILY[objective]
    if init is not None:  # continue from a pre-trained model: its size and context win
        model = load_pretrained(init)
        if type(model).__name__.lower() != family:
            raise ValueError(f"pretrain --init {init}: holds a {type(model).__name__}, but --objective "
                             f"{objective} trains a {family.upper()}")
        if model.config.vocab_size != tok.vocab_size:
            raise ValueError(f"pretrain --init {init}: vocab_size {model.config.vocab_size} differs from the "
                             f"tokenizer's {tok.vocab_size}")
        max_len = model.config.max_len
    pairs = val_pairs = None
    if mix_tasks and family != "bert":
        pairs = D.encode_pairs(tok, text2text_examples(num_task_examples, seed=seed), max_len)
        val_pairs = D.encode_pairs(tok, text2text_examples(64, seed=seed + 10_000), max_len)
    B.manual_seed(seed)
    if init is None:
        model = build_model(objective, tok, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                            max_len=max_len, d_ff=d_ff)
    get_train = batch_fn(objective, train_docs, sp, tok.vocab_size, batch_size, max_len, pairs, mix_tasks)
    get_val = batch_fn(objective, val_docs, sp, tok.vocab_size, batch_size, max_len)
    loss_fn = bert_loss if family == "bert" else seq2seq_loss
    cfg = TrainConfig(steps=steps, lr=lr, warmup=min(warmup, max(1, steps // 5)), batch_size=batch_size,
                      eval_every=eval_every, eval_steps=4, out_dir=out_dir, seed=seed, progress=progress,
                      weight_decay=0.01)
    t0 = time.perf_counter()
    history = train(model, loss_fn, lambda split, rng: (get_train if split == "train" else get_val)(rng), cfg)
    seconds = time.perf_counter() - t0
    if family == "bert":
        evaluation = evaluate_bert(model, val_docs, sp, tok.vocab_size, max_len=max_len)
    else:
        rng = numpy.random.default_rng(1234)
        evaluation = {f"denoise_{k}" if objective == "denoise" else f"span_{k}": v for k, v in
                      evaluate_seq2seq(model, [get_val(rng) for _ in range(2)]).items()}
        if val_pairs:
            for task, sel in (("summarize", slice(0, None, 2)), ("translate", slice(1, None, 2))):
                sub = val_pairs[sel]
                b = {"input_ids": D.O.pad_sequences([p[0] for p in sub], sp.pad),
                     "labels": D.O.pad_sequences([p[1] for p in sub], IGNORE_INDEX)}
                evaluation.update({f"{task}_{k}": v for k, v in evaluate_seq2seq(model, [b]).items()})
    extra = {"objective": objective, "history": {k: history[k] for k in ("step", "loss")},
             "evaluation": evaluation, "train_seconds": seconds,
             "train_config": {k: v for k, v in asdict(cfg).items() if k not in ("extra", "progress")},
             "recipe": {"num_stories": num_stories, "mix_tasks": mix_tasks, "seed": seed,
                        "story_weights": story_weights, "init": str(init) if init else None}}
    if out_dir:
        model.save_checkpoint(Path(out_dir) / "model.npz", extra=extra)
    if export:
        model.save_checkpoint(export, extra=extra)
    return {"model": model, "history": history, "evaluation": evaluation, "seconds": seconds,
            "family": family, "val_docs": val_docs, "special_ids": sp}


def main(args) -> int:
    """``minillm pretrain --objective mlm|nsp|mlm+nsp|denoise|span``."""
    from minillm.data.world import story_weights
    from minillm.tokenizer import BPETokenizer, load_default_tokenizer

    tok = BPETokenizer.load(args.tokenizer) if args.tokenizer else load_default_tokenizer()
    res = pretrain(args.objective, tok, steps=args.steps, d_model=args.d_model, n_layers=args.n_layers,
                   n_heads=args.n_heads, max_len=args.context_length, d_ff=args.d_ff,
                   batch_size=args.batch_size,
                   lr=args.lr, warmup=args.warmup, num_stories=args.num_stories, seed=args.seed,
                   mix_tasks=getattr(args, "mix_tasks", 0.0), out_dir=args.out, export=args.export,
                   eval_every=args.eval_every if args.eval_every < args.steps else 0,
                   progress=not args.no_progress, data=args.data,
                   story_weights=story_weights(getattr(args, "story_weights", None)),
                   init=getattr(args, "init", None))
    model, h = res["model"], res["history"]
    print(f"{type(model).__name__} {model.num_parameters():,} parameters, objective {args.objective}, "
          f"{args.steps} steps in {res['seconds']:.1f} s; final train loss "
          f"{numpy.mean(h['loss'][-20:]):.4f} (mean of last 20)")
    for k, v in res["evaluation"].items():
        print(f"  {k:<28} {v:.4f}" if isinstance(v, float) else f"  {k:<28} {v}")
    if args.out:
        print(f"checkpoints: {Path(args.out) / 'model.npz'}")
    if args.export:
        print(f"exported: {args.export}")
    return 0


# ---------------------------------------------------------------------------------------------- pipeline
def phase_encoder(ctx: dict) -> dict:
    """``minillm pipeline``: pre-train a small BERT (MLM + NSP), then transfer the shipped BERT to sentiment
    with few labels against the same architecture from scratch."""
    from minillm.phases.transfer import transfer_experiment
    from minillm.tokenizer import load_default_tokenizer

    tok = ctx.get("tokenizer") or load_default_tokenizer()
    quick = ctx["quick"]
    size = dict(d_model=32, n_layers=1) if quick else dict(d_model=64, n_layers=2)
    res = pretrain("mlm+nsp", tok, steps=30 if quick else 600, num_stories=300 if quick else 5000,
                   batch_size=16 if quick else 32, max_len=48, seed=ctx["seed"], progress=False,
                   out_dir=str(Path(ctx["out"]) / "bert"), **size)
    ev = res["evaluation"]
    out = {"BERT parameters": res["model"].num_parameters(), "steps": len(res["history"]["step"]),
           "train seconds": res["seconds"], "MLM masked-token accuracy": ev["mlm_acc"],
           "NSP accuracy": ev["nsp_acc"]}
    ckpt = SHIPPED_BERT if SHIPPED_BERT.exists() else Path(ctx["out"]) / "bert" / "model.npz"
    counts = (50,) if quick else (50, 200, 1000)
    rows = transfer_experiment(ckpt, tok, counts, steps=10 if quick else 200, n_test=100 if quick else 1000,
                               seed=ctx["seed"])
    for r in rows:
        out[f"sentiment acc, {r['labels']} labels (scratch -> pre-trained)"] = (
            f"{r['scratch']:.3f} -> {r['pretrained']:.3f}")
    out["transfer from"] = Path(ckpt).name
    return out


def phase_encoder_decoder(ctx: dict) -> dict:
    """``minillm pipeline``: short BART denoising and T5 span-corruption runs, then the shipped T5 doing
    two tasks by prefix (summarize, translate) and the shipped BART reconstructing corrupted text."""
    from minillm.data.text2text import text2text_examples
    from minillm.tokenizer import load_default_tokenizer

    tok = ctx.get("tokenizer") or load_default_tokenizer()
    quick = ctx["quick"]
    out = {}
    for objective in ("denoise", "span"):
        res = pretrain(objective, tok, steps=20 if quick else 400, d_model=32 if quick else 64, n_layers=1,
                       num_stories=300 if quick else 5000, batch_size=8 if quick else 32, max_len=48,
                       seed=ctx["seed"], progress=False)
        name = "BART denoise" if objective == "denoise" else "T5 span"
        ev = res["evaluation"]
        out[f"{name}: steps / seconds"] = f"{len(res['history']['step'])} / {res['seconds']:.1f}"
        out[f"{name}: teacher-forced token acc"] = next(v for k, v in ev.items() if k.endswith("_token_acc")
                                                        and "greedy" not in k)
    sp = D.SpecialIds.from_tokenizer(tok)
    n = 4 if quick else 64
    if SHIPPED_T5.exists():
        model = T5.from_checkpoint(SHIPPED_T5)
        pairs = D.encode_pairs(tok, text2text_examples(2 * n, seed=ctx["seed"] + 10_000),
                               model.config.max_len)
        for task, sel in (("summarize", slice(0, None, 2)), ("translate", slice(1, None, 2))):
            b = {"input_ids": D.O.pad_sequences([p[0] for p in pairs[sel]], sp.pad),
                 "labels": D.O.pad_sequences([p[1] for p in pairs[sel]], IGNORE_INDEX)}
            ev = evaluate_seq2seq(model, [b])
            out[f"shipped T5 {task}: exact match"] = ev["greedy_exact_match"]
    if SHIPPED_BART.exists():
        model = BART.from_checkpoint(SHIPPED_BART)
        docs = D.world_documents(tok, 200, seed=ctx["seed"] + 10_000)
        rng = numpy.random.default_rng(ctx["seed"])
        b = D.denoise_batch(docs, rng, batch_size=n, max_len=model.config.max_len, sp=sp)
        ev = evaluate_seq2seq(model, [b], max_new_tokens=model.config.max_len)
        out["shipped BART reconstruction: token acc"] = ev["greedy_token_acc"]
        out["shipped BART reconstruction: exact match"] = ev["greedy_exact_match"]
    return out
