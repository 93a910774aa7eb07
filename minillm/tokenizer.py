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
"""

from __future__ import annotations

import heapq
import json
import operator
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from minillm.checkpoint import atomic_write

DEFAULT_SPECIAL_TOKENS: list[str] = [
    "<|endoftext|>", "<|pad|>", "[MASK]", "[CLS]", "[SEP]",
    "<|system|>", "<|user|>", "<|assistant|>", "<|tool_call|>", "<|tool_result|>", "<|end|>",
] + [f"<extra_id_{i}>" for i in range(20)]

# GPT-2's pre-split pattern written for the standard ``re`` module: ``[^\W\d_]`` is "a letter" (\p{L}),
# ``\d`` a digit (one per piece, see the module docstring), ``(?:[^\s\w]|_)`` anything else that is not a
# space. ``\s+(?!\S)`` leaves the last space of a run to join the next word (" hello").
SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
)

FORMAT = "minillm-bpe"
FORMAT_VERSION = 1
_CACHE_LIMIT = 200_000
_LONG_WORD = 64  # bytes; a longer word is cut into pieces no merge crosses (see _encode_word)


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


def _merge_by_rank(ids: list[int], ranks: dict[tuple[int, int], int]) -> list[int]:
    """The same merges as applying the lowest-ranked pair everywhere, then the next (``_encode_word``), in
    O(n log n) for a word of n bytes: a heap of (rank, position) over a linked list of tokens.

    Equal ranks pop left to right, so overlaps resolve as ``_merge`` does; a merge only ever creates pairs
    of a higher rank (their token did not exist before), so rank order is the one-pass-per-merge order.
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
        ids[i], alive[j] = 256 + rank, False
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


class BPETokenizer:
    """Byte-level BPE: ``train`` learns merges from text; ``encode``/``decode`` map text <-> ids."""

    def __init__(self, merges: list[tuple[int, int]], special_tokens: Iterable[str] = (),
                 pattern: str = SPLIT_PATTERN):
        self.merges: list[tuple[int, int]] = [tuple(m) for m in merges]
        self.pattern = pattern
        self._split = re.compile(pattern)
        self._ranks: dict[tuple[int, int], int] = {}
        self._bytes: list[bytes] = [bytes([i]) for i in range(256)]
        for rank, (a, b) in enumerate(self.merges):
            new_id = 256 + rank
            if not (0 <= a < new_id and 0 <= b < new_id):
                raise TokenizerError(f"merge {rank} = ({a}, {b}) refers to an id not defined before it "
                                     f"(ids must be < {new_id})")
            if (a, b) in self._ranks:
                raise TokenizerError(f"merge {rank} = ({a}, {b}) duplicates merge {self._ranks[(a, b)]}")
            self._ranks[(a, b)] = rank
            self._bytes.append(self._bytes[a] + self._bytes[b])
        specials = list(special_tokens)
        if len(set(specials)) != len(specials):
            raise TokenizerError(f"duplicate special tokens in {specials}")
        if any(not isinstance(s, str) or not s for s in specials):
            raise TokenizerError(f"special tokens must be non-empty strings, got {specials}")
        base = 256 + len(self.merges)
        self.special_tokens: dict[str, int] = {s: base + i for i, s in enumerate(specials)}
        self._special_by_id: dict[int, str] = {i: s for s, i in self.special_tokens.items()}
        self._bytes_to_id: dict[bytes, int] = {b: i for i, b in enumerate(self._bytes)}
        # longest first, so that one special token that is a prefix of another can't win
        longest_first = sorted(specials, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, longest_first))) if specials else None
        self._cache: dict[bytes, list[int]] = {}
        # byte pairs that occur inside some token: no merge can ever join two bytes outside this set
        self._joinable = {(b[i], b[i + 1]) for b in self._bytes[256:] for i in range(len(b) - 1)}

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
        return 256 + len(self.merges) + len(self.special_tokens)

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
            out.extend(self._encode_bytes(piece) if len(piece) <= _LONG_WORD
                       else _merge_by_rank(list(piece), self._ranks))
        return out

    def _encode_bytes(self, data: bytes) -> list[int]:
        """BPE on one short piece: the earliest-learned merge present is applied first, as in training."""
        ids = self._cache.get(data)
        if ids is not None:
            return ids
        ids, ranks = list(data), self._ranks
        while len(ids) >= 2:
            best = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, 1 << 60))
            rank = ranks.get(best)
            if rank is None:
                break
            ids = _merge(ids, best, 256 + rank)
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
        a set of strings: just those (others present raise).
        """
        if not isinstance(text, str):
            raise TypeError(f"encode: text must be str, got {type(text).__name__}")
        if allowed_special == "none":
            return self.encode_ordinary(text)
        if allowed_special == "none_raise":
            allowed: set[str] = set()
        elif allowed_special == "all":
            allowed = set(self.special_tokens)
        elif isinstance(allowed_special, (set, frozenset, list, tuple)):
            allowed = set(allowed_special)
            unknown = allowed - set(self.special_tokens)
            if unknown:
                raise ValueError(f"encode: allowed_special has tokens this tokenizer doesn't know: "
                                 f"{sorted(unknown)}")
        else:
            raise ValueError(f"encode: allowed_special must be 'none_raise', 'none', 'all' or a set of "
                             f"special tokens, got {allowed_special!r}")
        if self._special_re is None:
            return self.encode_ordinary(text)
        out: list[int] = []
        start = 0
        for m in self._special_re.finditer(text):
            s = m.group()
            if s not in allowed:
                raise ValueError(
                    f"encode: the text contains the special token {s!r} at position {m.start()}, which is "
                    f"not allowed. Pass allowed_special='all' (or {{{s!r}}}) to encode it as one special "
                    f"id, or allowed_special='none' to encode it as ordinary text.")
            out.extend(self.encode_ordinary(text[start:m.start()]))
            out.append(self.special_tokens[s])
            start = m.end()
        out.extend(self.encode_ordinary(text[start:]))
        return out

    # ------------------------------------------------------------------ decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the raw bytes they stand for (special tokens as their UTF-8 text)."""
        if hasattr(ids, "tolist"):  # NumPy/CuPy arrays: one conversion instead of per-element indexing
            ids = ids.tolist()
        parts = []
        nb = len(self._bytes)
        for i in ids:
            try:
                i = operator.index(i)  # ints and NumPy ints; a float id is a bug upstream, not a token
            except TypeError:
                raise TypeError(f"decode: token ids must be integers, got {i!r}") from None
            if 0 <= i < nb:
                parts.append(self._bytes[i])
            elif i in self._special_by_id:
                parts.append(self._special_by_id[i].encode("utf-8"))
            else:
                raise ValueError(f"decode: token id {i} is out of range for vocab_size {self.vocab_size} "
                                 f"(valid ids are 0..{self.vocab_size - 1})")
        return b"".join(parts)

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
        if not 0 <= i < len(self._bytes):
            raise ValueError(f"id_to_token: token id {i} is out of range for vocab_size {self.vocab_size}")
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
                and self.special_tokens == other.special_tokens and self.pattern == other.pattern)

    __hash__ = None

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
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
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TokenizerError(f"tokenizer file {str(path)!r} does not exist") from None
        except UnicodeDecodeError as e:
            raise TokenizerError(f"{path}: not a valid minillm tokenizer: not UTF-8 text ({e.reason} at byte "
                                 f"{e.start})") from None
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{path}: not a valid minillm tokenizer: corrupt JSON at line {e.lineno} "
                                 f"column {e.colno} ({e.msg})") from None
        return cls.from_dict(d, source=str(path))


# ---------------------------------------------------------------------- the shipped tokenizer
DEFAULT_VOCAB_SIZE = 1024


def load_default_tokenizer() -> BPETokenizer:
    """Load the tokenizer that ships with the package (``minillm/checkpoints/tokenizer.json``)."""
    from minillm.shipped import TOKENIZER

    if not TOKENIZER.exists():
        raise TokenizerError(f"the shipped tokenizer {TOKENIZER} is missing; recreate it with "
                             "minillm.data.world.train_default_tokenizer()")
    return BPETokenizer.load(TOKENIZER)
