"""Lesson 04: shifted targets, a stable cross-entropy, top-k / top-p sampling."""

from __future__ import annotations

import numpy

from minillm.exercises.checking import Case, Exercise, quiet, same_values, seeded


# ------------------------------------------------------------------------------------ shifted targets
def shift_targets_reference(ids):
    """A window of T+1 tokens (..., T+1) -> inputs (..., T) and the next-token targets (..., T)."""
    ids = numpy.asarray(ids)
    return ids[..., :-1], ids[..., 1:]


def _shift_cases():
    rng = seeded(401)
    yield Case((numpy.array([5, 6, 7, 8]),), label="one window of 4 tokens")
    yield Case((numpy.array([3, 9]),), label="2 tokens: one prediction")
    for shape in [(13,), (2, 9), (3, 5), (4, 4), (1, 7)]:
        yield Case((rng.integers(0, 933, shape),), label=f"token ids of shape {shape}")


def _shift_swapped(ids):
    ids = numpy.asarray(ids)
    return ids[..., 1:], ids[..., :-1]


def _shift_batch_axis(ids):
    ids = numpy.asarray(ids)
    return ids[:-1], ids[1:]


def _shift_not_shifted(ids):
    ids = numpy.asarray(ids)
    return ids[..., :-1], ids[..., :-1]


SHIFT = Exercise(
    name="04.shift_targets", lesson=4,
    task="Write shift_targets(ids): from a window of T+1 token ids, shape (T+1,) or a batch (B, T+1), return "
         "(inputs, targets), each with T positions along the last axis: the model reads every token but "
         "the last, and the target at position t is the token that follows it, at position t+1.",
    signature="def shift_targets(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]",
    reference=shift_targets_reference,
    cases=_shift_cases,
    mistakes={
        "swapped": (_shift_swapped,
                    "inputs and targets are swapped: the model reads the earlier tokens and predicts the one "
                    "after each."),
        "batch axis": (_shift_batch_axis,
                       "a batch (B, T+1) was shifted along the batch axis: shift along the last (time) axis, "
                       "ids[..., :-1] style."),
        "not shifted": (_shift_not_shifted,
                        "the targets equal the inputs: the model would learn to copy the token it already "
                        "sees. Move the targets one position later."),
    },
)


# -------------------------------------------------------------------------------------- cross-entropy
def cross_entropy_reference(logits, targets) -> float:
    """minillm's F.cross_entropy (mean over positions) on float64 NumPy inputs."""
    from minillm import F
    from minillm.tensor import Tensor

    z = Tensor(numpy.asarray(logits, dtype=numpy.float64), dtype=numpy.float64)
    return float(F.cross_entropy(z, numpy.asarray(targets)).item())


def _ce_cases():
    rng = seeded(402)
    for shape in [(1, 5), (4, 7), (2, 3, 11), (6, 933)]:
        yield Case((rng.standard_normal(shape) * 2, rng.integers(0, shape[-1], shape[:-1])),
                   label=f"logits of shape {shape}")
    yield Case((numpy.zeros((3, 933)), numpy.array([0, 5, 932])), label="uniform logits: loss ln 933")
    z = rng.uniform(900, 1000, (3, 6))
    yield Case((z, z.argmax(-1)), label="large logits (~1000), each target the most likely")
    yield Case((numpy.array([[-800.0, 0.0, 1.0], [0.0, 2.0, -790.0]]), numpy.array([0, 2])),
               label="targets 800 nats below the best logit")


@quiet
def _ce_no_shift(logits, targets):
    z = numpy.asarray(logits, dtype=numpy.float64)
    picked = numpy.take_along_axis(z, numpy.asarray(targets)[..., None], -1)[..., 0]
    return float((numpy.log(numpy.exp(z).sum(-1)) - picked).mean())


def _log_probs(logits):
    z = numpy.asarray(logits, dtype=numpy.float64)
    m = z.max(-1, keepdims=True)
    return z - m - numpy.log(numpy.exp(z - m).sum(-1, keepdims=True))


def _picked(logits, targets):
    return numpy.take_along_axis(_log_probs(logits), numpy.asarray(targets)[..., None], -1)[..., 0]


@quiet
def _ce_log_of_softmax(logits, targets):
    z = numpy.asarray(logits, dtype=numpy.float64)
    e = numpy.exp(z - z.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    return float(-numpy.log(numpy.take_along_axis(p, numpy.asarray(targets)[..., None], -1)[..., 0]).mean())


CROSS_ENTROPY = Exercise(
    name="04.cross_entropy", lesson=4,
    task="Write cross_entropy(logits, targets) for NumPy logits (..., V) and integer targets (...): the mean "
         "over positions of -log softmax(logits)[target]. Compute the log-probabilities directly, "
         "log p = z - logsumexp(z) with logsumexp(z) = m + log Σ e^(z - m) and m the row's max: it stays "
         "finite for logits near ±1000 and for targets the model finds all but impossible. Return a float.",
    signature="def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float",
    reference=cross_entropy_reference,
    cases=_ce_cases,
    mistakes={
        "no max shift": (_ce_no_shift,
                         "log Σ e^z overflows for large logits (e^1000 = inf): subtract the row's max inside "
                         "the log-sum-exp and add it back outside."),
        "log of the softmax": (_ce_log_of_softmax,
                               "the log of a softmax that underflowed to 0 is -inf: work with "
                               "log-probabilities z - logsumexp(z) instead of the log of probabilities."),
        "sum instead of mean": (lambda z, t: float(-_picked(z, t).sum()),
                                "the loss is the average over positions, not the sum."),
        "sign flipped": (lambda z, t: float(_picked(z, t).mean()),
                         "cross-entropy is minus the log-probability of the target: it is ≥ 0."),
    },
)


# -------------------------------------------------------------------------------------- top-k / top-p
def top_k_reference(logits, k: int):
    """sample_next's top-k: every logit below the k-th largest of its row becomes -inf (ties all stay)."""
    z = numpy.asarray(logits, dtype=numpy.float64)
    kk = min(k, z.shape[-1])
    kth = numpy.partition(z, -kk, axis=-1)[..., -kk:-kk + 1 or None]
    return numpy.where(z < kth, -numpy.inf, z)


def _same_kept(got, want) -> str | None:
    """The same tokens kept (finite) and dropped (-inf) as ``want``, then the same kept values."""
    w = numpy.asarray(want)
    try:
        g = numpy.asarray(got, dtype=numpy.float64)
    except Exception:  # noqa: BLE001 - anything the learner returned
        g = None
    if g is not None and g.shape == w.shape and not numpy.array_equal(numpy.isfinite(g), numpy.isfinite(w)):
        i = tuple(int(j) for j in numpy.argwhere(numpy.isfinite(g) != numpy.isfinite(w))[0])
        expected = f"{w[i]:.6g} (kept)" if numpy.isfinite(w[i]) else "-inf (dropped)"
        return f"at index {i}: expected {expected}, got {g[i]:.6g}"
    kept = numpy.isfinite(w)
    if g is None or g.shape != w.shape:
        return same_values(got, w)
    return same_values(numpy.where(kept, g, 0.0), numpy.where(kept, w, 0.0))


def _top_k_cases():
    rng = seeded(403)
    for shape, k in [((1, 10), 3), ((4, 7), 1), ((3, 933), 20), ((2, 6), 5), ((8,), 2)]:
        yield Case((rng.standard_normal(shape) * 3, k), label=f"k = {k} of {shape[-1]}")
    yield Case((rng.standard_normal((2, 5)), 9), label="k larger than the vocabulary: keep everything")
    ties = numpy.array([[1.0, 3.0, 2.0, 3.0, 0.5, 2.0], [4.0, 4.0, 4.0, 1.0, 0.0, -1.0]])
    yield Case((ties, 2), label="ties at the k-th largest value")


def _top_k_k_plus_one(logits, k):
    return top_k_reference(logits, k + 1)


def _top_k_strict(logits, k):
    z = numpy.asarray(logits, dtype=numpy.float64)
    kk = min(k, z.shape[-1])
    kth = numpy.partition(z, -kk, axis=-1)[..., -kk:-kk + 1 or None]
    return numpy.where(z <= kth, -numpy.inf, z)


def _top_k_exactly_k(logits, k):
    z = numpy.asarray(logits, dtype=numpy.float64)
    keep = numpy.argsort(z, axis=-1, kind="stable")[..., -k:]
    out = numpy.full_like(z, -numpy.inf)
    numpy.put_along_axis(out, keep, numpy.take_along_axis(z, keep, -1), -1)
    return out


TOP_K = Exercise(
    name="04.top_k_filter", lesson=4,
    task="Write top_k_filter(logits, k) for logits (..., V): keep the k largest logits of each row and set "
         "every other one to -inf, so sampling can only pick the k most likely tokens. Find the k-th largest "
         "value of the row (np.partition or np.sort) and drop what is below it; logits tied with the k-th "
         "largest all stay, as in minillm.generate. With k ≥ V nothing is dropped.",
    signature="def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray",
    reference=top_k_reference,
    cases=_top_k_cases,
    compare=_same_kept,
    mistakes={
        "k + 1 kept": (_top_k_k_plus_one,
                       "one logit too many survives: the k-th largest is the last one kept (in ascending "
                       "order it sits at index V - k)."),
        "k-th dropped": (_top_k_strict,
                         "the k-th largest logit itself was dropped: drop only the logits strictly below "
                         "it."),
        "exactly k on ties": (_top_k_exactly_k,
                              "with ties at the k-th largest value, keep all of them (compare each logit "
                              "with the k-th largest value instead of keeping k positions)."),
    },
)


def top_p_reference(probs, p: float):
    """sample_next's nucleus: the most likely tokens while the mass before each is < p, renormalised."""
    q = numpy.asarray(probs, dtype=numpy.float64)
    order = numpy.argsort(-q, axis=-1, kind="stable")
    sq = numpy.take_along_axis(q, order, axis=-1)
    before = numpy.cumsum(sq, axis=-1) - sq
    sq = numpy.where(before < p, sq, 0.0)
    out = numpy.zeros_like(q)
    numpy.put_along_axis(out, order, sq, axis=-1)
    return out / out.sum(axis=-1, keepdims=True)


def _top_p_cases():
    rng = seeded(404)
    for shape, p in [((1, 10), 0.9), ((4, 7), 0.5), ((3, 933), 0.95), ((2, 6), 0.3), ((8,), 0.75)]:
        z = rng.standard_normal(shape) * 2
        e = numpy.exp(z - z.max(-1, keepdims=True))
        yield Case((e / e.sum(-1, keepdims=True), p), label=f"top_p = {p} over {shape[-1]} tokens")
    yield Case((numpy.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]), 0.05), label="a tiny top_p: only the best")
    yield Case((numpy.array([[0.1, 0.4, 0.2, 0.3], [0.25, 0.05, 0.45, 0.25]]), 1.0), label="top_p = 1")


@quiet
def _top_p_crossing_excluded(probs, p):
    q = numpy.asarray(probs, dtype=numpy.float64)
    order = numpy.argsort(-q, axis=-1, kind="stable")
    sq = numpy.take_along_axis(q, order, axis=-1)
    sq = numpy.where(numpy.cumsum(sq, axis=-1) <= p, sq, 0.0)
    out = numpy.zeros_like(q)
    numpy.put_along_axis(out, order, sq, axis=-1)
    return out / out.sum(axis=-1, keepdims=True)


def _top_p_not_renormalised(probs, p):
    kept = top_p_reference(probs, p)
    return numpy.where(kept > 0, numpy.asarray(probs, dtype=numpy.float64), 0.0)


@quiet
def _top_p_least_likely_first(probs, p):
    q = numpy.asarray(probs, dtype=numpy.float64)
    order = numpy.argsort(q, axis=-1, kind="stable")
    sq = numpy.take_along_axis(q, order, axis=-1)
    sq = numpy.where(numpy.cumsum(sq, axis=-1) - sq < p, sq, 0.0)
    out = numpy.zeros_like(q)
    numpy.put_along_axis(out, order, sq, axis=-1)
    return out / out.sum(axis=-1, keepdims=True)


TOP_P = Exercise(
    name="04.top_p_filter", lesson=4,
    task="Write top_p_filter(probs, p) for probabilities (..., V) whose rows sum to 1: nucleus sampling "
         "keeps the smallest set of most likely tokens whose total probability reaches p. Sort each row from "
         "the most likely down and keep a token while the mass of the tokens before it is still below p (so "
         "the token that crosses p stays); zero the rest and renormalise each row to sum to 1.",
    signature="def top_p_filter(probs: np.ndarray, p: float) -> np.ndarray",
    reference=top_p_reference,
    cases=_top_p_cases,
    mistakes={
        "crossing token excluded": (_top_p_crossing_excluded,
                                    "the token whose probability carries the mass past p must stay: keep a "
                                    "token while the mass *before* it is below p."),
        "not renormalised": (_top_p_not_renormalised,
                             "the kept probabilities no longer sum to 1: divide each row by its kept mass."),
        "least likely first": (_top_p_least_likely_first,
                               "the nucleus is made of the most likely tokens: sort from the largest "
                               "probability down before accumulating."),
    },
)

EXERCISES = [SHIFT, CROSS_ENTROPY, TOP_K, TOP_P]
