"""Lesson 11: masked sequence log-probs and the DPO loss with its metrics."""

from __future__ import annotations

import numpy

from minillm.exercises.checking import Case, Exercise, seeded


# ------------------------------------------------------------------------------ sequence log-probs
def _log_softmax(z):
    s = z - z.max(axis=-1, keepdims=True)
    return s - numpy.log(numpy.exp(s).sum(axis=-1, keepdims=True))


def _token_logps(logits, ids, log_probs=_log_softmax, shift: bool = True):
    """(B, T-1) log p(ids[:, t] | ids[:, <t]) for t = 1..T-1 (or, unshifted, logit t scoring token t)."""
    lp = log_probs(logits[:, :-1] if shift else logits[:, 1:])
    return numpy.take_along_axis(lp, ids[:, 1:, None], axis=-1)[..., 0]


def sequence_logps_reference(logits, ids, completion_mask):
    """Σ_t mask[t] · log softmax(logits[t-1])[ids[t]] per row: minillm.phases.dpo.sequence_logps on
    logits already computed (logits[:, t] predicts ids[:, t+1]; position 0 is never scored)."""
    return (_token_logps(logits, ids) * completion_mask[:, 1:]).sum(axis=1)


def _no_shift(logits, ids, completion_mask):
    return (_token_logps(logits, ids, shift=False) * completion_mask[:, 1:]).sum(axis=1)


def _mask_ignored(logits, ids, completion_mask):
    return _token_logps(logits, ids).sum(axis=1)


def _mean_not_sum(logits, ids, completion_mask):
    m = completion_mask[:, 1:]
    return (_token_logps(logits, ids) * m).sum(axis=1) / m.sum(axis=1)


def _unshifted_softmax(z):
    with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
        e = numpy.exp(z)
        return numpy.log(e / e.sum(axis=-1, keepdims=True))


def _no_max_shift(logits, ids, completion_mask):
    with numpy.errstate(invalid="ignore"):
        return (_token_logps(logits, ids, log_probs=_unshifted_softmax) * completion_mask[:, 1:]).sum(axis=1)


def _probs_not_logs(logits, ids, completion_mask):
    probs = lambda z: numpy.exp(_log_softmax(z))  # noqa: E731
    return (_token_logps(logits, ids, log_probs=probs) * completion_mask[:, 1:]).sum(axis=1)


def _logps_cases():
    """Prompt + completion + right padding, rows of different lengths; tiny and wide vocabularies; logits
    in the thousands (exp overflows without the max shift)."""
    rng = seeded(111)
    for (b, t, v), scale, label in [((1, 2, 3), 1.0, "one prompt token, one reply token"),
                                    ((2, 5, 7), 1.0, ""), ((3, 8, 11), 3.0, "ragged prompts and padding"),
                                    ((4, 6, 50), 2.0, ""), ((2, 7, 9), 1e3, "logits in the thousands")]:
        ids = rng.integers(0, v, (b, t))
        mask = numpy.zeros((b, t), dtype=numpy.int64)
        for i in range(b):
            p = int(rng.integers(1, t))                     # prompt length (>= 1)
            c = int(rng.integers(1, t - p + 1))             # completion length (>= 1)
            mask[i, p:p + c] = 1                            # the rest is padding
        yield Case((rng.standard_normal((b, t, v)) * scale, ids, mask), label=label)


SEQUENCE_LOGPS = Exercise(
    name="11.sequence_logps", lesson=11,
    task="Write sequence_logps(logits, ids, completion_mask): log π(reply | prompt) for each row. logits "
         "(B, T, V) come from running the model on ids (B, T), so logits[:, t] is the distribution over the "
         "NEXT token ids[:, t+1]. Take log-softmax over V (stably: subtract the row maximum first), pick "
         "the log-prob of the token that actually came next, and sum it over the positions where "
         "completion_mask (B, T) is 1 (the reply; prompt and padding are 0). Position 0 is never scored. "
         "Return a (B,) array.",
    signature="def sequence_logps(logits: np.ndarray, ids: np.ndarray, completion_mask: np.ndarray) "
              "-> np.ndarray",
    reference=sequence_logps_reference,
    cases=_logps_cases,
    mistakes={
        "no shift": (_no_shift, "logits[:, t] was computed from the tokens up to t, so it predicts "
                                "ids[:, t+1], not ids[:, t]: line the logits up one position earlier."),
        "mask not applied": (_mask_ignored, "every position was summed, prompt and padding included: "
                                            "only the reply tokens (completion_mask == 1) count."),
        "mean instead of sum": (_mean_not_sum, "you averaged over the reply tokens; log π(y|x) of a whole "
                                               "reply is the sum of its tokens' log-probs."),
        "no max shift": (_no_max_shift, "exp of logits in the thousands overflows to inf: subtract each "
                                        "row's maximum logit before exponentiating (it cancels out)."),
        "probabilities, not logs": (_probs_not_logs, "you summed probabilities; sum log-probabilities "
                                                     "(log-softmax), which is what a product of "
                                                     "probabilities becomes."),
    },
)


# ------------------------------------------------------------------------------------- the DPO loss
def _logsigmoid(z):
    return numpy.minimum(z, 0) - numpy.log1p(numpy.exp(-numpy.abs(z)))


def _dpo(pc, pr, rc, rr, beta, *, ref_sign=1.0, reward_beta=None, logsig=_logsigmoid, ties_win=False):
    pc, pr, rc, rr = (numpy.asarray(a, dtype=numpy.float64) for a in (pc, pr, rc, rr))
    h = (pc - pr) - ref_sign * (rc - rr)
    loss = float(-logsig(beta * h).mean())
    rb = beta if reward_beta is None else reward_beta
    r_c, r_r = rb * (pc - rc), rb * (pr - rr)
    wins = r_c >= r_r if ties_win else r_c > r_r
    return loss, {"rewards/chosen": float(r_c.mean()), "rewards/rejected": float(r_r.mean()),
                  "rewards/margins": float((r_c - r_r).mean()), "rewards/accuracies": float(wins.mean())}


def dpo_loss_reference(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """minillm.phases.dpo.dpo_loss (sigmoid loss) on NumPy arrays: (loss, TRL's four reward metrics)."""
    return _dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)


def _naive_logsigmoid(z):
    with numpy.errstate(over="ignore", divide="ignore"):
        return numpy.log(1 / (1 + numpy.exp(-z)))


def _dpo_cases():
    rng = seeded(112)
    for n, beta, spread in [(1, 0.1, 5.0), (4, 0.1, 10.0), (7, 0.5, 3.0), (16, 0.25, 20.0)]:
        rc, rr = -rng.uniform(5, 60, n), -rng.uniform(5, 60, n)
        yield Case((rc + rng.normal(0, spread, n), rr + rng.normal(0, spread, n), rc, rr, beta))
    rc, rr = numpy.array([-12.0, -30.0, -7.0]), numpy.array([-15.0, -9.0, -7.0])
    yield Case((rc.copy(), rr.copy(), rc, rr, 0.1), label="policy = reference: every reward is 0")
    pc, pr = numpy.array([-10.0, -20.0, -5.0, -8.0]), numpy.array([-11.0, -18.0, -9.0, -8.0])
    rc, rr = numpy.array([-12.0, -20.0, -6.0, -9.0]), numpy.array([-13.0, -17.0, -10.0, -9.0])
    yield Case((pc, pr, rc, rr, 0.5), label="some pairs tie")
    rc, rr = -rng.uniform(1e3, 5e3, 6), -rng.uniform(1e3, 5e3, 6)
    pc = rc + numpy.array([4e3, -4e3, 2e3, -3e3, 50.0, -1e4])
    yield Case((pc, rr.copy(), rc, rr, 0.3), label="log-ratios in the thousands")


DPO_LOSS = Exercise(
    name="11.dpo_loss", lesson=11,
    task="Write dpo_loss_and_metrics(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta): the "
         "four (B,) arrays are log π(y|x) of the chosen and rejected replies under the policy and under the "
         "frozen reference. Return (loss, metrics): loss = mean over pairs of −log σ(β·h), where h is the "
         "policy's chosen-minus-rejected log-ratio minus the reference's; compute log σ stably (h can be in "
         "the thousands). metrics is a dict with exactly TRL's keys 'rewards/chosen', 'rewards/rejected' "
         "(means of the implicit rewards β·(log π_θ − log π_ref)), 'rewards/margins' (mean of chosen minus "
         "rejected reward) and 'rewards/accuracies' (fraction of pairs whose chosen reward is strictly "
         "higher), all plain floats.",
    signature="def dpo_loss_and_metrics(policy_chosen, policy_rejected, ref_chosen, ref_rejected, "
              "beta: float) -> tuple[float, dict]",
    reference=dpo_loss_reference,
    cases=_dpo_cases,
    mistakes={
        "reference sign flipped": (lambda *a: _dpo(*a, ref_sign=-1.0),
                                   "the reference's log-ratio (chosen − rejected) must be subtracted from "
                                   "the policy's, not added: with policy = reference the loss is log 2."),
        "beta missing from the rewards": (lambda *a: _dpo(*a, reward_beta=1.0),
                                          "the implicit reward is β times the log-ratio; your rewards "
                                          "are the bare log-ratios."),
        "unstable log sigmoid": (lambda *a: _dpo(*a, logsig=_naive_logsigmoid),
                                 "log(1 / (1 + e^(−z))) overflows for z around −1000: use "
                                 "log σ(z) = min(z, 0) − log(1 + e^(−|z|))."),
        "ties count as wins": (lambda *a: _dpo(*a, ties_win=True),
                               "a pair whose chosen and rejected rewards are equal is not a win: "
                               "count only strictly higher chosen rewards."),
    },
)

EXERCISES = [DPO_LOSS, SEQUENCE_LOGPS]  # the order the lesson meets them
