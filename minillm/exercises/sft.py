"""Lesson 08: the chat loss mask, the shifted labels, and the unbiased pass@k estimator."""

from __future__ import annotations

import numpy

from minillm.chat.template import IGNORE_INDEX, sft_example
from minillm.exercises.checking import Case, Exercise, same_values, seeded

ROLES = ("system", "user", "assistant", "tool")


# ------------------------------------------------------------------------------------------ loss mask
def _mask(turns, header: int = 0, end: int = 1, learned=("assistant",)) -> numpy.ndarray:
    """The template's mask for turns (role, number of text tokens): each turn is a role token, its text
    and <|end|>; the knobs make the usual wrong versions."""
    out: list[int] = []
    for role, n in turns:
        on = role in learned
        out += [header if on else 0] + [int(on)] * n + [end if on else 0]
    return numpy.asarray(out, dtype=numpy.int8)


def loss_mask_reference(turns) -> numpy.ndarray:
    """1 on every token the assistant writes (its text and its closing <|end|>), 0 elsewhere."""
    return _mask(turns)


def _random_turns(rng, n_turns: int) -> list[tuple[str, int]]:
    return [(str(rng.choice(ROLES)), int(rng.integers(0, 9))) for _ in range(n_turns)]


def _mask_cases():
    yield Case(([("user", 5), ("assistant", 3)],), label="one question, one answer")
    yield Case(([("system", 4), ("user", 6), ("assistant", 12), ("tool", 5), ("assistant", 7)],),
               label="a tool-use conversation")
    yield Case(([],), label="an empty conversation")
    yield Case(([("assistant", 0)],), label="an empty assistant message")
    yield Case(([("user", 3), ("tool", 4)],), label="no assistant turn")
    rng = seeded(801)
    for n_turns in (2, 3, 5, 8, 13):
        turns = _random_turns(rng, n_turns)
        turns.append(("assistant", int(rng.integers(1, 9))))
        yield Case((turns,), label=f"{n_turns + 1} random turns")


def _same_mask(got, want) -> str | None:
    """Equal 0/1 values in the right shape, whatever the dtype (bool, int or float)."""
    try:
        g = numpy.asarray(got)
        if g.dtype.kind in "biuf" and g.shape == want.shape:
            wrong = numpy.flatnonzero(g.reshape(-1) != want.reshape(-1))
            if not len(wrong):
                return None
            i = int(wrong[0])
            whole = "".join(map(str, want))
            return (f"{len(wrong)} of {want.size} tokens differ, the first at token {i}: expected "
                    f"{int(want[i])}, got {g[i].item()!r}"
                    + (f" (the whole mask should be {whole})" if len(whole) <= 80 else ""))
    except Exception:  # noqa: BLE001 - anything the learner returned
        pass
    return same_values(got, want)


LOSS_MASK = Exercise(
    name="08.loss_mask", lesson=8,
    task="Write loss_mask(turns): a conversation is given as a list of (role, n) pairs, n being the "
         "number of tokens of that message's text (role is 'system', 'user', 'assistant' or 'tool'). The "
         "template renders each turn as one role token, the n text tokens and one <|end|> token. Return a "
         "0/1 array with one entry per rendered token that is 1 exactly on the tokens the assistant "
         "writes: the text of its messages and the <|end|> that closes each of them.",
    signature="def loss_mask(turns: list[tuple[str, int]]) -> np.ndarray",
    reference=loss_mask_reference,
    cases=_mask_cases,
    compare=_same_mask,
    mistakes={
        "role token learned": (lambda turns: _mask(turns, header=1),
                               "the <|assistant|> role token is written by the template, not by the "
                               "model, so its mask is 0."),
        "end token left out": (lambda turns: _mask(turns, end=0),
                               "the model must learn to stop: the <|end|> that closes an assistant "
                               "message is the assistant's token too."),
        "tool results learned": (lambda turns: _mask(turns, learned=("assistant", "tool")),
                                 "a tool's result is written by the tool; the model should not learn to "
                                 "predict it (only the assistant's turns are learned)."),
    },
)


# ------------------------------------------------------------------------------------------ labels
def _ids_and_mask(rng, n_turns: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    turns = _random_turns(rng, n_turns) + [("assistant", int(rng.integers(1, 6)))]
    mask = _mask(turns)
    return rng.integers(0, 500, size=len(mask)).astype(numpy.int64), mask


def _pair(ids, mask) -> tuple[numpy.ndarray, numpy.ndarray]:
    return numpy.asarray(ids, dtype=numpy.int64), numpy.asarray(mask, dtype=numpy.int8)


def _label_cases():
    yield Case(_pair([7, 3, 9, 4, 2], [0, 0, 0, 1, 1]), label="a prompt, then two assistant tokens")
    yield Case(_pair([5], [1]), label="one token")
    yield Case(_pair([5, 6], [0, 1]), label="two tokens")
    yield Case(_pair(range(10, 18), [0] * 8), label="no assistant")
    yield Case(_pair(range(10, 18), [1] * 8), label="all assistant")
    rng = seeded(802)
    for n_turns in (1, 3, 4, 6, 9):
        ids, mask = _ids_and_mask(rng, n_turns)
        yield Case((ids, mask), label=f"{n_turns + 1} random turns")


def _unshifted(ids, mask):
    return ids.astype(numpy.int64), numpy.where(mask == 1, ids, IGNORE_INDEX).astype(numpy.int64)


def _input_mask(ids, mask):
    y = numpy.where(mask[:-1] == 1, ids[1:], IGNORE_INDEX)
    return ids[:-1].astype(numpy.int64), y.astype(numpy.int64)


def _ignore_zero(ids, mask):
    return ids[:-1].astype(numpy.int64), numpy.where(mask[1:] == 1, ids[1:], 0).astype(numpy.int64)


def _inverted(ids, mask):
    return ids[:-1].astype(numpy.int64), numpy.where(mask[1:] == 0, ids[1:], IGNORE_INDEX).astype(numpy.int64)


SFT_LABELS = Exercise(
    name="08.sft_labels", lesson=8,
    task="Write sft_labels(ids, mask): turn a rendered conversation (token ids and its 0/1 loss mask, "
         "both of length T) into next-token training pairs (x, y), two int64 arrays of length T - 1. "
         "Position t reads x[t] and is trained to predict the token after it, y[t]; that label only "
         "counts when the predicted token is the assistant's, and every other label is -100, the value "
         "cross-entropy ignores.",
    signature="def sft_labels(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]",
    reference=sft_example,
    cases=_label_cases,
    mistakes={
        "no shift": (_unshifted, "position t is trained to predict the NEXT token, so x and y are the ids "
                                 "offset by one (each one token shorter than ids)."),
        "mask of the input": (_input_mask, "whether a label counts depends on the token being predicted "
                                           "(ids[t + 1]), not on the token read at position t."),
        "0 for ignored": (_ignore_zero, "0 is a real token id, so the loss would learn it: ignored "
                                        "positions need the label -100."),
        "mask inverted": (_inverted, "labels are kept where the predicted token's mask is 1 (the "
                                     "assistant wrote it), and ignored where it is 0."),
    },
)


# ------------------------------------------------------------------------------------------ pass@k
def pass_at_k_reference(n: int, c: int, k: int) -> float:
    """Chen et al. (2021): 1 - C(n-c, k) / C(n, k), as a product of factors near 1 (no huge numbers)."""
    if n - c < k:
        return 1.0
    return float(1.0 - numpy.prod(1.0 - k / numpy.arange(n - c + 1, n + 1)))


def _float_comb(a: int, b: int) -> float:
    with numpy.errstate(over="ignore", invalid="ignore"):
        return numpy.prod(numpy.arange(a - b + 1, a + 1, dtype=numpy.float64)) / numpy.prod(
            numpy.arange(1, b + 1, dtype=numpy.float64))


def _float_binomials(n, c, k):
    with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return float(1.0 - _float_comb(n - c, k) / _float_comb(n, k)) if n - c >= k else 1.0


def _no_complement(n, c, k):
    return 0.0 if n - c < k else float(numpy.prod(1.0 - k / numpy.arange(n - c + 1, n + 1)))


def _off_by_one(n, c, k):
    return 1.0 if n - c < k else float(1.0 - numpy.prod(1.0 - k / numpy.arange(n - c, n)))


def _pass_cases():
    yield Case((10, 3, 1), label="k = 1: the share that passed")
    yield Case((3, 1, 2), label="small enough to work out by hand")
    yield Case((10, 10, 4), label="n = c: every sample passed")
    yield Case((10, 0, 3), label="c = 0: none passed")
    yield Case((7, 3, 7), label="k = n")
    yield Case((5, 2, 4), label="k > n - c: any 4 of the 5 include a passing one")
    yield Case((1, 1, 1), label="one sample, it passed")
    rng = seeded(803)
    for _ in range(6):
        n = int(rng.integers(2, 60))
        c = int(rng.integers(1, n))
        k = int(rng.integers(2, n - c + 1)) if n - c >= 2 else 1
        yield Case((n, c, k))
    yield Case((2000, 37, 100), label="large n: the binomials have hundreds of digits")
    yield Case((10000, 3, 1000), label="large n and k")


PASS_AT_K = Exercise(
    name="08.pass_at_k", lesson=8,
    task="Write pass_at_k(n, c, k): with n samples generated for a prompt, of which c pass the tests, "
         "estimate the chance that at least one of k samples passes (Chen et al., 2021). Drawing k of the "
         "n samples without replacement, all k fail with probability C(n-c, k) / C(n, k); pass@k is 1 "
         "minus that, and 1.0 when fewer than k samples fail. Compute it so that n = 10,000 works (the "
         "binomials themselves have thousands of digits): write the ratio as a product of factors.",
    signature="def pass_at_k(n: int, c: int, k: int) -> float",
    reference=pass_at_k_reference,
    cases=_pass_cases,
    mistakes={
        "without the complement": (_no_complement, "C(n-c, k) / C(n, k) is the chance that all k samples "
                                                   "FAIL; pass@k is the chance that they do not."),
        "with replacement": (lambda n, c, k: 1.0 - (1.0 - c / n) ** k,
                             "1 - (1 - c/n)^k draws the k samples with replacement and is biased; the k "
                             "are distinct samples out of the n (a ratio of binomial coefficients)."),
        "float binomials": (_float_binomials,
                            "for large n the binomials overflow a float (inf / inf = nan): cancel the "
                            "ratio into factors that each stay between 0 and 1 before multiplying."),
        "product range off by one": (_off_by_one,
                                     "the product's range is off by one: write C(n-c, k) / C(n, k) out "
                                     "for n = 3, c = 1, k = 2 (it is 1/3, so pass@2 = 2/3)."),
    },
)

EXERCISES = [LOSS_MASK, SFT_LABELS, PASS_AT_K]
