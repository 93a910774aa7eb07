"""Lesson 07: a classification head on an encoder's features: mean pooling over the real tokens and a
linear classifier, and PET's verbalizer (a label's logit is the logsumexp of its words' MLM logits)."""

from __future__ import annotations

import numpy

from minillm.exercises.checking import Case, Exercise, seeded


# ------------------------------------------------------------------------------------- mean pooling
def mean_pool_logits(hidden, attention_mask, W, b):
    real = numpy.asarray(attention_mask, dtype=numpy.float64)[:, :, None]  # (N, T, 1)
    pooled = (hidden * real).sum(axis=1) / real.sum(axis=1)  # (N, D)
    return pooled @ W + b


def _pool_with_padding(hidden, attention_mask, W, b):
    return hidden.mean(axis=1) @ W + b


def _pool_sum(hidden, attention_mask, W, b):
    real = numpy.asarray(attention_mask, dtype=numpy.float64)[:, :, None]
    return (hidden * real).sum(axis=1) @ W + b


def _pool_softmax(hidden, attention_mask, W, b):
    z = mean_pool_logits(hidden, attention_mask, W, b)
    e = numpy.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _pool_first(hidden, attention_mask, W, b):
    return hidden[:, 0] @ W + b


def _pool_cases():
    rng = seeded(701)
    for lengths, T, D, L, scale in [([5, 3, 8], 8, 6, 2, 1.0), ([1, 4], 4, 5, 3, 1.0), ([7], 7, 3, 2, 1.0),
                                    ([2, 9, 9, 1, 5], 9, 7, 4, 30.0), ([1], 1, 4, 2, 1.0)]:
        mask = (numpy.arange(T)[None, :] < numpy.asarray(lengths)[:, None]).astype(numpy.int64)
        hidden = rng.standard_normal((len(lengths), T, D)) * scale
        hidden[mask == 0] += 5.0  # padding states are not small: pooling over them shows
        yield Case((hidden, mask, rng.standard_normal((D, L)), rng.standard_normal(L)),
                   label=f"lengths {lengths}, D={D}, {L} labels")


POOL = Exercise(
    name="07.mean_pool_logits", lesson=7,
    task="Write a classifier head on an encoder's final hidden states (N, T, D): mean-pool each row over "
         "its real tokens only (attention_mask (N, T) is 1 on real tokens, 0 on padding), then apply the "
         "linear layer: logits = pooled @ W + b, shape (N, num_labels). Return the logits themselves: the "
         "cross-entropy that trains them applies the softmax.",
    signature="def mean_pool_logits(hidden: np.ndarray, attention_mask: np.ndarray, W: np.ndarray, "
              "b: np.ndarray) -> np.ndarray",
    reference=mean_pool_logits,
    cases=_pool_cases,
    mistakes={
        "padding averaged in": (_pool_with_padding,
                                "the padding positions were averaged in: weight each position by the "
                                "attention mask and divide by the number of real tokens."),
        "sum, not mean": (_pool_sum, "the pooled vector is a sum: divide by the number of real tokens."),
        "softmax applied": (_pool_softmax,
                            "you returned probabilities: return the logits; the loss applies the softmax "
                            "(a second softmax would flatten them)."),
        "first token only": (_pool_first,
                             "only the first position was read: mean pooling averages every real token."),
    },
)


# ------------------------------------------------------------------------------------- PET verbalizer
def _logsumexp(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return (m + numpy.log(numpy.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def verbalizer_logits(mlm_logits, verbalizer):
    return numpy.stack([_logsumexp(mlm_logits[:, list(ws)]) for ws in verbalizer], axis=-1)


def _verb_max(mlm_logits, verbalizer):
    return numpy.stack([mlm_logits[:, list(ws)].max(-1) for ws in verbalizer], axis=-1)


def _verb_sum(mlm_logits, verbalizer):
    return numpy.stack([mlm_logits[:, list(ws)].sum(-1) for ws in verbalizer], axis=-1)


def _verb_log_softmax_first(mlm_logits, verbalizer):
    logp = mlm_logits - _logsumexp(mlm_logits)[:, None]
    return verbalizer_logits(logp, verbalizer)


def _verb_probabilities(mlm_logits, verbalizer):
    p = numpy.exp(mlm_logits - mlm_logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return numpy.stack([p[:, list(ws)].sum(-1) for ws in verbalizer], axis=-1)


def _verb_naive(mlm_logits, verbalizer):
    with numpy.errstate(over="ignore"):
        sums = [numpy.exp(mlm_logits[:, list(ws)]).sum(-1) for ws in verbalizer]
        return numpy.log(numpy.stack(sums, axis=-1))


def _verb_cases():
    rng = seeded(702)
    yield Case((rng.standard_normal((4, 12)), [[3, 7], [1, 10]]), label="2 labels of 2 words")
    yield Case((rng.standard_normal((3, 20)) * 3, [[0], [5, 6, 7], [19, 2]]), label="3 labels, 1-3 words")
    yield Case((rng.standard_normal((1, 9)), [[8, 4, 2], [1, 3]]), label="one row")
    yield Case((rng.standard_normal((5, 30)) * 400, [[11, 12], [20, 29, 1]]), label="logits in the hundreds")


VERBALIZER = Exercise(
    name="07.verbalizer_logits", lesson=7,
    task="Write PET's verbalizer head: mlm_logits (N, V) are the MLM head's logits at each row's [MASK]; "
         "verbalizer has one list of token ids per label (e.g. [[sad, upset], [glad, happy]]). Label c's "
         "logit is the logsumexp of the logits of its words, log Σ_w exp(logit_w), computed stably (the "
         "logits can be large). Return (N, num_labels).",
    signature="def verbalizer_logits(mlm_logits: np.ndarray, verbalizer: list[list[int]]) -> np.ndarray",
    reference=verbalizer_logits,
    cases=_verb_cases,
    mistakes={
        "max": (_verb_max, "you took the largest word logit: logsumexp adds every word's evidence."),
        "sum of logits": (_verb_sum,
                          "the logits were added: add the words' exp(logit) and take the log of that sum."),
        "log-softmax first": (_verb_log_softmax_first,
                              "you normalised over the vocabulary first: use the raw logits; the "
                              "classifier's cross-entropy normalises over the labels."),
        "probabilities": (_verb_probabilities,
                          "you returned summed probabilities: return log-space logits, un-normalised."),
        "unstable": (_verb_naive,
                     "exp of a large logit overflows: subtract the row's maximum before exp and add it back "
                     "after the log."),
    },
)

EXERCISES = [VERBALIZER, POOL]
