"""Byte-level BPE tokenizer (GPT-2 style), trained from scratch with incremental pair counts.

Ids ``0..255`` are the raw bytes, ``256..256+len(merges)-1`` are learned merges (in the order they were
learned), and the special tokens come last, as in GPT-2 (``<|endoftext|>`` is the highest id). Because the
base vocabulary is every byte, any UTF-8 text round-trips exactly: ``decode(encode(s)) == s``.

Text is first cut into "words" by a regex like GPT-2's (letters, digits, punctuation runs, whitespace, each
optionally with one leading space), so merges never cross a word boundary and the same word always gets
the same tokens. Unlike GPT-2, digits are split one per piece (as LLaMA and PaLM do) so that numbers are
written digit by digit: a tiny model can then learn arithmetic on the world's word problems.

Special tokens are single ids that are never split or merged. Literal special-token text in user data is
*not* turned into a special id unless you allow it (``encode(..., allowed_special="all")``), mirroring
tiktoken: by default ``encode`` raises if the text contains one, so a user typing ``<|endoftext|>`` can
never end a document or impersonate the assistant by accident. Use ``allowed_special="none"`` to encode such
text as ordinary bytes.

Hugging Face and GPT-2 files: ``BPETokenizer.from_pretrained(dir)`` reads GPT-2's ``vocab.json`` +
``merges.txt`` or HF's ``tokenizer.json`` (a byte-level BPE) and encodes exactly as they do (GPT-2's split
pattern, its byte -> printable-character table, merge ranks in file order, added tokens as special tokens);
``save_pretrained(dir)`` writes those files for any tokenizer, a minillm-trained one included. Such a
tokenizer keeps the file's ids (GPT-2's ``!`` is id 0, not byte 0x21): it carries an ``IdLayout`` saying
which id each byte, each merge and each special token has. minillm's own layout is ``layout=None``.
"""

from __future__ import annotations

import functools
import heapq
import json
import operator
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from minillm.checkpoint import atomic_write

DEFAULT_SPECIAL_TOKENS: list[str] = [
    "<|endoftext|>", "<|pad|>", "[MASK]", "[CLS]", "[SEP]",
    "<|system|>", "<|user|>", "<|assistant|>", "<|tool_call|>", "<|tool_result|>", "<|end|>",
] + [f"<extra_id_{i}>" for i in range(20)]

# GPT-2's pre-split pattern written for the standard ``re`` module: ``[^\W\d_]`` is "a letter" (\p{L}, and
# to re also "²" or "Ⅻ"), ``\d`` a digit (one per piece, see the module docstring), ``(?:[^\s\w]|_)``
# anything else that is not a space. ``\s+(?!\S)`` leaves the last space of a run to join the next word
# (" hello"). GPT2_SPLIT_PATTERN below is GPT-2's own.
SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
)

FORMAT = "minillm-bpe"
FORMAT_VERSION = 1
_CACHE_LIMIT = 200_000
_LONG_WORD = 64  # bytes; a longer word is cut into pieces no merge crosses (see _encode_word)
# encode_iterable: a pre-split piece is final once it ends this many characters before the text seen so far
# does. GPT-2's and minillm's patterns decide a piece by looking at most 2 characters past its end ('re).
_STREAM_LOOKAHEAD = 8


class TokenizerError(ValueError):
    """A tokenizer file is missing, corrupt or ill-formed, or an input can't be encoded/decoded."""


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``ids`` (left to right) by ``new_id``."""
    out, i, n = [], 0, len(ids)
    a, b = pair
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _word_frequencies(text: str, specials: list[str], pattern: str) -> tuple[list[list[int]], list[int]]:
    """The distinct pre-tokenized words of ``text`` as byte lists, and how often each occurs. Special-token
    text is cut out first, so no merge ever touches it."""
    split = re.compile(pattern)
    pieces = re.split("|".join(re.escape(s) for s in specials), text) if specials else [text]
    word_freq: Counter = Counter()
    for piece in pieces:
        word_freq.update(split.findall(piece))
    return [list(w.encode("utf-8")) for w in word_freq], list(word_freq.values())


def _pair_index(words: list[list[int]], freqs: list[int]
                ) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], set[int]]]:
    """(how often each adjacent pair occurs, weighted by word frequency; which words contain it)."""
    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for wi, (w, f) in enumerate(zip(words, freqs)):
        for p in zip(w, w[1:]):
            pair_counts[p] = pair_counts.get(p, 0) + f
            where.setdefault(p, set()).add(wi)
    return pair_counts, where


def _apply_merge(pair: tuple[int, int], new_id: int, words: list[list[int]], freqs: list[int],
                 pair_counts: dict, where: dict) -> set[tuple[int, int]]:
    """Merge ``pair`` into ``new_id`` in every word that has it, updating the counts and the index by the
    difference only (pairs away from the merge sites cost nothing). Returns the pairs whose count changed."""
    changed: set[tuple[int, int]] = set()
    for wi in where.pop(pair):
        w = words[wi]
        new_w = _merge(w, pair, new_id) if len(w) >= 2 else w
        if len(new_w) == len(w):
            continue  # stale index entry: the pair is no longer in this word
        f = freqs[wi]
        old, new = _pairs(w), _pairs(new_w)
        for p, c in old.items():
            d = new.get(p, 0) - c
            if d:
                pair_counts[p] += d * f
                changed.add(p)
                if p not in new and p in where:
                    where[p].discard(wi)  # keep the index exact: no stale visits later
        for p, c in new.items():
            if p not in old:
                pair_counts[p] = pair_counts.get(p, 0) + c * f
                where.setdefault(p, set()).add(wi)
                changed.add(p)
        words[wi] = new_w
    return changed


def _merge_by_rank(ids: list[int], ranks: dict[tuple[int, int], int],
                   merged: Sequence[int] | None = None) -> list[int]:
    """BPE on one word in O(n log n) for n bytes: a heap of (rank, position) over a linked list of tokens,
    always merging the lowest-ranked pair, leftmost first. Merge r makes token ``merged[r]`` (256 + r if
    None). This is how HF tokenizers merges (``Word::merge_all``).

    It gives the same ids as applying the lowest-ranked pair everywhere, then the next (``_encode_word``),
    whenever every merge makes a new token: equal ranks pop left to right, so overlaps resolve as
    ``_merge`` does, and a merge only creates pairs of a higher rank (their token did not exist before).
    """
    n = len(ids)
    nxt, prev, alive = list(range(1, n + 1)), list(range(-1, n - 1)), [True] * n
    nxt[-1] = -1
    heap = [(r, i) for i in range(n - 1) if (r := ranks.get((ids[i], ids[i + 1]))) is not None]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        j = nxt[i]
        if not alive[i] or j == -1 or ranks.get((ids[i], ids[j])) != rank:
            continue  # stale: one of the two tokens was merged into something else already
        ids[i], alive[j] = 256 + rank if merged is None else merged[rank], False
        nxt[i] = nxt[j]
        if nxt[j] != -1:
            prev[nxt[j]] = i
        for a, b in ((prev[i], i), (i, nxt[i])):  # the two pairs the new token is part of
            if a != -1 and b != -1 and (r := ranks.get((ids[a], ids[b]))) is not None:
                heapq.heappush(heap, (r, a))
    return [t for t, keep in zip(ids, alive) if keep]


def _pairs(ids: list[int]) -> dict[tuple[int, int], int]:
    """How many times each adjacent pair occurs in ``ids``."""
    counts: dict[tuple[int, int], int] = {}
    for p in zip(ids, ids[1:]):
        counts[p] = counts.get(p, 0) + 1
    return counts


def _show(b: bytes) -> str:
    """A token's bytes as readable text (invalid/partial UTF-8 shown as ``\\xNN``)."""
    return b.decode("utf-8", errors="backslashreplace")


# ---------------------------------------------------------------------- split patterns in two regex dialects
# GPT-2's pattern as GPT-2 (the ``regex`` package) and HF tokenizers (Oniguruma) write it. Python's ``re`` has
# no \p{..}, so ``gpt2_pattern()`` spells the classes out; ``to_hf_regex`` does the reverse for re's \w \d \s.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
WHOLE_TEXT_PATTERN = r"[\s\S]+"  # HF's ByteLevel(use_regex=False) alone: the whole text is one word

Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint (first, last) code-point ranges
_LAST_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)
# Unicode's White_Space property: \s to Oniguruma and to ``regex`` (Python's \s adds \x1c-\x1f)
_WHITE_SPACE: Ranges = ((0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
                        (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
                        (0x3000, 0x3000))
_CATEGORIES = frozenset("L M N P S Z C Lu Ll Lt Lm Lo Mn Mc Me Nd Nl No Pc Pd Ps Pe Pi Pf Po Sm Sc Sk So "
                        "Zs Zl Zp Cc Cf Cs Co Cn".split())
_ESCAPE = re.compile(r"\\(?:[pP]\{[^}]*\}|.)", re.S)


def _to_ranges(code_points: Iterable[int]) -> Ranges:
    """The fewest (first, last) ranges that cover exactly ``code_points``."""
    out: list[list[int]] = []
    for c in sorted(set(code_points)):
        if out and c == out[-1][1] + 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return tuple((a, b) for a, b in out)


def _complement(ranges: Ranges) -> Ranges:
    """Every code point that ``ranges`` leaves out, surrogates aside (no UTF-8 text holds one)."""
    out, start = [], 0
    for a, b in (*ranges, (_LAST_CODE_POINT + 1, _LAST_CODE_POINT + 1)):
        if a > start:
            out.append((start, a - 1))
        start = max(start, b + 1)
    low, high = _SURROGATES[0] - 1, _SURROGATES[-1] + 1
    return tuple(r for a, b in out for r in ((a, min(b, low)), (max(a, high), b)) if r[0] <= r[1])


@functools.cache
def _category_ranges(categories: tuple[str, ...]) -> Ranges:
    """The code points whose Unicode general category starts with one of ``categories`` (("L",) is \\p{L})."""
    category = unicodedata.category
    return _to_ranges(c for c in range(_LAST_CODE_POINT + 1) if category(chr(c)).startswith(categories))


@functools.cache
def _python_ranges() -> dict[str, Ranges]:
    """What \\w, \\d and \\s match in Python's ``re``, read off ``re`` itself (str.isalnum & co. differ from
    Unicode's \\p{..} classes: "²" is \\w but not \\d, "\\x1c" is \\s)."""
    every = "".join(chr(c) for c in range(_LAST_CODE_POINT + 1) if c not in _SURROGATES)
    return {k: _to_ranges(map(ord, re.findall("\\" + k, every))) for k in "wds"}


def _onig_class(escape: str) -> tuple[Ranges, bool] | None:
    """(ranges, negated) for a class escape as Oniguruma (HF tokenizers' regex engine) and ``regex`` read it:
    \\p{L} a general category, \\s White_Space, \\d Nd, \\w L|M|N|Pc. Other escapes (\\n, \\.) -> None:
    ``re`` reads them the same."""
    if escape[1:2] in ("p", "P"):
        name = escape[3:-1] if escape[2:3] == "{" else ""
        if name not in _CATEGORIES:
            raise TokenizerError(f"the regex class {escape} is not supported (only general categories such "
                                 f"as \\p{{L}} or \\p{{Nd}})")
        return _category_ranges((name,)), escape[1] == "P"
    kinds = {"s": lambda: _WHITE_SPACE, "d": lambda: _category_ranges(("Nd",)),
             "w": lambda: _category_ranges(("L", "M", "N", "Pc"))}
    kind = kinds.get(escape[1:].lower())
    return None if kind is None else (kind(), escape[1].isupper())


def _python_class(escape: str) -> tuple[Ranges, bool] | None:
    """(ranges, negated) for \\w \\d \\s \\W \\D \\S as Python's ``re`` reads them; None for other escapes."""
    letter = escape[1:]
    if letter not in ("w", "d", "s", "W", "D", "S"):
        return None
    return _python_ranges()[letter.lower()], letter.isupper()


def _class_char(c: int) -> str:
    """One code point inside [...], written alike for ``re`` and Oniguruma: ASCII letters and digits as
    themselves, other ASCII as \\xNN (so no metacharacter and no nested-set ``[``), the rest literally."""
    return chr(c) if c >= 0x80 or chr(c).isalnum() else f"\\x{c:02x}"


def _class_body(ranges: Ranges) -> str:
    return "".join(_class_char(a) if a == b else f"{_class_char(a)}-{_class_char(b)}" for a, b in ranges)


def _expand_classes(pattern: str, lookup) -> str:
    """``pattern`` with each class escape that ``lookup`` knows (\\p{L}, \\s...) written out as explicit
    code-point ranges, inside a [...] set or as one of its own; every other character is kept."""
    out, in_set, i = [], False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            m = _ESCAPE.match(pattern, i)
            escape = m.group() if m else c
            found = lookup(escape)
            if found is None:
                out.append(escape)
            elif in_set:
                out.append(_class_body(_complement(found[0]) if found[1] else found[0]))
            else:
                out.append(f"[{'^' if found[1] else ''}{_class_body(found[0])}]")
            i += len(escape)
            continue
        if c == "[" and not in_set:
            in_set, j = True, i + 1 + pattern.startswith("^", i + 1)
            j += pattern.startswith("]", j)  # a "]" first in a set is a literal
            out.append(pattern[i:j])
            i = j
            continue
        in_set = in_set and c != "]"
        out.append(c)
        i += 1
    return "".join(out)


@functools.cache
def gpt2_pattern() -> str:
    """GPT-2's split pattern for Python's ``re``: ``GPT2_SPLIT_PATTERN`` with \\p{L}, \\p{N} and \\s written
    out as exact code-point classes (built from ``unicodedata`` on first use, then cached)."""
    return _expand_classes(GPT2_SPLIT_PATTERN, _onig_class)


@functools.lru_cache(maxsize=16)
def to_hf_regex(pattern: str) -> str:
    """A split pattern for Python's ``re``, rewritten so that Oniguruma (HF tokenizers' Split) cuts text the
    same way: \\w \\d \\s and their negations become the explicit classes ``re`` means by them."""
    return _expand_classes(pattern, _python_class)


def from_hf_regex(regex: str) -> str:
    """A tokenizer.json Split regex rewritten for Python's ``re`` (undoes ``to_hf_regex``: minillm's own
    pattern comes back as ``SPLIT_PATTERN``). Raises ``re.error`` if ``re`` can't run it."""
    pattern = _expand_classes(regex, _onig_class)
    if pattern == to_hf_regex(SPLIT_PATTERN):
        return SPLIT_PATTERN
    re.compile(pattern)
    return pattern


# ---------------------------------------------------------------------- GPT-2's byte-level alphabet and ids
@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, as vocab.json and merges.txt write tokens: the 188 printable
    Latin-1 bytes stand for themselves, the other 68 (space, controls...) for U+0100 on, in byte order (so a
    space is "Ġ" and a newline "Ċ")."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + k) for k, b in enumerate(moved)}}


def _byte_text(data: bytes) -> str:
    """A token's bytes as GPT-2's files write it (b" the" -> "Ġthe")."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def _spell(table: list[bytes | None], rank: int, pair: tuple[int, int], new: int) -> bool:
    """Record what merge ``rank`` (``pair`` -> ``new``) spells, if both parts are spelled yet."""
    left, right = table[pair[0]], table[pair[1]]
    if left is None or right is None:
        return False
    if table[new] not in (None, left + right):
        raise TokenizerError(f"merge {rank} makes id {new} = {left + right!r}, but that id is {table[new]!r}")
    table[new] = left + right
    return True


class IdLayout(NamedTuple):
    """Which id each part of the vocabulary has, for tokenizers whose ids are not minillm's (GPT-2's ``!`` is
    id 0, ``<|endoftext|>`` 50256). minillm's own layout (``layout=None``): byte b is id b, merge r makes
    256 + r, the special tokens come last."""

    byte_ids: tuple[int, ...]  # byte b is token byte_ids[b]
    merged_ids: tuple[int, ...]  # merge r makes token merged_ids[r]; two merges may make the same token
    special_ids: tuple[int, ...]  # the k-th special token's id


def _default_layout(n_merges: int, n_specials: int) -> IdLayout:
    base = 256 + n_merges
    return IdLayout(tuple(range(256)), tuple(range(256, base)), tuple(range(base, base + n_specials)))


class BPETokenizer:
    """Byte-level BPE: ``train`` learns merges from text; ``encode``/``decode`` map text <-> ids;
    ``from_pretrained``/``save_pretrained`` read and write GPT-2 / Hugging Face files."""

    def __init__(self, merges: list[tuple[int, int]], special_tokens: Iterable[str] = (),
                 pattern: str = SPLIT_PATTERN, layout: IdLayout | None = None):
        self.merges: list[tuple[int, int]] = [tuple(m) for m in merges]
        self.pattern = pattern  # the split regex, for Python's re (one per tokenizer: GPT-2's differs)
        self._split = re.compile(pattern)
        specials = list(special_tokens)
        if len(set(specials)) != len(specials):
            raise TokenizerError(f"duplicate special tokens in {specials}")
        if any(not isinstance(s, str) or not s for s in specials):
            raise TokenizerError(f"special tokens must be non-empty strings, got {specials}")
        default = _default_layout(len(self.merges), len(specials))
        layout = None if layout is None else IdLayout(*map(tuple, layout))
        self.layout: IdLayout | None = None if layout == default else layout
        lay = self.layout or default
        self._bytes, self._ranks = self._token_table(lay, specials)
        self._byte_ids = None if self.layout is None else lay.byte_ids  # None: byte b is id b
        self._merged: Sequence[int] = default.merged_ids if self.layout is None else lay.merged_ids
        self._by_heap = len(set(self._merged)) < len(self._merged)  # two merges make one token: HF's order
        self.special_tokens: dict[str, int] = dict(zip(specials, lay.special_ids))
        self._special_by_id: dict[int, str] = {i: s for s, i in self.special_tokens.items()}
        self._bytes_to_id: dict[bytes, int] = {b: i for i, b in enumerate(self._bytes)
                                               if b is not None and i not in self._special_by_id}
        # longest first, so that one special token that is a prefix of another can't win
        longest_first = sorted(specials, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, longest_first))) if specials else None
        self._max_special = max(map(len, specials), default=0)
        self._cache: dict[bytes, list[int]] = {}
        # byte pairs that occur inside some token: no merge can ever join two bytes outside this set
        merged_tokens = {self._bytes[m] for m in set(self._merged)}
        self._joinable = {(b[i], b[i + 1]) for b in merged_tokens for i in range(len(b) - 1)}

    def _token_table(self, lay: IdLayout, specials: list[str]
                     ) -> tuple[list[bytes | None], dict[tuple[int, int], int]]:
        """(each id's bytes, None where no token has that id; each merge's rank), checking that every merge
        joins two tokens that bytes or merges define and that no two parts of the vocabulary claim one id."""
        if tuple(map(len, lay)) != (256, len(self.merges), len(specials)):
            raise TokenizerError(f"an id layout needs 256 byte ids, {len(self.merges)} merge ids and "
                                 f"{len(specials)} special ids, got {tuple(map(len, lay))}")
        every = (*lay.byte_ids, *lay.merged_ids, *lay.special_ids)
        if min(every) < 0 or max(every) >= 1 << 24:
            raise TokenizerError(f"token ids must be in 0..{(1 << 24) - 1}, got {min(every)}..{max(every)}")
        table: list[bytes | None] = [None] * (max(every) + 1)
        for b, i in enumerate(lay.byte_ids):
            if table[i] is not None:
                raise TokenizerError(f"bytes {table[i]!r} and {bytes([b])!r} both have id {i}")
            table[i] = bytes([b])
        ranks = self._spell_merges(table, lay.merged_ids)
        for s, i in zip(specials, lay.special_ids):
            if table[i] is not None:
                raise TokenizerError(f"special token {s!r} has id {i}, which is already {table[i]!r}")
            table[i] = s.encode("utf-8")
        return table, ranks

    def _spell_merges(self, table: list[bytes | None], merged_ids: tuple[int, ...]
                      ) -> dict[tuple[int, int], int]:
        """Fill in what each merged id spells and return each merge's rank. In minillm's layout a merge joins
        ids defined before it; another vocabulary's merges may come in any order (HF applies a merge by its
        rank whenever both parts are there), so they are spelled in passes until none is left."""
        ranks: dict[tuple[int, int], int] = {}
        for rank, (a, b) in enumerate(self.merges):
            if not (0 <= a < len(table) and 0 <= b < len(table)) or (
                    self.layout is None and max(a, b) >= 256 + rank):
                hint = f" (ids must be < {256 + rank})" if self.layout is None else ""
                raise TokenizerError(f"merge {rank} = ({a}, {b}) refers to an id not defined before it{hint}")
            if (a, b) in ranks:
                raise TokenizerError(f"merge {rank} = ({a}, {b}) duplicates merge {ranks[(a, b)]}")
            ranks[(a, b)] = rank
        pending = list(enumerate(zip(self.merges, merged_ids)))
        while pending:
            left = [(rank, m) for rank, m in pending if not _spell(table, rank, *m)]
            if len(left) == len(pending):
                rank, ((a, b), _) = left[0]
                raise TokenizerError(f"merge {rank} = ({a}, {b}) refers to an id no byte or merge defines")
            pending = left
        return ranks

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
              pattern: str = SPLIT_PATTERN, verbose: bool = False) -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        Pair counts are kept up to date incrementally: a merge only touches the distinct words that contain
        the merged pair, and a max-heap with lazy deletion finds the next most frequent pair (ties go to the
        smallest pair of ids, so training is deterministic). If the text runs out of pairs first, training
        stops early and ``vocab_size`` of the result is smaller than asked.
        """
        specials = list(special_tokens)
        if not isinstance(text, str):
            raise TypeError(f"BPETokenizer.train: text must be str, got {type(text).__name__}")
        n_merges = vocab_size - 256 - len(specials)
        if n_merges < 0:
            raise ValueError(f"BPETokenizer.train: vocab_size={vocab_size} is smaller than 256 byte tokens + "
                             f"{len(specials)} special tokens = {256 + len(specials)}")
        words, freqs = _word_frequencies(text, specials, pattern)
        pair_counts, where = _pair_index(words, freqs)
        heap = [(-c, p) for p, c in pair_counts.items()]
        heapq.heapify(heap)
        merges: list[tuple[int, int]] = []
        while len(merges) < n_merges and heap:
            neg, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -neg or -neg <= 0:
                continue  # stale heap entry: this pair's count changed after it was pushed
            merges.append(pair)
            for p in _apply_merge(pair, 255 + len(merges), words, freqs, pair_counts, where):
                if pair_counts[p] > 0:
                    heapq.heappush(heap, (-pair_counts[p], p))
                else:
                    del pair_counts[p]
            if verbose and len(merges) % 100 == 0:
                print(f"merge {len(merges)}/{n_merges}: {pair} -> {255 + len(merges)} (count {-neg})")
        return cls(merges, specials, pattern)


    # ------------------------------------------------------------------ encoding
    @property
    def vocab_size(self) -> int:
        """One more than the highest id (for minillm's layout: 256 + merges + special tokens)."""
        return len(self._bytes)

    @property
    def eos_id(self) -> int:
        """Id of ``<|endoftext|>`` (raises if this tokenizer has no such special token)."""
        return self._special_id("<|endoftext|>")

    @property
    def pad_id(self) -> int:
        """Id of ``<|pad|>`` (raises if this tokenizer has no such special token)."""
        return self._special_id("<|pad|>")

    def _special_id(self, s: str) -> int:
        if s not in self.special_tokens:
            raise KeyError(f"this tokenizer has no special token {s!r}; it has {list(self.special_tokens)}")
        return self.special_tokens[s]

    def _encode_word(self, word: str) -> list[int]:
        data = word.encode("utf-8")
        if len(data) <= _LONG_WORD:
            return self._encode_bytes(data)
        # A long word splits where two neighbouring bytes sit together in no token (no merge can ever
        # cross there), and each piece is merged alone: the same ids, without a pass per merge over it all.
        cuts = [i for i in range(1, len(data)) if (data[i - 1], data[i]) not in self._joinable]
        out: list[int] = []
        for a, b in zip([0, *cuts], [*cuts, len(data)]):
            piece = data[a:b]
            if len(piece) <= _LONG_WORD:
                out.extend(self._encode_bytes(piece))
            else:
                ids = list(piece) if self._byte_ids is None else [self._byte_ids[x] for x in piece]
                out.extend(_merge_by_rank(ids, self._ranks, self._merged))
        return out

    def _encode_bytes(self, data: bytes) -> list[int]:
        """BPE on one short piece: the earliest-learned merge present is applied first, as in training
        (when two merges make the same token, by HF's heap order instead: see ``_merge_by_rank``)."""
        ids = self._cache.get(data)
        if ids is not None:
            return ids
        ids = list(data) if self._byte_ids is None else [self._byte_ids[b] for b in data]
        ranks, merged = self._ranks, self._merged
        if self._by_heap:
            ids = _merge_by_rank(ids, ranks, merged)
        else:
            while len(ids) >= 2:
                best = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, 1 << 60))
                rank = ranks.get(best)
                if rank is None:
                    break
                ids = _merge(ids, best, merged[rank])
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[data] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` treating any special-token text in it as ordinary characters."""
        out: list[int] = []
        for word in self._split.findall(text):
            out.extend(self._encode_word(word))
        return out

    def encode(self, text: str, allowed_special="none_raise") -> list[int]:
        """Text -> ids.

        ``allowed_special`` says which literal special-token strings in ``text`` become special ids:
        ``"none_raise"`` (default, like tiktoken): none, and raise if the text contains any;
        ``"none"``: none, encode them as ordinary text; ``"all"``: every special token;
        a set of strings: just those (others present raise). Hugging Face tokenizers always turn added
        tokens into their ids: ``"all"`` matches them.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode: text must be str, got {type(text).__name__}")
        return self._encode(text, self._allowed(allowed_special))

    def _allowed(self, allowed_special) -> set[str] | None:
        """The special tokens that ``allowed_special`` turns into ids (None: "none", all are plain text)."""
        if allowed_special == "none":
            return None
        if allowed_special == "none_raise":
            return set()
        if allowed_special == "all":
            return set(self.special_tokens)
        if isinstance(allowed_special, (set, frozenset, list, tuple)):
            unknown = set(allowed_special) - set(self.special_tokens)
            if unknown:
                raise ValueError(f"encode: allowed_special has tokens this tokenizer doesn't know: "
                                 f"{sorted(unknown)}")
            return set(allowed_special)
        raise ValueError(f"encode: allowed_special must be 'none_raise', 'none', 'all' or a set of "
                         f"special tokens, got {allowed_special!r}")

    def _encode(self, text: str, allowed: set[str] | None, offset: int = 0) -> list[int]:
        """``encode`` once ``allowed_special`` is resolved; ``offset``: where ``text`` starts in the input."""
        if allowed is None or self._special_re is None:
            return self.encode_ordinary(text)
        out: list[int] = []
        start = 0
        for m in self._special_re.finditer(text):
            out.extend(self.encode_ordinary(text[start:m.start()]))
            out.append(self._special_match(m, allowed, offset))
            start = m.end()
        out.extend(self.encode_ordinary(text[start:]))
        return out

    def _special_match(self, m: re.Match, allowed: set[str], offset: int) -> int:
        s = m.group()
        if s not in allowed:
            raise ValueError(
                f"encode: the text contains the special token {s!r} at position {offset + m.start()}, which "
                f"is not allowed. Pass allowed_special='all' (or {{{s!r}}}) to encode it as one special "
                f"id, or allowed_special='none' to encode it as ordinary text.")
        return self.special_tokens[s]

    def encode_iterable(self, texts: Iterable[str], allowed_special="none_raise") -> Iterator[int]:
        """Yield the ids of ``"".join(texts)`` -- exactly ``encode`` of the whole text -- while reading it
        piece by piece, so a large file encodes in bounded memory: ``for i in tok.encode_iterable(open(p))``.

        A pre-split word or a special token may straddle two chunks, so the last few characters wait for
        the next chunk (memory: about the longest word). ``allowed_special`` means what it means for
        ``encode``; with the default a disallowed special token raises when the stream reaches it, after
        the ids before it were yielded.
        """
        allowed = self._allowed(allowed_special)
        buf, offset = "", 0
        for chunk in texts:
            if not isinstance(chunk, str):
                raise TypeError(f"encode_iterable: chunks must be str, got {type(chunk).__name__}")
            ids, rest = self._encode_settled(buf + chunk, allowed, offset)
            offset += len(buf) + len(chunk) - len(rest)
            buf = rest
            yield from ids
        yield from self._encode(buf, allowed, offset)

    def _encode_settled(self, buf: str, allowed: set[str] | None, offset: int) -> tuple[list[int], str]:
        """(ids of the start of ``buf`` that no text after it can change, the rest of ``buf``).

        A special token is settled once the longest special token would fit from its start on. A pre-split
        word is settled once it ends ``_STREAM_LOOKAHEAD`` characters before the settled text does: the
        regex chose it by looking at most that far past its end ("'r" may still become "'re")."""
        out: list[int] = []
        start, end = 0, len(buf)
        if allowed is not None and self._special_re is not None:
            end = max(0, len(buf) - self._max_special + 1)  # a special token may start at end or later
            for m in self._special_re.finditer(buf):
                if m.start() >= end:
                    break
                out.extend(self.encode_ordinary(buf[start:m.start()]))
                out.append(self._special_match(m, allowed, offset))
                start = m.end()
            end = max(start, end)
        words, cut = self._settled_words(buf, start, end)
        for word in words:
            out.extend(self._encode_word(word))
        return out, buf[cut:]

    def _settled_words(self, buf: str, start: int, end: int) -> tuple[list[str], int]:
        """The settled pre-split words of ``buf[start:end]`` (see ``_encode_settled``) and where they end."""
        words = self._split.findall(buf, start, end)
        if start + sum(map(len, words)) == end:  # the words tile the text, as GPT-2's and minillm's do
            cut = end
            while words and cut > end - _STREAM_LOOKAHEAD:
                cut -= len(words.pop())
            return words, cut
        settled = [m for m in self._split.finditer(buf, start, end) if m.end() <= end - _STREAM_LOOKAHEAD]
        return [m.group() for m in settled], settled[-1].end() if settled else start

    # ------------------------------------------------------------------ decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the raw bytes they stand for (special tokens as their UTF-8 text)."""
        if hasattr(ids, "tolist"):  # NumPy/CuPy arrays: one conversion instead of per-element indexing
            ids = ids.tolist()
        parts = []
        table, n = self._bytes, len(self._bytes)
        for i in ids:
            try:
                i = operator.index(i)  # ints and NumPy ints; a float id is a bug upstream, not a token
            except TypeError:
                raise TypeError(f"decode: token ids must be integers, got {i!r}") from None
            b = table[i] if 0 <= i < n else None
            if b is None:
                raise ValueError(self._bad_id("decode", i))
            parts.append(b)
        return b"".join(parts)

    def _bad_id(self, where: str, i: int) -> str:
        if 0 <= i < self.vocab_size:
            return f"{where}: token id {i} is not used by this tokenizer (its vocabulary leaves it out)"
        return (f"{where}: token id {i} is out of range for vocab_size {self.vocab_size} "
                f"(valid ids are 0..{self.vocab_size - 1})")

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Ids -> text. A sequence that ends mid-character (e.g. cut by ``max_new_tokens``) decodes with
        U+FFFD replacement characters instead of raising; pass ``errors="strict"`` to raise."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def token_to_id(self, token: str) -> int:
        """The id of one token given as text (a special token, or a vocabulary entry such as ``" the"``)."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        i = self._bytes_to_id.get(token.encode("utf-8"))
        if i is None:
            raise KeyError(f"{token!r} is not a single token of this tokenizer (it encodes to "
                           f"{self.encode_ordinary(token)})")
        return i

    def id_to_token(self, i: int) -> str:
        """The text of one token (bytes that are not valid UTF-8 on their own shown as ``\\xNN``)."""
        i = int(i)
        if i in self._special_by_id:
            return self._special_by_id[i]
        if not (0 <= i < len(self._bytes) and self._bytes[i] is not None):
            raise ValueError(self._bad_id("id_to_token", i))
        return _show(self._bytes[i])

    def id_to_bytes(self, i: int) -> bytes:
        """The raw bytes of one (non-special) token."""
        return self.decode_bytes([i])

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={len(self.special_tokens)})")

    def __eq__(self, other) -> bool:
        return (isinstance(other, BPETokenizer) and self.merges == other.merges
                and self.special_tokens == other.special_tokens and self.pattern == other.pattern
                and self.layout == other.layout)

    __hash__ = None

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        if self.layout is not None:
            raise TokenizerError("minillm's tokenizer format holds minillm's own ids only; this tokenizer "
                                 "has another vocabulary's ids (GPT-2 / Hugging Face): use save_pretrained")
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "vocab_size": self.vocab_size,
            "special_tokens": self.special_tokens,
            "merges": [list(m) for m in self.merges],
            # for readers only (load checks it against the merges): what each merged id spells
            "merged_tokens": {str(256 + r): _show(self._bytes[256 + r]) for r in range(len(self.merges))},
        }

    def save(self, path) -> None:
        """Write the tokenizer as human-readable JSON (atomically: a crash never leaves half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=1)
        # one merge per line keeps the file readable without making it thousands of lines per pair
        text = re.sub(r"\[\n\s+(\d+),\n\s+(\d+)\n\s+\]", r"[\1, \2]", text)
        with atomic_write(path, "w") as f:
            f.write(text + "\n")

    @classmethod
    def from_dict(cls, d, source: str = "tokenizer data") -> BPETokenizer:
        def bad(why: str):
            return TokenizerError(f"{source}: not a valid minillm tokenizer: {why}")

        if not isinstance(d, dict):
            raise bad(f"expected a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise bad(f"'format' is {d.get('format')!r}, expected {FORMAT!r}")
        if d.get("version") != FORMAT_VERSION:
            raise bad(f"'version' is {d.get('version')!r}, this minillm reads version {FORMAT_VERSION}")
        for key, typ in (("pattern", str), ("merges", list), ("special_tokens", dict)):
            if not isinstance(d.get(key), typ):
                raise bad(f"{key!r} must be a {typ.__name__}, got {type(d.get(key)).__name__}")
        merges = d["merges"]
        for r, m in enumerate(merges):
            if not (isinstance(m, list) and len(m) == 2 and all(type(x) is int for x in m)):
                raise bad(f"merge {r} is {m!r}, expected a pair of integer ids")
        try:
            re.compile(d["pattern"])
        except re.error as e:
            raise bad(f"'pattern' is not a valid regular expression ({e})") from None
        specials = sorted(d["special_tokens"].items(), key=lambda kv: kv[1])
        base = 256 + len(merges)
        expected = list(range(base, base + len(specials)))
        if [i for _, i in specials] != expected:
            got = [i for _, i in specials]
            raise bad(f"special token ids must be {base}..{base + len(specials) - 1} (right after the "
                      f"merges), got {got if len(got) < 6 else f'{got[:3]} ... {got[-2:]}'}")
        try:
            tok = cls([tuple(m) for m in merges], [s for s, _ in specials], d["pattern"])
        except TokenizerError as e:
            raise bad(str(e)) from None
        if "vocab_size" in d and d["vocab_size"] != tok.vocab_size:
            raise bad(f"'vocab_size' says {d['vocab_size']} but merges and specials give {tok.vocab_size}")
        shown = d.get("merged_tokens")
        if shown is not None:
            if not isinstance(shown, dict):
                raise bad("'merged_tokens' must be an object")
            for k, v in shown.items():
                if not (k.isdigit() and 256 <= int(k) < base) or tok.id_to_token(int(k)) != v:
                    raise bad(f"'merged_tokens' entry {k}: {v!r} doesn't match what the merges spell")
        return tok

    @classmethod
    def load(cls, path) -> BPETokenizer:
        """Read a tokenizer written by ``save``; a missing, corrupt or ill-formed file -> TokenizerError."""
        path = Path(path)
        return cls.from_dict(_read_json(path, "minillm tokenizer"), source=str(path))

    # ------------------------------------------------------------------ Hugging Face / GPT-2 files
    @classmethod
    def from_pretrained(cls, directory) -> BPETokenizer:
        """Read the byte-level BPE in ``directory``: HF's ``tokenizer.json`` if there is one, else GPT-2's
        ``vocab.json`` + ``merges.txt``. It encodes exactly as HF tokenizers / GPT-2 do, with their ids.

        Special tokens are tokenizer.json's ``added_tokens``, or for vocab.json the entries that are neither
        a byte nor made by a merge (GPT-2's ``<|endoftext|>``). HF turns added-token text into ids always:
        ``encode(text, allowed_special="all")`` does the same. HF's post-processor (a BOS/EOS template) is
        not applied, as with HF's ``add_special_tokens=False``. Merges that can never apply are left out,
        and so are tokenizer.json vocabulary entries that no merge makes and no added token names.
        Normalizers, ``add_prefix_space``, dropout and subword prefixes are refused; a missing or malformed
        file -> TokenizerError naming it. Characters are classed by Python's ``unicodedata`` (Unicode 14 in
        Python 3.11): ones assigned only in later Unicode versions may split otherwise than in HF.
        """
        d = Path(directory)
        if (d / "tokenizer.json").is_file():
            return _read_tokenizer_json(cls, d / "tokenizer.json")
        if (d / "vocab.json").exists() or (d / "merges.txt").exists():
            vocab = _check_vocab(_read_json(d / "vocab.json", "GPT-2 vocab.json"), str(d / "vocab.json"))
            merges = _read_merges_txt(d / "merges.txt")
            return _from_vocab(cls, vocab, merges, None, gpt2_pattern(), str(d / "vocab.json"))
        raise TokenizerError(f"{d}: no tokenizer.json, nor vocab.json + merges.txt, to read a tokenizer from")

    def save_pretrained(self, directory) -> None:
        """Write ``vocab.json``, ``merges.txt``, ``tokenizer.json`` and ``tokenizer_config.json`` (atomically,
        each) so that Hugging Face loads this tokenizer and encodes as it does, a minillm-trained one too.

        tokenizer.json carries the split pattern: GPT-2's as ``ByteLevel``, any other (minillm's one digit
        per piece) as a ``Split`` regex that ``to_hf_regex`` makes mean the same to HF as to Python, then
        ``ByteLevel(use_regex=False)``; ``tokenizers.Tokenizer.from_file`` and ``PreTrainedTokenizerFast``
        honour it. vocab.json + merges.txt have no room for a pattern: ``GPT2Tokenizer`` reading them
        (and, in transformers 5, ``GPT2Tokenizer(Fast)`` reading any of these files) splits with GPT-2's
        pattern, which for minillm's differs only on rare characters ("x²", "\\x1c").
        """
        d = Path(directory)
        vocab = self._hf_vocab()
        merges = [f"{_byte_text(self._bytes[a])} {_byte_text(self._bytes[b])}" for a, b in self.merges]
        as_json = functools.partial(json.dumps, ensure_ascii=False, indent=1)
        files = {
            "vocab.json": json.dumps(vocab, ensure_ascii=False),
            "merges.txt": "#version: 0.2\n" + "".join(m + "\n" for m in merges),
            "tokenizer.json": as_json(self._hf_tokenizer_json(vocab, merges)),
            "tokenizer_config.json": as_json(self._hf_config()),
        }
        for name, text in files.items():
            with atomic_write(d / name, "w") as f:
                f.write(text + ("" if text.endswith("\n") else "\n"))

    def _hf_vocab(self) -> dict[str, int]:
        """Each token as GPT-2's files write it -> its id (specials as themselves). A HF vocabulary maps a
        text to one id, so two ids that spell the same bytes can't be written."""
        vocab: dict[str, int] = {}
        for i, b in enumerate(self._bytes):
            if b is None:
                continue
            text = self._special_by_id.get(i) or _byte_text(b)
            if vocab.setdefault(text, i) != i:
                raise TokenizerError(f"save_pretrained: ids {vocab[text]} and {i} are both {text!r}, and a "
                                     "Hugging Face vocabulary maps each token text to one id")
        return vocab

    def _hf_added_tokens(self) -> list[dict]:
        return [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for s, i in self.special_tokens.items()]

    def _hf_pre_tokenizer(self) -> dict:
        """GPT-2's pattern is ByteLevel's own; another one becomes a Split that HF runs as Python does."""
        level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        if self.pattern == gpt2_pattern():
            return level
        level["use_regex"] = False
        if self.pattern == WHOLE_TEXT_PATTERN:
            return level
        split = {"type": "Split", "pattern": {"Regex": to_hf_regex(self.pattern)}, "behavior": "Isolated",
                 "invert": False}
        return {"type": "Sequence", "pretokenizers": [split, level]}

    def _hf_tokenizer_json(self, vocab: dict[str, int], merges: list[str]) -> dict:
        model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                 "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                 "vocab": vocab, "merges": merges}
        return {"version": "1.0", "truncation": None, "padding": None,
                "added_tokens": self._hf_added_tokens(), "normalizer": None,
                "pre_tokenizer": self._hf_pre_tokenizer(),
                "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                                   "use_regex": True},
                "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                            "use_regex": True},
                "model": model}

    def _hf_config(self) -> dict:
        """transformers' tokenizer_config.json: which class, and the added tokens (transformers 5 rebuilds a
        GPT2Tokenizer from vocab + merges and finds its special tokens here)."""
        eos = "<|endoftext|>" if "<|endoftext|>" in self.special_tokens else None
        decoder = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in self._hf_added_tokens()}
        gpt2 = self.pattern == gpt2_pattern()
        return {"tokenizer_class": "GPT2Tokenizer" if gpt2 else "PreTrainedTokenizerFast",
                "add_prefix_space": False, "clean_up_tokenization_spaces": False, "bos_token": eos,
                "eos_token": eos, "unk_token": eos, "added_tokens_decoder": decoder}


# ---------------------------------------------------------------------- reading GPT-2 / HF files
def _read_json(path: Path, what: str):
    """The JSON in ``path``; a missing, unreadable or corrupt file -> TokenizerError naming it."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer file {str(path)!r} does not exist") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not a valid {what}: not UTF-8 text ({e.reason} at byte "
                             f"{e.start})") from None
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the {what} ({e.strerror})") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: not a valid {what}: corrupt JSON at line {e.lineno} "
                             f"column {e.colno} ({e.msg})") from None


def _check_vocab(vocab, where: str) -> dict[str, int]:
    if not isinstance(vocab, dict):
        raise TokenizerError(f"{where}: the vocabulary must be a JSON object of token -> id, "
                             f"got {type(vocab).__name__}")
    for s, i in vocab.items():
        if type(i) is not int or i < 0:
            raise TokenizerError(f"{where}: token {s!r} has id {i!r}, expected an integer >= 0")
    return vocab


def _read_merges_txt(path: Path) -> list[tuple[str, str, str]]:
    """GPT-2's merges.txt as (left, right, "file:line") in rank order (a ``#version`` line is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer file {str(path)!r} does not exist") from None
    except (UnicodeDecodeError, OSError) as e:
        raise TokenizerError(f"{path}: not a readable GPT-2 merges.txt ({e})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    out = []
    for n, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        if line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(f"{path}:{n}: expected two tokens separated by one space, got {line!r}")
        out.append((parts[0], parts[1], f"{path}:{n}"))
    return out


def _read_tokenizer_json(cls, path: Path) -> BPETokenizer:
    """A byte-level BPE from HF's tokenizer.json (see ``BPETokenizer.from_pretrained``)."""
    d = _read_json(path, "Hugging Face tokenizer.json")

    def bad(why: str) -> TokenizerError:
        return TokenizerError(f"{path}: {why}")

    model = d.get("model") if isinstance(d, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        raise bad("not a BPE tokenizer ('model.type' must be 'BPE')")
    for key, fine in (("dropout", None), ("continuing_subword_prefix", ""), ("end_of_word_suffix", ""),
                      ("ignore_merges", False)):
        if model.get(key) not in (None, fine):
            raise bad(f"model.{key} = {model[key]!r} is not supported by minillm")
    if d.get("normalizer") is not None:
        raise bad("a normalizer is not supported by minillm (byte-level BPE needs none)")
    vocab = _check_vocab(model.get("vocab"), f"{path}: model.vocab")
    raw = model.get("merges", [])
    merges = [_merge_entry(m, f"{path}: model.merges[{k}]")
              for k, m in enumerate(raw if isinstance(raw, list) else [raw])]
    added = _added_tokens(d.get("added_tokens", []), bad)
    pattern = _pre_tokenizer_pattern(d.get("pre_tokenizer"), bad)
    return _from_vocab(cls, vocab, merges, added, pattern, str(path))


def _merge_entry(m, where: str) -> tuple[str, str, str]:
    """One tokenizer.json merge, ``"a b"`` (tokenizers < 0.20) or ``["a", "b"]``, as (a, b, where)."""
    parts = m.split(" ") if isinstance(m, str) else m
    if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(p, str) and p for p in parts)):
        raise TokenizerError(f"{where} is {m!r}, expected \"left right\" or [\"left\", \"right\"]")
    return parts[0], parts[1], where


def _added_tokens(tokens, bad) -> dict[str, int]:
    if not isinstance(tokens, list):
        raise bad("'added_tokens' must be a list")
    out = {}
    for t in tokens:
        if not (isinstance(t, dict) and isinstance(t.get("content"), str) and t["content"]
                and type(t.get("id")) is int):
            raise bad(f"added token {t!r} needs a non-empty 'content' and an integer 'id'")
        flags = [k for k in ("lstrip", "rstrip", "single_word") if t.get(k)]
        if flags:
            raise bad(f"added token {t['content']!r} sets {', '.join(flags)}, which minillm does not support")
        out[t["content"]] = t["id"]
    return out


def _pre_tokenizer_pattern(pre, bad) -> str:
    """The split pattern (for Python's re) of a ByteLevel pre-tokenizer, or a Split + ByteLevel sequence."""
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    level = steps[-1] if isinstance(steps, list) and steps else None
    if not (isinstance(level, dict) and level.get("type") == "ByteLevel" and len(steps) <= 2):
        raise bad("the pre_tokenizer must be ByteLevel, or a Sequence of a Split and ByteLevel")
    if level.get("add_prefix_space"):
        raise bad("ByteLevel with add_prefix_space=true is not supported by minillm")
    regex = level.get("use_regex", True)
    if len(steps) == 1:
        return gpt2_pattern() if regex else WHOLE_TEXT_PATTERN
    split = steps[0] if isinstance(steps[0], dict) else {}
    pattern = split.get("pattern") if split.get("type") == "Split" else None
    if regex or not isinstance(pattern, dict) or not isinstance(pattern.get("Regex"), str) \
            or split.get("behavior") != "Isolated" or split.get("invert"):
        raise bad("a Split pre-tokenizer must have a {'Regex': ...} pattern, behavior 'Isolated', "
                  "invert false, and be followed by ByteLevel(use_regex=false)")
    try:
        return from_hf_regex(pattern["Regex"])
    except (re.error, TokenizerError) as e:
        raise bad(f"the Split regex can't be run by Python's re ({e})") from None


def _live_merges(byte_ids: tuple[int, ...], pairs: list[tuple[int, int]], made: list[int]) -> list[int]:
    """The merges that can ever apply, in rank order: both parts are bytes or made by such a merge. (A file
    may name a token no merge makes, e.g. after one was deleted: HF never applies its merges either.)"""
    known, live, grew = set(byte_ids), [False] * len(pairs), True
    while grew:
        grew = False
        for k, (a, b) in enumerate(pairs):
            if not live[k] and a in known and b in known:
                live[k], grew = True, True
                known.add(made[k])
    return [k for k in range(len(pairs)) if live[k]]


def _from_vocab(cls, vocab: dict[str, int], merges: list[tuple[str, str, str]], added: dict[str, int] | None,
                pattern: str, source: str) -> BPETokenizer:
    """A tokenizer from GPT-2-style token texts: the merges as (left, right, where each was read) in rank
    order, the added tokens as text -> id (None: the vocabulary entries that are not a byte and no merge
    makes, as GPT-2's ``<|endoftext|>``)."""
    b2u = bytes_to_unicode()
    missing = [b for b in range(256) if b2u[b] not in vocab]
    if missing:
        raise TokenizerError(f"{source}: no token for byte {missing[0]:#04x} ({b2u[missing[0]]!r}) and "
                             f"{len(missing) - 1} more: a byte-level BPE has one token per byte")
    pairs, made = [], []
    for a, b, where in merges:
        for s in (a, b, a + b):
            if s not in vocab:
                raise TokenizerError(f"{where}: merge {a!r} {b!r}: {s!r} is not in the vocabulary")
        pairs.append((vocab[a], vocab[b]))
        made.append(vocab[a + b])
    byte_ids = tuple(vocab[b2u[b]] for b in range(256))
    live = _live_merges(byte_ids, pairs, made)
    pairs, made = [pairs[k] for k in live], [made[k] for k in live]
    if added is None:
        used = {*byte_ids, *made}
        added = {s: i for s, i in vocab.items() if i not in used}
    specials = sorted(added.items(), key=lambda kv: kv[1])
    layout = IdLayout(byte_ids, tuple(made), tuple(i for _, i in specials))
    try:
        return cls(pairs, [s for s, _ in specials], pattern, layout)
    except TokenizerError as e:
        raise TokenizerError(f"{source}: {e}") from None


# ---------------------------------------------------------------------- the shipped tokenizer
DEFAULT_VOCAB_SIZE = 1024


def load_default_tokenizer() -> BPETokenizer:
    """Load the tokenizer that ships with the package (``minillm/checkpoints/tokenizer.json``)."""
    from minillm.shipped import TOKENIZER

    if not TOKENIZER.exists():
        raise TokenizerError(f"the shipped tokenizer {TOKENIZER} is missing; recreate it with "
                             "minillm.data.world.train_default_tokenizer()")
    return BPETokenizer.load(TOKENIZER)
