"""Pre-training the encoder families on the world corpus: BERT (MLM, NSP), BART (denoising), T5 (spans).

Used by ``minillm pretrain --objective mlm|nsp|mlm+nsp|denoise|span``, by ``minillm pipeline`` and to make
the shipped ``minillm/checkpoints/bert_tiny.npz``, ``bart_tiny.npz`` and ``t5_tiny.npz``. Batches come
from ``minillm.data.documents``; the loop is ``minillm.train.train``; this module adds the loss functions,
their accuracy metrics and the evaluation each model card reports. ``FAMILIES`` holds, per model family,
how its model is built, its loss and its evaluation, so ``pretrain`` is the same for all three.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy

from minillm import backend as B
from minillm.data import documents as D
from minillm.data.objectives import IGNORE_INDEX
from minillm.models.bart import BART, BARTConfig
from minillm.models.bert import BERT, BERTConfig
from minillm.models.t5 import T5, T5Config
from minillm.nn import Module, evaluating
from minillm.train import TrainConfig, train

# the model family each objective pre-trains
OBJECTIVE_FAMILY = {"mlm": "bert", "nsp": "bert", "mlm+nsp": "bert", "denoise": "bart", "span": "t5"}


# ---------------------------------------------------------------------------------------------- config
@dataclass
class EncoderPretrainConfig:
    """One encoder pre-training run: objective, model size, optimisation, data and where results go.

    ``mix_tasks`` (T5/BART): that fraction of batches are prefixed "summarize: " / "translate English to
    Worldish: " pairs from ``minillm.data.text2text`` (multi-task pre-training). ``data``: a UTF-8 text
    file to use instead of the world's stories (documents separated by blank lines). ``story_weights``: the
    mix of story kinds (``minillm.data.world.story_weights``). ``init``: a checkpoint of the same family to
    continue from instead of a random initialisation (continued or domain-adaptive pre-training,
    Gururangan et al. 2020); the model's size then comes from it, not from the size fields.
    """

    objective: str
    steps: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    context_length: int = 64
    d_ff: int | None = None
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 50
    num_stories: int = 5000
    seed: int = 0
    mix_tasks: float = 0.0
    num_task_examples: int = 4000
    out_dir: str | None = None
    export: str | None = None
    eval_every: int = 0
    progress: bool = True
    data: str | None = None
    story_weights: dict[str, float] | None = None
    init: str | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVE_FAMILY:
            raise ValueError(f"pretrain: unknown objective {self.objective!r}; "
                             f"choose from {sorted(OBJECTIVE_FAMILY)}")

    @property
    def family(self) -> str:
        """The family ``objective`` pre-trains: "bert", "bart" or "t5"."""
        return OBJECTIVE_FAMILY[self.objective]


# ---------------------------------------------------------------------------------------------- losses
def _acc(logits, labels) -> tuple[float, int]:
    """Accuracy of argmax(logits) on the labels that are not -100, and how many there were."""
    lab = B.to_numpy(labels).reshape(-1)
    pred = B.to_numpy(logits.data).reshape(lab.size, -1).argmax(-1)
    keep = lab != IGNORE_INDEX
    n = int(keep.sum())
    return (float((pred[keep] == lab[keep]).mean()) if n else 0.0), n


def bert_loss(model: BERT, batch: dict) -> tuple:
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


def seq2seq_loss(model: BART | T5, batch: dict) -> tuple:
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
def _mlm_nsp_batches(size: dict) -> Callable:
    """Half the batches masked NSP pairs (both losses), half masked whole-story windows (MLM only), which
    carry far more cross-sentence context per example than two single sentences do."""
    pairs_fn, windows_fn = partial(D.nsp_batch, **size), partial(D.mlm_batch, **size)
    return lambda docs, rng: (pairs_fn if rng.random() < 0.5 else windows_fn)(docs, rng)


# objective -> (batch_size, max_len, sp, vocab_size) -> batch(docs, rng)
OBJECTIVE_BATCHES: dict[str, Callable[..., Callable]] = {
    "mlm": lambda n, t, sp, v: partial(D.mlm_batch, batch_size=n, max_len=t, sp=sp, vocab_size=v),
    "nsp": lambda n, t, sp, v: partial(D.nsp_batch, batch_size=n, max_len=t, sp=sp, vocab_size=v, mlm=False),
    "mlm+nsp": lambda n, t, sp, v: _mlm_nsp_batches(dict(batch_size=n, max_len=t, sp=sp, vocab_size=v)),
    "denoise": lambda n, t, sp, v: partial(D.denoise_batch, batch_size=n, max_len=t, sp=sp),
    "span": lambda n, t, sp, v: partial(D.span_batch, batch_size=n, max_len=t, sp=sp),
}


def batch_fn(objective: str, docs: list, sp: D.SpecialIds, vocab_size: int, batch_size: int, max_len: int,
             text2text_pairs: list | None = None, mix: float = 0.0) -> Callable:
    """``get(rng)`` → one batch of ``objective`` from ``docs`` (T5: a fraction ``mix`` of the batches are
    prefixed text-to-text tasks instead of span corruption: multi-task pre-training, T5 §3.7). ``mlm+nsp``
    alternates at random between masked NSP pairs and masked whole-story windows."""
    if objective not in OBJECTIVE_BATCHES:
        raise ValueError(f"unknown objective {objective!r}; choose from {sorted(OBJECTIVE_FAMILY)}")
    fn = OBJECTIVE_BATCHES[objective](batch_size, max_len, sp, vocab_size)
    trim = OBJECTIVE_FAMILY[objective] == "bert"

    def get(rng):
        if text2text_pairs and rng.random() < mix:
            return D.seq2seq_batch(text2text_pairs, rng, batch_size=batch_size, sp=sp)
        b = fn(docs, rng)
        return trim_padding(b, sp.pad) if trim else b
    return get


def text2text_task_batches(pairs: list, pad_id: int) -> dict[str, dict]:
    """Encoded ``text2text_examples`` pairs (tasks in turn) as one padded batch per task."""
    return {task: {"input_ids": D.O.pad_sequences([p[0] for p in pairs[sel]], pad_id),
                   "labels": D.O.pad_sequences([p[1] for p in pairs[sel]], IGNORE_INDEX)}
            for task, sel in (("summarize", slice(0, None, 2)), ("translate", slice(1, None, 2)))}


@dataclass
class PretrainData:
    """What one run reads: the special ids, the split documents, the batch makers and the held-out
    text-to-text pairs (``mix_tasks`` only)."""

    sp: D.SpecialIds
    vocab_size: int
    max_len: int
    train_docs: list
    val_docs: list
    get_train: Callable
    get_val: Callable
    val_pairs: list | None = None

    def batch(self, split: str, rng) -> dict:
        """``minillm.train``'s ``get_batch``."""
        return (self.get_train if split == "train" else self.get_val)(rng)


def _documents(cfg: EncoderPretrainConfig, tok) -> list:
    """The run's documents: the world's stories, or the blank-line separated texts of ``cfg.data``."""
    if cfg.data is None:
        return D.world_documents(tok, cfg.num_stories, cfg.seed, cfg.story_weights)
    from minillm.data.lm import load_text

    texts = [t for t in load_text(cfg.data).split("\n\n") if t.strip()]
    docs = D.tokenize_documents(tok, texts)
    if len(docs) < 4:
        raise ValueError(f"pretrain: {cfg.data} has {len(docs)} documents (blank-line separated); need ≥ 4")
    return docs


def _pretrain_data(cfg: EncoderPretrainConfig, tok, max_len: int) -> PretrainData:
    """Documents, split, batch makers and (``mix_tasks``, BART/T5) the text-to-text pairs of a run."""
    from minillm.data.text2text import text2text_examples

    sp = D.SpecialIds.from_tokenizer(tok)
    train_docs, val_docs = D.split_documents(_documents(cfg, tok))
    pairs = val_pairs = None
    if cfg.mix_tasks and cfg.family != "bert":
        pairs = D.encode_pairs(tok, text2text_examples(cfg.num_task_examples, seed=cfg.seed), max_len)
        val_pairs = D.encode_pairs(tok, text2text_examples(64, seed=cfg.seed + 10_000), max_len)
    size = (sp, tok.vocab_size, cfg.batch_size, max_len)
    return PretrainData(sp, tok.vocab_size, max_len, train_docs, val_docs,
                        batch_fn(cfg.objective, train_docs, *size, pairs, cfg.mix_tasks),
                        batch_fn(cfg.objective, val_docs, *size), val_pairs)


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate_bert(model: BERT, docs: list, sp: D.SpecialIds, vocab_size: int, n_batches: int = 8,
                  batch_size: int = 64, max_len: int = 64, seed: int = 1234) -> dict:
    """Masked-token accuracy (MLM on NSP pairs) and NSP accuracy on held-out documents."""
    rng = numpy.random.default_rng(seed)
    correct = total = nsp_ok = nsp_n = 0
    with evaluating(model):
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
    return {"mlm_acc": correct / max(1, total), "nsp_acc": nsp_ok / max(1, nsp_n), "masked_tokens": total}


def evaluate_seq2seq(model: BART | T5, batches: list[dict], generate: bool = True,
                     max_new_tokens: int = 64) -> dict:
    """Teacher-forced token accuracy and, with ``generate``, greedy-decoding exact match and token accuracy
    (position by position against the label) on the given batches."""
    tf_ok = tf_n = ex_ok = ex_n = tok_ok = tok_n = 0
    with evaluating(model):
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
    res = {"token_acc": tf_ok / max(1, tf_n)}
    if generate:
        res.update({"greedy_exact_match": ex_ok / max(1, ex_n), "greedy_token_acc": tok_ok / max(1, tok_n)})
    return res


def _evaluate_bert_run(model: BERT, objective: str, data: PretrainData) -> dict:
    """A BERT run's model card: ``evaluate_bert`` on the held-out documents."""
    return evaluate_bert(model, data.val_docs, data.sp, data.vocab_size, max_len=data.max_len)


def _evaluate_seq2seq_run(model: BART | T5, objective: str, data: PretrainData) -> dict:
    """A BART/T5 run's model card: its objective on two held-out batches (keys prefixed by the objective)
    and, with ``mix_tasks``, each text-to-text task (keys prefixed by the task)."""
    rng = numpy.random.default_rng(1234)
    scores = evaluate_seq2seq(model, [data.get_val(rng) for _ in range(2)])
    evaluation = {f"{objective}_{k}": v for k, v in scores.items()}
    if data.val_pairs:
        for task, b in text2text_task_batches(data.val_pairs, data.sp.pad).items():
            evaluation.update({f"{task}_{k}": v for k, v in evaluate_seq2seq(model, [b]).items()})
    return evaluation


# ---------------------------------------------------------------------------------------------- models
def _build_bert(sizes: dict, n_layers: int, sp: D.SpecialIds) -> BERT:
    return BERT(BERTConfig(n_layers=n_layers, pad_id=sp.pad, **sizes))


def _seq2seq_sizes(sizes: dict, n_layers: int, sp: D.SpecialIds) -> dict:
    return dict(n_encoder_layers=n_layers, n_decoder_layers=n_layers, pad_id=sp.pad, eos_id=sp.eos, **sizes)


def _build_bart(sizes: dict, n_layers: int, sp: D.SpecialIds) -> BART:
    return BART(BARTConfig(decoder_start_id=sp.eos, **_seq2seq_sizes(sizes, n_layers, sp)))


def _build_t5(sizes: dict, n_layers: int, sp: D.SpecialIds) -> T5:
    return T5(T5Config(decoder_start_id=sp.pad, **_seq2seq_sizes(sizes, n_layers, sp)))


@dataclass(frozen=True)
class EncoderFamily:
    """How one model family is pre-trained: its class, ``build(sizes, n_layers, special_ids)`` → a fresh
    model, ``loss(model, batch)`` for ``minillm.train`` and ``evaluate(model, objective, data)`` → the
    evaluation its checkpoint records."""

    model_class: type
    build: Callable[[dict, int, D.SpecialIds], Module]
    loss: Callable[[Module, dict], tuple]
    evaluate: Callable[[Module, str, PretrainData], dict]


FAMILIES: dict[str, EncoderFamily] = {
    "bert": EncoderFamily(BERT, _build_bert, bert_loss, _evaluate_bert_run),
    "bart": EncoderFamily(BART, _build_bart, seq2seq_loss, _evaluate_seq2seq_run),
    "t5": EncoderFamily(T5, _build_t5, seq2seq_loss, _evaluate_seq2seq_run),
}


def build_model(objective: str, tok, *, d_model: int, n_layers: int, n_heads: int, context_length: int,
                d_ff: int | None = None, dropout: float = 0.0) -> Module:
    """The model family an objective trains, sized from the arguments (vocabulary from the tokenizer)."""
    sizes = dict(vocab_size=tok.vocab_size, context_length=context_length, d_model=d_model, n_heads=n_heads,
                 d_ff=d_ff, dropout=dropout)
    return FAMILIES[OBJECTIVE_FAMILY[objective]].build(sizes, n_layers, D.SpecialIds.from_tokenizer(tok))


def load_encoder_checkpoint(path: str | Path) -> BERT | BART | T5:
    """A BERT, BART or T5 from a checkpoint, whichever it holds."""
    from minillm.checkpoint import CheckpointError, load

    kind = str(load(path).get("kind", "")).lower()
    for name, family in FAMILIES.items():
        if kind.startswith(name):
            return family.model_class.from_checkpoint(path)
    raise CheckpointError(f"{path} holds a {kind!r} model, not a BERT, BART or T5")


def _load_init(cfg: EncoderPretrainConfig, tok) -> Module:
    """``cfg.init``'s model, checked to be of the family ``cfg.objective`` trains, on this vocabulary."""
    model = load_encoder_checkpoint(cfg.init)
    if type(model).__name__.lower() != cfg.family:
        raise ValueError(f"pretrain --init {cfg.init}: holds a {type(model).__name__}, but --objective "
                         f"{cfg.objective} trains a {cfg.family.upper()}")
    if model.config.vocab_size != tok.vocab_size:
        raise ValueError(f"pretrain --init {cfg.init}: vocab_size {model.config.vocab_size} differs from the "
                         f"tokenizer's {tok.vocab_size}")
    return model


# ---------------------------------------------------------------------------------------------- pre-training
def _train_config(cfg: EncoderPretrainConfig) -> TrainConfig:
    """The loop's settings: warm-up at most a fifth of the run, 4 evaluation batches, weight decay 0.01."""
    return TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup=min(cfg.warmup, max(1, cfg.steps // 5)),
                       batch_size=cfg.batch_size, eval_every=cfg.eval_every, eval_steps=4,
                       out_dir=cfg.out_dir, seed=cfg.seed, progress=cfg.progress, weight_decay=0.01)


def _save(model: Module, cfg: EncoderPretrainConfig, train_cfg: TrainConfig, history: dict,
          evaluation: dict, seconds: float) -> None:
    """Write ``out_dir/model.npz`` and ``export`` (where set), with the history, evaluation and recipe."""
    extra = {"objective": cfg.objective, "history": {k: history[k] for k in ("step", "loss")},
             "evaluation": evaluation, "train_seconds": seconds,
             "train_config": {k: v for k, v in asdict(train_cfg).items() if k not in ("extra", "progress")},
             "recipe": {"num_stories": cfg.num_stories, "mix_tasks": cfg.mix_tasks, "seed": cfg.seed,
                        "story_weights": cfg.story_weights, "init": str(cfg.init) if cfg.init else None}}
    if cfg.out_dir:
        model.save_checkpoint(Path(cfg.out_dir) / "model.npz", extra=extra)
    if cfg.export:
        model.save_checkpoint(cfg.export, extra=extra)


def pretrain(cfg: EncoderPretrainConfig, tok) -> dict:
    """Pre-train the family ``cfg.objective`` calls for; returns the model, history, evaluation and timing
    (keys model, history, evaluation, seconds, family, val_docs, special_ids)."""
    family = FAMILIES[cfg.family]
    model = _load_init(cfg, tok) if cfg.init is not None else None
    context_length = cfg.context_length if model is None else model.config.context_length  # --init: its own
    data = _pretrain_data(cfg, tok, context_length)
    B.manual_seed(cfg.seed)
    if model is None:
        model = build_model(cfg.objective, tok, d_model=cfg.d_model, n_layers=cfg.n_layers,
                            n_heads=cfg.n_heads, context_length=context_length, d_ff=cfg.d_ff)
    train_cfg = _train_config(cfg)
    t0 = time.perf_counter()
    history = train(model, family.loss, data.batch, train_cfg)
    seconds = time.perf_counter() - t0
    evaluation = family.evaluate(model, cfg.objective, data)
    _save(model, cfg, train_cfg, history, evaluation, seconds)
    return {"model": model, "history": history, "evaluation": evaluation, "seconds": seconds,
            "family": cfg.family, "val_docs": data.val_docs, "special_ids": data.sp}


# ---------------------------------------------------------------------------------------------- command
def config_from_args(args) -> EncoderPretrainConfig:
    """The run ``minillm pretrain`` asks for (its argparse namespace)."""
    from minillm.data.world import story_weights

    return EncoderPretrainConfig(
        objective=args.objective, steps=args.steps, d_model=args.d_model, n_layers=args.n_layers,
        n_heads=args.n_heads, context_length=args.context_length, d_ff=args.d_ff, batch_size=args.batch_size,
        lr=args.lr, warmup=args.warmup, num_stories=args.num_stories, seed=args.seed,
        mix_tasks=getattr(args, "mix_tasks", 0.0), out_dir=args.out, export=args.export,
        eval_every=args.eval_every if args.eval_every < args.steps else 0, progress=not args.no_progress,
        data=args.data, story_weights=story_weights(getattr(args, "story_weights", None)),
        init=getattr(args, "init", None))


def main(args) -> int:
    """``minillm pretrain --objective mlm|nsp|mlm+nsp|denoise|span``."""
    from minillm.tokenizer import BPETokenizer, load_default_tokenizer

    tok = BPETokenizer.load(args.tokenizer) if args.tokenizer else load_default_tokenizer()
    res = pretrain(config_from_args(args), tok)
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
