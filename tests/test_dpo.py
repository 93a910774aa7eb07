"""DPO: the loss against a direct float64 evaluation of its formula, its gradients, masked sequence
log-probs, the frozen reference, and a tiny run that learns a preference."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import arrays, tensor64

import minillm
from minillm import nn
from minillm.models.gpt import GPT, GPTConfig
from minillm.phases.dpo import (
    DPOConfig,
    PreferenceDataset,
    dpo_loss,
    frozen_reference,
    log_ratio_drift,
    logsigmoid,
    pad_with_masks,
    precompute_reference,
    sequence_logps,
    train_dpo,
)
from minillm.tensor import Tensor
from minillm.train import TrainConfig


# ---------------------------------------------------------------------------------------------- reference
def reference_dpo(pc, pr, rc, rr, beta, loss_type, ls=0.0):
    """The DPO family written out element by element in float64 (math only, no minillm)."""
    losses = []
    for a, b, c, d in zip(pc, pr, rc, rr):
        h = (a - b) - (c - d)
        if loss_type == "sigmoid":
            ls_pos = -math.log(1 / (1 + math.exp(-beta * h)))
            ls_neg = -math.log(1 / (1 + math.exp(beta * h)))
            losses.append((1 - ls) * ls_pos + ls * ls_neg)
        elif loss_type == "ipo":
            losses.append((h - 1 / (2 * beta)) ** 2)
        else:
            losses.append(max(0.0, 1 - beta * h))
    return sum(losses) / len(losses)


logp_vectors = st.integers(1, 6).flatmap(lambda n: st.tuples(*[arrays((n,), -30.0, 0.0) for _ in range(4)]))
betas = st.sampled_from([0.05, 0.1, 0.5, 1.0])


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
@given(v=logp_vectors, beta=betas, ls=st.sampled_from([0.0, 0.1, 0.3]))
def test_dpo_loss_matches_formula_float64(loss_type, v, beta, ls):
    ls = ls if loss_type == "sigmoid" else 0.0
    pc, pr, rc, rr = v
    loss, m = dpo_loss(tensor64(pc), tensor64(pr), rc, rr, beta=beta, loss_type=loss_type, label_smoothing=ls)
    assert loss.dtype == np.float64
    np.testing.assert_allclose(loss.item(), reference_dpo(pc, pr, rc, rr, beta, loss_type, ls), rtol=1e-10,
                               atol=1e-12)
    r_c, r_r = beta * (pc - rc), beta * (pr - rr)
    np.testing.assert_allclose(m["rewards/chosen"], r_c.mean(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m["rewards/rejected"], r_r.mean(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m["rewards/margins"], (r_c - r_r).mean(), rtol=1e-10, atol=1e-12)
    assert m["rewards/accuracies"] == pytest.approx((r_c > r_r).mean())
    assert m["logps/chosen"] == pytest.approx(pc.mean()) and m["logps/rejected"] == pytest.approx(pr.mean())


@pytest.mark.parametrize("loss_type,ls", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("hinge", 0.0)])
@given(v=logp_vectors, beta=betas)
def test_dpo_loss_gradcheck(loss_type, ls, v, beta):
    pc, pr, rc, rr = v
    if loss_type == "hinge":  # keep β·h away from the hinge's kink at 1
        h = (pc - pr) - (rc - rr)
        pc = np.where(np.abs(beta * h - 1) < 0.05, pc + 0.2 / beta, pc)
    fn = lambda a, b: dpo_loss(a, b, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=ls)[0]  # noqa: E731
    assert minillm.gradcheck(fn, tensor64(pc), tensor64(pr), name=f"dpo_loss[{loss_type}]")


@given(arrays(st.integers(1, 8).map(lambda n: (n,)), -40.0, 40.0))
def test_logsigmoid_value_and_gradient(x):
    out = logsigmoid(tensor64(x)).numpy()
    np.testing.assert_allclose(out, -np.logaddexp(0.0, -x), rtol=1e-12, atol=1e-300)
    assert minillm.gradcheck(logsigmoid, tensor64(np.clip(x, -8, 8)))


def test_logsigmoid_is_stable_at_extremes():
    out = logsigmoid(Tensor(np.array([-1000.0, 1000.0]))).numpy()
    assert np.isfinite(out).all() and out[0] == -1000.0 and out[1] == 0.0


@given(arrays((5,), -20.0, 0.0), arrays((5,), -20.0, 0.0))
def test_policy_equals_reference_gives_log2_and_zero_margin(c, r):
    loss, m = dpo_loss(tensor64(c), tensor64(r), c, r, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert m["rewards/margins"] == 0.0 and m["rewards/chosen"] == 0.0 and m["rewards/accuracies"] == 0.0
    hinge, _ = dpo_loss(tensor64(c), tensor64(r), c, r, beta=0.1, loss_type="hinge")
    assert hinge.item() == pytest.approx(1.0)


def test_reference_logps_get_no_gradient():
    pc, pr = tensor64([-3.0, -2.0]), tensor64([-4.0, -1.0])
    rc, rr = tensor64([-3.5, -2.5]), tensor64([-3.0, -1.5])
    loss, _ = dpo_loss(pc, pr, rc, rr)
    loss.backward()
    assert pc.grad is not None and pr.grad is not None
    assert rc.grad is None and rr.grad is None
    # the sigmoid loss pushes chosen up and rejected down
    assert (pc.grad < 0).all() and (pr.grad > 0).all()


def test_dpo_loss_rejects_bad_input():
    v = np.zeros(3)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(v, v, v, v, loss_type="kto")
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(v, v, v, v, beta=0.0)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        dpo_loss(v, v, v, np.zeros(2))
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(v, v, v, v, loss_type="ipo", label_smoothing=0.1)


# ---------------------------------------------------------------------------------------------- log-probs
def tiny_gpt(seed=0, vocab=20, ctx=16):
    minillm.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, context_length=ctx, d_model=16, n_heads=2, n_layers=1))


class Bigram(nn.Module):
    """Logits at position t depend only on the token at t: isolates which positions are scored."""

    def __init__(self, vocab=12):
        super().__init__()
        self.emb = nn.Embedding(vocab, vocab)

    def forward(self, ids):
        return self.emb(ids)


def test_sequence_logps_equals_direct_sum_over_completion_tokens():
    model = tiny_gpt()
    ids = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 0, 0]])
    mask = np.array([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 0, 0]])
    got = sequence_logps(model, ids, mask).numpy()
    logits, _ = model(ids)
    z = logits.numpy().astype(np.float64)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    want = [sum(logp[b, t - 1, ids[b, t]] for t in range(1, 6) if mask[b, t]) for b in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    avg = sequence_logps(model, ids, mask, average=True).numpy()
    np.testing.assert_allclose(avg, np.array(want) / np.array([3, 3]), rtol=1e-5)


@given(st.lists(st.integers(0, 11), min_size=3, max_size=3), st.lists(st.integers(0, 11), min_size=2,
                                                                        max_size=2))
def test_masked_logps_ignore_prompt_and_padding(new_prompt, new_pad):
    model = Bigram()
    # prompt = positions 0..3, completion 4..6, padding 7..8; with a bigram model the completion's first
    # token is predicted from the last prompt token (position 3), so positions 0..2 must not matter
    ids = np.array([[3, 1, 4, 1, 5, 9, 2, 0, 0]])
    mask = np.array([[0, 0, 0, 0, 1, 1, 1, 0, 0]])
    base = sequence_logps(model, ids, mask).numpy()
    changed = ids.copy()
    changed[0, :3] = new_prompt
    changed[0, 7:] = new_pad
    np.testing.assert_array_equal(sequence_logps(model, changed, mask).numpy(), base)
    # and padding changes nothing on a real (causal) transformer either
    gpt = tiny_gpt(vocab=12)
    base_gpt = sequence_logps(gpt, ids, mask).numpy()
    repadded = ids.copy()
    repadded[0, 7:] = new_pad
    np.testing.assert_allclose(sequence_logps(gpt, repadded, mask).numpy(), base_gpt, rtol=1e-6)
    # a completion token does matter (so this test can fail)
    other = ids.copy()
    other[0, 5] = (other[0, 5] + 1) % 12
    assert sequence_logps(model, other, mask).numpy()[0] != pytest.approx(base[0])
    assert sequence_logps(gpt, other, mask).numpy()[0] != pytest.approx(base_gpt[0])


def test_sequence_logps_errors():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="no completion token"):
        sequence_logps(model, np.array([[1, 2, 3]]), np.array([[1, 0, 0]]))
    with pytest.raises(ValueError, match=r"\(1, 3\).*\(1, 2\)"):
        sequence_logps(model, np.array([[1, 2, 3]]), np.array([[1, 0]]))
    with pytest.raises(ValueError, match="mask has 2"):
        pad_with_masks([[1, 2, 3]], [[0, 1]])
    with pytest.raises(ValueError, match="more than length 2"):  # never truncates a completion
        pad_with_masks([[1, 2, 3]], [[0, 1, 1]], length=2)


def test_pad_with_masks_right_pads_with_mask_zero():
    ids, mask = pad_with_masks([[5, 6, 7], [8]], [[0, 1, 1], [1]], pad_id=3)
    np.testing.assert_array_equal(ids, [[5, 6, 7], [8, 3, 3]])
    np.testing.assert_array_equal(mask, [[0, 1, 1], [1, 0, 0]])
    assert ids.dtype == mask.dtype == np.int64
    ids, mask = pad_with_masks([[5]], [[1]], length=3)
    np.testing.assert_array_equal(ids, [[5, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 0, 0]])


# ------------------------------------------------------------------------------------- reference + run
def pairs_for(prompt_len=3, n=8, vocab=20, seed=0):
    """Toy preferences: after any prompt, completion [1, 2, 3] is preferred to [4, 5, 6]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = rng.integers(7, vocab, size=prompt_len).tolist()
        c, r = [1, 2, 3], [4, 5, 6]
        out.append({"chosen_ids": p + c, "chosen_mask": [0] * prompt_len + [1] * 3,
                    "rejected_ids": p + r, "rejected_mask": [0] * prompt_len + [1] * 3})
    return out


def test_frozen_reference_is_a_deep_copy_without_grads_or_optimizer_state():
    policy = tiny_gpt()
    ref = frozen_reference(policy)
    assert all(not p.requires_grad for p in ref.parameters()) and not ref.training
    assert all(p.requires_grad for p in policy.parameters())
    assert all(a is not b for a, b in zip(policy.parameters(), ref.parameters()))
    ref_before = {k: v.copy() for k, v in ref.state_dict().items()}
    cfg = TrainConfig(steps=3, lr=1e-2, warmup=0, eval_every=0, batch_size=4, progress=False)
    train_dpo(policy, PreferenceDataset(pairs_for()), DPOConfig(beta=0.5, precompute_ref_log_probs=False),
              cfg, reference=ref)
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(v, ref_before[k])
    assert all(p.grad is None for p in ref.parameters())
    assert any(not np.array_equal(policy.state_dict()[k], ref_before[k]) for k in ref_before)
    with pytest.raises(ValueError, match="frozen"):
        train_dpo(policy, PreferenceDataset(pairs_for()), DPOConfig(), cfg, reference=tiny_gpt(1))


def test_optimizer_state_covers_policy_only():
    from minillm import optim
    from minillm.train import param_groups

    policy = tiny_gpt()
    ref = frozen_reference(policy)
    opt = optim.AdamW(param_groups(policy, 0.0), lr=1e-3)
    ref_ids = {id(p) for p in ref.parameters()}
    assert not any(id(p) in ref_ids for g in opt.param_groups for p in g["params"])


@pytest.mark.parametrize("precompute", [True, False])
def test_tiny_run_increases_preference_accuracy(precompute):
    policy = tiny_gpt()
    train_set = PreferenceDataset(pairs_for(n=16))
    val_set = PreferenceDataset(pairs_for(n=8, seed=1))
    cfg = TrainConfig(steps=25, lr=5e-3, warmup=0, eval_every=25, batch_size=8, progress=False)
    hist, ref = train_dpo(policy, train_set, DPOConfig(beta=0.5, precompute_ref_log_probs=precompute), cfg,
                          val_set=val_set)
    assert hist["rewards/accuracies"][0] == 0.0  # policy = reference at step 1: no margin yet
    assert hist["loss"][0] == pytest.approx(math.log(2), abs=1e-5)
    assert np.mean(hist["rewards/accuracies"][-5:]) == 1.0
    assert hist["val_rewards/accuracies"][-1] == 1.0 and hist["val_rewards/margins"][-1] > 0.5
    assert hist["loss"][-1] < 0.5 * math.log(2)
    ids, mask = pad_with_masks([e["chosen_ids"] for e in val_set.examples],
                               [e["chosen_mask"] for e in val_set.examples])
    drift = log_ratio_drift(policy, ref, ids, mask)
    assert drift["kl"] > 0  # chosen completions became more likely than under the reference


def test_precomputed_reference_matches_live_reference():
    policy = tiny_gpt()
    ds = PreferenceDataset(pairs_for(n=5))
    precompute_reference(policy, ds, batch_size=2)
    b = ds.batch([0, 1, 2, 3, 4])
    live = sequence_logps(policy, b["ids"], b["mask"]).numpy()
    np.testing.assert_allclose(ds.ref_chosen_logps, live[:5], rtol=1e-6)
    np.testing.assert_allclose(ds.ref_rejected_logps, live[5:], rtol=1e-6)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_dpo_on_a_tiny_config(tmp_path, capsys):
    from minillm.cli import main
    from minillm.phases.preferences import read_triplets
    from minillm.tokenizer import load_default_tokenizer

    tok = load_default_tokenizer()
    minillm.manual_seed(0)
    GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=128, d_model=16, n_heads=2, n_layers=1)
        ).save_checkpoint(tmp_path / "tiny.npz", tok)
    out = tmp_path / "run"
    args = ["dpo", "--from", str(tmp_path / "tiny.npz"), "--quick", "--steps", "3", "--sft-steps", "2",
            "--batch-size", "4", "--beta", "0.5", "--out", str(out), "--no-progress", "--save-sft",
            str(tmp_path / "sft.npz"), "--export-dtype", "float16"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "refusal rate (harmful)" in text and "rewards/accuracies" in text
    aligned, sft = GPT.from_checkpoint(out / "gpt_dpo.npz"), GPT.from_checkpoint(tmp_path / "sft.npz")
    assert aligned.config.d_model == 16 and sft.config.d_model == 16
    assert aligned.tok_emb.weight.dtype == np.float32  # float16 on disk, float32 in memory
    pairs = read_triplets(out / "pairs.jsonl")
    assert len(pairs) >= 16  # sampled pairs, topped up with offline ones for a model this weak
    # training from a user's pairs file, with another loss type
    assert main(["dpo", "--from", str(tmp_path / "tiny.npz"), "--quick", "--steps", "2", "--pairs",
                 str(out / "pairs.jsonl"), "--loss-type", "ipo", "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    assert (tmp_path / "b" / "checkpoint.npz").exists()  # DPO training is resumable like pre-training
    with pytest.raises(SystemExit) as e:  # rejected while parsing, before any model is loaded
        main(["dpo", "--from", str(tmp_path / "missing.npz")])
    assert e.value.code == 2


def test_rpo_alpha_adds_the_chosen_nll():
    from minillm.phases.dpo import dpo_loss_fn

    policy, ref = tiny_gpt(), tiny_gpt(1)
    ds = PreferenceDataset(pairs_for(n=4))
    batch = ds.batch([0, 1, 2, 3])
    plain, m0 = dpo_loss_fn(DPOConfig(beta=0.3), ref)(policy, batch)
    mixed, m1 = dpo_loss_fn(DPOConfig(beta=0.3, rpo_alpha=0.5), ref)(policy, batch)
    chosen = sequence_logps(policy, batch["ids"][:4], batch["mask"][:4]).numpy()
    nll = -chosen.sum() / batch["mask"][:4, 1:].sum()
    assert m1["nll_loss"] == pytest.approx(nll, rel=1e-5) and "nll_loss" not in m0
    assert mixed.item() == pytest.approx(plain.item() + 0.5 * nll, rel=1e-5)


def test_format_behaviour_table_aligns_models_as_columns():
    from minillm.phases.dpo import format_behaviour_table

    text = format_behaviour_table({"SFT": {"judge score": 0.5}, "DPO": {"judge score": 0.75, "KL": 1.0}})
    head, score, kl = text.splitlines()
    assert head.split() == ["SFT", "DPO"]
    assert score.split()[-2:] == ["0.500", "0.750"] and kl.split()[-2:] == ["—", "1.000"]


def test_cli_options_become_the_phase_config():
    import argparse

    from minillm.phases.dpo import DPOPhaseConfig, add_arguments, phase_config

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--steps", "7", "--samples", "3", "--no-demo", "--pair-source", "offline"])
    cfg = phase_config(args)
    assert isinstance(cfg, DPOPhaseConfig)
    assert (cfg.steps, cfg.num_samples, cfg.add_demo, cfg.pair_source) == (7, 3, False, "offline")
    assert cfg.progress  # --no-progress not given
    assert cfg.rpo_alpha == 1.0 and cfg.min_pairs == DPOPhaseConfig().min_pairs
