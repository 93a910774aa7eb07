"""The world corpus: deterministic, consistent with the world tables, counts that add up, small vocabulary."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minillm.data import world
from minillm.data.world import (
    ADJECTIVES,
    CHARACTERS,
    FACTS,
    NAMES,
    OBJECTS,
    PLACES,
    PRONOUNS,
    WEATHER,
    generate_corpus,
    generate_corpus_chars,
    tokenizer_training_text,
)

PLURAL_TO_SINGULAR = {v["plural"]: k for k, v in OBJECTS.items()}


def test_tables_are_consistent():
    assert set(NAMES) == set(CHARACTERS) and set(NAMES.values()) <= set(PRONOUNS)
    assert all(c["town"] in WEATHER for c in CHARACTERS.values())
    assert all(o in OBJECTS for p in PLACES.values() for o in p["objects"])
    assert all(isinstance(w["temp_c"], int) and w["condition"] for w in WEATHER.values())
    assert set(ADJECTIVES.values()) == {1, -1}
    assert not set(world.POSITIVE_ADJECTIVES) & set(world.NEGATIVE_ADJECTIVES)
    assert len(FACTS) > 20 and all(f.endswith(".") for f in FACTS)
    assert "The weather in Oakdale is sunny and 22 degrees C." in FACTS


@given(st.integers(0, 2**32 - 1), st.integers(0, 30))
def test_same_seed_same_text(seed, n):
    a = generate_corpus(n, seed)
    assert a == generate_corpus(n, seed)
    assert a.count("\n\n") == max(n - 1, 0)
    assert generate_corpus(n + 5, seed).startswith(a)  # a longer corpus extends the same stream


def test_sized_by_characters():
    text = generate_corpus_chars(5_000, seed=3)
    assert 5_000 <= len(text) < 5_600 and text == generate_corpus(text.count("\n\n") + 1, seed=3)
    assert generate_corpus(50, 0) != generate_corpus(50, 1)
    assert generate_corpus_chars(0) == ""
    with pytest.raises(ValueError, match="num_stories must be >= 0, got -1"):
        generate_corpus(-1)
    with pytest.raises(ValueError, match="n_chars must be >= 0"):
        generate_corpus_chars(-5)
    assert 990_000 <= len(tokenizer_training_text(1_000_000)) <= 1_010_000


def _sentences(story: str) -> list[str]:
    return re.findall(r"[^.]+\.", story)


def _check_counting_story(story: str) -> int:
    """Re-derive every stated count of a shopping story from the events; return how many were checked."""
    m = re.match(r"(\w+) went to the ([a-z ]+) in (\w+)\. (She|He) bought (\d+) (\w+)\.", story)
    name, place, town, pron, n, noun = m.groups()
    assert NAMES[name] == pron.lower() and CHARACTERS[name]["town"] == town, story
    obj = PLURAL_TO_SINGULAR.get(noun, noun)
    assert obj in PLACES[place]["objects"], story
    p = PRONOUNS[NAMES[name]]
    have, checked = int(n), 0
    num = r"(no|\d+) \w+"
    for s in _sentences(story)[2:]:
        if m := re.search(rf"(?:gave|ate|dropped) (\d+) \w+.*so {p['subject']} had {num} left", s):
            have -= int(m.group(1))
        elif m := re.search(rf"\w+ gave {p['object']} (\d+) \w+, so {p['subject']} had {num}", s):
            have += int(m.group(1))
        elif m := re.search(rf"Each {obj} cost (\d+) coins?, so {p['subject']} paid (\d+) coins?", s):
            assert int(m.group(1)) == OBJECTS[obj]["price"] and int(m.group(2)) == have * int(m.group(1)), s
            continue
        elif m := re.search(rf"At the end of the day, {name} had {num}", s):
            pass
        else:
            continue
        stated = m.groups()[-1]
        assert (0 if stated == "no" else int(stated)) == have, (story, s)
        assert have >= 0
        checked += 1
    return checked


def test_stories_are_consistent_with_the_world():
    stories = generate_corpus(600, seed=7).split("\n\n")
    kinds = {"count": 0, "weather": 0, "opinion": 0, "meeting": 0}
    for story in stories:
        if " bought " in story:
            assert _check_counting_story(story) >= 2
            kinds["count"] += 1
        elif m := re.search(r"It was (\w+) in (\w+), and it was (-?\d+) degrees\. Because it was (\w+), "
                            r"(she|he) ", story):
            cond, town, temp, kind, pron = m.groups()
            assert WEATHER[town] == {"temp_c": int(temp), "condition": cond}
            assert kind == world.weather_kind(town)
            assert NAMES[story.split()[0]] == pron
            kinds["weather"] += 1
        elif m := re.search(r"The \w+ was (not )?(\w+)\. So (she|he) was (\w+)", story):
            neg, adj, pron, mood = m.groups()
            sentiment = ADJECTIVES[adj] * (-1 if neg else 1)
            assert (mood in ("happy", "glad")) == (sentiment > 0), story
            assert NAMES[story.split()[0]] == pron
            kinds["opinion"] += 1
        elif m := re.match(r"(\w+) met (\w+) at the [a-z ]+\. \2 is an? (\w+) from (\w+)\.", story):
            a, b, job, town = m.groups()
            assert CHARACTERS[b]["job"] == job and CHARACTERS[b]["town"] == town
            if NAMES[a] != NAMES[b]:
                pa, pb = PRONOUNS[NAMES[a]], PRONOUNS[NAMES[b]]
                assert f"{pa['subject'].capitalize()} gave {pb['object']}" in story
            else:  # the same pronoun for both would be ambiguous: names are used instead
                assert f"{a} gave {b}" in story
            kinds["meeting"] += 1
        else:
            pytest.fail(f"story of unknown shape: {story}")
    assert min(kinds.values()) > 40, kinds


def test_vocabulary_is_modest():
    words = set(re.findall(r"[A-Za-z]+", generate_corpus_chars(300_000, seed=0)))
    assert 150 < len(words) < 400, len(words)
    assert re.fullmatch(r"[A-Za-z0-9 .,\n'-]*", generate_corpus_chars(50_000, seed=2))  # plain ASCII prose


def test_tool_call_examples_are_openai_shaped_json():
    import json

    for s in world.tool_call_examples(seed=0, n=30):
        call = json.loads(s)
        assert set(call) == {"name", "arguments"}
        assert call["name"] in {"get_weather", "calculator", "web_search"}
        if call["name"] == "get_weather":
            assert call["arguments"]["location"] in WEATHER


# ------------------------------------------------------------------------------------ story mixes
def test_explicit_default_weights_reproduce_the_default_stream():
    """``weights`` only re-mixes: naming the default mix (review 0) gives the very stories every shipped model
    saw, so adding story kinds never changed the default corpus."""
    default = {kind: w for kind, (_, w) in zip(world.STORY_KINDS, world.STORY_TYPES)}
    assert generate_corpus(300, 4, world.story_weights(default)) == generate_corpus(300, 4)


@given(st.integers(0, 2**32 - 1))
def test_weighted_mix_gives_only_the_named_kinds(seed):
    stories = generate_corpus(40, seed, world.story_weights("review=1")).split("\n\n")
    for s in stories:  # every one a review: an opinion whose mood sentence does not give the mood away
        adj = re.search(r"The [a-z ]+ was (not )?([a-z]+)\.", s)
        mood = re.search(r"So (he|she|they) (was|were) ([a-z]+)\.$", s)
        assert adj and mood and "smiled" not in s, s
        positive = (ADJECTIVES[adj.group(2)] > 0) != bool(adj.group(1))
        assert (mood.group(3) in ("happy", "glad")) == positive, s
    counting = generate_corpus(40, seed, world.story_weights("counting=2,review=0")).split("\n\n")
    assert not any(re.search(r"So (he|she|they) (was|were) (glad|happy|sad|upset)", s) for s in counting)


@pytest.mark.parametrize("spec,match", [("sunny=1", "unknown story kind 'sunny'"),
                                        ("review=x", "is not a number"), ("review=-1", "must be >= 0"),
                                        ("review=0,opinion=0", "weight 0")])
def test_story_weights_errors_name_the_problem(spec, match):
    with pytest.raises(ValueError, match=match):
        world.story_weights(spec)
