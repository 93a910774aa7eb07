"""Lesson 02: one BPE merge step and encoding with ranked merges."""

from __future__ import annotations

from functools import lru_cache

import numpy

from minillm.exercises.checking import Case, Exercise, same_values, seeded
from minillm.tokenizer import _merge


def _as_list(x):
    """A learner's NumPy array or tuple of ids read as a list (the task asks for a list)."""
    return [int(i) for i in x] if isinstance(x, (numpy.ndarray, tuple)) else x


def _same_ids(got, want) -> str | None:
    return same_values(_as_list(got), want)


# ------------------------------------------------------------------------------------------ one merge
def _merge_cases():
    rng = seeded(201)
    a, b, c = 97, 98, 99  # "a", "b", "c"
    yield Case(([a, a, a], (a, a), 256), label="'aaa' with the pair ('a', 'a')")
    yield Case(([a, a, a, a], (a, a), 256), label="'aaaa' with the pair ('a', 'a')")
    yield Case(([a, b, a, b, a, b], (a, b), 300), label="the pair three times")
    yield Case(([b, a, b, c, a, b], (a, b), 257), label="the pair at the end")
    yield Case(([c, c, a, c], (a, b), 256), label="the pair does not occur")
    yield Case(([], (a, b), 256), label="no tokens")
    yield Case(([a], (a, a), 256), label="one token")
    for n in (9, 16, 31):
        ids = [int(i) for i in rng.integers(97, 100, n)]  # three letters: pairs repeat and overlap
        yield Case((ids, (ids[3], ids[4]), 256 + n), label=f"{n} random ids from 3 values")


def _merge_advance_one(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i < len(ids) - 1 and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
        else:
            out.append(ids[i])
        i += 1
    return out


def _merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


def _merge_right_to_left(ids, pair, new_id):
    rev = _merge(list(reversed(ids)), (pair[1], pair[0]), new_id)
    return list(reversed(rev))


MERGE = Exercise(
    name="02.merge_pair", lesson=2,
    task="Write merge(ids, pair, new_id): the one step BPE training repeats. Walk through ids left to right; "
         "wherever the two tokens at positions i, i+1 equal pair, write new_id and continue after both of "
         "them, else copy the token. Occurrences never overlap: 'aaa' with the pair ('a', 'a') becomes "
         "[new, 'a']. Return a new list.",
    signature="def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]",
    reference=_merge,
    cases=_merge_cases,
    compare=_same_ids,
    mistakes={
        "advance by one": (_merge_advance_one,
                           "after a match, skip both tokens of the pair: the second one is used up and "
                           "cannot start the next pair (try 'aaa' with ('a', 'a'))."),
        "first occurrence only": (_merge_first_only,
                                  "only the first occurrence was replaced: replace every occurrence of the "
                                  "pair in one pass."),
        "right to left": (_merge_right_to_left,
                          "where occurrences overlap the leftmost one wins: scan from the start, so 'aaa' "
                          "becomes [new, 'a'], not ['a', new]."),
    },
)


# ------------------------------------------------------------------------------ encoding with merges
@lru_cache(maxsize=1)
def _shipped_merges() -> tuple[tuple[int, int], ...]:
    from minillm.tokenizer import load_default_tokenizer

    return tuple(load_default_tokenizer().merges)


@lru_cache(maxsize=1)
def _tiny_merges() -> tuple[tuple[int, int], ...]:
    from minillm.tokenizer import BPETokenizer

    tiny = "Mia bought 12 apples. Tom bought 2 apples. Mia gave Tom 1 apple, so Tom had 3 apples."
    return tuple(BPETokenizer.train(tiny, vocab_size=256 + 12, special_tokens=[]).merges)


def encode_word_reference(word: str, merges: list[tuple[int, int]]) -> list[int]:
    """minillm's BPE on one pre-split word: the earliest-learned merge present is applied first."""
    from minillm.tokenizer import BPETokenizer

    return list(BPETokenizer([tuple(m) for m in merges], [])._encode_bytes(word.encode("utf-8")))


def _encode_cases():
    shipped, tiny = list(_shipped_merges()), list(_tiny_merges())
    for w in (" apples", " apple", "Mia", " bought"):
        yield Case((w, tiny), label="the 12 merges learned from the lesson's sentence")
    words = [" market", " grandmother", " Tom", " bought", " apples", " happily", " everyone", " Mia",
             " yesterday", "Once", " together", " wonderful", " strawberries", " 7", " thunderstorm"]
    for w in words:
        yield Case((w, shipped), label="the shipped tokenizer's merges")
    yield Case((" naïve 😀", shipped), label="characters the merges never saw")
    yield Case(("", shipped), label="an empty word")
    yield Case(("aaaa", [(97, 97), (256, 256)]), label="'aaaa' with ('a','a') then (aa, aa)")
    yield Case(("xaabaa", [(97, 98), (97, 97), (120, 97)]), label="a rare pair with an early merge")
    yield Case(("abcd", [(99, 100), (98, 99), (97, 98), (256, 256)]), label="a merge of merged tokens")


def _ranks(merges):
    return {tuple(m): r for r, m in enumerate(merges)}


def _encode_most_frequent(word, merges):
    ids, ranks = list(word.encode("utf-8")), _ranks(merges)
    while len(ids) >= 2:
        pairs = [p for p in zip(ids, ids[1:]) if p in ranks]
        if not pairs:
            break
        best = max(set(pairs), key=lambda p: (pairs.count(p), -ranks[p]))
        ids = _merge(ids, best, 256 + ranks[best])
    return ids


def _encode_leftmost(word, merges):
    ids, ranks = list(word.encode("utf-8")), _ranks(merges)
    while True:
        best = next((p for p in zip(ids, ids[1:]) if p in ranks), None)
        if best is None:
            return ids
        ids = _merge(ids, best, 256 + ranks[best])


def _encode_rank_as_id(word, merges):
    ids, ranks = list(word.encode("utf-8")), _ranks(merges)
    while len(ids) >= 2:
        best = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, 1 << 60))
        if best not in ranks:
            break
        ids = _merge(ids, best, ranks[best])
    return ids


def _encode_one_pass(word, merges):
    ids, ranks = list(word.encode("utf-8")), _ranks(merges)
    for pair, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        if pair[0] < 256 and pair[1] < 256:  # only the merges of two bytes: the bytes' pairs, once
            ids = _merge(ids, pair, 256 + r)
    return ids


ENCODE = Exercise(
    name="02.encode_word", lesson=2,
    task="Write encode_word(word, merges): BPE-encode one pre-split word. Start from its UTF-8 bytes; merge "
         "number r of the list (merges[r] = (a, b)) makes the token 256 + r. Repeatedly find, among the "
         "adjacent pairs of the current tokens, the one with the lowest rank (learned earliest) and merge it "
         "everywhere (your merge from above); stop when no adjacent pair has a merge.",
    signature="def encode_word(word: str, merges: list[tuple[int, int]]) -> list[int]",
    reference=encode_word_reference,
    cases=_encode_cases,
    compare=_same_ids,
    mistakes={
        "most frequent pair": (_encode_most_frequent,
                               "encoding doesn't count pairs as training does: apply the pair whose merge "
                               "was learned earliest (lowest rank), however often it occurs in the word."),
        "leftmost pair": (_encode_leftmost,
                          "the leftmost pair that has a merge is not necessarily next: look at all adjacent "
                          "pairs and take the one with the lowest rank."),
        "rank as id": (_encode_rank_as_id,
                       "merge number r makes the token 256 + r: ids 0..255 are the bytes themselves."),
        "byte merges only": (_encode_one_pass,
                             "merging only pairs of raw bytes misses the later merges of merged tokens: keep "
                             "going on the current tokens until no adjacent pair has a merge."),
    },
)

EXERCISES = [MERGE, ENCODE]
