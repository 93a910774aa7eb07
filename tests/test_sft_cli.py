"""`minillm sft` and `minillm chat` end to end on a tiny model, and SFT that measurably learns."""

import io
import sys

import numpy
import pytest

import minillm
from minillm import F
from minillm.cli import main
from minillm.models.gpt import GPT, GPTConfig
from minillm.phases.sft import encode_examples, run_sft, sft_batches, sft_loss, task_examples
from minillm.tokenizer import load_default_tokenizer

TOK = load_default_tokenizer()


def _tiny(ctx=128):
    return GPT(GPTConfig(vocab_size=TOK.vocab_size, context_length=ctx, d_model=32, n_heads=2, n_layers=1))


@pytest.fixture
def tiny_ckpt(tmp_path):
    path = tmp_path / "tiny.npz"
    _tiny().save_checkpoint(path, TOK)
    return path


def test_cli_sft_then_chat(tiny_ckpt, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sft.npz"
    assert main(["sft", "--task", "tools", "--from", str(tiny_ckpt), "--steps", "3", "--n-train", "40",
                 "--n-eval", "2", "--batch-size", "4", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "tools tool accuracy" in text and out.exists()
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is 2 + 3?\n\nHello\n"))
    assert main(["chat", "--ckpt", str(out), "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.count("assistant>") == 2  # blank lines are skipped when piped
    assert (out.parent / "checkpoint.npz").exists()  # SFT training is resumable like pre-training
    raw = io.TextIOWrapper(io.BytesIO(b"caf\xe9 \xff\xfe?\nHello\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", raw)  # a line that is not UTF-8 must not end the chat
    assert main(["chat", "--ckpt", str(out), "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.count("assistant>") == 2


def test_sft_loss_ignores_prompt_tokens():
    """No gradient flows from prompt positions: d loss / d logits is zero wherever the label is -100."""
    model = _tiny()
    pairs, _ = encode_examples(task_examples("direct", 8, 0), TOK, 128)
    X, Y = sft_batches(pairs, pairs, 8, TOK.pad_id)("train", numpy.random.default_rng(0))
    loss, metrics = sft_loss(model, (X, Y))
    assert metrics["tokens"] == int((Y != -100).sum()) < Y.size
    logits, _ = model(X)
    logits.retain_grad()
    F.cross_entropy(logits, Y).backward()
    g = numpy.abs(logits.grad).sum(-1)  # (B, T)
    assert (g[Y == -100] == 0).all() and (g[Y != -100] > 0).all()


def test_sft_reduces_loss_on_its_data():
    minillm.manual_seed(0)
    model = _tiny()
    res = run_sft(model, TOK, task="direct", steps=40, n_train=64, batch_size=8, lr=3e-3, evaluate=False,
                  progress=False)
    h = res["history"]["loss"]
    assert numpy.mean(h[-5:]) < numpy.mean(h[:5]) - 1.0


def test_too_short_a_context_is_reported():
    with pytest.raises(ValueError, match="no example fits"):
        run_sft(_tiny(ctx=8), TOK, task="code", steps=1, n_train=8, evaluate=False, progress=False)


def test_cli_sft_on_a_users_jsonl(tiny_ckpt, tmp_path, capsys):
    from minillm.data.jsonl import write_jsonl

    data = tmp_path / "mine.jsonl"
    conv = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]
    write_jsonl([{"messages": conv}] * 4, data)
    out = tmp_path / "mine.npz"
    assert main(["sft", "--data", str(data), "--from", str(tiny_ckpt), "--steps", "2", "--batch-size", "2",
                 "--no-eval", "--no-progress", "--out", str(out)]) == 0
    assert "trained on 4 examples" in capsys.readouterr().out and out.exists()


def test_generate_fn_that_fills_the_context_keeps_the_whole_prompt(monkeypatch):
    """``max_new_tokens=None`` (the SFT evaluation) shows the model the whole prompt; a fixed budget near
    the context length keeps only the prompt's tail."""
    import minillm.generate as gen_mod
    from minillm.chat import template as chat

    seen = []

    def fake_generate(model, ids, max_new_tokens, **kw):
        seen.append((len(ids), max_new_tokens))
        return numpy.concatenate([ids, [TOK.token_to_id(chat.END)]])

    monkeypatch.setattr(gen_mod, "generate", fake_generate)
    msgs = task_examples("code", 1, 1000)[0]["messages"][:1]
    n_prompt = len(chat.render_prompt(msgs, TOK))
    assert 32 < n_prompt < 112
    model = _tiny(ctx=128)
    chat.make_generate_fn(model, TOK, max_new_tokens=None)(msgs)
    chat.make_generate_fn(model, TOK, max_new_tokens=96)(msgs)
    assert seen == [(n_prompt, 128 - n_prompt), (32, 96)]


def test_heldout_word_problems_are_unseen_in_either_rendering():
    from minillm.phases.sft import _prompt_key, heldout_for

    held = {ex["meta"]["question"] for ex in heldout_for("cot+direct", 200)["cot"]}
    train = task_examples("cot+direct", 4000, 0)
    assert {ex["task"] for ex in train} == {"cot", "direct"}
    leaked = [ex for ex in train if ex["meta"]["question"] in held]
    assert leaked and all(_prompt_key(ex) in held for ex in leaked)  # run_sft drops these by _prompt_key


def test_shipped_specialists_answer_held_out_prompts():
    """gpt_sft_code writes a passing function, gpt_sft_cot a right 4-step rationale, on prompts held out
    from their training runs (the full figures are in lessons 08 and 09)."""
    from minillm.chat import template as chat
    from minillm.chat.sandbox import run_tests
    from minillm.data.word_problems import extract_answer
    from minillm.phases.sft import heldout_for
    from minillm.shipped import SHIPPED_SFT_CODE, SHIPPED_SFT_COT

    for path, task in [(SHIPPED_SFT_CODE, "code"), (SHIPPED_SFT_COT, "cot+direct")]:
        assert minillm.load(path)["sft"]["task"] == task
    model, tok = GPT.load_with_tokenizer(SHIPPED_SFT_CODE)
    gen = chat.make_generate_fn(model, tok, max_new_tokens=None)
    ex = heldout_for("code", 40)["code"][0]
    assert run_tests(gen(ex["messages"][:1]), ex["meta"]["entry_point"], ex["meta"]["tests"]).ok
    model, tok = GPT.load_with_tokenizer(SHIPPED_SFT_COT)
    gen = chat.make_generate_fn(model, tok, max_new_tokens=None)
    ex = next(e for e in heldout_for("cot+direct", 200)["cot"] if e["meta"]["steps"] == 4)
    assert extract_answer(gen(ex["messages"][:1])) == ex["meta"]["answer"]
