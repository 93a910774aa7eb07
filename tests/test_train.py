"""The training loop: exact resumption, the NaN guard, parameter groups, schedule and validation."""

import math

import numpy as np
import pytest

import minillm
from minillm.models import GPT, GPTConfig
from minillm.train import TrainConfig, TrainingError, lm_loss, param_groups, train

DATA = np.tile(np.arange(10), 300)  # a learnable stream: 0 1 2 ... 9 0 1 ...


def get_batch(split, rng, crash_after=None, counter=None):
    if split == "train" and counter is not None:
        counter[0] += 1
        if crash_after is not None and counter[0] > crash_after:
            raise KeyboardInterrupt("simulated crash")
    d = DATA[:2500] if split == "train" else DATA[2500:]
    ix = rng.integers(0, len(d) - 9, 4)
    return np.stack([d[i:i + 8] for i in ix]), np.stack([d[i + 1:i + 9] for i in ix])


def model(dropout=0.1):
    minillm.manual_seed(0)
    return GPT(GPTConfig(vocab_size=10, context_length=8, d_model=16, n_heads=2, n_layers=1, dropout=dropout))


def cfg(out, **kw):
    base = dict(steps=12, lr=3e-3, warmup=2, eval_every=4, eval_steps=2, checkpoint_every=4, out_dir=str(out),
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_gives_the_same_losses_bit_for_bit(tmp_path):
    """Crash after step 9 (last checkpoint: step 8), resume: the losses equal an uninterrupted run's."""
    full = train(model(), lm_loss, get_batch, cfg(tmp_path / "a"))
    n = [0]
    with pytest.raises(KeyboardInterrupt):
        train(model(), lm_loss, lambda s, r: get_batch(s, r, crash_after=9, counter=n), cfg(tmp_path / "b"))
    assert minillm.load(tmp_path / "b" / "checkpoint.npz")["step"] == 8
    minillm.manual_seed(999)  # the global RNG (dropout) must come from the checkpoint, not from here
    ckpt = tmp_path / "b" / "checkpoint.npz"
    resumed = train(model(), lm_loss, get_batch, cfg(tmp_path / "b"), resume=ckpt)
    assert resumed["loss"] == full["loss"]  # exact float equality
    assert resumed["val_loss"] == full["val_loss"]
    assert resumed["step"] == list(range(1, 13))


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path):
    m = model()
    calls = [0]

    def loss_fn(mod, batch):
        calls[0] += 1
        loss, metrics = lm_loss(mod, batch)
        return (loss * float("nan") if calls[0] == 7 else loss), metrics

    with pytest.raises(TrainingError, match=r"step 7: the loss is nan.*checkpoint\.npz \(untouched\)"):
        train(m, loss_fn, get_batch, cfg(tmp_path, eval_every=0))
    state = minillm.load(tmp_path / "checkpoint.npz")
    assert state["step"] == 4 and len(state["history"]["loss"]) == 4
    assert all(math.isfinite(v) for v in state["history"]["loss"])
    restored = model()
    restored.load_state_dict(state["model"])  # the good weights load


def test_nan_before_any_checkpoint_says_so():
    with pytest.raises(TrainingError, match="step 1: the loss is inf.*no checkpoint was written yet"):
        train(model(), lambda m, b: lm_loss(m, b)[0] * float("inf"), get_batch,
              TrainConfig(steps=3, warmup=0, eval_every=0, progress=False))


def test_param_groups_skip_frozen_and_do_not_decay_1d():
    m = model()
    m.tok_emb.weight.requires_grad = False
    groups = param_groups(m, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    plain = {id(p) for p in groups[1]["params"]}
    assert id(m.tok_emb.weight) not in decayed | plain
    assert id(m.ln_f.weight) in plain and id(m.blocks[0].attn.q_proj.bias) in plain
    assert id(m.blocks[0].attn.q_proj.weight) in decayed
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    before = m.tok_emb.weight.numpy().copy()
    train(m, lm_loss, get_batch, TrainConfig(steps=3, warmup=0, eval_every=0, progress=False))
    np.testing.assert_array_equal(m.tok_emb.weight.numpy(), before)


def test_training_learns_schedule_and_validation():
    h = train(model(dropout=0.0), lm_loss, get_batch,
              TrainConfig(steps=60, lr=1e-2, warmup=5, min_lr_ratio=0.1, eval_every=20, eval_steps=2,
                          progress=False))
    assert h["loss"][-1] < 0.3 * h["loss"][0]
    assert h["lr"][0] == pytest.approx(1e-2 / 5) and max(h["lr"]) == pytest.approx(1e-2)
    assert h["lr"][-1] == pytest.approx(1e-3, rel=0.05)  # cosine ends near lr · min_lr_ratio
    assert h["val_step"] == [20, 40, 60]
    assert h["val_ppl"] == pytest.approx([math.exp(v) for v in h["val_loss"]])
    assert h["val_loss"][-1] < h["val_loss"][0]
    assert len(h["tokens_per_s"]) == 60 and min(h["tokens_per_s"]) > 0


def test_plain_loss_tensor_and_custom_eval():
    h = train(model(), lambda m, b: m(*b)[1], get_batch,
              TrainConfig(steps=2, warmup=0, eval_every=1, progress=False),
              eval_fn=lambda m: {"val_loss": 1.0, "val_accuracy": 0.5})
    assert h["val_accuracy"] == [0.5, 0.5]


def test_checkpoint_every_needs_out_dir():
    with pytest.raises(ValueError, match="needs config.out_dir"):
        train(model(), lm_loss, get_batch, TrainConfig(steps=2, checkpoint_every=1, progress=False))
