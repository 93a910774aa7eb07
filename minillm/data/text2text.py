"""Text-to-text tasks over the world for T5-style task prefixes: summarization and a toy translation.

- ``summarize: <weather story>`` → one short sentence: who did what where ("Mia played ball in Oakdale.").
  The story states the town, the weather and the long form of the activity; the summary must pick the
  name and town and compress the activity, so it is not a copy of any one sentence.
- ``translate English to Worldish: <sentence>`` → the same sentence in Worldish, a deterministic rewrite
  language: every English word has a fixed made-up word (built from syllables by a seeded generator),
  names and numbers stay as they are, the articles "a", "an", "the" are dropped.
"""

from __future__ import annotations

import random
import re

from minillm.data.world import (
    CHARACTERS,
    OBJECTS,
    PLACES,
    PRONOUNS,
    WEATHER,
    WEATHER_ACTIVITIES,
    weather_kind,
)

SUMMARIZE = "summarize: "
TRANSLATE = "translate English to Worldish: "

SHORT_ACTIVITY = {  # weather kind → what the summary says
    "sunny": "played ball", "hot": "swam in the sea", "rainy": "read at the library",
    "snowy": "built a snowman", "windy": "flew a kite", "cloudy": "read at home",
}


def weather_story(rng: random.Random) -> tuple[str, str]:
    """A weather story (as in the pre-training corpus) and its one-sentence summary."""
    name = rng.choice(list(CHARACTERS))
    c = CHARACTERS[name]
    p = PRONOUNS[c["pronoun"]]
    town = c["town"] if rng.random() < 0.5 else rng.choice(list(WEATHER))
    w, kind = WEATHER[town], weather_kind(town)
    act = WEATHER_ACTIVITIES[kind].format(pos=p["possessive"])
    opener = f"{name} lives in {town}." if town == c["town"] else f"{name} went to visit {town}."
    story = (f"{opener} It was {w['condition']} in {town}, and it was {w['temp_c']} degrees. "
             f"Because it was {kind}, {p['subject']} {act}.")
    return story, f"{name} {SHORT_ACTIVITY[kind]} in {town}."


# ------------------------------------------------------------------------------------------ Worldish
_SYLLABLES = ["ka", "lo", "mi", "ta", "re", "su", "no", "pe", "vi", "da", "ro", "ne", "li", "ma", "to", "fi"]
_ARTICLES = {"a", "an", "the"}


def _source_words() -> list[str]:
    words = {"went", "to", "bought", "saw", "ate", "got", "gave", "is", "was", "not", "and", "at", "in",
             "from", "home", "good", "bad", "big", "small", "happy", "sad", "he", "she", "his", "her", "him",
             "said", "thank", "you", "today", "one", "coins", "costs", "with", "friend", "my"}
    words |= set(OBJECTS) | {v["plural"] for v in OBJECTS.values()}
    words |= {w for p in PLACES for w in p.split()}
    return sorted(words)


def _make_lexicon(seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    lex, used = {}, set()
    for w in _source_words():
        while True:
            cand = "".join(rng.choice(_SYLLABLES) for _ in range(2 if len(w) <= 4 else 3))
            if cand not in used:
                break
        used.add(cand)
        lex[w] = cand
    return lex


LEXICON: dict[str, str] = _make_lexicon()


def to_worldish(sentence: str) -> str:
    """Rewrite an English sentence word by word into Worldish (raises on a word outside the lexicon)."""
    out = []
    for tok in re.findall(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]", sentence):
        low = tok.lower()
        if low in _ARTICLES:
            continue
        if tok[0].isupper() and tok in CHARACTERS or tok.isdigit():
            out.append(tok)
        elif low in LEXICON:
            out.append(LEXICON[low])
        elif re.fullmatch(r"[^\sA-Za-z\d]", tok):
            out.append(tok)
        else:
            raise ValueError(f"to_worldish: no Worldish word for {tok!r}")
    text = " ".join(out)
    return re.sub(r" ([.,!?])", r"\1", text)


def english_sentence(rng: random.Random) -> str:
    """A short English sentence the Worldish lexicon covers."""
    name = rng.choice(list(CHARACTERS))
    p = PRONOUNS[CHARACTERS[name]["pronoun"]]
    place = rng.choice(list(PLACES))
    obj = rng.choice(PLACES[place]["objects"])
    n = rng.randint(2, 9)
    friend = rng.choice([x for x in CHARACTERS if x != name])
    forms = [
        f"{name} went to the {place}.",
        f"{name} bought {n} {OBJECTS[obj]['plural']} at the {place}.",
        f"{name} saw a {obj} at the {place}.",
        f"{name} gave {friend} {n} {OBJECTS[obj]['plural']}.",
        f"The {obj} was {rng.choice(['good', 'bad', 'not good', 'not bad', 'big', 'small'])}.",
        f"{name} was {rng.choice(['happy', 'sad'])} and {p['subject']} went home.",
        f"At the {place}, one {obj} costs {n} coins.",
    ]
    return rng.choice(forms)


def text2text_examples(n: int, seed: int = 0, tasks: tuple[str, ...] = ("summarize", "translate")
                       ) -> list[tuple[str, str]]:
    """``n`` (input with task prefix, target) pairs, the tasks taken in turn."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        if task == "summarize":
            story, summary = weather_story(rng)
            out.append((SUMMARIZE + story, summary))
        elif task == "translate":
            s = english_sentence(rng)
            out.append((TRANSLATE + s, to_worldish(s)))
        else:
            raise ValueError(f"text2text_examples: unknown task {task!r}; choose 'summarize' or 'translate'")
    return out
