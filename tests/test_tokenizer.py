"""Byte-level BPE: exact round-trips, special tokens, training against a naive reference, files."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm.data.world import generate_corpus_chars, train_default_tokenizer
from minillm.tokenizer import (
    DEFAULT_SPECIAL_TOKENS,
    BPETokenizer,
    TokenizerError,
    _merge,
    _merge_by_rank,
    load_default_tokenizer,
)

SPECIALS = DEFAULT_SPECIAL_TOKENS

# ----------------------------------------------------------------------------------- text strategies
# Any Unicode scalar value except surrogates (which UTF-8 cannot encode), weighted towards the hard parts:
# emoji (4 bytes), combining marks, whitespace runs, apostrophes, digits and special-token look-alikes.
_any_char = st.characters(exclude_categories=("Cs",))
_hard = st.sampled_from([
    "😀", "👩‍👩‍👧", "e\u0301", "\u0301", "\u200d", "  ", "\n\n", "\t \n", " \u00a0", "'s", "'ll", "9",
    "١٢", "²", "_", "ﬁ", "日本語", "<|", "|>", "<|endoftext", "endoftext|>", "[MASK", "<extra_id_",
])
_pieces = st.one_of(st.text(_any_char, max_size=8), _hard, st.sampled_from(SPECIALS),
                    st.sampled_from(["Mia went to the market.", " She bought 3 apples", " so she had 2"]))
unicode_text = st.lists(_pieces, max_size=12).map("".join)
cheap = settings(max_examples=150)  # these run in about a millisecond each: afford more examples


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    """A small tokenizer trained on world text plus some non-ASCII text, so multi-byte merges exist."""
    text = generate_corpus_chars(20_000, seed=1) + " naïve café 日本語 日本語 😀😀 ١٢٣ " * 20
    return BPETokenizer.train(text, 256 + 150 + len(SPECIALS))


@pytest.fixture(scope="module")
def shipped() -> BPETokenizer:
    return load_default_tokenizer()


# ----------------------------------------------------------------------------------- round trips
@cheap
@given(unicode_text)
def test_roundtrip_ordinary(tok, shipped, text):
    for t in (tok, shipped):
        ids = t.encode(text, allowed_special="none")
        assert t.decode(ids) == text
        assert all(i < 256 + len(t.merges) for i in ids)  # no special id from literal text


@cheap
@given(unicode_text)
def test_roundtrip_with_specials_allowed(tok, text):
    ids = tok.encode(text, allowed_special="all")
    assert tok.decode(ids) == text
    # every special-token occurrence (left to right, longest first) became exactly one special id
    specials_out = [tok.id_to_token(i) for i in ids if i in tok.special_tokens.values()]
    assert specials_out == _special_spans(text)


def _special_spans(text: str) -> list[str]:
    """Reference: the special-token occurrences in text, left to right, longest match first."""
    out, i = [], 0
    ordered = sorted(SPECIALS, key=len, reverse=True)
    while i < len(text):
        for s in ordered:
            if text.startswith(s, i):
                out.append(s)
                i += len(s)
                break
        else:
            i += 1
    return out


@cheap
@given(unicode_text)
def test_encode_matches_merges_applied_in_order(tok, text):
    """Reference encoder: pre-split, then apply every merge in the order it was learned."""
    ref = []
    for word in tok._split.findall(text):
        ids = list(word.encode("utf-8"))
        for rank, pair in enumerate(tok.merges):
            ids = _merge(ids, pair, 256 + rank)
        ref.extend(ids)
    assert tok.encode(text, allowed_special="none") == ref


def test_presplit_covers_all_text_and_keeps_words_apart(tok):
    text = "Mia's 12 apples,  and\n\n  Tom's!"
    words = tok._split.findall(text)
    assert "".join(words) == text
    assert words == ["Mia", "'s", " 1", "2", " apples", ",", " ", " and", "\n\n ", " Tom", "'s", "!"]
    # a merge never spans two pre-split words: each word's tokens decode to exactly that word
    for w in words:
        assert tok.decode(tok.encode(w)) == w


# ----------------------------------------------------------------------------------- special tokens
def test_special_tokens_are_single_ids_at_the_top(tok):
    assert list(tok.special_tokens) == SPECIALS
    assert sorted(tok.special_tokens.values()) == list(range(tok.vocab_size - len(SPECIALS), tok.vocab_size))
    assert tok.eos_id == tok.special_tokens["<|endoftext|>"] and tok.pad_id == tok.special_tokens["<|pad|>"]
    for s in SPECIALS:
        assert tok.encode(s, allowed_special="all") == [tok.special_tokens[s]]
        assert tok.token_to_id(s) == tok.special_tokens[s] and tok.id_to_token(tok.special_tokens[s]) == s
    ids = tok.encode("<|pad|><|pad|>a<|endoftext|>", allowed_special="all")
    assert ids[:2] == [tok.pad_id, tok.pad_id] and ids[-1] == tok.eos_id


def test_literal_special_text_is_not_a_special_id_unless_allowed(tok):
    text = "Hi<|endoftext|> there [MASK]"
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>' at position 2.*allowed_special"):
        tok.encode(text)  # the default refuses, like tiktoken
    plain = tok.encode(text, allowed_special="none")
    assert tok.eos_id not in plain and tok.special_tokens["[MASK]"] not in plain
    assert tok.decode(plain) == text
    assert tok.encode(text, allowed_special="all").count(tok.eos_id) == 1
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        tok.encode(text, allowed_special={"<|endoftext|>"})  # only some allowed: the other still raises
    ids = tok.encode("a<|endoftext|>b", allowed_special={"<|endoftext|>"})
    assert ids.count(tok.eos_id) == 1
    with pytest.raises(ValueError, match="doesn't know"):
        tok.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(ValueError, match="allowed_special must be"):
        tok.encode("x", allowed_special="some")
    with pytest.raises(TypeError, match="must be str"):
        tok.encode(b"bytes")


def test_special_tokens_are_never_merged():
    """Training text full of special-token text: it is cut out, so no merge learns from it."""
    text = ("<|endoftext|>[MASK]<|user|>" * 500) + "ab ab ab"
    t = BPETokenizer.train(text, 256 + 10 + len(SPECIALS))
    learned = [t.id_to_token(256 + r) for r in range(len(t.merges))]
    assert learned == ["ab", " ab"]  # the only pairs outside the special-token text
    assert t.vocab_size == 256 + 2 + len(SPECIALS)  # ran out of pairs: stopped early, smaller vocab


def test_decode_bad_ids_and_partial_characters(tok):
    with pytest.raises(ValueError, match=f"token id {tok.vocab_size} is out of range for vocab_size"):
        tok.decode([1, tok.vocab_size])
    with pytest.raises(ValueError, match="token id -1"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="must be integers, got 3.0"):
        tok.decode([1, 3.0])
    ids = tok.encode("Mia went home.")
    assert tok.decode(np.array(ids)) == tok.decode([np.int64(i) for i in ids]) == "Mia went home."
    cut = tok.encode("😀")[:1] if len(tok.encode("😀")) > 1 else list("😀".encode())[:2]
    assert tok.decode(cut) == "\ufffd"  # a sequence cut mid-character decodes, marked, without raising
    with pytest.raises(UnicodeDecodeError):
        tok.decode(cut, errors="strict")


def test_token_to_id_and_back(tok):
    for i in range(tok.vocab_size):
        s = tok.id_to_token(i)
        if i in tok.special_tokens.values() or "\\x" not in s:
            assert tok.token_to_id(s) == i
    with pytest.raises(KeyError, match="not a single token"):
        tok.token_to_id("zzzzqqqq")


# ----------------------------------------------------------------------------------- training
def _naive_train(text: str, n_merges: int) -> list[tuple[int, int]]:
    """Reference BPE: recount every pair of every word after each merge; ties go to the smallest pair."""
    words = Counter(BPETokenizer([], [])._split.findall(text))
    seqs = {w: list(w.encode("utf-8")) for w in words}
    merges = []
    for _ in range(n_merges):
        counts = Counter()
        for w, f in words.items():
            for p in zip(seqs[w], seqs[w][1:]):
                counts[p] += f
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        seqs = {w: _merge(s, best, 255 + len(merges)) for w, s in seqs.items()}
    return merges


@given(st.lists(st.sampled_from(["aaa", "ab", "abab", " ab", "ba", "né", "😀😀", " the", "aa a", "\n"]),
                max_size=30).map("".join), st.integers(0, 20))
@cheap
def test_incremental_training_matches_naive_recount(text, n_merges):
    t = BPETokenizer.train(text, 256 + n_merges, special_tokens=[])
    assert t.merges == _naive_train(text, n_merges)


def test_incremental_training_matches_naive_recount_on_world_text():
    text = generate_corpus_chars(3_000, seed=11) + " aaaa aaaaa ababab 😀😀😀 "
    t = BPETokenizer.train(text, 256 + 120, special_tokens=[])
    assert t.merges == _naive_train(text, 120)


def test_training_is_deterministic_and_sized(tok):
    text = generate_corpus_chars(20_000, seed=1) + " naïve café 日本語 日本語 😀😀 ١٢٣ " * 20
    again = BPETokenizer.train(text, tok.vocab_size)
    assert again == tok and again.vocab_size == tok.vocab_size == 256 + 150 + len(SPECIALS)
    with pytest.raises(ValueError, match=r"vocab_size=100 is smaller than 256 byte tokens \+ 31 special"):
        BPETokenizer.train("abc", 100)


# ----------------------------------------------------------------------------------- files
def test_save_load_roundtrip_and_readable(tok, tmp_path):
    path = tmp_path / "sub" / "tok.json"
    tok.save(path)
    d = json.loads(path.read_text(encoding="utf-8"))
    assert d["format"] == "minillm-bpe" and d["vocab_size"] == tok.vocab_size
    assert d["merged_tokens"][str(256)] == tok.id_to_token(256)  # readers see what each merge spells
    back = BPETokenizer.load(path)
    assert back == tok
    text = "Mia went to the café 😀 <|endoftext|>"
    assert back.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # no temp file left behind


FIRST_MERGE = r'"merges": \[\n  \[\d+, \d+\]'


@pytest.mark.parametrize("corrupt, message", [
    (lambda s: s[: len(s) // 2], "corrupt JSON at line"),
    (lambda s: "[1, 2]", "expected a JSON object"),
    (lambda s: s.replace('"minillm-bpe"', '"other"'), "'format' is 'other'"),
    (lambda s: s.replace('"version": 1', '"version": 99'), "reads version 1"),
    (lambda s: re.sub(FIRST_MERGE, '"merges": [[9999, 1]', s), "refers to an id not defined"),
    (lambda s: re.sub(FIRST_MERGE, '"merges": [["a", 1]', s), "expected a pair of integer"),
    (lambda s: s.replace('"<|pad|>": ', '"<|pad|>": 1 + '), "corrupt JSON"),
    (lambda s: s.replace('"vocab_size": ', '"vocab_size": 1'), "'vocab_size' says"),
])
def test_corrupt_file_gives_clear_error(tok, tmp_path, corrupt, message):
    path = tmp_path / "tok.json"
    tok.save(path)
    path.write_text(corrupt(path.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(TokenizerError, match=message) as e:
        BPETokenizer.load(path)
    assert str(path) in str(e.value)


def test_tampered_merges_and_bad_files(tok, tmp_path):
    path = tmp_path / "tok.json"
    d = tok.to_dict()
    d["merges"][0], d["merges"][1] = d["merges"][1], d["merges"][0]  # readable tokens no longer match
    path.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(TokenizerError):
        BPETokenizer.load(path)
    d = tok.to_dict()
    d["special_tokens"]["<|pad|>"] = 3
    path.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(TokenizerError, match="special token ids must be"):
        BPETokenizer.load(path)
    with pytest.raises(TokenizerError, match="does not exist"):
        BPETokenizer.load(tmp_path / "missing.json")
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(TokenizerError, match="not UTF-8"):
        BPETokenizer.load(path)


# ----------------------------------------------------------------------------------- the shipped one
def test_shipped_tokenizer_is_reproduced_by_its_recipe(shipped):
    assert train_default_tokenizer(out_path=None) == shipped
    assert list(shipped.special_tokens) == SPECIALS


def test_shipped_tokenizer_compresses_held_out_world_text(shipped):
    held_out = generate_corpus_chars(50_000, seed=12345)  # the recipe trains on seed 0
    ids = shipped.encode(held_out)
    assert shipped.decode(ids) == held_out
    assert len(held_out.encode("utf-8")) / len(ids) > 3.5  # bytes per token (measured: 3.72)
    for word in [" Mia", " apples", " Oakdale", " degrees", "Question", " weather"]:
        assert len(shipped.encode(word)) == 1, word


def test_bench_tokenizer_quick_runs(capsys):
    from minillm.cli import main

    assert main(["bench", "tokenizer", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "train zipf   0.20 MB -> vocab  2000" in out and "out of pairs" in out and "bytes/token" in out


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="MiaTomwentothemarketdsplyg\u00e9 ", min_size=65, max_size=600).map(
    lambda s: s.replace(" ", "")))
def test_a_long_word_gets_the_ids_of_one_merge_pass_per_rank(shipped, word):
    """Past 64 bytes a word is cut where no token can join two bytes, and very long pieces merge by a
    heap: both must give exactly what applying the merges one rank at a time gives."""
    data = word.encode("utf-8")
    expected = shipped._encode_bytes(data)  # the one-pass-per-merge path, whatever the length
    assert shipped._encode_word(word) == expected
    assert _merge_by_rank(list(data), shipped._ranks) == expected


def test_a_megabyte_single_word_encodes_and_round_trips(shipped):
    word = "".join(c for c in generate_corpus_chars(1_300_000, seed=5) if c.isalpha())[:1_000_000]
    ids = shipped.encode(word)
    assert shipped.decode(ids) == word and len(ids) < len(word)
