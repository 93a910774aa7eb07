"""The training loop: exact resumption, the NaN guard, parameter groups, schedule and validation."""

import math

import numpy as np
import pytest

import minillm
from minillm import optim
from minillm.models import GPT, GPTConfig
from minillm.train import TrainConfig, TrainingError, lm_loss, param_groups, train, train_step

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


def test_train_step_by_hand_reproduces_the_loop():
    """The loop is train_step plus bookkeeping: the same steps by hand give the same losses and weights."""
    config = TrainConfig(steps=3, lr=1e-2, warmup=1, eval_every=0, progress=False)
    looped = model()
    h = train(looped, lm_loss, get_batch, config)
    by_hand = model()
    opt = optim.AdamW(param_groups(by_hand, config.weight_decay), lr=config.lr, betas=config.betas,
                      weight_decay=config.weight_decay)
    sched = optim.CosineWarmupLR(opt, config.warmup, config.steps, config.min_lr_ratio)
    rng = np.random.default_rng(config.seed)
    by_hand.train()
    rows = [train_step(by_hand, lm_loss, get_batch("train", rng), opt, sched, config.grad_clip, step)
            for step in range(1, config.steps + 1)]
    assert [r[0] for r in rows] == h["loss"] and [r[2] for r in rows] == h["lr"]
    assert [r[3] for r in rows] == h["grad_norm"]
    for (name, a), (_, b) in zip(looped.state_dict().items(), by_hand.state_dict().items(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("field,value", [("steps", 0), ("steps", -3), ("lr", -1.0), ("lr", 0.0),
                                         ("lr", float("nan")), ("lr", float("inf")), ("warmup", -5),
                                         ("eval_steps", 0), ("batch_size", 0), ("grad_clip", -1.0),
                                         ("steps", 2.5), ("betas", (0.9, 1.0))])
def test_config_rejects_values_that_would_train_nothing_or_wrongly(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig: {field}"):
        TrainConfig(**{field: value})


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_an_update_that_overflows_the_weights_stops_before_anything_is_saved(tmp_path):
    """A finite loss and gradient can still overflow the weights: lr 1e39 is a finite float, but Adam's
    first step moves each weight by about lr, past float32's 3.4e38. The run stops at once, and no
    checkpoint of that model is written."""
    with pytest.raises(TrainingError, match="step 1: the weights are not finite") as e:
        train(model(), lm_loss, get_batch, cfg(tmp_path, lr=1e39))
    assert "no checkpoint was written yet" in str(e.value)
    assert not (tmp_path / "checkpoint.npz").exists()


def test_a_non_finite_validation_loss_stops_before_the_checkpoint(tmp_path):
    calls = [0]

    def eval_fn(m):
        calls[0] += 1
        return {"val_loss": float("nan") if calls[0] == 2 else 1.0}

    with pytest.raises(TrainingError, match="step 8: the validation loss is nan"):
        train(model(), lm_loss, get_batch, cfg(tmp_path), eval_fn=eval_fn)
    assert minillm.load(tmp_path / "checkpoint.npz")["step"] == 4  # the step-8 save never happened


def test_resuming_from_a_model_file_says_what_resume_takes(tmp_path):
    m = model()
    m.save_checkpoint(tmp_path / "model.npz")
    with pytest.raises(ValueError, match="is not a training checkpoint .*--init"):
        train(model(), lm_loss, get_batch, cfg(tmp_path / "run"), resume=tmp_path / "model.npz")
