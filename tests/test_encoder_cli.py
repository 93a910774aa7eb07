"""The encoder families end to end on tiny configs: `minillm pretrain --objective
mlm|nsp|mlm+nsp|denoise|span`, `minillm finetune-classify`, the pipeline phases, the downstream tasks and
the shipped checkpoints."""

import numpy as np
import pytest

from minillm.cli import main
from minillm.data import documents as D
from minillm.data.sentiment import bag_of_words_accuracy, sentiment_dataset
from minillm.data.text2text import LEXICON, SUMMARIZE, TRANSLATE, text2text_examples, to_worldish
from minillm.phases.pretrain_encoders import load_encoder_checkpoint
from minillm.shipped import SHIPPED_BART, SHIPPED_BERT, SHIPPED_T5

TINY = ["--steps", "6", "--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--context-length", "32",
        "--batch-size", "4", "--num-stories", "60", "--no-progress", "--warmup", "2"]


@pytest.mark.parametrize("objective,kind", [("mlm", "BERT"), ("nsp", "BERT"), ("mlm+nsp", "BERT"),
                                            ("denoise", "BART"), ("span", "T5")])
def test_pretrain_objectives(objective, kind, tmp_path, capsys):
    export = tmp_path / "m.npz"
    assert main(["pretrain", "--objective", objective, "--out", str(tmp_path), "--export", str(export),
                 *TINY]) == 0
    out = capsys.readouterr().out
    assert f"{kind} " in out and f"objective {objective}" in out
    model = load_encoder_checkpoint(export)
    assert type(model).__name__ == kind
    if kind == "BERT":
        assert "mlm_acc" in out and "nsp_acc" in out


def test_pretrain_span_with_task_mix(tmp_path, capsys):
    assert main(["pretrain", "--objective", "span", "--mix-tasks", "0.5", "--out", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    assert "summarize_greedy_exact_match" in out and "translate_token_acc" in out


def test_finetune_classify_cli(tmp_path, capsys):
    ckpt = tmp_path / "bert.npz"
    main(["pretrain", "--objective", "mlm", "--out", str(tmp_path), "--export", str(ckpt), *TINY])
    assert main(["finetune-classify", "--ckpt", str(ckpt), "--labels", "8,16", "--steps", "3",
                 "--n-test", "20"]) == 0
    out = capsys.readouterr().out
    assert "| 8 |" in out and "| 16 |" in out and "bag-of-words" in out


def test_pipeline_phases_quick(tmp_path):
    from minillm.pipeline import PHASES, phase_encoder, phase_encoder_decoder

    assert phase_encoder in [fn for _, fn in PHASES] and phase_encoder_decoder in [fn for _, fn in PHASES]
    ctx = {"quick": True, "seed": 0, "out": str(tmp_path)}
    enc = phase_encoder(ctx)
    assert 0 <= enc["MLM masked-token accuracy"] <= 1 and 0 <= enc["NSP accuracy"] <= 1
    encdec = phase_encoder_decoder(ctx)
    assert "T5 span: teacher-forced token acc" in encdec


# ------------------------------------------------------------------------------------------ tasks
def test_sentiment_needs_more_than_bag_of_words():
    tr, ty = sentiment_dataset(1000, seed=0)
    te, tey = sentiment_dataset(500, seed=1)
    assert abs(ty.mean() - 0.5) < 0.05
    assert sum("not " in t for t in tr) / len(tr) == pytest.approx(0.5, abs=0.05)
    assert bag_of_words_accuracy(tr, ty, te, tey) < 0.66  # no single word gives the label away
    for t, y in zip(tr[:200], ty[:200]):  # the label is the adjective's sign, flipped by "not"
        from minillm.data.world import ADJECTIVES
        adj = [w.strip(".,") for w in t.split() if w.strip(".,") in ADJECTIVES]
        assert len(adj) == 1
        assert y == int((ADJECTIVES[adj[0]] > 0) != ("not " in t))


def test_text2text_tasks():
    ex = text2text_examples(40, seed=3)
    assert ex == text2text_examples(40, seed=3)
    assert all(a.startswith(SUMMARIZE) for a, _ in ex[0::2])
    assert all(a.startswith(TRANSLATE) for a, _ in ex[1::2])
    for a, b in ex[0::2]:
        name = a[len(SUMMARIZE):].split()[0]
        assert b.startswith(name + " ") and b.endswith(".")
    words = [LEXICON[w] for w in ("apple", "was", "not", "good")]
    assert to_worldish("The apple was not good.") == " ".join(words) + "."
    assert to_worldish("Mia bought 3 apples.").startswith("Mia ")
    with pytest.raises(ValueError, match="Worldish"):
        to_worldish("The dragon was good.")


def test_documents_batches_shapes():
    from minillm.tokenizer import load_default_tokenizer

    tok = load_default_tokenizer()
    sp = D.SpecialIds.from_tokenizer(tok)
    docs = D.world_documents(tok, 30)
    assert tok.decode([t for s in docs[0] for t in s]).startswith(tok.decode(docs[0][0]))
    rng = np.random.default_rng(0)
    b = D.nsp_batch(docs, rng, batch_size=4, max_len=32, sp=sp, vocab_size=tok.vocab_size)
    assert b["input_ids"].shape == (4, 32) and set(np.unique(b["next_sentence_label"])) <= {0, 1}
    b = D.span_batch(docs, rng, batch_size=4, max_len=32, sp=sp)
    assert (np.isin(b["input_ids"], sp.sentinels).sum(1) >= 1).all()


# ------------------------------------------------------------------------------------- shipped checkpoints
@pytest.mark.parametrize("path,kind", [(SHIPPED_BERT, "BERT"), (SHIPPED_T5, "T5"), (SHIPPED_BART, "BART")])
def test_shipped_checkpoints(path, kind):
    import os

    from minillm.checkpoint import load

    if not path.exists():
        pytest.skip(f"{path.name} is not shipped")
    assert os.path.getsize(path) < 3 * 2**20
    model = load_encoder_checkpoint(path)
    assert type(model).__name__ == kind
    ev = load(path)["evaluation"]  # recorded when it was made; lessons re-measure
    if kind == "BERT":
        assert ev["mlm_acc"] > 0.5 and ev["nsp_acc"] > 0.7


def test_pretrain_init_continues_from_a_checkpoint_on_a_story_mix(tmp_path, capsys):
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    main(["pretrain", "--objective", "mlm+nsp", "--out", str(tmp_path / "a"), "--export", str(first), *TINY])
    a = load_encoder_checkpoint(first)
    # --d-model 64 is ignored: with --init the checkpoint's own size wins
    assert main(["pretrain", "--objective", "mlm+nsp", "--init", str(first), "--story-weights", "review=1",
                 "--out", str(tmp_path / "b"), "--export", str(second), "--steps", "6", "--d-model", "64",
                 "--no-progress", "--num-stories", "40", "--batch-size", "4", "--warmup", "1"]) == 0
    b = load_encoder_checkpoint(second)
    assert b.config == a.config
    changed = [n for n, p in a.state_dict().items() if not np.allclose(p, b.state_dict()[n])]
    assert changed  # it trained, from a's weights
    with pytest.raises(ValueError, match="holds a BERT, but --objective span trains a T5"):
        main(["pretrain", "--objective", "span", "--init", str(first), *TINY])
    with pytest.raises(ValueError, match="unknown story kind"):
        main(["pretrain", "--objective", "mlm", "--story-weights", "reviews=1", *TINY])


def test_finetune_classify_linear_head_cli(tmp_path, capsys):
    ckpt = tmp_path / "bert.npz"
    main(["pretrain", "--objective", "mlm", "--out", str(tmp_path), "--export", str(ckpt), *TINY])
    assert main(["finetune-classify", "--ckpt", str(ckpt), "--labels", "8", "--steps", "2", "--n-test", "10",
                 "--head", "linear"]) == 0
    assert "head linear" in capsys.readouterr().out
