"""Causal-LM pre-training of a GPT on the built-in world corpus or a user's text file.

Used by ``minillm pretrain --objective clm``, by ``minillm pipeline`` and to produce the shipped
``minillm/checkpoints/gpt_tiny.npz``. The training loop itself is ``minillm.train.train``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy

from minillm import backend as B
from minillm import options as opt
from minillm.distributed import launch as distributed_launch
from minillm.distributed import make_strategy
from minillm.models.auto import causal_lm_class
from minillm.models.gpt import GPT, GPTConfig
from minillm.models.llama import Llama, LlamaConfig
from minillm.train import TrainConfig, lm_loss, train


def lm_tokens(tokenizer, data: str | None = None, num_stories: int = 20_000, seed: int = 0,
              story_weights: dict[str, float] | None = None) -> numpy.ndarray:
    """One token stream: the world's stories (mixed by ``story_weights``, default the standard mix), each
    followed by ``<|endoftext|>``, or a user's text file (encoded as ordinary text: special-token strings
    in it stay plain text)."""
    if data is not None:
        from minillm.data.lm import load_text

        return numpy.asarray(tokenizer.encode(load_text(data), allowed_special="none"), dtype=numpy.int64)
    from minillm.data.world import generate_corpus

    eos = tokenizer.eos_id
    ids: list[int] = []
    for story in generate_corpus(num_stories, seed, story_weights).split("\n\n"):
        ids.extend(tokenizer.encode(story))
        ids.append(eos)
    return numpy.asarray(ids, dtype=numpy.int64)


def lm_batches(train_tokens, val_tokens, batch_size: int, context_length: int):
    """``get_batch(split, rng)`` for ``train``: random next-token windows from either split."""
    from minillm.data.lm import get_batch

    def get(split: str, rng):
        return get_batch(train_tokens if split == "train" else val_tokens, batch_size, context_length, rng)
    return get


def pretrain_gpt(tokenizer, model_config: GPTConfig | LlamaConfig, train_config: TrainConfig,
                 data: str | None = None,
                 num_stories: int = 20_000, val_fraction: float = 0.05, resume: str | None = None,
                 export: str | None = None, export_dtype: str | None = None,
                 story_weights: dict[str, float] | None = None, init: str | None = None,
                 distributed: str | None = None) -> dict:
    """Train a GPT (or a Llama, given a ``LlamaConfig``) by next-token prediction; returns model, history,
    tokens and timing.

    Writes ``out_dir/checkpoint.npz`` (resumable) and ``out_dir/model.npz`` (weights + tokenizer) when
    ``train_config.out_dir`` is set, and ``export`` (weights + tokenizer, optionally float16) if given.
    ``init``: a GPT or Llama checkpoint to continue from (its class and config replace ``model_config``).
    ``distributed``: "ddp", "zero1", "zero2" or "zero3", run under ``mpiexec -n N`` (``batch_size`` is the
    global batch); rank 0 writes the files, the result has "is_main" False on the other ranks.
    """
    from minillm.data.lm import train_val_split

    model_cls = Llama if isinstance(model_config, LlamaConfig) else GPT
    if init:
        model_cls = causal_lm_class(init)
        model_config = model_cls.from_checkpoint(init).config
    tokens = lm_tokens(tokenizer, data, num_stories, train_config.seed, story_weights)
    if int(tokens.max()) >= model_config.vocab_size:
        raise ValueError(f"pretrain: the data has token id {int(tokens.max())} but vocab_size is "
                         f"{model_config.vocab_size}; use the tokenizer's ({tokenizer.vocab_size})")
    train_tokens, val_tokens = train_val_split(tokens, val_fraction)
    B.manual_seed(train_config.seed)
    model = model_cls.from_checkpoint(init) if init else model_cls(model_config)
    get = lm_batches(train_tokens, val_tokens, train_config.batch_size, model_config.context_length)
    t0 = time.perf_counter()
    tok_json = None
    if train_config.out_dir:
        import json

        tok_json = json.dumps(tokenizer.to_dict(), ensure_ascii=False)
    strategy = make_strategy(distributed) if distributed else None
    history = train(model, lm_loss, get, train_config, resume=resume,
                    checkpoint_extra={"tokenizer": tok_json} if tok_json else None, distributed=strategy)
    seconds = time.perf_counter() - t0
    is_main = strategy is None or strategy.is_main
    if strategy is not None:
        strategy.unshard(model)  # ZeRO-3: the whole model on every rank again
    if not is_main:
        return {"model": model, "history": history, "seconds": seconds, "is_main": False}
    extra = {"history": {k: history[k] for k in ("step", "loss", "val_step", "val_loss")},
             "train_config": {k: v for k, v in asdict(train_config).items() if k != "extra"}}
    if train_config.out_dir:
        model.save_checkpoint(Path(train_config.out_dir) / "model.npz", tokenizer, extra=extra)
    if export:
        model.save_checkpoint(export, tokenizer, dtype=export_dtype, extra=extra)
    return {"model": model, "history": history, "seconds": seconds, "train_tokens": len(train_tokens),
            "val_tokens": len(val_tokens), "is_main": True}


# `minillm pretrain --objective NAME`: clm trains a GPT here; the encoder objectives are pretrain_encoders'.
OBJECTIVES = {
    "clm": "causal LM: a GPT predicts the next token",
    "mlm": "BERT masked LM (15%, 80/10/10)",
    "nsp": "BERT next-sentence prediction",
    "mlm+nsp": "BERT, both (as in the paper)",
    "denoise": "BART: sentence permutation + text infilling",
    "span": "T5 span corruption",
}


def add_arguments(p) -> None:
    """The ``minillm pretrain`` options (every objective shares them; each reads the ones it needs)."""
    p.add_argument("--objective", choices=list(OBJECTIVES), default="clm",
                   help="; ".join(f"{k} = {v}" for k, v in OBJECTIVES.items()).replace("%", "%%"))
    p.add_argument("--data", type=opt.input_file,
                   help="a UTF-8 text file (default: the built-in world stories)")
    p.add_argument("--num-stories", type=opt.positive_int, default=20_000, help="size of the built-in corpus")
    p.add_argument("--tokenizer", type=opt.input_file, help="tokenizer JSON (default: the shipped one)")
    p.add_argument("--steps", type=opt.positive_int, default=1000)
    p.add_argument("--out", type=opt.output_folder, default="runs/pretrain",
                   help="folder for checkpoint.npz and model.npz")
    p.add_argument("--resume", type=opt.input_file, help="continue from this checkpoint.npz")
    p.add_argument("--init", type=opt.input_file,
                   help="start from this model's weights (continued / domain-adaptive pre-training; the size "
                        "comes from it)")
    p.add_argument("--story-weights", help="mix of built-in story kinds, e.g. opinion=0.5,counting=0.5 "
                                           "(kinds: counting, weather, opinion, meeting, review)")
    p.add_argument("--export", type=opt.output_file,
                   help="also write weights + tokenizer here (e.g. a shipped checkpoint)")
    p.add_argument("--export-dtype", choices=["float32", "float16"], default=None,
                   help="dtype of the exported weights (float16 halves the file)")
    p.add_argument("--arch", choices=["gpt", "llama"], default="gpt",
                   help="clm: GPT-2's architecture, or a Llama-style decoder (RMSNorm, RoPE, SwiGLU, "
                        "grouped-query attention)")
    p.add_argument("--n-kv-heads", type=opt.positive_int, default=None,
                   help="--arch llama: key/value heads, dividing --n-heads (default all; 1: multi-query)")
    p.add_argument("--d-model", type=opt.positive_int, default=128)
    p.add_argument("--n-layers", type=opt.positive_int, default=4)
    p.add_argument("--n-heads", type=opt.positive_int, default=4)
    p.add_argument("--d-ff", type=opt.positive_int, default=None,
                   help="feed-forward width (default 4·d_model)")
    p.add_argument("--context-length", type=opt.positive_int, default=128)
    p.add_argument("--dropout", type=opt.probability, default=0.0)
    p.add_argument("--batch-size", type=opt.positive_int, default=16)
    p.add_argument("--lr", type=opt.positive_float, default=1e-3)
    p.add_argument("--warmup", type=opt.nonnegative_int, default=100)
    p.add_argument("--eval-every", type=opt.nonnegative_int, default=100, help="0 = never")
    p.add_argument("--eval-steps", type=opt.positive_int, default=10)
    p.add_argument("--checkpoint-every", type=opt.nonnegative_int, default=200, help="0 = only at the end")
    p.add_argument("--seed", type=opt.nonnegative_int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    distributed_launch.add_argument(p)
    opt.check_after_parsing(p, check_arch_arguments)
    p.add_argument("--mix-tasks", type=opt.fraction, default=0.0,
                   help="denoise/span: fraction of batches that are prefixed summarize/translate tasks")


def check_arch_arguments(args) -> str | None:
    """What is wrong with ``--arch``/``--n-kv-heads`` and the objective, in one line, or None."""
    if args.arch == "llama" and args.objective != "clm":
        return f"--arch llama is a decoder: it needs --objective clm, not {args.objective}"
    if args.n_kv_heads is not None and args.arch != "llama":
        return "--n-kv-heads needs --arch llama (GPT-2 has as many key/value heads as query heads)"
    if args.n_kv_heads is not None and args.n_heads % args.n_kv_heads:
        return f"--n-kv-heads {args.n_kv_heads} must divide --n-heads {args.n_heads}"
    return None


def main(args) -> int:
    """``minillm pretrain``: a GPT here for ``--objective clm``, else the encoder objectives."""
    if args.objective != "clm":
        if getattr(args, "distributed", None):
            raise ValueError(f"pretrain: --distributed trains --objective clm only, not {args.objective}")
        distributed_launch.check_launch("pretrain", None, args.batch_size)  # not under mpiexec either
        from minillm.phases import pretrain_encoders

        return int(pretrain_encoders.main(args) or 0)
    return main_clm(args)


def main_clm(args) -> int:
    """``minillm pretrain --objective clm``: the command-line front end of ``pretrain_gpt``."""
    from minillm.generate import generate_text
    from minillm.tokenizer import BPETokenizer, load_default_tokenizer

    distributed_launch.check_launch("pretrain", getattr(args, "distributed", None), args.batch_size)
    tok = BPETokenizer.load(args.tokenizer) if args.tokenizer else load_default_tokenizer()
    config_cls = LlamaConfig if args.arch == "llama" else GPTConfig
    gqa = {"n_kv_heads": args.n_kv_heads} if args.arch == "llama" else {}
    mcfg = config_cls(vocab_size=tok.vocab_size, context_length=args.context_length, d_model=args.d_model,
                      n_heads=args.n_heads, n_layers=args.n_layers, dropout=args.dropout, d_ff=args.d_ff,
                      **gqa)
    tcfg = TrainConfig(steps=args.steps, lr=args.lr, warmup=args.warmup, batch_size=args.batch_size,
                       eval_every=args.eval_every, eval_steps=args.eval_steps,
                       checkpoint_every=args.checkpoint_every, out_dir=args.out, seed=args.seed,
                       progress=not args.no_progress)
    from minillm.data.world import story_weights

    res = pretrain_gpt(tok, mcfg, tcfg, data=args.data, num_stories=args.num_stories, resume=args.resume,
                       export=args.export, export_dtype=args.export_dtype,
                       story_weights=story_weights(getattr(args, "story_weights", None)),
                       init=getattr(args, "init", None), distributed=getattr(args, "distributed", None))
    if not res["is_main"]:
        return 0  # rank 0 reports
    h, model = res["history"], res["model"]
    mcfg = model.config  # with --init, the checkpoint's
    print(f"{type(model).__name__} {model.num_parameters():,} parameters ({mcfg.n_layers} layers, "
          f"d_model {mcfg.d_model}, "
          f"{mcfg.n_heads} heads, context {mcfg.context_length}); {res['train_tokens']:,} train / "
          f"{res['val_tokens']:,} val tokens")
    if h["loss"]:
        print(f"steps {h['step'][-1]}  train loss {numpy.mean(h['loss'][-20:]):.4f} (mean of last 20)  "
              f"time {res['seconds']:.1f} s")
    if h["val_loss"]:
        print(f"val loss {h['val_loss'][-1]:.4f}  perplexity {h['val_ppl'][-1]:.3f}")
    if args.out:
        print(f"checkpoints: {Path(args.out) / 'checkpoint.npz'} (resumable), {Path(args.out) / 'model.npz'}")
    if args.export:
        print(f"exported: {args.export}")
    print("sample:", repr(generate_text(model, tok, "", 60, temperature=0.8, top_k=50, seed=args.seed)))
    return 0
