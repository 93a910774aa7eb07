"""Sentiment classification over the world: short reviews of its objects, labelled positive or negative.

Every review says what someone thought of an object with one adjective from the world's sentiment tables,
and half of them negate it ("The cake was not tasty."). Each adjective and the word "not" occur equally
often under both labels, so no single word predicts the label: a bag-of-words classifier stays near chance
(``bag_of_words_accuracy`` measures it) and a model has to read "not" together with the adjective.
The pre-training stories contain the same construction ("The egg was not stale. So she was glad."), which
is what a pre-trained encoder can transfer: ``cloze_prompt`` ends a review with "So she was[MASK]." and
``VERBALIZER`` names the mood words a masked-LM head would put there for each label.
"""

from __future__ import annotations

import random
import re

import numpy

from minillm.data.world import ADJECTIVES, NAMES, OBJECTS, OPINION_ADJECTIVES, PLACES, PRONOUNS

LABELS = ("negative", "positive")  # label id 0, 1
VERBALIZER = ((" sad", " upset"), (" glad", " happy"))  # the stories' mood words per label, for a cloze head

_TEMPLATES = [
    "{name} {verb} {a_obj} at the {place}. The {obj} was {neg}{adj}.",
    "{name} said that the {obj} from the {place} was {neg}{adj}.",
    "{name} thought the {obj} was {neg}{adj}, and {pron} told {friend} so.",
    "The {obj} that {name} {verb} at the {place} was {neg}{adj}.",
]


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def make_review(rng: random.Random, negated: bool | None = None) -> tuple[str, int]:
    """One review and its label (1 positive, 0 negative): the adjective's sign, flipped by "not"."""
    name = rng.choice(list(NAMES))
    friend = rng.choice([n for n in NAMES if n != name])
    place = rng.choice([p for p, v in PLACES.items() if v["kind"] in ("shop", "indoor")])
    obj = rng.choice(PLACES[place]["objects"])
    food = OBJECTS[obj]["food"]
    adj = rng.choice(OPINION_ADJECTIVES["food" if food else "thing"])
    negated = rng.random() < 0.5 if negated is None else negated
    text = rng.choice(_TEMPLATES).format(
        name=name, friend=friend, place=place, obj=obj, a_obj=_article(obj), adj=adj,
        verb="ate" if food else rng.choice(["got", "saw"]), neg="not " if negated else "",
        pron=PRONOUNS[NAMES[name]]["subject"])
    return text, int(ADJECTIVES[adj] * (-1 if negated else 1) > 0)


def sentiment_dataset(n: int, seed: int = 0) -> tuple[list[str], numpy.ndarray]:
    """``n`` reviews and labels (int64, 1 = positive), deterministic per seed, classes balanced in
    expectation. Different seeds give different (overlapping only by chance) sets: use one for
    training and another for testing."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        t, y = make_review(rng)
        texts.append(t)
        labels.append(y)
    return texts, numpy.asarray(labels, dtype=numpy.int64)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def bag_of_words_accuracy(train_texts, train_labels, test_texts, test_labels, steps: int = 300,
                          lr: float = 0.5) -> float:
    """Test accuracy of a logistic-regression classifier on word counts (a baseline that ignores order)."""
    vocab = sorted({w for t in train_texts for w in _words(t)})
    index = {w: i for i, w in enumerate(vocab)}

    def featurise(texts):
        X = numpy.zeros((len(texts), len(vocab) + 1))
        X[:, -1] = 1.0  # bias
        for r, t in enumerate(texts):
            for w in _words(t):
                if w in index:
                    X[r, index[w]] += 1
        return X

    X, y = featurise(train_texts), numpy.asarray(train_labels, dtype=float)
    w = numpy.zeros(X.shape[1])
    for _ in range(steps):  # full-batch gradient descent on the logistic loss
        p = 1 / (1 + numpy.exp(-X @ w))
        w -= lr * X.T @ (p - y) / len(y)
    pred = (featurise(test_texts) @ w) > 0
    return float((pred == numpy.asarray(test_labels, dtype=bool)).mean())


def cloze_prompt(text: str) -> str:
    """The review followed by a cloze template in the story corpus's words: "... So she was[MASK]."
    (the reviewer's pronoun; ``[MASK]`` glued to "was" because the masked word token carries its space)."""
    name = next((w for w in re.findall(r"[A-Z][a-z]+", text) if w in NAMES), None)
    pron = PRONOUNS[NAMES[name]]["subject"] if name else "they"
    return f"{text} So {pron} {'were' if pron == 'they' else 'was'}[MASK]."
