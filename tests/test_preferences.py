"""Preference data: the world prompts, the rule-based judge, sampled pairs, chat tokenization, JSONL."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minillm.phases import preferences as P
from minillm.tokenizer import load_default_tokenizer

TOK = load_default_tokenizer()
ALL = P.make_prompts("all")


def first(category, prompts=ALL):
    return next(p for p in prompts if p["category"] == category)


def test_prompts_cover_every_category_and_split_cleanly():
    train, ev = P.make_prompts("train"), P.make_prompts("eval")
    for cat in P.CATEGORIES:
        assert any(p["category"] == cat for p in train) and any(p["category"] == cat for p in ev)
    key = lambda p: json.dumps(p["messages"], sort_keys=True)  # noqa: E731
    assert not {key(p) for p in train} & {key(p) for p in ev}
    assert [key(p) for p in P.make_prompts("train")] == [key(p) for p in train]  # deterministic
    with pytest.raises(ValueError, match="split"):
        P.make_prompts("test")


def test_every_example_reply_is_judged_as_intended():
    """The good demonstrations get the top score and the bad ones less, for every prompt."""
    for p in ALL:
        for g in p["meta"]["good"]:
            assert P.score(p, g)[0] == 1.0, (p["messages"], g, P.score(p, g))
        for b in p["meta"]["bad"]:
            assert P.score(p, b)[0] < 1.0, (p["messages"], b, P.score(p, b))


def test_judge_rules():
    harmful, harmless = first("harmful"), first("harmless")
    assert P.judge(harmful, "Sure. Do it at night.", P.REFUSAL)[0] == "b"
    assert P.judge(harmless, P.REFUSAL, harmless["meta"]["good"][0])[0] == "b"
    assert P.judge(harmless, P.REFUSAL, "blah blah")[0] is None  # noise is no better than a refusal
    unans = first("unanswerable")
    assert P.judge(unans, "She is 9 years old.", P.IDK)[0] == "b"
    assert P.score(unans, P.REFUSAL)[0] == 0.25  # a refusal is better than a guess, worse than honesty
    ans = first("answerable")
    assert P.score(ans, P.IDK)[0] == 0.25 and P.score(ans, "blah")[0] == 0.0
    verdict, why = P.judge(ans, ans["meta"]["good"][0], ans["meta"]["good"][0])
    assert verdict is None and why["score_a"] == why["score_b"] == 1.0
    with pytest.raises(ValueError, match="unknown category"):
        P.score({"category": "poetry", "meta": {}}, "x")


def test_constraint_rules():
    p = {"category": "constraint", "messages": [], "meta": {"answer": "Oakdale", "max_words": 3}}
    assert P.score(p, "In Oakdale.")[0] == 1.0
    assert P.score(p, "Mia lives in Oakdale.")[0] == 0.5  # right fact, too long
    assert P.score(p, "In Riverton.")[0] == 0.25  # short, wrong fact: worse than long and right
    assert P.score(p, "Mia lives in a big town called Riverton.")[0] == 0.0
    assert not P.meets_constraint(p, "")
    s = {"category": "constraint", "messages": [], "meta": {"answer": "rainy", "sentences": 1}}
    assert P.meets_constraint(s, "It is rainy and 14 degrees C in Riverton.")
    assert not P.meets_constraint(s, "It is rainy. It is 14 degrees C.")


def test_text_rules():
    assert P.word_count("Mia's cake, 3 coins.") == 4
    assert P.sentence_count("One. Two! Three? four") == 4 and P.sentence_count("  ") == 0
    assert P.is_refusal("I can't help with that.") and P.is_refusal("i cannot help you")
    assert not P.is_refusal("I can help with that.")
    assert P.says_idk("I don't know.") and not P.says_idk("I know.")
    assert P.states("It is 14 degrees", 14) and not P.states("It is 140 degrees", 14)
    assert not P.states("It is -4 degrees", 4)


@given(st.sampled_from(ALL), st.text(max_size=60))
def test_score_is_total_and_bounded(p, text):
    s, reasons = P.score(p, text)
    assert 0.0 <= s <= 1.0 and reasons


def test_math_and_tool_correctness():
    m, t = first("math"), first("tool")
    assert P.is_correct(m, m["meta"]["good"][0]) and not P.is_correct(m, m["meta"]["bad"][0])
    assert P.is_correct(t, t["meta"]["good"][0]) and not P.is_correct(t, t["meta"]["bad"][0])


def test_sft_mixture_is_mixed_quality():
    prompts = P.make_prompts("train")
    mix = P.sft_mixture(prompts, seed=0, copies=4)
    assert len(mix) == 4 * len(prompts)
    for cat in ("harmful", "unanswerable", "constraint"):
        goods = [e["meta"]["good"] for e in mix if e["task"] == f"prefs-{cat}"]
        assert 0.25 < np.mean(goods) < 0.75  # neither all good nor all bad
    assert all(e["messages"][-1]["role"] == "assistant" for e in mix)


def test_sample_pairs_keeps_the_judges_choice(monkeypatch):
    prompts = [first("harmful"), first("unanswerable"), first("answerable")]
    replies = [["Sure. Do it.", P.REFUSAL], [P.IDK, "She is 5."], ["no idea", "nothing"]]
    monkeypatch.setattr(P, "generate_replies", lambda *a, **k: (replies, None))
    triplets, stats = P.sample_pairs(None, TOK, prompts)
    assert [t["chosen"] for t in triplets] == [P.REFUSAL, P.IDK]
    assert [t["rejected"] for t in triplets] == ["Sure. Do it.", "She is 5."]
    assert stats["ties"] == 1 and stats["pairs"] == 2
    with pytest.raises(ValueError, match="at least 2"):
        P.sample_pairs(None, TOK, prompts, num_samples=1)
    # with the example reply as one more candidate, the all-wrong prompt gets a pair too
    triplets, stats = P.sample_pairs(None, TOK, prompts, add_demo=True)
    assert stats["pairs"] == 3 and stats["chosen from demos"] == 1
    assert triplets[2]["chosen"] == prompts[2]["meta"]["good"][0]
    assert triplets[2]["rejected"] in ("no idea", "nothing")
    assert [t["chosen_is_demo"] for t in triplets] == [False, False, True]


def test_tokenize_triplets_masks_only_the_final_reply():
    from minillm.chat.template import END, render_prompt

    tool = first("tool")  # its prompt holds an earlier assistant turn (the tool call): must stay masked
    trip = P.offline_pairs([first("harmful"), tool])
    examples, dropped = P.tokenize_triplets(trip, TOK)
    assert dropped == 0
    for t, ex in zip(trip, examples):
        n = len(render_prompt(t["prompt"], TOK))
        for side in ("chosen", "rejected"):
            ids, mask = ex[f"{side}_ids"], ex[f"{side}_mask"]
            assert mask[:n] == [0] * n and all(mask[n:]) and ids[-1] == TOK.token_to_id(END)
            assert TOK.decode(ids[n:-1]) == t[side]
    _, dropped = P.tokenize_triplets(trip, TOK, max_length=10)
    assert dropped == 2


def test_jsonl_round_trip_and_trl_forms(tmp_path):
    trip = P.offline_pairs(P.make_prompts("eval")[:5])
    path = tmp_path / "pairs.jsonl"
    P.write_triplets(trip, path)
    back = P.read_triplets(path)
    assert [(b["prompt"], b["chosen"], b["rejected"]) for b in back] == \
        [(t["prompt"], t["chosen"], t["rejected"]) for t in trip]
    # TRL-style: a plain-text prompt and conversational chosen/rejected
    trl = {"prompt": "How old is Mia?", "chosen": [{"role": "assistant", "content": P.IDK}],
           "rejected": [{"role": "assistant", "content": "Mia is 9."}]}
    path.write_text(json.dumps(trl) + "\n\n", encoding="utf-8")
    (t,) = P.read_triplets(path)
    assert t["prompt"] == [{"role": "user", "content": "How old is Mia?"}] and t["chosen"] == P.IDK


def test_read_triplets_reports_bad_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*missing \['chosen', 'rejected'\]"):
        P.read_triplets(path)
    path.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r":1: not valid JSON"):
        P.read_triplets(path)
    path.write_text('{"prompt": "a", "chosen": 3, "rejected": "c"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r":1: a chosen/rejected reply"):
        P.read_triplets(path)


def test_behaviour_rates():
    prompts = [first("harmful"), first("harmless"), first("unanswerable"), first("answerable")]
    good = [p["meta"]["good"][0] for p in prompts]
    bad = [P.REFUSAL if p["category"] == "harmless" else p["meta"]["bad"][0] for p in prompts]
    r_good, r_bad = P.behaviour_rates(prompts, good), P.behaviour_rates(prompts, bad)
    assert r_good["refusal rate (harmful)"] == 1.0 and r_bad["refusal rate (harmful)"] == 0.0
    assert r_good["over-refusal rate (harmless)"] == 0.0 and r_bad["over-refusal rate (harmless)"] == 1.0
    assert r_good["I don't know rate (unanswerable)"] == 1.0 and r_good["task accuracy"] == 1.0
    assert r_good["judge score"] == 1.0 > r_bad["judge score"]


def test_preferences_imports_nothing_from_dpo():
    """Preference data and judging stand alone; DPO (the loss, training and the phase) builds on them."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(P))
    names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in names if "dpo" in m]


def test_reply_sequences_mask_only_the_reply():
    p = first("harmful")
    prompt_len = len(P.reply_sequences(TOK, [p], [[np.array([5])]])[0][0]) - 1
    seqs, masks = P.reply_sequences(TOK, [p], [[np.array([5, 6]), np.array([], dtype=np.int64)]])
    assert len(seqs) == 1  # the empty reply is left out
    assert seqs[0][prompt_len:] == [5, 6] and masks[0] == [0] * prompt_len + [1, 1]
