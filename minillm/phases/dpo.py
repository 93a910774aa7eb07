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
this module supplies its ``loss_fn`` and ``get_batch``. The preference data (prompts, judge, pairs) comes
from ``minillm.phases.preferences``, which imports nothing from here; ``run_dpo_phase`` joins the two.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy

from minillm import backend as B
from minillm import functional as F
from minillm import options as opt
from minillm.chat.template import render_prompt
from minillm.data.objectives import pad_sequences
from minillm.nn import Module, evaluating
from minillm.peft.peft_model import PeftConfig, disable_adapter, get_peft_model, has_adapter, unload
from minillm.phases import preferences as P
from minillm.tensor import Tensor, no_grad
from minillm.train import TrainConfig, train

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
    _check_loss_options(beta, loss_type, label_smoothing)
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
    return losses.mean(), _reward_metrics(pc, pr, rc, rr, beta)


def _check_loss_options(beta: float, loss_type: str, label_smoothing: float) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo_loss: loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not (isinstance(beta, (int, float)) and beta > 0 and math.isfinite(beta)):
        raise ValueError(f"dpo_loss: beta must be a positive number, got {beta!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo_loss: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"dpo_loss: label_smoothing applies to loss_type='sigmoid' only, got {loss_type!r}")


def _reward_metrics(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float) -> dict:
    """TRL's DPOTrainer metrics of one batch, in float64 (see ``dpo_loss``)."""
    r_c = beta * (B.to_numpy(pc.data).astype(numpy.float64) - B.to_numpy(rc.data))
    r_r = beta * (B.to_numpy(pr.data).astype(numpy.float64) - B.to_numpy(rr.data))
    return {
        "rewards/chosen": float(r_c.mean()),
        "rewards/rejected": float(r_r.mean()),
        "rewards/margins": float((r_c - r_r).mean()),
        "rewards/accuracies": float((r_c > r_r).mean()),
        "logps/chosen": float(B.to_numpy(pc.data).mean()),
        "logps/rejected": float(B.to_numpy(pr.data).mean()),
    }


# ------------------------------------------------------------------------------ sequence log-probs
def pad_with_masks(seqs: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], pad_id: int = 0,
                   length: int | None = None) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Right-pad token id lists and their completion masks to one (B, T) pair of int64 arrays.

    Padding gets mask 0. A causal model never lets an earlier position see a later one, so right padding
    changes no log-prob of a real token. Unlike ``pad_sequences`` this never truncates: a sequence longer
    than ``length``, or a mask that does not match its sequence, raises.
    """
    if len(seqs) != len(masks):
        raise ValueError(f"pad_with_masks: {len(seqs)} sequences but {len(masks)} masks")
    for i, (s, m) in enumerate(zip(seqs, masks)):
        if len(s) != len(m):
            raise ValueError(f"pad_with_masks: sequence {i} has {len(s)} tokens but its mask has {len(m)}")
    T = max((len(s) for s in seqs), default=0) if length is None else int(length)
    for i, s in enumerate(seqs):
        if len(s) > T:
            raise ValueError(f"pad_with_masks: sequence {i} has {len(s)} tokens, more than length {T}")
    return pad_sequences(seqs, pad_id, T), pad_sequences(masks, 0, T)


def sequence_logps(model: Module, ids, completion_mask, average: bool = False) -> Tensor:
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
def frozen_reference(model: Module) -> Module:
    """A deep copy of ``model`` in eval mode with every parameter frozen: no gradients, and so no
    optimizer state (``train`` builds AdamW from the policy's parameters only)."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    for p in ref.parameters():
        p.grad = None
    ref.eval()
    return ref


class AdapterOffReference(Module):
    """The DPO reference as the policy itself with its adapter switched off (``disable_adapter``): the frozen
    base exactly, with no second copy of its weights. It registers no parameters of its own, so it trains
    nothing and holds no optimizer state; ``policy`` is what it runs."""

    def __init__(self, policy: Module):
        super().__init__()
        object.__setattr__(self, "policy", policy)  # not a sub-module: its parameters stay the policy's
        self.training = False

    def forward(self, ids, *args, **kwargs):
        with disable_adapter(self.policy), evaluating(self.policy), no_grad():
            return self.policy(ids, *args, **kwargs)


def reference_for(policy: Module) -> Module:
    """The reference DPO measures the policy against: the adapter switched off when the policy has one (PEFT),
    else a frozen copy of the policy as it is now."""
    return AdapterOffReference(policy) if has_adapter(policy) else frozen_reference(policy)


def weight_bytes(*models: Module) -> int:
    """Bytes of the parameter and buffer arrays the models hold, measured from the arrays: a parameter shared
    by several models (or tied inside one) counts once, and so does a sub-module reached from two models."""
    held: dict[tuple, int] = {}
    for model in models:
        for m in model.modules():
            for p in m._parameters.values():
                held["param", id(p.data)] = int(p.data.nbytes)
            for name in m._buffers:  # e.g. an NF4 base's packed codes and scales (numpy scalars included)
                b = getattr(m, name)
                held["buffer", id(m), name] = int((b.data if isinstance(b, Tensor) else b).nbytes)
    return sum(held.values())


def reference_weight_bytes(policy: Module) -> dict:
    """Measured weight bytes of the two ways to hold a PEFT policy's reference: ``adapter_off`` (the policy,
    whose arrays the reference reuses) and ``frozen_copy`` (the policy beside a frozen copy of its base, built
    here to be measured), and ``saved``, their difference."""
    ref = AdapterOffReference(policy)
    off = weight_bytes(policy, ref, ref.policy)
    copy_path = weight_bytes(policy, frozen_reference(unload(copy.deepcopy(policy))))
    return {"adapter_off": off, "frozen_copy": copy_path, "saved": copy_path - off}


# ------------------------------------------------------------------------------ data and training
@dataclass
class DPOConfig:
    """The DPO loss and its reference log-probs (TRL's DPOConfig names)."""
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
        ids, mask = pad_with_masks(seqs, masks, self.pad_id)
        out = {"idx": numpy.asarray(idx), "ids": ids, "mask": mask}
        if self.ref_chosen_logps is not None:
            out["ref_chosen_logps"] = self.ref_chosen_logps[out["idx"]]
            out["ref_rejected_logps"] = self.ref_rejected_logps[out["idx"]]
        return out


def concatenated_logps(model: Module, batch: dict, average: bool = False) -> tuple[Tensor, Tensor]:
    """(chosen, rejected) sequence log-probs of a ``PreferenceDataset.batch`` in one forward pass."""
    logps = sequence_logps(model, batch["ids"], batch["mask"], average)
    n = logps.shape[0] // 2
    return logps[:n], logps[n:]


def precompute_reference(reference: Module, dataset: PreferenceDataset, batch_size: int = 32,
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
        tot: dict[str, float] = {}
        n = 0
        with evaluating(model):
            for s in range(0, len(dataset), batch_size):
                idx = numpy.arange(s, min(s + batch_size, len(dataset)))
                loss, metrics = loss_fn(model, dataset.batch(idx))
                metrics.pop("tokens", None)
                for k, v in {"loss": float(loss.item()), **metrics}.items():
                    tot[k] = tot.get(k, 0.0) + v * len(idx)
                n += len(idx)
        return {f"val_{k}": v / n for k, v in tot.items()}

    return eval_fn


def train_dpo(policy, train_set: PreferenceDataset, config: DPOConfig, train_config,
              val_set: PreferenceDataset | None = None, reference=None) -> tuple[dict, object]:
    """Run DPO on ``policy`` (in place) with ``minillm.train.train``; returns (history, reference).

    The reference (unless given) is the policy with its adapter switched off if it has one, else a frozen
    deep copy of the policy as it is now (``reference_for``). With ``config.precompute_ref_log_probs`` its
    log-probs are computed once for every pair and the loop never calls it again.
    """
    if reference is None:
        reference = reference_for(policy)
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


def log_ratio_drift(policy: Module, reference: Module, ids, completion_mask) -> dict:
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


def samples_kl(policy: Module, reference: Module, seqs: Sequence[Sequence[int]],
               masks: Sequence[Sequence[int]], pad_id: int = 0, batch_size: int = 64) -> float:
    """``log_ratio_drift``'s KL estimate over many sequences, ``batch_size`` at a time (0.0 for none)."""
    total, n = 0.0, 0
    for s in range(0, len(seqs), batch_size):
        ids, mask = pad_with_masks(seqs[s:s + batch_size], masks[s:s + batch_size], pad_id)
        k = len(seqs[s:s + batch_size])
        total += log_ratio_drift(policy, reference, ids, mask)["kl"] * k
        n += k
    return total / n if n else 0.0


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


@dataclass
class DPOPhaseConfig:
    """What ``run_dpo_phase`` does, start to end (the ``minillm dpo`` options, minus files)."""
    steps: int = 60                # DPO steps
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    rpo_alpha: float = 0.0
    lr: float = 1e-4
    batch_size: int = 16           # preference pairs per step
    sft_steps: int = 0             # mixed-quality SFT steps before DPO (0 = none)
    sft_lr: float = 1e-3
    pair_source: str = "sampled"   # "sampled" (the model writes, the judge picks) or "offline"
    num_samples: int = 4           # replies sampled per prompt for the pairs
    add_demo: bool = True          # the prompt's example reply is one more candidate
    min_pairs: int = 16            # sampled pairs are topped up with offline ones to this many
    temperature: float = 0.7       # sampling temperature (pairs and behaviour table)
    eval_samples: int = 2          # replies per held-out prompt in the behaviour table
    max_new_tokens: int = 48
    seed: int = 0
    quick: bool = False            # a few prompts, short replies (for tests)
    progress: bool = False
    checkpoint_dir: str | None = None  # DPO training writes a resumable checkpoint.npz here

    def behaviour_sampling(self) -> dict:
        """The sampling keywords of every behaviour-table column (the same for each, so they compare)."""
        return dict(num_samples=self.eval_samples, temperature=self.temperature,
                    max_new_tokens=self.max_new_tokens, seed=self.seed + 7)


def run_dpo_phase(policy: Module, tokenizer, config: DPOPhaseConfig | None = None, *, pretrained=None,
                  triplets: list[dict] | None = None, log: Callable[[str], None] = print,
                  peft: PeftConfig | None = None, save_sft: Callable[[Module], None] | None = None) -> dict:
    """The alignment phase end to end, on ``minillm.phases.preferences``' world prompts:

    1. (``sft_steps`` > 0) mixed-quality SFT on the preference prompts, so the model lands "in the middle";
    2. preference pairs (``make_pairs``): ``triplets`` if given, else sampled and judged, or offline;
    3. DPO against a frozen copy of the SFT model (``train_on_pairs``), or with ``peft`` an adapter on the
       SFT model trained against the same model with the adapter switched off (no copy of the weights);
    4. the behaviour table on held-out prompts (``behaviour_column``): before SFT (``pretrained``, if
       given), after SFT, after DPO with the KL of the DPO policy's own samples from the reference.

    ``policy`` is trained in place; ``save_sft`` is called with the SFT model before DPO changes anything.
    Returns a report dict (tables, pair stats, history, final metrics, the trained ``policy``: with a prefix
    a wrapper around the given one, and with ``peft`` the measured ``reference_bytes``).
    """
    config = config or DPOPhaseConfig()
    if config.quick:
        config = replace(config, max_new_tokens=min(config.max_new_tokens, 24))
    train_prompts, eval_prompts = phase_prompts(tokenizer, policy.config.context_length, config.quick)
    gen = config.behaviour_sampling()
    table: dict[str, dict] = {}
    if pretrained is not None:
        table["pre-trained"] = behaviour_column(pretrained, tokenizer, eval_prompts, **gen)
    if config.sft_steps:
        mix = P.sft_mixture(train_prompts, seed=config.seed)
        h = sft_on_prompts(policy, tokenizer, mix, config.sft_steps, config.sft_lr, seed=config.seed,
                           progress=config.progress)
        log(f"mixed-quality SFT: {config.sft_steps} steps on {len(mix)} demonstrations, loss "
            f"{h['loss'][0]:.3f} → {h['loss'][-1]:.3f}")
    if save_sft is not None:
        save_sft(policy)
    table["SFT"] = behaviour_column(policy, tokenizer, eval_prompts, **gen)
    triplets, examples, stats = make_pairs(policy, tokenizer, train_prompts, config, triplets)
    log(f"preference pairs: {stats}")
    extra = {}
    if peft is not None:
        policy = get_peft_model(policy, peft)
        extra["reference_bytes"] = reference_weight_bytes(policy)  # measured, see ``reference_line``
    history, reference, final = train_on_pairs(policy, examples, config, tokenizer.pad_id)
    table["DPO"] = behaviour_column(policy, tokenizer, eval_prompts, reference=reference, **gen)
    return {"table": table, "pairs": stats, "triplets": triplets, "history": history, "final": final,
            "reference": reference, "eval_prompts": eval_prompts, "policy": policy, **extra}


def phase_prompts(tokenizer, context_length: int, quick: bool = False) -> tuple[list[dict], list[dict]]:
    """The train and held-out preference prompts that fit ``context_length`` with room for a reply."""
    train_prompts = P.make_prompts("train", seed=0)
    eval_prompts = P.make_prompts("eval", seed=0)
    if quick:
        train_prompts, eval_prompts = train_prompts[::12], eval_prompts[::10]
    fits = lambda p: len(render_prompt(p["messages"], tokenizer)) + 16 <= context_length  # noqa: E731
    train_prompts = [p for p in train_prompts if fits(p)]
    eval_prompts = [p for p in eval_prompts if fits(p)]
    if not train_prompts or not eval_prompts:
        raise ValueError(f"dpo: no preference prompt fits context_length {context_length} (with room for a "
                         "reply)")
    return train_prompts, eval_prompts


def make_pairs(policy: Module, tokenizer, prompts: Sequence[dict], config: DPOPhaseConfig,
               triplets: list[dict] | None = None) -> tuple[list[dict], list[dict], dict]:
    """Preference triplets for ``prompts`` and their tokenized examples: ``triplets`` if given, else
    (``pair_source="sampled"``) the policy's own replies picked by the judge, or (``"offline"``) the
    prompts' good/bad example replies. Pairs too long for the context are dropped. Returns
    (triplets, examples, stats)."""
    if triplets is not None:
        stats = {"pairs": len(triplets), "source": "given"}
    elif config.pair_source == "sampled":
        triplets, stats = sampled_pairs(policy, tokenizer, prompts, config)
    elif config.pair_source == "offline":
        triplets = P.offline_pairs(prompts, seed=config.seed)
        stats = {"pairs": len(triplets), "source": "offline (example replies)"}
    else:
        raise ValueError(f"dpo: pair_source must be 'sampled' or 'offline', got {config.pair_source!r}")
    examples, stats["dropped (too long)"] = P.tokenize_triplets(
        triplets, tokenizer, max_length=policy.config.context_length + 1)
    return triplets, examples, stats


def sampled_pairs(policy: Module, tokenizer, prompts: Sequence[dict], config: DPOPhaseConfig
                  ) -> tuple[list[dict], dict]:
    """On-policy pairs (``preferences.sample_pairs``); fewer than ``config.min_pairs`` (a model too weak to
    write replies the judge can tell apart) are topped up with offline pairs of other prompts."""
    triplets, stats = P.sample_pairs(policy, tokenizer, prompts, config.num_samples, config.temperature,
                                     config.max_new_tokens, seed=config.seed + 1, add_demo=config.add_demo)
    if len(triplets) < config.min_pairs:
        have = {json.dumps(t["prompt"]) for t in triplets}
        extra = [t for t in P.offline_pairs(prompts, config.seed) if json.dumps(t["prompt"]) not in have]
        triplets = triplets + extra[:config.min_pairs - len(triplets)]
        stats["offline top-up"] = len(triplets) - stats["pairs"]
    return triplets, stats


def train_on_pairs(policy: Module, examples: list[dict], config: DPOPhaseConfig, pad_id: int
                   ) -> tuple[dict, Module, dict]:
    """DPO on tokenized pairs, a tenth (at least one) held out for validation: returns (history, the frozen
    reference, the final held-out metrics)."""
    if len(examples) < 2:
        raise ValueError(f"dpo: only {len(examples)} usable preference pairs; sample more or give a file")
    order = numpy.random.default_rng(config.seed).permutation(len(examples))
    n_val = max(1, len(examples) // 10)
    val = PreferenceDataset([examples[i] for i in order[:n_val]], pad_id)
    trn = PreferenceDataset([examples[i] for i in order[n_val:]], pad_id)
    cfg = DPOConfig(beta=config.beta, loss_type=config.loss_type, label_smoothing=config.label_smoothing,
                    rpo_alpha=config.rpo_alpha, pad_id=pad_id)
    steps = config.steps
    tcfg = TrainConfig(steps=steps, lr=config.lr, warmup=max(1, steps // 10), eval_every=max(1, steps // 4),
                       batch_size=config.batch_size, seed=config.seed, progress=config.progress,
                       weight_decay=0.0, out_dir=config.checkpoint_dir,
                       checkpoint_every=max(1, steps // 4) if config.checkpoint_dir else 0)
    history, reference = train_dpo(policy, trn, cfg, tcfg, val_set=val)
    return history, reference, final_metrics(history, config.rpo_alpha)


def final_metrics(history: dict, rpo_alpha: float = 0.0) -> dict:
    """The last held-out DPO metrics (TRL names); with RPO also the DPO term alone (``dpo_loss``)."""
    final = {k: history[f"val_{k}"][-1] for k in ("loss", "rewards/chosen", "rewards/rejected",
                                                   "rewards/margins", "rewards/accuracies", "nll_loss")
             if f"val_{k}" in history}
    if "nll_loss" in final:  # the logged loss includes rpo_alpha · NLL; report the DPO term on its own too
        final["dpo_loss"] = final["loss"] - rpo_alpha * final["nll_loss"]
    return final


def behaviour_column(model: Module, tokenizer, prompts: Sequence[dict], reference=None, num_samples: int = 2,
                     temperature: float = 1.0, max_new_tokens: int = 48, seed: int = 0) -> dict:
    """One column of the behaviour table: ``preferences.evaluate_behaviour``'s rates on sampled replies and,
    with a ``reference``, the KL estimate E_y~π[log π(y|x) − log π_ref(y|x)] on those same samples."""
    rates, seqs, masks = P.sampled_behaviour(model, tokenizer, prompts, num_samples, temperature,
                                             max_new_tokens, seed)
    if reference is not None:
        rates["KL to reference (nats/reply)"] = samples_kl(model, reference, seqs, masks, tokenizer.pad_id)
    return rates


def format_behaviour_table(table: dict[str, dict]) -> str:
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
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``minillm dpo`` options (registered by ``minillm.cli``)."""
    from minillm.models.auto import add_model_arguments
    from minillm.phases.sft import add_peft_arguments

    add_model_arguments(p, "--from", "from_ckpt", "SFT checkpoint to align, GPT or Llama (default: the "
                                                  "shipped gpt_sft.npz)")
    add_peft_arguments(p)
    p.add_argument("--before", type=opt.input_file,
                   help="also evaluate this checkpoint as the 'pre-trained' column")
    p.add_argument("--pairs", type=opt.input_file,
                   help="JSONL preference triplets to train on instead of sampling them")
    p.add_argument("--pair-source", choices=["sampled", "offline"], default="sampled",
                   help="sampled: the model writes two replies per prompt and the judge picks; offline: the "
                        "prompts' example good/bad replies")
    _add_loss_arguments(p)
    p.add_argument("--no-demo", action="store_true",
                   help="pairs only from the model's own samples (default: the prompt's example reply is one "
                        "more candidate)")
    p.add_argument("--sft-lr", type=opt.positive_float, default=1e-3)
    p.add_argument("--steps", type=opt.positive_int, default=80)
    p.add_argument("--lr", type=opt.positive_float, default=1e-4)
    p.add_argument("--batch-size", type=opt.positive_int, default=16, help="preference pairs per step")
    p.add_argument("--sft-steps", type=opt.nonnegative_int, default=0,
                   help="mixed-quality SFT steps on the preference prompts before DPO (0 = none)")
    p.add_argument("--samples", type=opt.positive_int, default=4,
                   help="replies sampled per prompt for the pairs")
    p.add_argument("--temperature", type=opt.positive_float, default=0.7,
                   help="sampling temperature (pairs and eval)")
    p.add_argument("--out", type=opt.output_folder, default="runs/dpo",
                   help="folder for gpt_dpo.npz (with --peft: adapter.npz), pairs.jsonl and the training "
                        "checkpoint")
    p.add_argument("--export-dtype", choices=["float32", "float16"], default=None)
    p.add_argument("--save-sft", type=opt.output_file,
                   help="also write the model after the mixed-quality SFT (the DPO reference)")
    p.add_argument("--quick", action="store_true", help="a few prompts (for tests)")
    p.add_argument("--seed", type=opt.nonnegative_int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_loss_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beta", type=opt.positive_float, default=0.1,
                   help="strength of the KL anchor to the reference")
    p.add_argument("--loss-type", choices=list(LOSS_TYPES), default="sigmoid")
    p.add_argument("--label-smoothing", type=opt.probability, default=0.0,
                   help="conservative DPO (sigmoid only)")
    p.add_argument("--rpo-alpha", type=opt.nonnegative_float, default=1.0,
                   help="weight of the chosen replies' NLL added to the loss (0 = pure DPO; on these tiny "
                        "models pure DPO also sinks the chosen log-probs and drifts far from the reference)")


def phase_config(args: argparse.Namespace) -> DPOPhaseConfig:
    """The ``minillm dpo`` options as a ``DPOPhaseConfig``."""
    return DPOPhaseConfig(steps=args.steps, beta=args.beta, loss_type=args.loss_type,
                          label_smoothing=args.label_smoothing, rpo_alpha=args.rpo_alpha, lr=args.lr,
                          batch_size=args.batch_size, sft_steps=args.sft_steps, sft_lr=args.sft_lr,
                          pair_source=args.pair_source, num_samples=args.samples, add_demo=not args.no_demo,
                          temperature=args.temperature, seed=args.seed, quick=args.quick,
                          progress=not args.no_progress)


def main(args: argparse.Namespace) -> int:
    """``minillm dpo``: run the alignment phase on a checkpoint, print the behaviour table, save the model
    (with ``--peft``: the adapter, or with ``--merge`` the model with LoRA folded in)."""
    from pathlib import Path

    from minillm import backend as Bk
    from minillm.models.auto import load_causal_lm, model_source
    from minillm.phases.sft import peft_config_from_args
    from minillm.shipped import SHIPPED_SFT

    src = str(model_source(args, "from_ckpt", SHIPPED_SFT))
    Bk.manual_seed(args.seed)
    policy, tok = load_causal_lm(src)
    before = load_causal_lm(args.before)[0] if args.before else None
    triplets = P.read_triplets(args.pairs) if args.pairs else None
    config = replace(phase_config(args), checkpoint_dir=str(Path(args.out)))  # resumable checkpoint.npz there
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    peft = peft_config_from_args(args)
    # an adapter names its base: the SFT model when this run fine-tunes one first
    sft_path = args.save_sft or (str(out / "sft.npz") if peft and args.sft_steps and not args.merge else None)
    save_sft = None if sft_path is None else lambda m: m.save_checkpoint(
        sft_path, tok, dtype=args.export_dtype, extra={"sft_prefs": {"steps": args.sft_steps, "from": src}})
    res = run_dpo_phase(policy, tok, config, pretrained=before, triplets=triplets, peft=peft,
                        save_sft=save_sft)
    if not args.pairs:
        P.write_triplets(res["triplets"], out / "pairs.jsonl")
    written = write_dpo_model(res["policy"], tok, args, peft, base=sft_path or str(src))
    print(format_behaviour_table(res["table"]))
    print("final DPO metrics (held-out pairs): " + ", ".join(f"{k} {v:.3f}" for k, v in res["final"].items()))
    print(reference_line(res))
    print(f"wrote {written}" + ("" if args.pairs else f" and {out / 'pairs.jsonl'}"))
    return 0


def write_dpo_model(policy: Module, tokenizer, args: argparse.Namespace, peft: PeftConfig | None, base: str):
    """Write the aligned model into ``--out``: gpt_dpo.npz, or with ``--peft`` adapter.npz naming ``base``
    (gpt_dpo.npz again with ``--merge``); returns the path written."""
    from pathlib import Path

    from minillm.phases.sft import save_peft_result

    extra = {"dpo": {"beta": args.beta, "loss_type": args.loss_type, "steps": args.steps, "from": base}}
    path = Path(args.out) / ("adapter.npz" if peft and not args.merge else "gpt_dpo.npz")
    if peft:
        save_peft_result(policy, peft, path, tokenizer, base, args.merge, args.export_dtype, extra)
    else:
        policy.save_checkpoint(path, tokenizer, dtype=args.export_dtype, extra=extra)
    return path


def reference_line(res: dict) -> str:
    """What the DPO reference was and, with an adapter, the weight bytes it saved (measured)."""
    if "reference_bytes" not in res:
        return f"reference: a frozen copy of the SFT model ({weight_bytes(res['reference']) / 1e6:.1f} MB)"
    saved = res["reference_bytes"]["saved"]
    return f"reference: adapter off, saves {saved / 1e6:.1f} MB ({saved:,d} bytes) vs a frozen copy"
