"""Supervised fine-tuning (SFT): teach a pre-trained GPT to answer in the chat template, and measure it.

Data: conversations from ``minillm.data`` (code, chain-of-thought and direct word problems, tool use) or a
user's JSONL file, rendered by ``minillm.chat.template.render`` with a loss mask so only the assistant's
tokens are learned. Training: ``minillm.train.train`` (the one loop) with ``sft_loss``. Evaluation on held-out
prompts, greedy decoding, before and after:

- code: pass@1, the hidden unit tests run by ``minillm.chat.sandbox`` in a separate limited process;
- word problems: exact-match accuracy of the final number, chain of thought vs direct, by number of steps;
- tools: right tool, right arguments, and right final answer with the agent loop really running the tool.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy

from minillm import options as opt
from minillm.chat import template as chat
from minillm.distributed import launch as distributed_launch
from minillm.distributed import make_strategy
from minillm.models.auto import add_model_arguments, model_source
from minillm.peft.peft_model import (
    MERGEABLE,
    PEFT_TYPES,
    PeftConfig,
    get_peft_model,
    merge_peft,
    save_adapter,
)
from minillm.train import TrainConfig, train

TASKS = ("code", "cot", "direct", "cot+direct", "tools", "mix")


# ------------------------------------------------------------------------------------------- data
def task_examples(task: str, n: int, seed: int) -> list[dict]:
    """``n`` examples of a task (for "mix": about n/4 of each, word problems in both renderings;
    "cot+direct": n/2 word problems, each in both renderings, so one model answers either way)."""
    from minillm.data.code_tasks import code_dataset
    from minillm.data.tool_conversations import tool_dataset
    from minillm.data.word_problems import word_problem_dataset

    if task == "code":
        return code_dataset(n, seed)
    if task == "cot":
        return word_problem_dataset(n, seed, cot=True)
    if task == "direct":
        return word_problem_dataset(n, seed, cot=False)
    if task == "cot+direct":
        return word_problem_dataset(max(1, n // 2), seed, cot=None)
    if task == "tools":
        return tool_dataset(n, seed)
    if task == "mix":
        k = max(1, n // 4)
        # the original unbounded word problems, as the shipped gpt_sft.npz was trained on
        return code_dataset(k, seed) + word_problem_dataset(k, seed, max_count=None) + tool_dataset(k, seed)
    raise ValueError(f"unknown SFT task {task!r}; choose from {TASKS}")


def split_heldout(task: str, n_train: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Training examples and held-out evaluation examples whose prompts never occur in training."""
    heldout = task_examples(task, n_eval, seed + 1000)
    seen = {_prompt_key(ex) for ex in heldout}
    train_ex = [ex for ex in task_examples(task, n_train, seed) if _prompt_key(ex) not in seen]
    return train_ex, heldout


def _prompt_key(ex: dict) -> str:
    """What makes two examples the same task: a word problem's question (either rendering), else the
    first user message."""
    question = (ex.get("meta") or {}).get("question")
    return question or next((m["content"] for m in ex["messages"] if m["role"] == "user"), "")


def encode_examples(examples: list[dict], tokenizer, context_length: int) -> tuple[list, int]:
    """(inputs, labels) pairs for examples that fit the context (``context_length + 1`` rendered tokens);
    returns them and how many were dropped as too long."""
    out, dropped = [], 0
    for ex in examples:
        ids, mask = chat.render(ex["messages"], tokenizer)
        if len(ids) > context_length + 1:
            dropped += 1
            continue
        out.append(chat.sft_example(ids, mask))
    return out, dropped


def sft_batches(train_pairs: list, val_pairs: list, batch_size: int, pad_id: int):
    """``get_batch(split, rng)`` for ``train``: a random batch, right-padded to its longest example."""
    def get_batch(split: str, rng):
        pairs = train_pairs if split == "train" else val_pairs
        idx = rng.integers(0, len(pairs), size=batch_size)
        return chat.collate([pairs[i] for i in idx], pad_id)

    return get_batch


def sft_loss(model, batch):
    """Mean cross-entropy over the assistant's tokens only (labels -100 elsewhere are ignored)."""
    x, y = batch
    _, loss = model(x, y)
    n = int((y != chat.IGNORE_INDEX).sum())
    return loss, {"tokens": n, "mean_over": n}  # ranks hold different numbers: weight each by its own


# ------------------------------------------------------------------------------------------- evaluation
def eval_code(generate, examples: list[dict], timeout: float = 3.0) -> dict:
    """pass@1 (greedy): the share of held-out tasks whose generated function passes all hidden tests."""
    from minillm.chat.sandbox import run_tests

    per_family, statuses, samples = defaultdict(list), defaultdict(int), []
    syntax_ok, name_ok = [], []
    for ex in examples:
        code = generate(ex["messages"][:1])
        syntax_ok.append(_parses(code))
        name_ok.append(syntax_ok[-1] and _defines(code, ex["meta"]["entry_point"]))
        r = run_tests(code, ex["meta"]["entry_point"], ex["meta"]["tests"], timeout=timeout)
        per_family[ex["meta"]["family"]].append(r.ok)
        statuses[r.status] += 1
        if len(samples) < 3:
            samples.append((ex["messages"][0]["content"], code, r.status))
    passed = [ok for v in per_family.values() for ok in v]
    return {"pass@1": float(numpy.mean(passed)) if passed else 0.0, "n": len(passed),
            "valid syntax": float(numpy.mean(syntax_ok)) if syntax_ok else 0.0,
            "defines the function": float(numpy.mean(name_ok)) if name_ok else 0.0,
            "statuses": dict(statuses), "samples": samples}


def _parses(code: str) -> bool:
    """Whether the text is syntactically valid Python (parsed only, never run here)."""
    import ast

    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def _defines(code: str, name: str) -> bool:
    import ast

    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in ast.parse(code).body)


def eval_word_problems(generate, examples: list[dict]) -> dict:
    """Exact-match accuracy of the final number for chain-of-thought and direct prompts of the same
    held-out problems, overall and by number of steps."""
    from minillm.data.word_problems import DIRECT_SUFFIX, extract_answer

    hits: dict[str, dict[int, list]] = {"cot": defaultdict(list), "direct": defaultdict(list)}
    seen = set()
    for ex in examples:
        q = ex["meta"]["question"]
        if q in seen:
            continue
        seen.add(q)
        for style, prompt in (("cot", q), ("direct", f"{q} {DIRECT_SUFFIX}")):
            reply = generate([{"role": "user", "content": prompt}])
            hits[style][ex["meta"]["steps"]].append(extract_answer(reply) == ex["meta"]["answer"])
    out: dict = {}
    for style, by in hits.items():
        allv = [h for v in by.values() for h in v]
        out[f"{style} accuracy"] = float(numpy.mean(allv)) if allv else 0.0
        out[f"{style} by steps"] = {s: float(numpy.mean(v)) for s, v in sorted(by.items())}
    out["n"] = len(seen)
    return out


def eval_tools(generate, examples: list[dict], registry=None, max_calls: int = 3) -> dict:
    """With the agent loop running: did the model call the right tool, with the right arguments (after
    defaults), and does its final answer contain the tool's result?"""
    from minillm.chat.tools import default_registry, run_agent_turn

    registry = registry or default_registry()
    tool_ok, args_ok, answer_ok, calls = [], [], [], 0
    for ex in examples:
        meta = ex["meta"]
        msgs, trace = run_agent_turn(generate, ex["messages"][:1], registry, max_calls=max_calls)
        first = next((s for s in trace if s.result is not None), None)
        calls += sum(s.result is not None for s in trace)
        tool_ok.append(first is not None and first.name == meta["tool"])
        want = registry.tools[meta["tool"]].validate(meta["arguments"])
        args_ok.append(bool(tool_ok[-1] and first.result.ok and first.result.arguments == want))
        final = msgs[-1]["content"] or ""
        answer_ok.append(meta["check"] in final)
    n = max(1, len(examples))
    return {"tool accuracy": sum(tool_ok) / n, "arguments accuracy": sum(args_ok) / n,
            "answer accuracy": sum(answer_ok) / n, "calls per turn": calls / n, "n": len(examples)}


def evaluate_sft(model, tokenizer, heldout: dict[str, list[dict]], max_new_tokens: int | None = None) -> dict:
    """Every evaluation whose held-out examples are given (keys "code", "cot", "tools"). Every reply is
    greedy, with the whole prompt in view and the rest of the context for the reply (``max_new_tokens=None``),
    as in training; a fixed budget near the context length would cut the prompt's start (the question)."""
    generate = chat.make_generate_fn(model, tokenizer, max_new_tokens=max_new_tokens, temperature=0.0)
    out = {}
    if heldout.get("code"):
        out["code"] = eval_code(generate, heldout["code"])
    if heldout.get("cot"):
        out["cot"] = eval_word_problems(generate, heldout["cot"])
    if heldout.get("tools"):
        out["tools"] = eval_tools(generate, heldout["tools"])
    return out


def summary_rows(before: dict, after: dict) -> dict:
    """Flat "metric: before -> after" rows for the report card."""
    rows = {}
    if "code" in after:
        for k in ("pass@1", "valid syntax", "defines the function"):
            rows[f"code {k}"] = f"{before['code'][k]:.2f} -> {after['code'][k]:.2f}"
    if "cot" in after:
        for style in ("cot", "direct"):
            b, a = before["cot"][f"{style} by steps"], after["cot"][f"{style} by steps"]
            rows[f"{style} accuracy"] = f"{before['cot'][f'{style} accuracy']:.2f} -> " \
                                        f"{after['cot'][f'{style} accuracy']:.2f}"
            rows[f"{style} by steps (after)"] = " ".join(f"{s}:{a[s]:.2f}" for s in a)
            del b
    if "tools" in after:
        for k in ("tool accuracy", "arguments accuracy", "answer accuracy"):
            rows[f"tools {k}"] = f"{before['tools'][k]:.2f} -> {after['tools'][k]:.2f}"
    return rows


# ------------------------------------------------------------------------------------------- training
def heldout_for(task: str, n_eval: int, seed: int = 0) -> dict[str, list[dict]]:
    """Held-out evaluation examples per evaluation kind for a task."""
    kinds = {"code": ["code"], "cot": ["cot"], "direct": ["cot"], "cot+direct": ["cot"], "tools": ["tools"],
             "mix": ["code", "cot", "tools"]}[task]
    out = {k: task_examples(k, n_eval, seed + 1000) for k in kinds}
    if task == "mix":  # held out from the same (unbounded) word problems mix trains on
        from minillm.data.word_problems import word_problem_dataset

        out["cot"] = word_problem_dataset(n_eval, seed + 1000, cot=True, max_count=None)
    return out


def run_sft(model, tokenizer, task: str = "mix", steps: int = 1000, n_train: int = 4000, n_eval: int = 40,
            batch_size: int = 16, lr: float = 1e-3, seed: int = 0, out: str | None = None,
            data: str | None = None, evaluate: bool = True, progress: bool = True, warmup: int = 50,
            out_dtype: str | None = None, checkpoint_dir: str | None = None, distributed=None) -> dict:
    """Fine-tune ``model`` on ``task`` (or the conversations in the JSONL file ``data``) and evaluate on
    held-out prompts before and after. Writes ``out`` (weights + tokenizer, in ``out_dtype`` if given,
    e.g. "float16" to halve a shipped file) if given, and with ``checkpoint_dir`` a resumable
    ``checkpoint.npz`` there four times during training (so a stopped run loses at most a quarter).
    ``distributed``: a ``minillm.distributed`` strategy (under mpiexec; ``batch_size`` is the global batch):
    every rank trains, rank 0 alone evaluates and writes; the result has "is_main" False on the others."""
    from minillm.data.jsonl import read_jsonl

    ctx = model.config.context_length
    heldout = heldout_for(task, n_eval, seed) if evaluate else {}
    if data:
        examples = read_jsonl(data)
    else:
        examples = task_examples(task, n_train, seed)
        seen = {_prompt_key(ex) for v in heldout.values() for ex in v}
        examples = [ex for ex in examples if _prompt_key(ex) not in seen]
    pairs, dropped = encode_examples(examples, tokenizer, ctx)
    if not pairs:
        raise ValueError(f"sft: no example fits the model's context of {ctx} tokens ({dropped} too long)")
    n_val = max(1, len(pairs) // 20)
    get_batch = sft_batches(pairs[n_val:], pairs[:n_val], batch_size, tokenizer.pad_id)
    is_main = distributed is None or distributed.is_main
    t0 = time.perf_counter()
    before = evaluate_sft(model, tokenizer, heldout) if evaluate and is_main else {}
    t_eval = time.perf_counter() - t0
    cfg = TrainConfig(steps=steps, lr=lr, warmup=min(warmup, steps // 10 + 1), batch_size=batch_size,
                      eval_every=max(1, steps // 4), eval_steps=4, seed=seed, progress=progress,
                      weight_decay=0.0, out_dir=checkpoint_dir,
                      checkpoint_every=max(1, steps // 4) if checkpoint_dir else 0)
    t0 = time.perf_counter()
    history = train(model, sft_loss, get_batch, cfg, distributed=distributed)
    t_train = time.perf_counter() - t0
    if distributed is not None:
        distributed.unshard(model)  # ZeRO-3: the whole model on every rank again
    if not is_main:
        return {"history": history, "is_main": False}
    after = evaluate_sft(model, tokenizer, heldout) if evaluate else {}
    if out:
        model.save_checkpoint(out, tokenizer, dtype=out_dtype,
                              extra={"sft": {"task": task, "steps": steps, "seed": seed, "lr": lr}})
    return {"history": history, "before": before, "after": after, "train_examples": len(pairs),
            "dropped_too_long": dropped, "train_seconds": t_train, "eval_seconds": t_eval, "is_main": True}


def print_report(res: dict) -> None:
    print(f"trained on {res['train_examples']} examples ({res['dropped_too_long']} dropped as longer than "
          f"the context) in {res['train_seconds']:.0f} s; final train loss {res['history']['loss'][-1]:.3f}")
    if res["after"]:
        for k, v in summary_rows(res["before"], res["after"]).items():
            print(f"  {k:<28} {v}")


# ------------------------------------------------------------------------------------------- PEFT options
LORA_OPTIONS = ("lora_r", "lora_alpha", "lora_dropout")


def add_peft_arguments(p) -> None:
    """``--peft lora|qlora|prefix|adapter`` and each method's sizes, with Hugging Face PEFT's names; an option
    that does not belong to the chosen method is rejected while parsing (``check_peft_arguments``)."""
    g = p.add_argument_group("parameter-efficient fine-tuning (Hugging Face PEFT's names)")
    g.add_argument("--peft", choices=PEFT_TYPES, default=None,
                   help="train only an adapter on the frozen model and write the adapter alone")
    g.add_argument("--lora-r", type=opt.positive_int, default=None, help="LoRA rank (lora/qlora; default 8)")
    g.add_argument("--lora-alpha", type=opt.positive_float, default=None,
                   help="LoRA scale numerator: s = alpha / r (default 16)")
    g.add_argument("--lora-dropout", type=opt.probability, default=None, help="dropout on LoRA's input")
    g.add_argument("--target-modules", type=module_names, default=None,
                   help="comma list of module names to adapt (lora/qlora default q_proj,v_proj; adapter "
                        "default attn,mlp)")
    g.add_argument("--num-virtual-tokens", type=opt.positive_int, default=None,
                   help="prefix length (prefix; default 8)")
    g.add_argument("--bottleneck", type=opt.positive_int, default=None,
                   help="adapter bottleneck width m (adapter; default 16)")
    g.add_argument("--merge", action="store_true",
                   help="write a full checkpoint with LoRA folded in (lora/qlora), not the adapter alone")
    opt.check_after_parsing(p, check_peft_arguments)


def module_names(text: str) -> tuple:
    """An option type: comma-separated module names (``q_proj,v_proj``)."""
    import argparse

    names = tuple(t.strip() for t in text.split(","))
    if not all(n.replace("_", "").replace(".", "").isalnum() for n in names):
        raise argparse.ArgumentTypeError(f"must be module names separated by commas, got {text!r}")
    return names


def check_peft_arguments(args) -> str | None:
    """What is wrong with the combination of PEFT options, in one line, or None."""
    needs = {**{o: MERGEABLE for o in LORA_OPTIONS}, "target_modules": ("lora", "qlora", "adapter"),
             "num_virtual_tokens": ("prefix",), "bottleneck": ("adapter",)}
    for option, methods in needs.items():
        if getattr(args, option) is not None and args.peft not in methods:
            return (f"--{option.replace('_', '-')} needs --peft {' or '.join(methods)}"
                    + (f", not {args.peft}" if args.peft else ""))
    if args.merge and args.peft not in MERGEABLE:
        return ("--merge folds LoRA into the weights: it needs --peft lora or qlora"
                + (f" ({args.peft} cannot be merged)" if args.peft else ""))
    return None


def peft_config_from_args(args) -> PeftConfig | None:
    """The PEFT options as a ``PeftConfig`` (defaults for those not given), or None without ``--peft``."""
    if not args.peft:
        return None
    given = {k: getattr(args, k) for k in (*LORA_OPTIONS[1:], "target_modules", "num_virtual_tokens",
                                           "bottleneck") if getattr(args, k) is not None}
    if args.lora_r is not None:
        given["r"] = args.lora_r
    return PeftConfig(args.peft, **given)


def save_peft_result(model, config: PeftConfig, path, tokenizer, base: str, merge: bool = False,
                     dtype: str | None = None, extra: dict | None = None) -> None:
    """Write what a ``--peft`` run made: the adapter alone (naming its ``base``), or with ``merge`` a full
    checkpoint with LoRA folded in that loads like any other."""
    if merge:
        merge_peft(model).save_checkpoint(path, tokenizer, dtype=dtype, extra=extra)
    else:
        save_adapter(model, config, path, base)


def add_arguments(p) -> None:
    """The ``minillm sft`` options."""
    p.add_argument("--task", choices=TASKS, default="mix")
    add_model_arguments(p, "--from", "from_ckpt", "checkpoint to start from, GPT or Llama (default gpt_tiny)")
    add_peft_arguments(p)
    p.add_argument("--data", type=opt.input_file,
                   help="JSONL conversations to train on instead of the built-in task data")
    p.add_argument("--out", type=opt.output_file, default="runs/sft/model.npz",
                   help="where the fine-tuned checkpoint goes")
    p.add_argument("--steps", type=opt.positive_int, default=1000)
    p.add_argument("--n-train", type=opt.positive_int, default=4000, help="generated training examples")
    p.add_argument("--n-eval", type=opt.positive_int, default=40, help="held-out examples per evaluation")
    p.add_argument("--batch-size", type=opt.positive_int, default=16)
    p.add_argument("--lr", type=opt.positive_float, default=1e-3)
    p.add_argument("--seed", type=opt.nonnegative_int, default=0)
    p.add_argument("--export-dtype", choices=["float32", "float16"], default=None,
                   help="dtype of the written weights (float16 halves the file)")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    distributed_launch.add_argument(p)


def main(args) -> int:
    """``minillm sft --task code|cot|direct|cot+direct|tools|mix --from CKPT`` (``--peft``: an adapter)."""
    from minillm.backend import manual_seed
    from minillm.models.auto import load_causal_lm
    from minillm.peft.lora import print_trainable_parameters
    from minillm.shipped import SHIPPED_GPT

    distributed_launch.check_launch("sft", args.distributed, args.batch_size)
    source = model_source(args, "from_ckpt", SHIPPED_GPT)
    model, tok = load_causal_lm(source)
    peft = peft_config_from_args(args)
    strategy = make_strategy(args.distributed) if args.distributed else None
    is_main = strategy is None or strategy.is_main
    if peft:
        manual_seed(args.seed)  # the adapter's initial weights: the same command gives the same adapter
        model = get_peft_model(model, peft)
        if is_main:
            print_trainable_parameters(model)
    res = run_sft(model, tok, task=args.task, steps=args.steps, n_train=args.n_train, n_eval=args.n_eval,
                  batch_size=args.batch_size, lr=args.lr, seed=args.seed, out=None if peft else args.out,
                  data=args.data, evaluate=not args.no_eval, progress=not args.no_progress,
                  out_dtype=args.export_dtype,
                  checkpoint_dir=str(Path(args.out).parent) if args.out else None, distributed=strategy)
    if not res["is_main"]:
        return 0  # rank 0 reports and writes
    print_report(res)
    if peft and args.out:
        save_peft_result(model, peft, args.out, tok, str(source), args.merge, args.export_dtype,
                         extra={"sft": {"task": args.task, "steps": args.steps, "peft": peft.peft_type}})
    if args.out:
        print(f"wrote {args.out}" + ("" if not peft else " (LoRA merged in)" if args.merge else
                                     f" (the {peft.peft_type} adapter alone; minillm generate --adapter)"))
    return 0
