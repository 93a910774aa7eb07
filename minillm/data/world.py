"""A small deterministic world and a story generator: the built-in pre-training corpus.

The world is data (module-level tables) so that later phases can reuse it: characters with names, consistent
pronouns, a home town and a job; towns with fixed weather; places with the objects found there; objects
with plurals and prices; adjectives with a sentiment; and a list of facts (the documents a local
``web_search`` tool can search). Stories are built from these tables by a seeded ``random.Random``, so the
same seed always gives the same text, and every story is consistent with the world: Mia is always "she"
and lives in Oakdale, it is always 22 degrees and sunny in Oakdale, and counts add up ("She bought 5
apples. Then she gave 2 apples to Tom, so she had 3 apples left.").

The vocabulary is kept small (a few hundred words) so a tiny GPT can learn the grammar, the facts and
the counting in minutes on a laptop CPU.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

PRONOUNS: dict[str, dict[str, str]] = {
    "she": {"subject": "she", "object": "her", "possessive": "her"},
    "he": {"subject": "he", "object": "him", "possessive": "his"},
}

# name -> pronoun, home town, job. Stories never contradict these.
CHARACTERS: dict[str, dict[str, str]] = {
    "Mia": {"pronoun": "she", "town": "Oakdale", "job": "baker"},
    "Tom": {"pronoun": "he", "town": "Oakdale", "job": "farmer"},
    "Lily": {"pronoun": "she", "town": "Riverton", "job": "teacher"},
    "Sam": {"pronoun": "he", "town": "Riverton", "job": "doctor"},
    "Emma": {"pronoun": "she", "town": "Sunport", "job": "painter"},
    "Ben": {"pronoun": "he", "town": "Sunport", "job": "fisher"},
    "Anna": {"pronoun": "she", "town": "Snowfield", "job": "doctor"},
    "Leo": {"pronoun": "he", "town": "Snowfield", "job": "teacher"},
    "Zoe": {"pronoun": "she", "town": "Hillcrest", "job": "farmer"},
    "Max": {"pronoun": "he", "town": "Hillcrest", "job": "baker"},
    "Ella": {"pronoun": "she", "town": "Maplewood", "job": "fisher"},
    "Jack": {"pronoun": "he", "town": "Maplewood", "job": "painter"},
}
NAMES: dict[str, str] = {name: c["pronoun"] for name, c in CHARACTERS.items()}

# town -> today's weather (it never changes in this world: a fact a model can learn and a tool can report)
WEATHER: dict[str, dict] = {
    "Oakdale": {"temp_c": 22, "condition": "sunny"},
    "Riverton": {"temp_c": 14, "condition": "rainy"},
    "Sunport": {"temp_c": 30, "condition": "sunny"},
    "Snowfield": {"temp_c": -4, "condition": "snowy"},
    "Hillcrest": {"temp_c": 9, "condition": "windy"},
    "Maplewood": {"temp_c": 17, "condition": "cloudy"},
}
TOWNS: list[str] = list(WEATHER)

# object -> plural, price in coins (for shopping stories and arithmetic word problems)
OBJECTS: dict[str, dict] = {
    "apple": {"plural": "apples", "price": 2, "food": True},
    "orange": {"plural": "oranges", "price": 3, "food": True},
    "egg": {"plural": "eggs", "price": 1, "food": True},
    "carrot": {"plural": "carrots", "price": 1, "food": True},
    "cake": {"plural": "cakes", "price": 5, "food": True},
    "cookie": {"plural": "cookies", "price": 1, "food": True},
    "bun": {"plural": "buns", "price": 2, "food": True},
    "book": {"plural": "books", "price": 6, "food": False},
    "pencil": {"plural": "pencils", "price": 1, "food": False},
    "ball": {"plural": "balls", "price": 4, "food": False},
    "kite": {"plural": "kites", "price": 7, "food": False},
    "shell": {"plural": "shells", "price": 0, "food": False},
    "stone": {"plural": "stones", "price": 0, "food": False},
    "flower": {"plural": "flowers", "price": 0, "food": False},
}

# place -> what kind of place it is and which objects are there (shops sell them, outdoor places have them)
PLACES: dict[str, dict] = {
    "market": {"kind": "shop", "objects": ["apple", "orange", "egg", "carrot"]},
    "bakery": {"kind": "shop", "objects": ["cake", "cookie", "bun"]},
    "book shop": {"kind": "shop", "objects": ["book", "pencil"]},
    "toy shop": {"kind": "shop", "objects": ["ball", "kite"]},
    "beach": {"kind": "outdoor", "objects": ["shell", "stone"]},
    "park": {"kind": "outdoor", "objects": ["flower", "stone"]},
    "library": {"kind": "indoor", "objects": ["book"]},
    "school": {"kind": "indoor", "objects": ["pencil", "book"]},
}

POSITIVE_ADJECTIVES: list[str] = ["good", "great", "lovely", "tasty", "fun", "nice", "sweet", "wonderful"]
NEGATIVE_ADJECTIVES: list[str] = ["bad", "awful", "boring", "sour", "dull", "terrible", "stale", "ugly"]
# adjective -> +1 (positive) or -1 (negative); "not" flips it
ADJECTIVES: dict[str, int] = {**{a: 1 for a in POSITIVE_ADJECTIVES}, **{a: -1 for a in NEGATIVE_ADJECTIVES}}
# which adjectives fit which object when someone gives an opinion about it
OPINION_ADJECTIVES: dict[str, list[str]] = {
    "food": ["good", "great", "tasty", "nice", "sweet", "bad", "awful", "sour", "stale", "terrible"],
    "thing": ["good", "great", "lovely", "fun", "nice", "wonderful", "bad", "boring", "dull", "ugly"],
}

# what people do in each kind of weather (the causal link weather stories teach)
WEATHER_ACTIVITIES: dict[str, str] = {
    "sunny": "went to the park to play with a ball",
    "hot": "went to the beach to swim in the sea",
    "rainy": "took {pos} umbrella and went to the library",
    "snowy": "put on {pos} warm coat and built a snowman",
    "windy": "went to the park to fly a kite",
    "cloudy": "stayed at home and read a book",
}

GENERAL_FACTS: list[str] = [
    "Water freezes at 0 degrees C and boils at 100 degrees C.",
    "To turn degrees C into degrees F, multiply by 9, divide by 5 and add 32.",
    "A week has 7 days and a day has 24 hours.",
    "The market in every town opens at 8 in the morning and closes at 6 in the evening.",
    "The library lends books for 14 days.",
    "A snowman can only be built when it is snowy.",
    "People take an umbrella when it is rainy.",
    "A kite flies best when it is windy.",
]


def coins(n: int) -> str:
    """``1 coin``, ``3 coins``."""
    return f"{n} coin" if n == 1 else f"{n} coins"


def _town_facts() -> list[str]:
    out = []
    for town, w in WEATHER.items():
        people = [n for n, c in CHARACTERS.items() if c["town"] == town]
        out.append(f"The weather in {town} is {w['condition']} and {w['temp_c']} degrees C.")
        out.append(f"{' and '.join(people)} live in {town}.")
    return out


FACTS: list[str] = (
    [f"{n} is a {c['job']} who lives in {c['town']}." for n, c in CHARACTERS.items()]
    + _town_facts()
    + [f"At the market, one {o} costs {coins(v['price'])}." for o, v in OBJECTS.items()
       if v["price"] and o in PLACES["market"]["objects"]]
    + [f"At the {p}, one {o} costs {coins(OBJECTS[o]['price'])}." for p in ("bakery", "book shop", "toy shop")
       for o in PLACES[p]["objects"]]
    + GENERAL_FACTS
)


# ---------------------------------------------------------------------- grammar helpers
def count_phrase(n: int, obj: str) -> str:
    """``3 apples``, ``1 apple``, ``no apples``."""
    if n == 0:
        return f"no {OBJECTS[obj]['plural']}"
    return f"{n} {obj if n == 1 else OBJECTS[obj]['plural']}"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def weather_kind(town: str) -> str:
    """The activity key for a town's weather: its condition, or ``hot`` when sunny and 25 C or more."""
    w = WEATHER[town]
    return "hot" if w["condition"] == "sunny" and w["temp_c"] >= 25 else w["condition"]


# ---------------------------------------------------------------------- story types
def _story_counting(rng: random.Random) -> str:
    """Buy some objects, then give/eat/drop/receive some, with the running count stated each time."""
    name = rng.choice(list(CHARACTERS))
    c = CHARACTERS[name]
    p = PRONOUNS[c["pronoun"]]
    place = rng.choice([pl for pl, v in PLACES.items() if v["kind"] == "shop"])
    obj = rng.choice(PLACES[place]["objects"])
    have = rng.randint(2, 9)
    s = [f"{name} went to the {place} in {c['town']}.",
         f"{_cap(p['subject'])} bought {count_phrase(have, obj)}."]
    if rng.random() < 0.3:
        cost = have * OBJECTS[obj]["price"]
        s.append(f"Each {obj} cost {coins(OBJECTS[obj]['price'])}, so {p['subject']} paid {coins(cost)}.")
    for step in range(rng.randint(1, 3)):
        then = "Then" if step == 0 else rng.choice(["After that,", "Later,"])
        friend = rng.choice([n for n in CHARACTERS if n != name])
        moves = ["give", "get"] + (["eat"] if OBJECTS[obj]["food"] else ["drop"])
        move = rng.choice(moves) if have > 0 else "get"
        if move == "get":
            k = rng.randint(1, 5)
            # a pronoun for the friend only when it can't be confused with the main character's
            thanked = friend if NAMES[friend] == NAMES[name] else PRONOUNS[NAMES[friend]]["object"]
            s.append(f"{then} {friend} gave {p['object']} {count_phrase(k, obj)}, so {p['subject']} had "
                     f"{count_phrase(have + k, obj)}. {_cap(p['subject'])} said thank you to {thanked}.")
            have += k
            continue
        k = rng.randint(1, have)
        left = count_phrase(have - k, obj)
        if move == "give":
            s.append(f"{then} {p['subject']} gave {count_phrase(k, obj)} to {friend}, so {p['subject']} had "
                     f"{left} left.")
        elif move == "eat":
            s.append(f"{then} {p['subject']} ate {count_phrase(k, obj)}, so {p['subject']} had {left} left.")
        else:
            s.append(f"{then} {p['subject']} dropped {count_phrase(k, obj)} on the way home, so "
                     f"{p['subject']} had {left} left.")
        have -= k
    s.append(f"At the end of the day, {name} had {count_phrase(have, obj)}.")
    return " ".join(s)


def _story_weather(rng: random.Random) -> str:
    """The town's (fixed) weather causes what a character does."""
    name = rng.choice(list(CHARACTERS))
    c = CHARACTERS[name]
    p = PRONOUNS[c["pronoun"]]
    town = c["town"] if rng.random() < 0.7 else rng.choice(TOWNS)
    w = WEATHER[town]
    act = WEATHER_ACTIVITIES[weather_kind(town)].format(pos=p["possessive"])
    if town == c["town"]:
        opener = f"{name} lives in {town}."
    else:
        opener = f"{name} went to visit {town}."
    return (f"{opener} It was {w['condition']} in {town}, and it was {w['temp_c']} degrees. "
            f"Because it was {weather_kind(town)}, {p['subject']} {act}.")


def _story_opinion(rng: random.Random, smiled: bool = True) -> str:
    """An opinion about an object, possibly negated; the character's mood follows the sentiment.

    In the default corpus a happy mood goes on "and smiled", which gives it away: a masked mood word is
    predictable from what follows it, so masked-LM pre-training need not learn the sentiment itself.
    ``smiled=False`` (the "review" kind) ends every mood the same way: "So she was glad." or "... sad."."""
    name = rng.choice(list(CHARACTERS))
    p = PRONOUNS[NAMES[name]]
    place = rng.choice([pl for pl, v in PLACES.items() if v["kind"] in ("shop", "indoor")])
    obj = rng.choice(PLACES[place]["objects"])
    food = OBJECTS[obj]["food"]
    verb = "ate" if food else rng.choice(["got", "saw"])
    adj = rng.choice(OPINION_ADJECTIVES["food" if food else "thing"])
    negated = rng.random() < 0.35
    sentiment = ADJECTIVES[adj] * (-1 if negated else 1)
    mood = (rng.choice(["happy", "glad"]) + (" and smiled" if smiled else "")) if sentiment > 0 else \
        rng.choice(["sad", "upset"])
    return (f"{name} {verb} {_article(obj)} at the {place}. The {obj} was {'not ' if negated else ''}{adj}. "
            f"So {p['subject']} was {mood}.")


def _story_meeting(rng: random.Random) -> str:
    """Two characters meet; pronouns for both must stay straight."""
    a, b = rng.sample(list(CHARACTERS), 2)
    pa, pb = PRONOUNS[NAMES[a]], PRONOUNS[NAMES[b]]
    place = rng.choice(list(PLACES))
    obj = rng.choice(PLACES[place]["objects"])
    job = CHARACTERS[b]["job"]
    if pa is pb:  # same pronoun: names keep it unambiguous
        sa, ob, sb, oa = a, b, b, a
    else:
        sa, ob, sb, oa = _cap(pa["subject"]), pb["object"], pb["subject"], pa["object"]
    return (f"{a} met {b} at the {place}. {b} is {_article(job)} from {CHARACTERS[b]['town']}. "
            f"{sa} gave {ob} {_article(obj)}, and {sb} said thank you to {oa}. "
            f"Then {b if pa is pb else pb['subject']} went home to {CHARACTERS[b]['town']}.")


STORY_TYPES = [(_story_counting, 0.45), (_story_weather, 0.2), (_story_opinion, 0.2), (_story_meeting, 0.15)]
STORY_KINDS = ("counting", "weather", "opinion", "meeting", "review")  # STORY_TYPES' names, then extras


def _story_review(rng: random.Random) -> str:
    """An opinion story whose last sentence does not give the mood away (weight 0 in the default mix)."""
    return _story_opinion(rng, smiled=False)


_STORY_FNS = [fn for fn, _ in STORY_TYPES] + [_story_review]


def story_weights(spec: str | dict[str, float] | None) -> dict[str, float] | None:
    """Parse ``"opinion=0.6,counting=0.2"`` (or a dict) into story-kind weights; kinds not named get 0.
    ``None`` or ``""`` means the default mix (``STORY_TYPES``)."""
    if not spec:
        return None
    items = spec.items() if isinstance(spec, dict) else (
        part.split("=", 1) if "=" in part else (part, "") for part in spec.split(",") if part.strip())
    out = {}
    for kind, w in items:
        kind = str(kind).strip()
        if kind not in STORY_KINDS:
            raise ValueError(f"story weights: unknown story kind {kind!r}; choose from {list(STORY_KINDS)}")
        try:
            out[kind] = float(w)
        except ValueError:
            raise ValueError(f"story weights: {kind}={w!r} is not a number (write e.g. {kind}=0.5)") from None
        if not out[kind] >= 0:
            raise ValueError(f"story weights: {kind}={out[kind]} must be >= 0")
    if sum(out.values()) <= 0:
        raise ValueError(f"story weights: {spec!r} gives every story kind weight 0")
    return out


def iter_stories(seed: int = 0, weights: dict[str, float] | None = None) -> Iterator[str]:
    """An endless, deterministic stream of stories (the same seed always gives the same stream).

    ``weights`` (kind -> weight, see ``story_weights``) changes the mix of story kinds, e.g. a corpus rich
    in opinions for domain-adaptive pre-training; ``None`` is the default mix every shipped model saw."""
    rng = random.Random(seed)
    if weights is None:
        fns, w = zip(*STORY_TYPES)
    else:
        fns, w = _STORY_FNS, [weights.get(k, 0.0) for k in STORY_KINDS]
    while True:
        yield rng.choices(fns, w)[0](rng)


def generate_corpus(num_stories: int, seed: int = 0, weights: dict[str, float] | None = None) -> str:
    """``num_stories`` stories separated by blank lines (``"\\n\\n"``); ``weights`` as in ``iter_stories``."""
    if num_stories < 0:
        raise ValueError(f"generate_corpus: num_stories must be >= 0, got {num_stories}")
    it = iter_stories(seed, weights)
    return "\n\n".join(next(it) for _ in range(num_stories))


def generate_corpus_chars(n_chars: int, seed: int = 0) -> str:
    """Whole stories, in stream order, until the text is at least ``n_chars`` characters long.

    It is a prefix of the same seed's ``generate_corpus`` for more stories.
    """
    if n_chars < 0:
        raise ValueError(f"generate_corpus_chars: n_chars must be >= 0, got {n_chars}")
    parts, total = [], 0
    it = iter_stories(seed)
    while total < n_chars:
        s = next(it)
        parts.append(s)
        total += len(s) + 2
    return "\n\n".join(parts)


def tool_call_examples(seed: int = 0, n: int = 50) -> list[str]:
    """OpenAI-shaped tool-call JSON over the world (get_weather, calculator, web_search): text that lets
    the shipped tokenizer learn JSON punctuation that later tool-use phases will write."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            args = {"location": rng.choice(TOWNS), "unit": rng.choice(["celsius", "fahrenheit"])}
            call = {"name": "get_weather", "arguments": args}
        elif kind == 1:
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            call = {"name": "calculator", "arguments": {"expression": f"{a} {rng.choice('+-*')} {b}"}}
        else:
            call = {"name": "web_search", "arguments": {"query": rng.choice(FACTS).split(" is ")[0]}}
        out.append(json.dumps(call))
    return out


def question_examples(seed: int = 0, n: int = 60) -> list[str]:
    """Questions and answers about the world in the plain words later phases use (chat, sentiment,
    arithmetic, summaries), so the shipped tokenizer has single tokens for them too."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name, town = rng.choice(list(CHARACTERS)), rng.choice(TOWNS)
        obj, a, b = rng.choice(list(OBJECTS)), rng.randint(1, 20), rng.randint(1, 20)
        out += [
            f"Question: What is the weather in {town}? Answer: It is {WEATHER[town]['condition']} and "
            f"{WEATHER[town]['temp_c']} degrees C.",
            f"Question: How many {OBJECTS[obj]['plural']} does {name} have now? Answer: {a}.",
            f"Question: What is {a} + {b}? Answer: {a + b}. What is {a} - {b}? Answer: {a - b}. "
            f"What is {a} * {b}? Answer: {a * b}.",
            f"Question: Where does {name} live? Answer: {name} lives in {CHARACTERS[name]['town']}.",
            f"Question: Is the review positive or negative? Review: The {obj} was not "
            f"{rng.choice(list(ADJECTIVES))}. Answer: {rng.choice(['positive', 'negative'])}.",
            "Summary: " + rng.choice(FACTS),
            f"System: You are a helpful assistant. User: Hello! Can you help me, please? Assistant: Yes, "
            f"of course. I can use the tools get_weather, calculator and web_search. The temperature is "
            f"{WEATHER[town]['temp_c']} degrees in celsius. Sorry, I don't know. Thank you.",
        ]
    return out


def weather_table() -> dict[str, tuple[int, str]]:
    """town -> (temperature in °C, condition): what the ``get_weather`` tool answers from."""
    return {town: (w["temp_c"], w["condition"]) for town, w in WEATHER.items()}


def fact_documents() -> list[dict]:
    """The local document collection the ``web_search`` tool searches: one document per world fact."""
    return [{"title": f"fact {i}", "text": f} for i, f in enumerate(FACTS)]


def tokenizer_training_text(n_chars: int = 1_000_000, seed: int = 0) -> str:
    """The shipped tokenizer's training text: world stories (~95%) plus the facts, questions and some
    tool-call JSON, so the one tokenizer also covers the formats of later phases compactly."""
    extra = "\n\n".join(FACTS + question_examples(seed) + tool_call_examples(seed))
    return generate_corpus_chars(max(0, n_chars - len(extra)), seed) + "\n\n" + extra


def train_default_tokenizer(out_path=None, vocab_size: int | None = None, n_chars: int = 1_000_000,
                            seed: int = 0):
    """The recipe of the shipped ``minillm/checkpoints/tokenizer.json``: BPE on ~1 MB of world text.

    ``python -c "from minillm.data.world import train_default_tokenizer as t; from minillm.shipped import
    TOKENIZER; t(TOKENIZER)"`` remakes it; with ``out_path=None`` nothing is written.
    """
    from minillm.tokenizer import DEFAULT_VOCAB_SIZE, BPETokenizer

    tok = BPETokenizer.train(tokenizer_training_text(n_chars, seed=seed), vocab_size or DEFAULT_VOCAB_SIZE)
    if out_path is not None:
        tok.save(out_path)
    return tok
