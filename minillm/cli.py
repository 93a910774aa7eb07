"""The ``minillm`` command line: one subcommand per phase, plus ``pipeline`` (everything) and ``bench``."""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "autograd": "minillm.bench.autograd",
    "train": "minillm.bench.train",
    "tokenizer": "minillm.bench.tokenizer",
    "peft": "minillm.bench.peft",
}


def _cmd_bench(args) -> int:
    names = ["gpu"] if args.gpu else (args.names or list(BENCHMARKS))
    for name in names:
        module = "minillm.bench.gpu" if name == "gpu" else BENCHMARKS.get(name)
        if module is None:
            print(f"minillm bench: unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)} or --gpu",
                  file=sys.stderr)
            return 2
        importlib.import_module(module).main(args)
    return 0


# `minillm pretrain --objective NAME` → "module:function(args)"; other objectives add themselves here.
PRETRAIN_OBJECTIVES = {
    "clm": "minillm.phases.pretrain:main_clm",
    "mlm": "minillm.phases.pretrain_encoders:main",      # BERT masked LM
    "nsp": "minillm.phases.pretrain_encoders:main",      # BERT next-sentence prediction
    "mlm+nsp": "minillm.phases.pretrain_encoders:main",  # BERT, both (as in the paper)
    "denoise": "minillm.phases.pretrain_encoders:main",  # BART: sentence permutation + text infilling
    "span": "minillm.phases.pretrain_encoders:main",     # T5 span corruption
}


def _cmd_pretrain(args) -> int:
    module, fn = PRETRAIN_OBJECTIVES[args.objective].split(":")
    return int(getattr(importlib.import_module(module), fn)(args) or 0)


def _cmd_generate(args) -> int:
    from minillm.generate import generate_text
    from minillm.models.gpt import GPT, load_checkpoint_tokenizer
    from minillm.shipped import SHIPPED_GPT
    from minillm.tokenizer import load_default_tokenizer

    ckpt = args.ckpt or SHIPPED_GPT
    model = GPT.from_checkpoint(ckpt)
    tok = load_checkpoint_tokenizer(ckpt) or load_default_tokenizer()
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        text = generate_text(model, tok, args.prompt, args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, greedy=args.greedy, seed=seed,
                             use_cache=not args.no_cache)
        print(args.prompt + text)
        if i + 1 < args.num_samples:
            print("---")
    return 0


def _add_pretrain_parser(sub) -> None:
    pt = sub.add_parser("pretrain", help="pre-train a model (clm: GPT next-token prediction)")
    pt.add_argument("--objective", choices=list(PRETRAIN_OBJECTIVES), default="clm",
                    help="training objective (clm = causal LM, a GPT)")
    pt.add_argument("--data", help="a UTF-8 text file (default: the built-in world stories)")
    pt.add_argument("--num-stories", type=int, default=20_000, help="size of the built-in corpus")
    pt.add_argument("--tokenizer", help="tokenizer JSON (default: the shipped one)")
    pt.add_argument("--steps", type=int, default=1000)
    pt.add_argument("--out", default="runs/pretrain", help="folder for checkpoint.npz and model.npz")
    pt.add_argument("--resume", help="continue from this checkpoint.npz")
    pt.add_argument("--init", help="start from this model's weights (continued / domain-adaptive "
                                   "pre-training; the size comes from it)")
    pt.add_argument("--story-weights", help="mix of built-in story kinds, e.g. opinion=0.5,counting=0.5 "
                                            "(kinds: counting, weather, opinion, meeting, review)")
    pt.add_argument("--export", help="also write weights + tokenizer here (e.g. a shipped checkpoint)")
    pt.add_argument("--export-dtype", choices=["float32", "float16"], default=None,
                    help="dtype of the exported weights (float16 halves the file)")
    pt.add_argument("--d-model", type=int, default=128)
    pt.add_argument("--n-layers", type=int, default=4)
    pt.add_argument("--n-heads", type=int, default=4)
    pt.add_argument("--d-ff", type=int, default=None, help="feed-forward width (default 4·d_model)")
    pt.add_argument("--context-length", type=int, default=128)
    pt.add_argument("--dropout", type=float, default=0.0)
    pt.add_argument("--batch-size", type=int, default=16)
    pt.add_argument("--lr", type=float, default=1e-3)
    pt.add_argument("--warmup", type=int, default=100)
    pt.add_argument("--eval-every", type=int, default=100)
    pt.add_argument("--eval-steps", type=int, default=10)
    pt.add_argument("--checkpoint-every", type=int, default=200)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--no-progress", action="store_true", help="no progress bar")
    pt.add_argument("--mix-tasks", type=float, default=0.0,
                    help="denoise/span: fraction of batches that are prefixed summarize/translate tasks")
    pt.set_defaults(func=_cmd_pretrain)

    g = sub.add_parser("generate", help="sample text from a GPT checkpoint")
    g.add_argument("--ckpt", help="checkpoint (default: the shipped minillm/checkpoints/gpt_tiny.npz)")
    g.add_argument("--prompt", default="", help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=100)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--greedy", action="store_true", help="always take the most likely token")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    g.add_argument("--num-samples", type=int, default=1)
    g.add_argument("--no-cache", action="store_true", help="recompute every position (no KV cache)")
    g.set_defaults(func=_cmd_generate)


def _cmd_finetune_classify(args) -> int:
    from minillm.phases.transfer import main as finetune_classify

    return finetune_classify(args)


def _add_finetune_classify_parser(sub) -> None:
    from minillm.phases.transfer import add_arguments

    f = sub.add_parser("finetune-classify",
                       help="transfer learning: pre-trained BERT vs random init, 50/200/1000 labels")
    add_arguments(f)
    f.set_defaults(func=_cmd_finetune_classify)


def _cmd_pipeline(args) -> int:
    from minillm.pipeline import run_pipeline

    return run_pipeline(args)


def _cmd_memory(args) -> int:
    from minillm.peft import memory

    return memory.main(args)


def _cmd_sft(args) -> int:
    from minillm.phases.sft import main_sft

    return main_sft(args)


def _cmd_chat(args) -> int:
    from minillm.phases.sft import main_chat

    return main_chat(args)


def _cmd_dpo(args) -> int:
    from minillm.phases.dpo import main_dpo

    return main_dpo(args)


def _add_dpo_parser(sub) -> None:
    from minillm.phases.dpo import add_arguments

    d = sub.add_parser("dpo", help="align an SFT model with DPO on judged preference pairs (before/after)")
    add_arguments(d)
    d.set_defaults(func=_cmd_dpo)


def _add_sft_parser(sub) -> None:
    s = sub.add_parser("sft", help="supervised fine-tuning (chat template), with before/after evaluation")
    s.add_argument("--task", choices=["code", "cot", "direct", "cot+direct", "tools", "mix"], default="mix")
    s.add_argument("--from", dest="from_ckpt", help="GPT checkpoint to start from (default: gpt_tiny)")
    s.add_argument("--data", help="JSONL conversations to train on instead of the built-in task data")
    s.add_argument("--out", default="runs/sft/model.npz", help="where the fine-tuned checkpoint goes")
    s.add_argument("--steps", type=int, default=1000)
    s.add_argument("--n-train", type=int, default=4000, help="generated training examples")
    s.add_argument("--n-eval", type=int, default=40, help="held-out examples per evaluation")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--export-dtype", choices=["float32", "float16"], default=None,
                   help="dtype of the written weights (float16 halves the file)")
    s.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_sft)

    c = sub.add_parser("chat", help="chat with a model in the terminal, tools enabled (reads stdin)")
    c.add_argument("--ckpt", help="checkpoint (default: the shipped minillm/checkpoints/gpt_sft.npz)")
    c.add_argument("--system", help="a system message")
    c.add_argument("--max-new-tokens", type=int, default=None,
                   help="reply length cap (default: the rest of the context; the whole prompt stays in view)")
    c.add_argument("--max-calls", type=int, default=3, help="tool calls per turn at most")
    c.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--keep-history", action="store_true", help="keep earlier turns (the context is short)")
    c.set_defaults(func=_cmd_chat)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minillm", description=__doc__)
    p.add_argument("--backend", choices=["numpy", "cupy"],
                   help="array backend (default: numpy, or $MINILLM_BACKEND)")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="benchmarks (numbers, not adjectives)")
    b.add_argument("names", nargs="*", help=f"which: {', '.join(BENCHMARKS)} (default: all CPU ones)")
    b.add_argument("--gpu", action="store_true", help="the GPU kernel benchmark (needs CuPy and a GPU)")
    b.add_argument("--quick", action="store_true", help="fewer repeats (for tests)")
    b.set_defaults(func=_cmd_bench)

    pl = sub.add_parser("pipeline", help="the main job: every phase on the built-in data, with a report card")
    pl.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for tests)")
    pl.add_argument("--out", default="runs/pipeline", help="where checkpoints and reports go")
    pl.add_argument("--seed", type=int, default=0)
    pl.set_defaults(func=_cmd_pipeline)

    _add_pretrain_parser(sub)
    _add_sft_parser(sub)
    _add_dpo_parser(sub)
    _add_finetune_classify_parser(sub)

    me = sub.add_parser("memory", help="fine-tuning memory: weights, gradients, optimizer, activations")
    from minillm.peft.memory import add_arguments as _memory_arguments

    _memory_arguments(me)
    me.set_defaults(func=_cmd_memory)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one ``minillm`` subcommand; errors propagate (for scripts and tests). The ``minillm`` command
    itself is ``console_main``."""
    args = build_parser().parse_args(argv)
    if args.backend:
        from minillm import backend

        backend.set_backend(args.backend)
    return int(args.func(args) or 0)


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that report bad input (a file, an option, a checkpoint, a NaN loss), not a bug."""
    from minillm.backend import BackendError
    from minillm.checkpoint import CheckpointError
    from minillm.nn import StateDictError
    from minillm.train import TrainingError

    return ValueError, OSError, CheckpointError, StateDictError, BackendError, TrainingError


def console_main(argv: list[str] | None = None) -> int:
    """The ``minillm`` command: ``main``, with bad input reported in one line on stderr and exit status 2
    instead of a traceback (set ``MINILLM_TRACEBACK=1`` to see where it came from)."""
    import os

    try:
        return main(argv)
    except KeyboardInterrupt:
        print("minillm: interrupted", file=sys.stderr)
        return 130
    except _input_errors() as e:
        if os.environ.get("MINILLM_TRACEBACK"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e  # StateDictError: no repr quotes
        print(f"minillm: error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(console_main())
