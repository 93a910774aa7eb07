"""BPETokenizer and Hugging Face / GPT-2 files: exact ids against HF's, round trips, streaming, bad files.

The fixture (tests/fixtures/hf_tokenizer/, made offline by its make_fixture.py) is a small byte-level BPE
trained by HF ``tokenizers``; expected.json holds the ids that transformers' GPT2TokenizerFast,
GPT2Tokenizer, the Rust ``tokenizers`` library and a re-implementation of OpenAI's encoder.py agreed on.
The first part needs none of those libraries; the second (at the end) loads minillm's files in them.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
import re
import shutil
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optional import optional_import

from minillm.data.world import generate_corpus_chars
from minillm.tokenizer import (
    GPT2_SPLIT_PATTERN,
    SPLIT_PATTERN,
    BPETokenizer,
    TokenizerError,
    bytes_to_unicode,
    gpt2_pattern,
    load_default_tokenizer,
    to_hf_regex,
)

FIXTURE = Path(__file__).parent / "fixtures" / "hf_tokenizer"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
TEXTS = {k: v["text"] for k, v in EXPECTED["texts"].items()}
cheap = settings(max_examples=150, deadline=None)


def _folder(tmp: Path, *names: str) -> Path:
    """A copy of just these fixture files (so from_pretrained can't fall back on the others)."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(FIXTURE / name, tmp / name)
    return tmp


@pytest.fixture(scope="module")
def hf_tok() -> BPETokenizer:
    return BPETokenizer.from_pretrained(FIXTURE)


@pytest.fixture(scope="module")
def gpt2_files_tok(tmp_path_factory) -> BPETokenizer:
    return BPETokenizer.from_pretrained(_folder(tmp_path_factory.mktemp("gpt2"), "vocab.json", "merges.txt"))


@pytest.fixture(scope="module")
def shipped() -> BPETokenizer:
    return load_default_tokenizer()


# ----------------------------------------------------------------------------------- exact ids
@pytest.mark.parametrize("files", [("tokenizer.json",), ("vocab.json", "merges.txt")])
def test_from_pretrained_gives_hf_ids_for_every_fixture_text(tmp_path, files):
    tok = BPETokenizer.from_pretrained(_folder(tmp_path, *files))
    matched = 0
    for name, entry in EXPECTED["texts"].items():
        ids = tok.encode(entry["text"], allowed_special="all")  # HF always turns added tokens into ids
        assert ids == entry["ids"], name
        assert tok.decode(ids) == entry["text"]
        matched += len(ids)
    assert matched == sum(len(e["ids"]) for e in EXPECTED["texts"].values()) > 300
    assert len(EXPECTED["agreeing_encoders"]) == 4  # the fixture's four HF/GPT-2 encoders agreed


def test_both_layouts_read_the_same_tokenizer(hf_tok, gpt2_files_tok):
    assert hf_tok == gpt2_files_tok and hf_tok.layout is not None
    assert hf_tok.special_tokens == EXPECTED["special_tokens"] == {"<|endoftext|>": 0}  # not last: any id
    assert hf_tok.eos_id == 0 and hf_tok.vocab_size == 800 and hf_tok.pattern == gpt2_pattern()
    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    vocab = json.loads((FIXTURE / "vocab.json").read_text(encoding="utf-8"))
    for text, i in vocab.items():  # every id decodes to the bytes its vocab.json text stands for
        raw = text.encode() if i == 0 else bytes(char_to_byte[c] for c in text)
        assert hf_tok.decode_bytes([i]) == raw


def test_special_token_text_follows_allowed_special(hf_tok):
    text = TEXTS["special_tokens"]
    with pytest.raises(ValueError, match=r"'<\|endoftext\|>' at position 5"):
        hf_tok.encode(text)
    plain = hf_tok.encode(text, allowed_special="none")
    assert 0 not in plain and hf_tok.decode(plain) == text
    assert hf_tok.encode(text, allowed_special={"<|endoftext|>"}).count(0) == 4


def test_ids_follow_the_vocabulary_whatever_they_are(tmp_path):
    """Shuffle every id in vocab.json: the same text encodes to the shuffled ids."""
    vocab = json.loads((FIXTURE / "vocab.json").read_text(encoding="utf-8"))
    new = list(range(len(vocab)))
    random.Random(0).shuffle(new)
    old_to_new = dict(zip(range(len(vocab)), new))
    folder = _folder(tmp_path, "merges.txt")
    (folder / "vocab.json").write_text(json.dumps({t: old_to_new[i] for t, i in vocab.items()}), "utf-8")
    tok = BPETokenizer.from_pretrained(folder)
    for entry in EXPECTED["texts"].values():
        assert tok.encode(entry["text"], allowed_special="all") == [old_to_new[i] for i in entry["ids"]]


def test_gpt2_bytes_to_unicode_table():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A" and table[0] == "Ā"
    assert all(table[b] == chr(b) for b in range(0x21, 0x7F))


# ----------------------------------------------------------------------------------- the split pattern
def _probe(code_points) -> str:
    """Every code point in the contexts a split pattern cares about: runs, after a letter, before a digit."""
    return "".join(f"a{chr(c)}{chr(c)} x{chr(c)}1 " for c in code_points)


def _assigned():
    """The code points Python's unicodedata knows (later Unicode versions may class new ones otherwise)."""
    return [c for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cn", "Cs")]


def _sampled():
    """Every assigned code point and every 50th unassigned one (all of which are alike to a regex)."""
    return [c for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cn", "Cs") or c % 50 == 0
            and not 0xD800 <= c < 0xE000]


def test_gpt2_pattern_matches_the_regex_package_on_every_assigned_character():
    regex = optional_import("regex", "the regex package (installed with transformers) is the reference")
    text = _probe(_assigned())
    assert re.findall(gpt2_pattern(), text) == regex.findall(GPT2_SPLIT_PATTERN, text)


def test_hf_form_of_minillm_pattern_splits_exactly_as_python_does():
    text = _probe(_sampled())
    portable = to_hf_regex(SPLIT_PATTERN)
    assert not re.search(r"\\[wWdDsS]", portable)  # nothing left whose meaning differs between engines
    assert re.findall(portable, text) == re.findall(SPLIT_PATTERN, text)


# ----------------------------------------------------------------------------------- writing files
def test_save_pretrained_round_trips(hf_tok, tmp_path):
    hf_tok.save_pretrained(tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["merges.txt", "tokenizer.json", "tokenizer_config.json", "vocab.json"]  # no temp files
    back = BPETokenizer.from_pretrained(tmp_path / "out")  # tokenizer.json, merges written as "a b"
    assert back == hf_tok
    (tmp_path / "out" / "tokenizer.json").unlink()
    assert BPETokenizer.from_pretrained(tmp_path / "out") == hf_tok  # vocab.json + merges.txt
    for entry in EXPECTED["texts"].values():
        assert back.encode(entry["text"], allowed_special="all") == entry["ids"]


def test_minillm_trained_tokenizer_round_trips_through_hf_files(shipped, tmp_path):
    shipped.save_pretrained(tmp_path)
    back = BPETokenizer.from_pretrained(tmp_path)
    assert back == shipped and back.layout is None and back.pattern == SPLIT_PATTERN
    (tmp_path / "tokenizer.json").unlink()
    gpt2_style = BPETokenizer.from_pretrained(tmp_path)  # vocab.json + merges.txt carry no split pattern
    assert gpt2_style.merges == shipped.merges and gpt2_style.pattern == gpt2_pattern()
    assert gpt2_style.special_tokens == shipped.special_tokens


def test_minillm_format_refuses_foreign_ids(hf_tok, tmp_path):
    with pytest.raises(TokenizerError, match="use save_pretrained"):
        hf_tok.save(tmp_path / "tok.json")


def test_two_ids_for_one_text_cannot_be_written(tmp_path):
    t = BPETokenizer([(97, 98), (256, 99), (98, 99), (97, 258)], [])  # "abc" twice: ids 257 and 259
    assert t.decode_bytes([257]) == t.decode_bytes([259]) == b"abc"
    with pytest.raises(TokenizerError, match="ids 257 and 259 are both 'abc'"):
        t.save_pretrained(tmp_path)


# ----------------------------------------------------------------------------------- two merges, one token
def _dup_merge_json(folder: Path) -> Path:
    """A tokenizer.json in which two merges make "abc", and a merge made later (rank 4) creates a pair of
    an earlier rank (3): HF then merges by a heap, not one rank at a time (see _merge_by_rank)."""
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for t in ("ab", "bc", "abc", "abcab"):
        vocab[t] = len(vocab)
    merges = [["a", "b"], ["b", "c"], ["a", "bc"], ["abc", "ab"], ["ab", "c"]]
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
             "merges": merges}
    d = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
         "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                           "use_regex": True},
         "post_processor": None, "decoder": None, "model": model}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(d), encoding="utf-8")
    return folder


def test_two_merges_making_one_token_merge_in_hf_order(tmp_path):
    tok = BPETokenizer.from_pretrained(_dup_merge_json(tmp_path))
    ids = tok.encode("abcabc")
    assert [tok.id_to_token(i) for i in ids] == ["abcab", "c"]  # one rank at a time would give abc, abc
    assert tok.decode(ids) == "abcabc"


# ----------------------------------------------------------------------------------- streaming
_bits = st.sampled_from([
    "'", "r", "e", "'re", "'ll", "l", "s", " ", "  ", "\n", "\n\n", "\t", "\r\n", "  \n", "12", "3.14",
    "x²", "東京", "😀", "\x1c", "\u00a0", "e\u0301", "<|endoftext|>", "<|end|>", "<|endo", "ftext|>", "<|",
    "|>", "<|user|>", "[MASK]", "I'll", " don't",
])
stream_text = st.lists(st.one_of(_bits, st.sampled_from(list(TEXTS.values())), st.text(max_size=6)),
                       max_size=14).map("".join)


def _chunks(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(c, len(text)) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]


@pytest.fixture(scope="module")
def gappy(shipped) -> BPETokenizer:
    """A pattern whose words leave text out (encode drops it): encode_iterable's other path."""
    return BPETokenizer(shipped.merges, list(shipped.special_tokens), r"[^\W\d_]+|\d")


@cheap
@given(stream_text, st.lists(st.integers(0, 400), max_size=30), st.sampled_from(["all", "none"]))
def test_encode_iterable_equals_encode_wherever_the_chunks_break(hf_tok, shipped, gappy, text, cuts, allowed):
    for tok in (hf_tok, shipped, gappy):
        got = list(tok.encode_iterable(_chunks(text, cuts), allowed_special=allowed))
        assert got == tok.encode(text, allowed_special=allowed)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> tuple[Path, str]:
    text = "\n".join(TEXTS.values()) * 3 + generate_corpus_chars(3_000, seed=2)
    path = tmp_path_factory.mktemp("stream") / "corpus.txt"
    path.write_text(text, encoding="utf-8", newline="")
    return path, text


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=12))
def test_encode_iterable_on_a_file_read_in_small_chunks(hf_tok, text_file, sizes):
    path, text = text_file

    def reads(f):  # chunk sizes drawn by hypothesis, cycled to the end of the file
        for size in itertools.cycle(sizes):
            chunk = f.read(size)
            if not chunk:
                return
            yield chunk

    with open(path, encoding="utf-8", newline="") as f:
        assert list(hf_tok.encode_iterable(reads(f), allowed_special="all")) == hf_tok.encode(
            text, allowed_special="all")
    with open(path, encoding="utf-8", newline="") as f:  # the usual way: line by line
        assert list(hf_tok.encode_iterable(f, allowed_special="all")) == hf_tok.encode(
            text, allowed_special="all")


def test_encode_iterable_is_lazy_and_holds_back_little(shipped):
    read = []

    def lines():
        for i in range(100_000):
            read.append(i)
            yield f"Mia went to the market {i} times.\n"

    stream = shipped.encode_iterable(lines())
    first = [next(stream) for _ in range(20)]
    assert len(read) <= 3  # ids flow out long before the input ends
    assert first == shipped.encode("".join(f"Mia went to the market {i} times.\n" for i in range(3)))[:20]


def test_encode_iterable_special_tokens(shipped):
    chunks = ["ab <|end", "oftext|> c <|e", "nd|>"]  # specials split across chunks, one a prefix of another
    ids = list(shipped.encode_iterable(chunks, allowed_special="all"))
    assert ids == shipped.encode("".join(chunks), allowed_special="all")
    assert shipped.eos_id in ids and shipped.special_tokens["<|end|>"] in ids
    with pytest.raises(ValueError, match=r"'<\|endoftext\|>' at position 3"):
        list(shipped.encode_iterable(chunks))  # same rule and message as encode
    with pytest.raises(TypeError, match="chunks must be str"):
        list(shipped.encode_iterable([b"bytes"]))


# ----------------------------------------------------------------------------------- bad files
def _edit(tmp_path: Path, name: str, change, *others: str) -> Path:
    folder = _folder(tmp_path, name, *others)
    path = folder / name
    path.write_text(change(path.read_text(encoding="utf-8")), encoding="utf-8")
    return folder


def _json_edit(change):
    def edit(text: str) -> str:
        d = json.loads(text)
        change(d)
        return json.dumps(d)
    return edit


BAD_FILES = [
    ("tokenizer.json", lambda s: s[: len(s) // 2], (), "corrupt JSON at line"),
    ("tokenizer.json", _json_edit(lambda d: d["model"].update(type="WordPiece")), (), "not a BPE tokenizer"),
    ("tokenizer.json", _json_edit(lambda d: d.update(normalizer={"type": "NFC"})), (), "normalizer"),
    ("tokenizer.json", _json_edit(lambda d: d["pre_tokenizer"].update(add_prefix_space=True)), (),
     "add_prefix_space"),
    ("tokenizer.json", _json_edit(lambda d: d["model"]["merges"].__setitem__(3, ["a", "b", "c"])), (),
     r"model.merges\[3\]"),
    ("tokenizer.json", _json_edit(lambda d: d["model"]["vocab"].pop("Ġ")), (), r"no token for byte 0x20"),
    ("tokenizer.json", _json_edit(lambda d: d["added_tokens"][0].update(lstrip=True)), (), "lstrip"),
    ("vocab.json", lambda s: s.replace('"Ġt":', '"Ġt": "x",'), ("merges.txt",), "corrupt JSON at line 1"),
    ("vocab.json", _json_edit(lambda d: d.update(he=1.5)), ("merges.txt",), "has id 1.5"),
    ("merges.txt", lambda s: s.replace("\nĠ t\n", "\nĠ  t\n"), ("vocab.json",),
     r"merges.txt:3: expected two"),
    ("merges.txt", lambda s: s.replace("\nĠ t\n", "\nĠ q\u4e00\n"), ("vocab.json",),
     r"merges.txt:3: merge 'Ġ' 'q一': 'q一' is not in the vocabulary"),
]


@pytest.mark.parametrize("name, change, others, message", BAD_FILES)
def test_bad_files_give_a_tokenizer_error_naming_the_file(tmp_path, name, change, others, message):
    folder = _edit(tmp_path, name, change, *others)
    with pytest.raises(TokenizerError, match=message) as e:
        BPETokenizer.from_pretrained(folder)
    assert str(folder / name) in str(e.value)


def test_missing_files(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json, nor vocab.json"):
        BPETokenizer.from_pretrained(tmp_path)
    with pytest.raises(TokenizerError, match="merges.txt' does not exist"):
        BPETokenizer.from_pretrained(_folder(tmp_path / "v", "vocab.json"))
    with pytest.raises(TokenizerError, match="vocab.json' does not exist"):
        BPETokenizer.from_pretrained(_folder(tmp_path / "m", "merges.txt"))


# ----------------------------------------------------------------------------------- the checks can fail
def test_a_tokenizer_with_one_merge_dropped_disagrees(tmp_path):
    """The exact-ids test has teeth: drop one merge (one that " the" needs) and the ids change."""
    lines = (FIXTURE / "merges.txt").read_text(encoding="utf-8").split("\n")
    k = lines.index("Ġt he")
    folder = _folder(tmp_path, "vocab.json")
    (folder / "merges.txt").write_text("\n".join(lines[:k] + lines[k + 1:]), encoding="utf-8")
    tok = BPETokenizer.from_pretrained(folder)
    encode = functools.partial(tok.encode, allowed_special="all")
    wrong = [n for n, e in EXPECTED["texts"].items() if encode(e["text"]) != e["ids"]]
    assert "ascii_prose" in wrong
    assert all(tok.decode(encode(t)) == t for t in TEXTS.values())  # still lossless


def test_the_split_pattern_matters(hf_tok):
    """The same merges with minillm's one-digit pattern instead of GPT-2's give other ids."""
    other = BPETokenizer(hf_tok.merges, list(hf_tok.special_tokens), SPLIT_PATTERN, hf_tok.layout)
    assert other.encode(TEXTS["numbers"]) != hf_tok.encode(TEXTS["numbers"])


# =================================================================================== against transformers
VARIED = ("Mia's 12345 apples cost $3.14, don't they? I'll see.\n\n\tnaïve café 東京 😀  end   \n"
          "def f(x):\n    return x**2  # 007\n")
ADVERSARIAL = VARIED + " x² y² m² Ⅻ a\x1cb ١٢٣ e\u0301 <|endoftext|> [MASK]<|user|> ok"


@pytest.fixture(scope="module")
def transformers():
    return optional_import("transformers", "transformers is the reference for tokenizer interop")


@pytest.fixture(scope="module")
def squares_tok() -> BPETokenizer:
    """minillm-trained, with merges GPT-2's pattern can't reach ("y²": minillm's \\w letter run)."""
    text = generate_corpus_chars(5_000, seed=3) + " x² y² area m² Ⅻ chapter 12345 678" * 40
    return BPETokenizer.train(text, 256 + 200 + 3, special_tokens=["<|endoftext|>", "[MASK]", "<|user|>"])


def _hf_loaders(transformers, folder: Path) -> dict:
    import tokenizers

    return {"PreTrainedTokenizerFast": transformers.PreTrainedTokenizerFast.from_pretrained(str(folder)),
            "AutoTokenizer": transformers.AutoTokenizer.from_pretrained(str(folder)),
            "tokenizers.Tokenizer": tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")),
            "GPT2TokenizerFast": transformers.GPT2TokenizerFast.from_pretrained(str(folder))}


def _hf_ids(hf, text: str) -> list[int]:
    out = hf.encode(text, add_special_tokens=False)
    return list(getattr(out, "ids", out))


def test_fixture_written_by_minillm_loads_in_transformers(transformers, hf_tok, tmp_path):
    hf_tok.save_pretrained(tmp_path)
    for name, hf in _hf_loaders(transformers, tmp_path).items():
        for entry in EXPECTED["texts"].values():
            assert _hf_ids(hf, entry["text"]) == entry["ids"], name
        assert _hf_ids(hf, ADVERSARIAL) == hf_tok.encode(ADVERSARIAL, allowed_special="all"), name
    fast = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path))
    assert fast.decode(hf_tok.encode(ADVERSARIAL, allowed_special="all")) == ADVERSARIAL


@pytest.mark.parametrize("which", ["shipped", "squares"])
def test_minillm_trained_tokenizer_loads_in_transformers(transformers, shipped, squares_tok, which, tmp_path):
    tok = shipped if which == "shipped" else squares_tok
    tok.save_pretrained(tmp_path)
    hfs = _hf_loaders(transformers, tmp_path)
    for name in ("PreTrainedTokenizerFast", "AutoTokenizer", "tokenizers.Tokenizer"):  # read the Split regex
        assert _hf_ids(hfs[name], ADVERSARIAL) == tok.encode(ADVERSARIAL, allowed_special="all"), name
    # transformers 5's GPT2TokenizerFast rebuilds ByteLevel with GPT-2's pattern, whatever tokenizer.json
    # says; on text without a letter run holding a non-digit number ("y²") the ids are the same
    assert _hf_ids(hfs["GPT2TokenizerFast"], VARIED) == tok.encode(VARIED)
    assert hfs["GPT2TokenizerFast"].decode(tok.encode(ADVERSARIAL, allowed_special="all")) == ADVERSARIAL


def test_gpt2_fast_ignores_the_split_regex_in_transformers_5(transformers, squares_tok, tmp_path):
    """Documents the one gap above: only the loaders that honour tokenizer.json's pre-tokenizer get "y²"."""
    squares_tok.save_pretrained(tmp_path)
    mine = squares_tok.encode(" y²")
    assert [squares_tok.id_to_token(i) for i in mine] == [" y²"]
    assert _hf_ids(transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path)), " y²") == mine
    fast = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path))
    if fast.backend_tokenizer.pre_tokenizer.__class__.__name__ == "ByteLevel":  # transformers >= 5
        assert _hf_ids(fast, " y²") != mine


@pytest.fixture(scope="module")
def rust_pairs(transformers, hf_tok, shipped, squares_tok, tmp_path_factory) -> list:
    """(minillm tokenizer, the Rust tokenizers library reading its tokenizer.json), for three tokenizers."""
    import tokenizers

    pairs = [(hf_tok, tokenizers.Tokenizer.from_file(str(FIXTURE / "tokenizer.json")))]
    for tok in (shipped, squares_tok):
        folder = tmp_path_factory.mktemp("rust")
        tok.save_pretrained(folder)
        pairs.append((tok, tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))))
    return pairs


@settings(max_examples=100, deadline=None)
@given(stream_text)
def test_random_text_matches_the_rust_tokenizer(rust_pairs, text):
    for tok, rust in rust_pairs:
        assert rust.encode(text, add_special_tokens=False).ids == tok.encode(text, allowed_special="all")


def test_hf_pre_tokenizers_split_every_character_as_minillm_does(transformers):
    """Oniguruma (HF) against Python's re, on every assigned character: GPT-2's pattern as HF's ByteLevel
    has it, and minillm's as the Split regex save_pretrained writes."""
    from tokenizers import Regex, pre_tokenizers

    as_gpt2_text = str.maketrans({chr(b): c for b, c in bytes_to_unicode().items()})

    def pieces(pattern: str, text: str) -> list[str]:  # what HF's pre-tokenizer shows: GPT-2's characters
        return [w.encode().decode("latin-1").translate(as_gpt2_text) for w in re.findall(pattern, text)]

    text = _probe(_assigned())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    assert [p for p, _ in byte_level.pre_tokenize_str(text)] == pieces(gpt2_pattern(), text)
    split = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(to_hf_regex(SPLIT_PATTERN)), "isolated"),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    text = _probe(_sampled())
    assert [p for p, _ in split.pre_tokenize_str(text)] == pieces(SPLIT_PATTERN, text)


def test_two_merges_making_one_token_agree_with_the_rust_tokenizer(transformers, tmp_path):
    import tokenizers

    folder = _dup_merge_json(tmp_path)
    rust = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok = BPETokenizer.from_pretrained(folder)
    for text in ("abcabc", "abc abcab cabcabc", "ababcbc"):
        assert rust.encode(text).ids == tok.encode(text)
