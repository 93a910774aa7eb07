"""Full fine-tuning vs LoRA, QLoRA, adapters and prefix tuning, measured side by side on one new task.

The task (``world_qa``) is new to the pre-trained GPT, which has only read stories: answer questions about
the world in a "Question: ... Answer: ..." format, e.g. "Question: What is the weather in Oakdale?
Answer: sunny and 22 degrees." Facts come from the world tables (weather per town, home town and job per
character). The model trains on two phrasings of each question and is scored on a third phrasing it never
saw (exact match of the greedy answer), so the score measures learning the task, not memorising strings.

For each method the same pre-trained checkpoint is fine-tuned with the same data, steps and training loop
(``minillm.train.train``); the report gives trainable %, held-out exact match and answer loss (the
cross-entropy of the held-out answers: smoother than exact match on 30 questions), optimizer-state bytes
(measured), median step time, and the loss on held-out pre-training stories afterwards: how much of the
original skill each method keeps (forgetting).

Run it with ``minillm bench peft`` (``--quick`` for a short run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy

from minillm import backend as B
from minillm import nn
from minillm.data.world import CHARACTERS, WEATHER

# three phrasings per kind of question; the last is held out for testing
QUESTION_TEMPLATES = {
    "weather": ["What is the weather in {town}?", "Tell me the weather in {town}.",
                "How is the weather in {town} today?"],
    "home": ["Where does {name} live?", "In which town does {name} live?", "Which town is {name} from?"],
    "job": ["What does {name} do?", "What is the job of {name}?", "What work does {name} do?"],
}


EOS_IN_TARGET = False


def world_qa(held_out_template: int = 2) -> dict:
    """{"train": [(prompt, answer)], "test": [(prompt, answer)]}: every fact of the world, asked with each
    phrasing; the ``held_out_template``-th phrasing of each kind goes to "test"."""
    out = {"train": [], "test": []}
    for kind, templates in QUESTION_TEMPLATES.items():
        for i, tpl in enumerate(templates):
            split = "test" if i == held_out_template else "train"
            if kind == "weather":
                for town, w in WEATHER.items():
                    out[split].append((f"Question: {tpl.format(town=town)} Answer:",
                                       f" {w['condition']} and {w['temp_c']} degrees."))
            else:
                for name, c in CHARACTERS.items():
                    ans = f" {c['town']}." if kind == "home" else f" a {c['job']}."
                    out[split].append((f"Question: {tpl.format(name=name)} Answer:", ans))
    return out


def encode_qa(tokenizer, pairs, max_len: int | None = None, eos: bool = EOS_IN_TARGET) -> tuple:
    """(x, y) int arrays (N, T): prompt + answer (+ end-of-text with ``eos``), right-padded; y is x shifted
    left, with the prompt and the padding set to -100 so the loss (and the score) covers the answer only.

    By default the answer is not followed by end-of-text: the answer's final period ends it, and the model
    is not taught to stop after every period (which would cost it on every story sentence: forgetting that
    says nothing about the method)."""
    rows = []
    for prompt, answer in pairs:
        p, a = tokenizer.encode(prompt), tokenizer.encode(answer) + ([tokenizer.eos_id] if eos else [])
        rows.append((p + a, len(p)))
    T = max(len(ids) for ids, _ in rows) - 1
    if max_len is not None and T > max_len:
        raise ValueError(f"encode_qa: an example has {T + 1} tokens, more than the model's {max_len}")
    x = numpy.full((len(rows), T), tokenizer.pad_id, dtype=numpy.int64)
    y = numpy.full((len(rows), T), -100, dtype=numpy.int64)
    for i, (ids, n_prompt) in enumerate(rows):
        x[i, :len(ids) - 1] = ids[:-1]
        y[i, n_prompt - 1:len(ids) - 1] = ids[n_prompt:]  # position t predicts token t+1
    return x, y


def answer_exact_match(model, x, y) -> float:
    """Fraction of examples whose every answer token is the model's top choice given the true prefix:
    exactly the examples greedy decoding would answer correctly."""
    with nn.evaluating(model):
        logits = model(x)[0].numpy()
    pred = logits.argmax(-1)
    mask = y != -100
    return float(numpy.mean([(pred[i][mask[i]] == y[i][mask[i]]).all() for i in range(len(y))]))


def lm_eval_windows(tokenizer, context_length: int, n_windows: int = 16, seed: int = 4242) -> tuple:
    """Held-out pre-training data: windows of stories from a seed the pre-training never used."""
    from minillm.phases.pretrain import lm_tokens

    tokens = lm_tokens(tokenizer, num_stories=60 * n_windows, seed=seed)
    T = context_length
    starts = numpy.linspace(0, len(tokens) - T - 2, n_windows).astype(int)
    x = numpy.stack([tokens[s:s + T] for s in starts])
    y = numpy.stack([tokens[s + 1:s + T + 1] for s in starts])
    return x, y


def lm_loss_on(model, x, y, batch: int = 8) -> float:
    """Mean next-token loss on (x, y) windows (no dropout, no graph)."""
    with nn.evaluating(model):
        losses = [model(x[i:i + batch], y[i:i + batch])[1].item() for i in range(0, len(x), batch)]
    return float(numpy.mean(losses))


# ------------------------------------------------------------------ the methods
@dataclass
class MethodSpec:
    name: str
    lr: float
    description: str


METHODS = {
    "full": MethodSpec("full", 3e-4, "every parameter trains"),
    "lora": MethodSpec("lora", 3e-3, "LoRA r=8, alpha=16 on q_proj, v_proj"),
    "qlora": MethodSpec("qlora", 3e-3, "NF4 base (double quant) + LoRA r=8 on q_proj, v_proj"),
    "adapter": MethodSpec("adapter", 3e-3, "bottleneck adapters (m=16) after attn and mlp"),
    "prefix": MethodSpec("prefix", 3e-3, "prefix tuning, 8 virtual tokens, MLP reparameterised"),
}


def prepare(method: str, model) -> nn.Module:
    """Turn a fresh pre-trained GPT into the model to fine-tune with ``method`` (frozen base + add-on)."""
    from minillm.peft.adapter import apply_adapters
    from minillm.peft.lora import LoRAConfig, apply_lora
    from minillm.peft.prefix import PrefixTuning
    from minillm.peft.qlora import apply_qlora

    if method == "full":
        return model.requires_grad_(True)
    if method == "lora":
        return apply_lora(model, LoRAConfig(r=8, lora_alpha=16))
    if method == "qlora":
        return apply_qlora(model, LoRAConfig(r=8, lora_alpha=16))
    if method == "adapter":
        return apply_adapters(model, bottleneck=16)
    if method == "prefix":
        return PrefixTuning(model, num_virtual_tokens=8, reparameterize=True, hidden=64)
    raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")


def load_base_gpt(ckpt: str | None = None) -> tuple:
    """(GPT, tokenizer) that every method starts from: the shipped pre-trained GPT, or ``ckpt``."""
    from minillm.models.gpt import GPT, load_checkpoint_tokenizer
    from minillm.shipped import SHIPPED_GPT
    from minillm.tokenizer import load_default_tokenizer

    path = ckpt or SHIPPED_GPT
    model = GPT.from_checkpoint(path)
    tok = load_checkpoint_tokenizer(path) or load_default_tokenizer()
    return model, tok


def finetune_with_method(method: str, ckpt: str | None = None, steps: int = 150, batch_size: int = 16,
                         seed: int = 0, lr: float | None = None, data=None,
                         lm_data: tuple | None = None) -> dict:
    """Fine-tune a fresh copy of the pre-trained GPT with ``method`` (a key of ``METHODS``) on world QA;
    returns the measured row (see ``measure_method``). ``lm_data``: held-out (x, y) story windows, to
    share one set across methods; ``data`` is unused."""
    from minillm.peft.lora import trainable_parameters
    from minillm.train import TrainConfig, lm_loss, train

    B.manual_seed(seed)
    base, tok = load_base_gpt(ckpt)
    qa = world_qa()
    xtr, ytr = encode_qa(tok, qa["train"], base.config.context_length)
    test = encode_qa(tok, qa["test"], base.config.context_length)
    lm_data = lm_data if lm_data is not None else lm_eval_windows(tok, base.config.context_length)
    model = prepare(method, base)
    counts = trainable_parameters(model)

    def get_batch(split, rng):
        idx = rng.choice(len(xtr), size=min(batch_size, len(xtr)), replace=False)
        return xtr[idx], ytr[idx]

    lr = METHODS[method].lr if lr is None else lr
    cfg = TrainConfig(steps=steps, lr=lr, warmup=min(10, steps // 10), weight_decay=0.0, eval_every=0,
                      progress=False, seed=seed, batch_size=batch_size)
    t0 = time.perf_counter()
    hist = train(model, lm_loss, get_batch, cfg)
    seconds = time.perf_counter() - t0
    return measure_method(method, model, hist, counts, seconds, batch_size * xtr.shape[1], (xtr, ytr), test,
                          lm_data)


def measure_method(method: str, model, hist: dict, counts: tuple[int, int], seconds: float,
                   tokens_per_batch: int, train_xy: tuple, test_xy: tuple, lm_xy: tuple) -> dict:
    """One row of the comparison for a fine-tuned ``model``: trainable %, exact match and answer loss
    (held-out and training phrasings), optimizer bytes, median step time, and the loss on held-out stories
    (forgetting). LoRA and QLoRA are also scored after ``merge_and_unload`` (it should change nothing)."""
    from minillm.peft.lora import merge_and_unload

    (xtr, ytr), (xte, yte), (lm_x, lm_y) = train_xy, test_xy, lm_xy
    trainable, total = counts
    step_s = float(numpy.median([tokens_per_batch / t for t in hist["tokens_per_s"]]))
    row = {"method": method, "trainable": trainable, "all": total, "trainable_pct": 100 * trainable / total,
           "train_loss": float(numpy.mean(hist["loss"][-10:])),
           "test_exact_match": answer_exact_match(model, xte, yte),
           "test_loss": lm_loss_on(model, xte, yte, 32),
           "train_exact_match": answer_exact_match(model, xtr, ytr),
           "optimizer_bytes": int(hist.get("optimizer_state_bytes", 0)), "step_ms": 1000 * step_s,
           "seconds": seconds, "pretrain_loss_after": lm_loss_on(model, lm_x, lm_y), "history": hist["loss"]}
    if method in ("lora", "qlora"):  # folding the adapter in changes nothing measurable
        merged = merge_and_unload(model)
        row["merged_test_exact_match"] = answer_exact_match(merged, xte, yte)
    return row


def compare(ckpt: str | None = None, methods: tuple = tuple(METHODS), steps: int = 150, batch_size: int = 16,
            seed: int = 0, log=print, lm_windows: int = 16) -> dict:
    """Every method on the same task and checkpoint; also the untouched model's scores as the baseline."""
    base, tok = load_base_gpt(ckpt)
    qa = world_qa()
    lm_x, lm_y = lm_eval_windows(tok, base.config.context_length, lm_windows)
    xte, yte = encode_qa(tok, qa["test"], base.config.context_length)
    baseline = {"method": "none (pre-trained)", "pretrain_loss_after": lm_loss_on(base, lm_x, lm_y),
                "test_exact_match": answer_exact_match(base, xte, yte),
                "test_loss": lm_loss_on(base, xte, yte, 32)}
    rows = []
    for m in methods:
        rows.append(finetune_with_method(m, ckpt, steps, batch_size, seed, lm_data=(lm_x, lm_y)))
        if log:
            r = rows[-1]
            log(f"  {m:<8} exact match {r['test_exact_match']:.2f}  pre-training loss "
                f"{r['pretrain_loss_after']:.3f}  ({r['seconds']:.1f} s)")
    return {"baseline": baseline, "rows": rows, "steps": steps, "batch_size": batch_size,
            "n_train": len(qa["train"]), "n_test": len(qa["test"])}


def format_comparison(result: dict) -> str:
    b = result["baseline"]
    head = (f"{'method':<9} {'trainable %':>11} {'held-out EM':>11} {'answer loss':>11} "
            f"{'optimizer bytes':>15} {'step ms':>8} {'pre-train loss':>14} {'forgetting':>10}")
    lines = [f"world QA: {result['n_train']} train / {result['n_test']} held-out-phrasing questions, "
             f"{result['steps']} steps of batch {result['batch_size']}; pre-trained model: held-out EM "
             f"{b['test_exact_match']:.2f}, answer loss {b['test_loss']:.3f}, pre-training loss "
             f"{b['pretrain_loss_after']:.3f}",
             head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(f"{r['method']:<9} {r['trainable_pct']:>10.2f}% {r['test_exact_match']:>11.2f} "
                     f"{r['test_loss']:>11.3f} "
                     f"{r['optimizer_bytes']:>15,d} {r['step_ms']:>8.1f} {r['pretrain_loss_after']:>14.3f} "
                     f"{r['pretrain_loss_after'] - b['pretrain_loss_after']:>+10.3f}")
    return "\n".join(lines)


def main(args) -> int:
    """``minillm bench peft``: the comparison table (``--quick``: fewer steps)."""
    steps = 40 if getattr(args, "quick", False) else 150
    result = compare(steps=steps)
    print(format_comparison(result))
    return 0
