"""Direct Preference Optimization (Rafailov et al. 2023): align a policy with pairwise preferences, no reward
model.

Given a prompt x with a preferred completion y_w ("chosen") and a dispreferred one y_l ("rejected"), DPO
trains the policy π_θ against a frozen reference π_ref (the SFT model) with

    h = [log π_θ(y_w|x) − log π_ref(y_w|x)] − [log π_θ(y_l|x) − log π_ref(y_l|x)]
    loss = −log σ(β·h)                                          (paper, eq. 7; ``loss_type="sigmoid"``)

It is the Bradley–Terry likelihood of the preference when the reward is r(x, y) = β·log π_θ(y|x)/π_ref(y|x),
the reward that the KL-regularised RL objective max E[r] − β·KL(π‖π_ref) is optimal for. So the policy
*is* the reward model: no reward network, no sampling inside the loop, no PPO. Variants: IPO
(Azar et al. 2023, ``"ipo"``: (h − 1/(2β))², a squared loss that does not push h to infinity), hinge
(SLiC, Zhao et al. 2023, ``"hinge"``: max(0, 1 − β·h)), and conservative DPO (``label_smoothing`` ε: the
label is flipped with probability ε). Metric names follow TRL's DPOTrainer.

Sequence log-probabilities sum the next-token log-probs over the completion tokens only: prompt and
padding positions have mask 0. Training runs through ``minillm.train.train`` (the one training loop);
this module supplies its ``loss_fn`` and ``get_batch``.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy

from minillm import backend as B
from minillm import functional as F
from minillm.tensor import Tensor, no_grad

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


# ---------------------------------------------------------------------------------------------- the loss
def logsigmoid(x) -> Tensor:
    """log σ(x), stable for large |x|: min(x, 0) − log(1 + e^−|x|); d/dx = σ(−x)."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    d = x.data
    out = Tensor._result(B.xp.minimum(d, 0) - B.xp.log1p(B.xp.exp(-B.xp.abs(d))), (x,), "logsigmoid")
    if out.requires_grad:
        s_neg = 0.5 * (B.xp.tanh(-0.5 * d) + 1)  # σ(−x), stable
        out._backward = lambda g: x._accum(g * s_neg)
    return out


def _as_tensor(x, like: Tensor | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    arr = B.xp.asarray(B.to_numpy(x) if hasattr(x, "get") else x)
    if like is not None:
        arr = arr.astype(like.dtype, copy=False)
    return Tensor(arr)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0
             ) -> tuple[Tensor, dict]:
    """The DPO loss (mean over the batch) and TRL-named metrics from four (B,) sequence log-prob vectors.

    Rewards are β·(policy − reference) log-ratios: ``rewards/chosen`` = β·(log π_θ(y_w) − log π_ref(y_w)),
    ``rewards/rejected`` likewise, ``rewards/margins`` their difference, ``rewards/accuracies`` the
    fraction of pairs whose chosen reward is the higher; ``logps/*`` are the policy's log-probs. The
    reference log-probs are constants (no gradient flows to them). With policy = reference, h = 0 and the
    sigmoid loss is log 2.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo_loss: loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not (isinstance(beta, (int, float)) and beta > 0 and math.isfinite(beta)):
        raise ValueError(f"dpo_loss: beta must be a positive number, got {beta!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo_loss: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"dpo_loss: label_smoothing applies to loss_type='sigmoid' only, got {loss_type!r}")
    pc = _as_tensor(policy_chosen_logps)
    pr = _as_tensor(policy_rejected_logps, pc)
    rc = _as_tensor(ref_chosen_logps, pc).detach()
    rr = _as_tensor(ref_rejected_logps, pc).detach()
    shapes = [t.shape for t in (pc, pr, rc, rr)]
    if len(set(shapes)) != 1 or len(shapes[0]) != 1 or shapes[0][0] == 0:
        raise ValueError("dpo_loss: expected four log-prob vectors of the same shape (B,) with B ≥ 1, got "
                         f"policy_chosen {shapes[0]}, policy_rejected {shapes[1]}, ref_chosen {shapes[2]}, "
                         f"ref_rejected {shapes[3]}")
    h = (pc - pr) - (rc - rr)  # (B,) log-ratio of the policy minus that of the reference
    if loss_type == "sigmoid":
        losses = -logsigmoid(h * beta) * (1 - label_smoothing)
        if label_smoothing:
            losses = losses - logsigmoid(h * -beta) * label_smoothing
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:  # hinge
        losses = F.relu(1 - h * beta)
    loss = losses.mean()

    r_c = beta * (B.to_numpy(pc.data).astype(numpy.float64) - B.to_numpy(rc.data))
    r_r = beta * (B.to_numpy(pr.data).astype(numpy.float64) - B.to_numpy(rr.data))
    metrics = {
        "rewards/chosen": float(r_c.mean()),
        "rewards/rejected": float(r_r.mean()),
        "rewards/margins": float((r_c - r_r).mean()),
        "rewards/accuracies": float((r_c > r_r).mean()),
        "logps/chosen": float(B.to_numpy(pc.data).mean()),
        "logps/rejected": float(B.to_numpy(pr.data).mean()),
    }
    return loss, metrics


# ------------------------------------------------------------------------------ sequence log-probs
def pad_sequences(seqs: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], pad_id: int = 0,
                  length: int | None = None) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Right-pad token id lists and their completion masks to one (B, T) pair of int64 arrays.

    Padding gets mask 0. A causal model never lets an earlier position see a later one, so right padding
    changes no log-prob of a real token.
    """
    if len(seqs) != len(masks):
        raise ValueError(f"pad_sequences: {len(seqs)} sequences but {len(masks)} masks")
    for i, (s, m) in enumerate(zip(seqs, masks)):
        if len(s) != len(m):
            raise ValueError(f"pad_sequences: sequence {i} has {len(s)} tokens but its mask has {len(m)}")
    T = max((len(s) for s in seqs), default=0) if length is None else int(length)
    ids = numpy.full((len(seqs), T), pad_id, dtype=numpy.int64)
    mask = numpy.zeros((len(seqs), T), dtype=numpy.int64)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        if len(s) > T:
            raise ValueError(f"pad_sequences: sequence {i} has {len(s)} tokens, more than length {T}")
        ids[i, :len(s)] = s
        mask[i, :len(m)] = m
    return ids, mask


def sequence_logps(model, ids, completion_mask, average: bool = False) -> Tensor:
    """log π(completion | prompt) per row: Σ_t mask[t] · log p(ids[t] | ids[<t]), a (B,) Tensor.

    ``ids`` (B, T) holds prompt + completion (+ right padding); ``completion_mask`` (B, T) is 1 on the
    completion tokens, 0 on prompt and padding. Position 0 is never scored (nothing predicts it).
    ``model(ids)`` must return logits (B, T, V) or a tuple whose first item they are. ``average`` divides
    by the number of completion tokens (IPO's length-normalised log-prob).
    """
    ids = B.to_numpy(ids)
    mask = B.to_numpy(completion_mask)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"sequence_logps: ids and completion_mask must both be (B, T), got {ids.shape} "
                         f"and {mask.shape}")
    if ids.shape[1] < 2:
        raise ValueError(f"sequence_logps: need at least 2 tokens per row (a prompt token and a completion "
                         f"token), got shape {ids.shape}")
    keep = mask[:, 1:].astype(bool)  # (B, T-1): which next-token targets count
    if not keep.any(axis=1).all():
        raise ValueError(f"sequence_logps: rows {numpy.flatnonzero(~keep.any(axis=1)).tolist()} have no "
                         "completion token (after position 0) in completion_mask")
    out = model(ids[:, :-1])
    logits = out[0] if isinstance(out, tuple) else out  # (B, T-1, V)
    targets = numpy.where(keep, ids[:, 1:], -100)  # ignore_index on prompt and padding
    nll = F.cross_entropy(logits, B.xp.asarray(targets), reduction="none")  # (B, T-1), 0 where ignored
    logps = -nll.sum(axis=1)  # (B,)
    if average:
        logps = logps / B.xp.asarray(keep.sum(axis=1).astype(B.to_numpy(logps.data).dtype))
    return logps


# ------------------------------------------------------------------------------ reference model
def frozen_reference(model):
    """A deep copy of ``model`` in eval mode with every parameter frozen: no gradients, and so no
    optimizer state (``train`` builds AdamW from the policy's parameters only)."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    for p in ref.parameters():
        p.grad = None
    ref.eval()
    return ref


# ------------------------------------------------------------------------------ data and training
@dataclass
class DPOConfig:
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    precompute_ref_log_probs: bool = True  # reference log-probs once, before training (TRL's option)
    average_log_prob: bool = False         # length-normalised log-probs (often used with IPO)
    rpo_alpha: float = 0.0                 # + alpha · NLL of the chosen replies (RPO, Pang et al. 2024)
    pad_id: int = 0


class PreferenceDataset:
    """Tokenized preference pairs: for each pair, prompt+chosen and prompt+rejected ids with completion masks.

    ``examples``: dicts with ``chosen_ids``, ``chosen_mask``, ``rejected_ids``, ``rejected_mask`` (lists;
    mask 1 on completion tokens). ``ref_chosen_logps``/``ref_rejected_logps`` are filled by
    ``precompute_reference``.
    """

    def __init__(self, examples: Sequence[dict], pad_id: int = 0):
        if not examples:
            raise ValueError("PreferenceDataset: no preference pairs")
        for i, ex in enumerate(examples):
            keys = ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")
            missing = [k for k in keys if k not in ex]
            if missing:
                raise ValueError(f"PreferenceDataset: pair {i} lacks {missing}")
        self.examples = list(examples)
        self.pad_id = pad_id
        self.ref_chosen_logps: numpy.ndarray | None = None
        self.ref_rejected_logps: numpy.ndarray | None = None

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, idx) -> dict:
        """Pairs ``idx`` as one (2B, T) array: the B chosen rows, then the B rejected rows (one forward)."""
        exs = [self.examples[i] for i in idx]
        seqs = [e["chosen_ids"] for e in exs] + [e["rejected_ids"] for e in exs]
        masks = [e["chosen_mask"] for e in exs] + [e["rejected_mask"] for e in exs]
        ids, mask = pad_sequences(seqs, masks, self.pad_id)
        out = {"idx": numpy.asarray(idx), "ids": ids, "mask": mask}
        if self.ref_chosen_logps is not None:
            out["ref_chosen_logps"] = self.ref_chosen_logps[out["idx"]]
            out["ref_rejected_logps"] = self.ref_rejected_logps[out["idx"]]
        return out


def concatenated_logps(model, batch: dict, average: bool = False) -> tuple[Tensor, Tensor]:
    """(chosen, rejected) sequence log-probs of a ``PreferenceDataset.batch`` in one forward pass."""
    logps = sequence_logps(model, batch["ids"], batch["mask"], average)
    n = logps.shape[0] // 2
    return logps[:n], logps[n:]


def precompute_reference(reference, dataset: PreferenceDataset, batch_size: int = 32,
                         average: bool = False) -> None:
    """Fill ``dataset.ref_*_logps`` with the reference's log-probs, once, so training never runs it."""
    rc, rr = [], []
    with no_grad():
        for s in range(0, len(dataset), batch_size):
            c, r = concatenated_logps(reference, dataset.batch(range(s, min(s + batch_size, len(dataset)))),
                                      average)
            rc.append(B.to_numpy(c.data))
            rr.append(B.to_numpy(r.data))
    dataset.ref_chosen_logps = numpy.concatenate(rc).astype(numpy.float64)
    dataset.ref_rejected_logps = numpy.concatenate(rr).astype(numpy.float64)


def dpo_loss_fn(config: DPOConfig, reference=None):
    """``loss_fn(model, batch) -> (loss, metrics)`` for ``minillm.train.train``: uses the batch's
    precomputed reference log-probs, or runs ``reference`` under no_grad when the batch has none."""

    def loss_fn(model, batch):
        pc, pr = concatenated_logps(model, batch, config.average_log_prob)
        if "ref_chosen_logps" in batch:
            rc, rr = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        else:
            if reference is None:
                raise ValueError("dpo: no reference log-probs in the batch and no reference model given")
            with no_grad():
                rc, rr = concatenated_logps(reference, batch, config.average_log_prob)
            rc, rr = rc.data, rr.data
        loss, metrics = dpo_loss(pc, pr, rc, rr, config.beta, config.loss_type, config.label_smoothing)
        if config.rpo_alpha:
            # keep the chosen replies likely: DPO alone only widens a gap, and on a small model it can do so
            # by pushing both replies down (TRL's rpo_alpha; "nll_loss" is per chosen token)
            n_tok = float(batch["mask"][:len(batch["idx"]), 1:].sum())
            nll = -pc.mean() if config.average_log_prob else -pc.sum() / n_tok
            loss = loss + nll * config.rpo_alpha
            metrics["nll_loss"] = float(nll.item())
        metrics["tokens"] = int(batch["ids"].size)
        return loss, metrics

    return loss_fn


def preference_batches(train: PreferenceDataset, val: PreferenceDataset | None, batch_size: int):
    """``get_batch(split, rng)`` for ``train``: ``batch_size`` pairs drawn without replacement (per batch)."""

    def get_batch(split, rng):
        data = train if split == "train" or val is None else val
        n = min(batch_size, len(data))
        return data.batch(numpy.sort(rng.choice(len(data), size=n, replace=False)))

    return get_batch


def dpo_eval_fn(loss_fn, dataset: PreferenceDataset, batch_size: int = 32):
    """``eval_fn(model)`` for ``train``: DPO loss and metrics over the whole of ``dataset`` (no sampling)."""

    def eval_fn(model):
        was = model.training
        model.eval()
        tot: dict[str, float] = {}
        n = 0
        with no_grad():
            for s in range(0, len(dataset), batch_size):
                idx = numpy.arange(s, min(s + batch_size, len(dataset)))
                loss, metrics = loss_fn(model, dataset.batch(idx))
                metrics.pop("tokens", None)
                for k, v in {"loss": float(loss.item()), **metrics}.items():
                    tot[k] = tot.get(k, 0.0) + v * len(idx)
                n += len(idx)
        model.train(was)
        return {f"val_{k}": v / n for k, v in tot.items()}

    return eval_fn


def train_dpo(policy, train_set: PreferenceDataset, config: DPOConfig, train_config,
              val_set: PreferenceDataset | None = None, reference=None) -> tuple[dict, object]:
    """Run DPO on ``policy`` (in place) with ``minillm.train.train``; returns (history, reference).

    The reference is a frozen deep copy of the policy as it is now (unless given). With
    ``config.precompute_ref_log_probs`` its log-probs are computed once for every pair and the loop never
    calls it again.
    """
    from minillm.train import train

    if reference is None:
        reference = frozen_reference(policy)
    if any(p.requires_grad for p in reference.parameters()):
        raise ValueError("train_dpo: the reference model must be frozen (see frozen_reference)")
    if config.precompute_ref_log_probs:
        for ds in (train_set, val_set):
            if ds is not None:
                precompute_reference(reference, ds, average=config.average_log_prob)
    loss_fn = dpo_loss_fn(config, reference)
    eval_fn = dpo_eval_fn(loss_fn, val_set) if val_set is not None else (lambda m: {})
    history = train(policy, loss_fn, preference_batches(train_set, val_set, train_config.batch_size),
                    train_config, eval_fn=eval_fn)
    return history, reference


def log_ratio_drift(policy, reference, ids, completion_mask) -> dict:
    """How far the policy moved from the reference on given sequences (usually the policy's own samples):
    the mean per-sequence log-ratio log π_θ(y|x) − log π_ref(y|x), which for y ~ π_θ estimates
    KL(π_θ ‖ π_ref), and its mean per completion token."""
    with no_grad():
        lp = B.to_numpy(sequence_logps(policy, ids, completion_mask).data).astype(numpy.float64)
        lr = B.to_numpy(sequence_logps(reference, ids, completion_mask).data).astype(numpy.float64)
    n_tok = numpy.asarray(completion_mask)[:, 1:].sum(axis=1)
    d = lp - lr
    return {"kl": float(d.mean()), "kl_per_token": float((d / numpy.maximum(n_tok, 1)).mean()),
            "policy_logp": float(lp.mean()), "ref_logp": float(lr.mean())}


# ------------------------------------------------------------------------------ the phase
def sft_on_prompts(model, tokenizer, conversations: Sequence[dict], steps: int, lr: float = 3e-4,
                   batch_size: int = 16, seed: int = 0, progress: bool = False) -> dict:
    """Supervised fine-tuning on chat conversations (``{"messages": [...]}``) with ``minillm.phases.sft``'s
    batches and loss (prompt masked out) through ``train``; used for the mixed-quality SFT that puts a
    model "in the middle" before DPO. Returns the training history."""
    from minillm.phases.sft import encode_examples, sft_batches, sft_loss
    from minillm.train import TrainConfig, train

    pairs, _ = encode_examples(list(conversations), tokenizer, model.config.context_length)
    if not pairs:
        raise ValueError(f"sft_on_prompts: no conversation fits context_length {model.config.context_length}")
    cfg = TrainConfig(steps=steps, lr=lr, warmup=max(1, steps // 10), eval_every=0, batch_size=batch_size,
                      seed=seed, progress=progress, weight_decay=0.0)
    return train(model, sft_loss, sft_batches(pairs, pairs, batch_size, tokenizer.pad_id), cfg)


def run_dpo_phase(policy, tokenizer, *, pretrained=None, steps: int = 60, beta: float = 0.1,
                  loss_type: str = "sigmoid", label_smoothing: float = 0.0, lr: float = 1e-4,
                  batch_size: int = 16, sft_steps: int = 0, sft_lr: float = 1e-3, num_samples: int = 4,
                  temperature: float = 0.7, triplets: list[dict] | None = None, pair_source: str = "sampled",
                  eval_samples: int = 2, min_pairs: int = 16, max_new_tokens: int = 48,
                  rpo_alpha: float = 0.0, add_demo: bool = True,
                  seed: int = 0, quick: bool = False, progress: bool = False, log=print) -> dict:
    """The alignment phase end to end, on ``minillm.phases.preferences``' world prompts:

    1. (``sft_steps`` > 0) mixed-quality SFT on the preference prompts (good and bad demonstrations), so
       the model lands "in the middle";
    2. preference pairs: ``triplets`` if given, else (``pair_source="sampled"``) the model samples
       ``num_samples`` replies per train prompt and the rule-based judge picks chosen/rejected, or
       (``"offline"``) the prompts' own good/bad example replies; sampled pairs fewer than ``min_pairs``
       are topped up with offline ones (reported in the pair stats);
    3. DPO against a frozen copy of the SFT model (reference log-probs precomputed once);
    4. the behaviour table on held-out prompts: before SFT (``pretrained``, if given), after SFT, after DPO,
       with the KL of the DPO policy's own samples from the reference.

    ``policy`` is trained in place. Returns a report dict (tables, pair stats, history, final metrics).
    """
    from minillm.chat.template import render_prompt
    from minillm.phases import preferences as P
    from minillm.train import TrainConfig

    train_prompts = P.make_prompts("train", seed=0)
    eval_prompts = P.make_prompts("eval", seed=0)
    if quick:
        train_prompts, eval_prompts = train_prompts[::12], eval_prompts[::10]
        max_new_tokens = min(max_new_tokens, 24)
    ctx = policy.config.context_length
    fits = lambda p: len(render_prompt(p["messages"], tokenizer)) + 16 <= ctx  # noqa: E731
    train_prompts = [p for p in train_prompts if fits(p)]
    eval_prompts = [p for p in eval_prompts if fits(p)]
    if not train_prompts or not eval_prompts:
        raise ValueError(f"dpo: no preference prompt fits context_length {ctx} (with room for a reply)")
    gen = dict(num_samples=eval_samples, temperature=temperature, max_new_tokens=max_new_tokens,
               seed=seed + 7)
    table: dict[str, dict] = {}
    if pretrained is not None:
        table["pre-trained"] = P.evaluate_behaviour(pretrained, tokenizer, eval_prompts, **gen)
    if sft_steps:
        mix = P.sft_mixture(train_prompts, seed=seed)
        h = sft_on_prompts(policy, tokenizer, mix, sft_steps, sft_lr, seed=seed, progress=progress)
        log(f"mixed-quality SFT: {sft_steps} steps on {len(mix)} demonstrations, loss {h['loss'][0]:.3f} → "
            f"{h['loss'][-1]:.3f}")
    table["SFT"] = P.evaluate_behaviour(policy, tokenizer, eval_prompts, **gen)
    if triplets is None and pair_source == "sampled":
        triplets, stats = P.sample_pairs(policy, tokenizer, train_prompts, num_samples, temperature,
                                         max_new_tokens, seed=seed + 1, add_demo=add_demo)
        if len(triplets) < min_pairs:  # a model too weak to write distinguishable replies: top up offline
            have = {json.dumps(t["prompt"]) for t in triplets}
            extra = [t for t in P.offline_pairs(train_prompts, seed) if json.dumps(t["prompt"]) not in have]
            triplets = triplets + extra[:min_pairs - len(triplets)]
            stats["offline top-up"] = len(triplets) - stats["pairs"]
    elif triplets is None and pair_source == "offline":
        triplets = P.offline_pairs(train_prompts, seed=seed)
        stats = {"pairs": len(triplets), "source": "offline (example replies)"}
    elif triplets is None:
        raise ValueError(f"dpo: pair_source must be 'sampled' or 'offline', got {pair_source!r}")
    else:
        stats = {"pairs": len(triplets), "source": "given"}
    examples, dropped = P.tokenize_triplets(triplets, tokenizer, max_length=ctx + 1)
    stats["dropped (too long)"] = dropped
    log(f"preference pairs: {stats}")
    if len(examples) < 2:
        raise ValueError(f"dpo: only {len(examples)} usable preference pairs; sample more or give a file")
    rng = numpy.random.default_rng(seed)
    order = rng.permutation(len(examples))
    n_val = max(1, len(examples) // 10)
    val = PreferenceDataset([examples[i] for i in order[:n_val]], tokenizer.pad_id)
    trn = PreferenceDataset([examples[i] for i in order[n_val:]], tokenizer.pad_id)
    cfg = DPOConfig(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, rpo_alpha=rpo_alpha,
                    pad_id=tokenizer.pad_id)
    tcfg = TrainConfig(steps=steps, lr=lr, warmup=max(1, steps // 10), eval_every=max(1, steps // 4),
                       batch_size=batch_size, seed=seed, progress=progress, weight_decay=0.0)
    history, reference = train_dpo(policy, trn, cfg, tcfg, val_set=val)
    table["DPO"] = P.evaluate_behaviour(policy, tokenizer, eval_prompts, reference=reference, **gen)
    final = {k: history[f"val_{k}"][-1] for k in ("loss", "rewards/chosen", "rewards/rejected",
                                                   "rewards/margins", "rewards/accuracies", "nll_loss")
             if f"val_{k}" in history}
    if "nll_loss" in final:  # the logged loss includes rpo_alpha · NLL; report the DPO term on its own too
        final["dpo_loss"] = final["loss"] - rpo_alpha * final["nll_loss"]
    return {"table": table, "pairs": stats, "triplets": triplets, "history": history, "final": final,
            "reference": reference, "eval_prompts": eval_prompts}


def format_table(table: dict[str, dict]) -> str:
    """The behaviour table as aligned text: one row per metric, one column per model."""
    cols = list(table)
    rows = list(dict.fromkeys(k for c in cols for k in table[c]))
    w = max(len(r) for r in rows) + 2
    lines = [" " * w + "".join(f"{c:>13}" for c in cols)]
    for r in rows:
        cells = "".join(f"{table[c][r]:>13.3f}" if r in table[c] else f"{'—':>13}" for c in cols)
        lines.append(f"{r:<{w}}{cells}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ command line
def add_arguments(p) -> None:
    """The ``minillm dpo`` options (registered by ``minillm.cli``)."""
    p.add_argument("--from", dest="from_ckpt",
                   help="SFT checkpoint to align (default: the shipped gpt_sft.npz)")
    p.add_argument("--before", help="also evaluate this checkpoint as the 'pre-trained' column")
    p.add_argument("--pairs", help="JSONL preference triplets to train on instead of sampling them")
    p.add_argument("--pair-source", choices=["sampled", "offline"], default="sampled",
                   help="sampled: the model writes two replies per prompt and the judge picks; offline: the "
                        "prompts' example good/bad replies")
    p.add_argument("--beta", type=float, default=0.1, help="strength of the KL anchor to the reference")
    p.add_argument("--loss-type", choices=list(LOSS_TYPES), default="sigmoid")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="conservative DPO (sigmoid only)")
    p.add_argument("--rpo-alpha", type=float, default=1.0,
                   help="weight of the chosen replies' NLL added to the loss (0 = pure DPO; on these tiny "
                        "models pure DPO also sinks the chosen log-probs and drifts far from the reference)")
    p.add_argument("--no-demo", action="store_true",
                   help="pairs only from the model's own samples (default: the prompt's example reply is one "
                        "more candidate)")
    p.add_argument("--sft-lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16, help="preference pairs per step")
    p.add_argument("--sft-steps", type=int, default=0,
                   help="mixed-quality SFT steps on the preference prompts before DPO (0 = none)")
    p.add_argument("--samples", type=int, default=4, help="replies sampled per prompt for the pairs")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (pairs and eval)")
    p.add_argument("--out", default="runs/dpo", help="folder for gpt_dpo.npz and pairs.jsonl")
    p.add_argument("--export-dtype", choices=["float32", "float16"], default=None)
    p.add_argument("--save-sft", help="also write the model after the mixed-quality SFT (the DPO reference)")
    p.add_argument("--quick", action="store_true", help="a few prompts (for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def main_dpo(args) -> int:
    """``minillm dpo``: run the alignment phase on a checkpoint, print the behaviour table, save the model."""
    from pathlib import Path

    from minillm import backend as Bk
    from minillm.models.gpt import GPT
    from minillm.phases.preferences import read_triplets, write_triplets
    from minillm.shipped import SHIPPED_SFT

    src = args.from_ckpt or SHIPPED_SFT
    if not Path(src).exists():
        raise SystemExit(f"minillm dpo: checkpoint {str(src)!r} does not exist (pass --from CKPT)")
    Bk.manual_seed(args.seed)
    policy, tok = GPT.load_with_tokenizer(src)
    before = GPT.load_with_tokenizer(args.before)[0] if args.before else None
    triplets = read_triplets(args.pairs) if args.pairs else None
    res = run_dpo_phase(policy, tok, pretrained=before, steps=args.steps, beta=args.beta,
                        loss_type=args.loss_type, label_smoothing=args.label_smoothing, lr=args.lr,
                        batch_size=args.batch_size, sft_steps=args.sft_steps, sft_lr=args.sft_lr,
                        rpo_alpha=args.rpo_alpha, add_demo=not args.no_demo, num_samples=args.samples,
                        temperature=args.temperature, triplets=triplets, pair_source=args.pair_source,
                        seed=args.seed, quick=args.quick, progress=not args.no_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.pairs:
        write_triplets(res["triplets"], out / "pairs.jsonl")
    policy.save_checkpoint(out / "gpt_dpo.npz", tok, dtype=args.export_dtype,
                           extra={"dpo": {"beta": args.beta, "loss_type": args.loss_type, "steps": args.steps,
                                          "from": str(src)}})
    if args.save_sft:
        res["reference"].save_checkpoint(args.save_sft, tok, dtype=args.export_dtype,
                                         extra={"sft_prefs": {"steps": args.sft_steps, "from": str(src)}})
    print(format_table(res["table"]))
    print("final DPO metrics (held-out pairs): " + ", ".join(f"{k} {v:.3f}" for k, v in res["final"].items()))
    print(f"wrote {out / 'gpt_dpo.npz'}" + ("" if args.pairs else f" and {out / 'pairs.jsonl'}"))
    return 0
