"""``minillm pipeline``: every phase end to end on the built-in data, printing a report card.

Each phase is a function ``(ctx) -> dict`` of metrics; ``ctx`` carries the run's options and the
artefacts earlier phases produced (tokenizer, checkpoints). Later phases start from earlier ones.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy

from minillm import backend as B
from minillm import options as opt
from minillm.data import documents as D
from minillm.models.bart import BART
from minillm.models.gpt import GPT
from minillm.models.t5 import T5
from minillm.phases.pretrain_encoders import (
    EncoderPretrainConfig,
    evaluate_seq2seq,
    pretrain,
    text2text_task_batches,
)
from minillm.phases.transfer import transfer_experiment
from minillm.shipped import SHIPPED_BART, SHIPPED_BERT, SHIPPED_T5


def phase_pretrain(ctx: dict) -> dict:
    """Pre-train a small GPT on the world's stories with the shipped tokenizer (next-token prediction).

    Leaves for later phases: ctx["tokenizer"], ctx["gpt"] (the model), ctx["gpt_ckpt"] (its checkpoint with
    the tokenizer inside) and ctx["shipped_gpt"] (the stronger shipped gpt_tiny.npz, for phases that need a
    well-trained start).
    """
    from pathlib import Path

    import numpy

    from minillm.generate import generate_text
    from minillm.models.gpt import GPTConfig
    from minillm.phases.pretrain import pretrain_gpt
    from minillm.shipped import SHIPPED_GPT
    from minillm.tokenizer import load_default_tokenizer
    from minillm.train import TrainConfig

    tok = load_default_tokenizer()
    if ctx["quick"]:
        size = dict(d_model=32, n_layers=2, n_heads=2, context_length=32)
        steps, batch, stories, lr = 40, 8, 300, 3e-3
    else:
        size = dict(d_model=64, n_layers=4, n_heads=4, context_length=64)
        steps, batch, stories, lr = 800, 16, 10_000, 2e-3
    out = Path(ctx["out"]) / "pretrain"
    mcfg = GPTConfig(vocab_size=tok.vocab_size, **size)
    tcfg = TrainConfig(steps=steps, lr=lr, warmup=max(1, steps // 20), batch_size=batch,
                       eval_every=max(1, steps // 4), eval_steps=5 if ctx["quick"] else 20, out_dir=str(out),
                       seed=ctx["seed"], progress=False)
    res = pretrain_gpt(tok, mcfg, tcfg, num_stories=stories)
    h, model = res["history"], res["model"]
    sample = generate_text(model, tok, "Mia went to", 30, temperature=0.7, top_k=20, seed=ctx["seed"])
    ctx.update(tokenizer=tok, gpt=model, gpt_ckpt=str(out / "model.npz"), shipped_gpt=str(SHIPPED_GPT))
    return {
        "GPT parameters": model.num_parameters(),
        "size": f"{mcfg.n_layers} layers, d_model {mcfg.d_model}, {mcfg.n_heads} heads, context "
                f"{mcfg.context_length}",
        "tokens (train / val)": f"{res['train_tokens']:,} / {res['val_tokens']:,}",
        "steps x batch": f"{steps} x {batch}",
        "train loss (last 20)": float(numpy.mean(h["loss"][-20:])),
        "val loss": h["val_loss"][-1],
        "val perplexity": h["val_ppl"][-1],
        "tokens/s": float(numpy.median(h["tokens_per_s"])),
        "sample": repr("Mia went to" + sample),
        "checkpoint": ctx["gpt_ckpt"],
    }


def phase_sft(ctx: dict) -> dict:
    """Supervised fine-tuning from the shipped pre-trained GPT (the pipeline's own small GPT when none ships)
    on one task the phase's budget can teach: tool calling (``minillm.phases.sft``), with the same held-out
    questions scored before and after. 500 steps of batch 8 take it from never calling a tool to the right
    tool on all 24 held-out questions (arguments and answers about 0.4). A mixed run of 300 steps (code,
    word problems and tools together) leaves code pass@1 and every tool score at 0.00 on 12 held-out
    prompts each: one task is what this budget can teach. The shipped specialists' lines follow, for what
    the longer runs of lessons 08–10 buy."""
    from pathlib import Path

    from minillm.phases.sft import run_sft

    src = ctx.get("shipped_gpt")
    if not src or not Path(src).exists():
        src = ctx["gpt_ckpt"]
    model, tok = GPT.load_with_tokenizer(src)
    if model.config.context_length < 96:  # the chat data needs ~100 tokens per conversation
        return {"skipped": f"{Path(src).name} has a {model.config.context_length}-token context; SFT needs "
                           "~100 (ship minillm/checkpoints/gpt_tiny.npz)"}
    steps, n_eval, batch = (8, 2, 4) if ctx["quick"] else (SFT_STEPS, 24, 8)
    out = str(Path(ctx["out"]) / "sft" / "model.npz")
    res = run_sft(model, tok, task="tools", steps=steps, n_train=400 if ctx["quick"] else 4000, n_eval=n_eval,
                  batch_size=batch, seed=ctx["seed"], out=out, progress=False)
    ctx.update(sft_ckpt=out, sft_model=model)
    keys = ("tool accuracy", "arguments accuracy", "answer accuracy")
    b, a = res["before"]["tools"], res["after"]["tools"]
    return {"started from": Path(src).name, "task": "tool calling", "steps x batch": f"{steps} x {batch}",
            "train examples": res["train_examples"], "train loss (last)": res["history"]["loss"][-1],
            f"this run: right tool / arguments / answer ({a['n']} held-out)":
                " / ".join(f"{b[k]:.2f}" for k in keys) + " -> " + " / ".join(f"{a[k]:.2f}" for k in keys),
            "checkpoint": out, **shipped_sft_effects(src, tok, ctx["quick"])}


SFT_STEPS = 500


def shipped_sft_effects(base: str, tok, quick: bool) -> dict:
    """The shipped SFT models (lessons 08–10) on held-out prompts, against the model they started from:
    what longer SFT buys, which the phase's short run above cannot show."""
    from pathlib import Path

    from minillm import shipped
    from minillm.phases import sft

    n_code, n_cot, n_tools = (2, 4, 2) if quick else (40, 200, 24)  # the README's held-out sets
    base_model = GPT.load_with_tokenizer(base)[0]
    out = {}
    for path, kind, n in ((shipped.SHIPPED_SFT_CODE, "code", n_code),
                          (shipped.SHIPPED_SFT_COT, "cot+direct", n_cot),
                          (shipped.SHIPPED_SFT, "tools", n_tools)):
        if not Path(path).exists():
            continue
        held = sft.heldout_for(kind, n)
        before = sft.evaluate_sft(base_model, tok, held)
        after = sft.evaluate_sft(GPT.load_with_tokenizer(path)[0], tok, held)
        name = Path(path).name
        if kind == "code":
            out[f"shipped {name}: code pass@1 ({n} prompts)"] = (
                f"{before['code']['pass@1']:.2f} -> {after['code']['pass@1']:.2f}")
        elif kind == "tools":
            keys = ("tool accuracy", "arguments accuracy", "answer accuracy")
            out[f"shipped {name}: right tool / arguments / answer ({n})"] = (
                " / ".join(f"{before['tools'][k]:.2f}" for k in keys) + " -> "
                + " / ".join(f"{after['tools'][k]:.2f}" for k in keys))
        else:
            for style in ("cot", "direct"):  # overall before -> by number of steps after
                by = " ".join(f"{k}:{v:.2f}" for k, v in after["cot"][f"{style} by steps"].items())
                was = before["cot"][f"{style} accuracy"]
                out[f"shipped {name}: {style} by steps ({n})"] = f"{was:.2f} -> {by}"
    return out


def phase_dpo(ctx: dict) -> dict:
    """DPO (``minillm.phases.dpo.run_dpo_phase``): from the SFT phase's model (else the shipped gpt_sft.npz,
    else gpt_tiny.npz), a short mixed-quality SFT on the preference prompts, on-policy pairs picked by the
    rule-based judge, DPO against a frozen copy, and the behaviour table pre-trained -> SFT -> DPO."""
    from pathlib import Path

    from minillm.models.gpt import GPT
    from minillm.phases.dpo import DPOPhaseConfig, run_dpo_phase
    from minillm.shipped import SHIPPED_SFT

    cands = [ctx.get("sft_ckpt"), str(SHIPPED_SFT), ctx.get("shipped_gpt")]
    src = next((c for c in cands if c and Path(c).exists()), None)
    if src is None:
        return {"skipped": "no SFT or shipped GPT checkpoint to start from (ship "
                           "minillm/checkpoints/gpt_tiny.npz)"}
    policy, tok = GPT.load_with_tokenizer(src)
    if policy.config.context_length < 96:
        return {"skipped": f"{Path(src).name} has a {policy.config.context_length}-token context; the chat "
                           "prompts need ~100"}
    before = ctx.get("shipped_gpt")
    pretrained = GPT.load_with_tokenizer(before)[0] if before and Path(before).exists() else None
    chat_trained = src != ctx.get("shipped_gpt")  # a GPT that never saw the chat template needs more SFT
    size = (dict(steps=4, sft_steps=4, batch_size=4, eval_samples=1, rpo_alpha=1.0) if ctx["quick"] else
            dict(steps=DPO_STEPS, sft_steps=DPO_SFT_STEPS if chat_trained else 2 * DPO_SFT_STEPS,
                 batch_size=16, eval_samples=2, num_samples=4, rpo_alpha=1.0))
    res = run_dpo_phase(policy, tok, DPOPhaseConfig(quick=ctx["quick"], seed=ctx["seed"], **size),
                        pretrained=pretrained, log=lambda s: None)
    out = Path(ctx["out"]) / "dpo" / "gpt_dpo.npz"
    policy.save_checkpoint(out, tok)
    table = res["table"]
    cols = list(table)
    rows = {k: " -> ".join(f"{table[c][k]:.2f}" if k in table[c] else "-" for c in cols)
            for k in dict.fromkeys(k for c in cols for k in table[c])}
    return {"started from": Path(src).name, "preference pairs": len(res["triplets"]),
            "held-out behaviour": " -> ".join(cols), **rows,
            **{f"final {k}": v for k, v in res["final"].items()}, "checkpoint": str(out)}


DPO_STEPS, DPO_SFT_STEPS = 80, 150


def phase_lora(ctx: dict) -> dict:
    """Parameter-efficient fine-tuning on a new task (world QA): full fine-tuning vs LoRA (quick) and QLoRA,
    adapters and prefix tuning, from the same pre-trained GPT (``minillm.phases.peft_compare``)."""
    from pathlib import Path

    from minillm.phases.peft_compare import compare

    src = ctx.get("shipped_gpt")
    if ctx["quick"] or not src or not Path(src).exists():
        src = ctx["gpt_ckpt"]
    methods = ("full", "lora") if ctx["quick"] else ("full", "lora", "qlora", "adapter", "prefix")
    res = compare(src, methods, steps=10 if ctx["quick"] else 150, batch_size=8 if ctx["quick"] else 16,
                  seed=ctx["seed"], log=None, lm_windows=4 if ctx["quick"] else 16)
    b = res["baseline"]
    out = {"started from": Path(src).name, "task": f"world QA, {res['n_train']} train / {res['n_test']} "
           "held-out-phrasing questions", "held-out EM before": b["test_exact_match"],
           "pre-training loss before": b["pretrain_loss_after"]}
    for r in res["rows"]:
        out[f"{r['method']}: trainable / EM / loss"] = (
            f"{r['trainable_pct']:.2f}% / {r['test_exact_match']:.2f} / {r['pretrain_loss_after']:.3f} "
            f"(optimizer {r['optimizer_bytes']:,} B, {r['step_ms']:.0f} ms/step)")
    return out


def _encoder_tokenizer(ctx: dict):
    from minillm.tokenizer import load_default_tokenizer

    return ctx.get("tokenizer") or load_default_tokenizer()


def phase_encoder(ctx: dict) -> dict:
    """Pre-train a small BERT (MLM + NSP), then transfer the shipped BERT (or, without it, this one) to
    sentiment with few labels against the same architecture from scratch."""
    tok, quick = _encoder_tokenizer(ctx), ctx["quick"]
    size = dict(d_model=32, n_layers=1) if quick else dict(d_model=64, n_layers=2)
    cfg = EncoderPretrainConfig("mlm+nsp", steps=30 if quick else 600, num_stories=300 if quick else 5000,
                                batch_size=16 if quick else 32, context_length=48, seed=ctx["seed"],
                                progress=False, out_dir=str(Path(ctx["out"]) / "bert"), **size)
    res = pretrain(cfg, tok)
    ev = res["evaluation"]
    out = {"BERT parameters": res["model"].num_parameters(), "steps": len(res["history"]["step"]),
           "train seconds": res["seconds"], "MLM masked-token accuracy": ev["mlm_acc"],
           "NSP accuracy": ev["nsp_acc"]}
    ckpt = SHIPPED_BERT if SHIPPED_BERT.exists() else Path(ctx["out"]) / "bert" / "model.npz"
    rows = transfer_experiment(ckpt, tok, (50,) if quick else (50, 200, 1000), steps=10 if quick else 200,
                               n_test=100 if quick else 1000, seed=ctx["seed"])
    for r in rows:
        out[f"sentiment acc, {r['labels']} labels (scratch -> pre-trained)"] = (
            f"{r['scratch']:.3f} -> {r['pretrained']:.3f}")
    out["transfer from"] = Path(ckpt).name
    return out


def _short_seq2seq_runs(tok, quick: bool, seed: int) -> dict:
    """Short BART denoising and T5 span-corruption runs: steps, seconds, teacher-forced token accuracy."""
    out = {}
    for objective, name in (("denoise", "BART denoise"), ("span", "T5 span")):
        cfg = EncoderPretrainConfig(objective, steps=20 if quick else 400, d_model=32 if quick else 64,
                                    n_layers=1, num_stories=300 if quick else 5000,
                                    batch_size=8 if quick else 32, context_length=48, seed=seed,
                                    progress=False)
        res = pretrain(cfg, tok)
        out[f"{name}: steps / seconds"] = f"{len(res['history']['step'])} / {res['seconds']:.1f}"
        out[f"{name}: teacher-forced token acc"] = res["evaluation"][f"{objective}_token_acc"]
    return out


def _shipped_t5_tasks(tok, n: int, seed: int) -> dict:
    """The shipped T5's greedy exact match on ``n // 2`` held-out examples of each prefixed task."""
    from minillm.data.text2text import text2text_examples

    model = T5.from_checkpoint(SHIPPED_T5)
    pairs = D.encode_pairs(tok, text2text_examples(2 * n, seed=seed + 10_000), model.config.context_length)
    batches = text2text_task_batches(pairs, D.SpecialIds.from_tokenizer(tok).pad)
    return {f"shipped T5 {task}: exact match": evaluate_seq2seq(model, [b])["greedy_exact_match"]
            for task, b in batches.items()}


def _shipped_bart_reconstruction(tok, n: int, seed: int) -> dict:
    """The shipped BART rebuilding ``n`` corrupted held-out stories: greedy token accuracy, exact match."""
    model = BART.from_checkpoint(SHIPPED_BART)
    docs = D.world_documents(tok, 200, seed=seed + 10_000)
    b = D.denoise_batch(docs, numpy.random.default_rng(seed), batch_size=n,
                        max_len=model.config.context_length, sp=D.SpecialIds.from_tokenizer(tok))
    ev = evaluate_seq2seq(model, [b], max_new_tokens=model.config.context_length)
    return {"shipped BART reconstruction: token acc": ev["greedy_token_acc"],
            "shipped BART reconstruction: exact match": ev["greedy_exact_match"]}


def phase_encoder_decoder(ctx: dict) -> dict:
    """Short BART denoising and T5 span-corruption runs, then the shipped T5 doing two tasks by prefix
    (summarize, translate) and the shipped BART reconstructing corrupted text."""
    tok, quick, seed = _encoder_tokenizer(ctx), ctx["quick"], ctx["seed"]
    out = _short_seq2seq_runs(tok, quick, seed)
    n = 4 if quick else 64
    if SHIPPED_T5.exists():
        out.update(_shipped_t5_tasks(tok, n, seed))
    if SHIPPED_BART.exists():
        out.update(_shipped_bart_reconstruction(tok, n, seed))
    return out


PHASES = [
    ("pre-training: a GPT learns the world's stories", phase_pretrain),
    ("encoder: BERT pre-training (MLM + NSP), transfer to sentiment", phase_encoder),
    ("encoder-decoder: BART denoising, T5 span corruption and task prefixes", phase_encoder_decoder),
    ("PEFT: full fine-tuning vs LoRA (+ QLoRA, adapters, prefix) on a new task", phase_lora),
    ("SFT: tool calls trained live; code and chain of thought from the shipped models", phase_sft),
    ("DPO: preference pairs from a rule-based judge, aligned against a frozen reference", phase_dpo),
]


def format_value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def add_arguments(p) -> None:
    """The ``minillm pipeline`` options."""
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for tests)")
    p.add_argument("--out", type=opt.output_folder, default="runs/pipeline",
                   help="where checkpoints and reports go")
    p.add_argument("--seed", type=opt.nonnegative_int, default=0)


def main(args) -> int:
    """``minillm pipeline``: every phase in order, each phase's metrics printed as it ends."""
    B.manual_seed(args.seed)
    ctx = {"quick": bool(args.quick), "seed": args.seed, "out": args.out}
    print(f"minillm pipeline (backend={B.get_backend()}, quick={ctx['quick']})")
    for title, fn in PHASES:
        t0 = time.perf_counter()
        metrics = fn(ctx)
        dt = time.perf_counter() - t0
        print(f"\n== {title}  ({dt:.1f} s)")
        for k, v in metrics.items():
            print(f"   {k:<28} {format_value(v)}")
    print("\nall phases done")
    return 0
