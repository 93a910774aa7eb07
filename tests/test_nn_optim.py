"""Layers, optimizers and schedules: they learn, they match their formulas, their state round-trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import arrays, shapes

import minillm
from minillm import F, Tensor, nn, no_grad, optim
from minillm.data.toy import make_moons, make_xor


def mlp(hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, 2))


def accuracy(model: nn.Module, X, y) -> float:
    with no_grad():
        return float((model(Tensor(X)).numpy().argmax(-1) == y).mean())


@pytest.mark.parametrize("make", [make_xor, make_moons], ids=["xor", "two_moons"])
def test_tiny_mlp_learns_to_full_accuracy_with_adamw(make):
    X, y = make(200, noise=0.1, seed=0)
    model = mlp()
    opt = optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.0)
    losses = []
    for _ in range(200):
        loss = F.cross_entropy(model(Tensor(X)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 < losses[0]
    assert accuracy(model, X, y) == 1.0


# ------------------------------------------------------------------------------------ optimizer formulas
def _params_and_grads(data, n_params: int = 2, n_steps: int = 3):
    """Float64 parameter arrays and, per step, a gradient for each."""
    shps = [data.draw(shapes(1, 2)) for _ in range(n_params)]
    p0 = [data.draw(arrays(s)) for s in shps]
    grads = [[data.draw(arrays(s)) for s in shps] for _ in range(n_steps)]
    return p0, grads


def _run(opt_cls, p0, grads, **hyper):
    params = [nn.Parameter(p.copy()) for p in p0]
    opt = opt_cls(params, **hyper)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.copy()
        opt.step()
    return [p.data for p in params], opt


@given(data=st.data(), lr=st.floats(1e-4, 0.5), b1=st.floats(0.0, 0.99), b2=st.floats(0.5, 0.9999),
       wd=st.sampled_from([0.0, 0.01, 0.3]), eps=st.sampled_from([1e-8, 1e-3]))
def test_adamw_steps_equal_the_formula(data, lr, b1, b2, wd, eps):
    p0, grads = _params_and_grads(data)
    ours, opt = _run(optim.AdamW, p0, grads, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    for i, p in enumerate(p0):  # Loshchilov & Hutter (2019), Algorithm 2, with PyTorch's ordering
        p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
        for t, step_grads in enumerate(grads, start=1):
            g = step_grads[i]
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            p = p * (1 - lr * wd)
            p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        np.testing.assert_allclose(ours[i], p, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(opt.state[i]["m"], m, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(opt.state[i]["v"], v, rtol=1e-10, atol=1e-14)


@given(data=st.data(), lr=st.floats(1e-4, 0.5), momentum=st.sampled_from([0.0, 0.5, 0.9]),
       wd=st.sampled_from([0.0, 0.01, 0.3]))
def test_sgd_steps_equal_the_formula(data, lr, momentum, wd):
    p0, grads = _params_and_grads(data)
    ours, _ = _run(optim.SGD, p0, grads, lr=lr, momentum=momentum, weight_decay=wd)
    for i, p in enumerate(p0):
        p, buf = p.copy(), None
        for step_grads in grads:
            g = step_grads[i] + wd * p
            if momentum:
                buf = g if buf is None else momentum * buf + g
                g = buf
            p = p - lr * g
        np.testing.assert_allclose(ours[i], p, rtol=1e-10, atol=1e-12)


def test_param_groups_use_their_own_lr():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    a.grad, b.grad = np.ones(2), np.ones(2)
    opt.step()
    np.testing.assert_allclose(a.data, 0.9)
    np.testing.assert_allclose(b.data, 0.5)


def test_frozen_parameters_get_no_optimizer_state():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x, y = Tensor(np.random.default_rng(0).normal(size=(5, 4))), np.array([0, 1, 1, 0, 1])

    def one_step(model, opt):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    full = optim.AdamW(model.parameters())
    one_step(model, full)
    all_bytes = full.state_nbytes()
    assert all_bytes == 2 * sum(p.data.nbytes for p in model.parameters())  # m and v per parameter

    model[0].requires_grad_(False)
    frozen_before = model[0].weight.data.copy()
    part = optim.AdamW(model.parameters())
    one_step(model, part)
    assert model[0].weight.grad is None and model[0].bias.grad is None
    np.testing.assert_array_equal(model[0].weight.data, frozen_before)
    assert sorted(part.state) == [2, 3]  # only the second Linear's weight and bias
    assert part.state_nbytes() == 2 * (model[2].weight.data.nbytes + model[2].bias.data.nbytes)
    assert part.state_nbytes() < all_bytes
    assert model.num_parameters(trainable_only=True) == 8 * 2 + 2


def test_clip_grad_norm_scales_to_max_norm():
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(1))
    a.grad, b.grad = np.array([3.0, 0.0]), np.array([4.0])
    total = optim.clip_grad_norm_([a, b], max_norm=1.0)
    assert total == pytest.approx(5.0)
    clipped = math.sqrt((a.grad ** 2).sum() + (b.grad ** 2).sum())
    assert clipped == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(a.grad / b.grad[0], [0.75, 0.0])  # direction kept
    assert optim.clip_grad_norm_([a, b], max_norm=10.0) == pytest.approx(clipped)
    assert math.sqrt((a.grad ** 2).sum() + (b.grad ** 2).sum()) == pytest.approx(clipped)  # untouched


def test_cosine_with_warmup_schedule_shape():
    max_lr, min_lr, warm, total = 1.0, 0.1, 10, 110
    lrs = [optim.cosine_with_warmup(s, max_lr, warm, total, min_lr) for s in range(total + 5)]
    assert lrs[0] == pytest.approx(max_lr / warm)
    assert all(a < b for a, b in zip(lrs[:warm - 1], lrs[1:warm]))  # linear rise
    assert lrs[warm - 1] == pytest.approx(max_lr) and lrs[warm] == pytest.approx(max_lr)
    assert all(a >= b for a, b in zip(lrs[warm:total], lrs[warm + 1:total + 1]))  # then decays
    assert lrs[warm + (total - warm) // 2] == pytest.approx((max_lr + min_lr) / 2)  # cosine midpoint
    assert lrs[total] == pytest.approx(min_lr) and lrs[-1] == pytest.approx(min_lr)

    p = nn.Parameter(np.zeros(1))
    opt = optim.SGD([p], lr=max_lr)
    sched = optim.CosineWarmupLR(opt, warmup_steps=warm, total_steps=total, min_lr_ratio=min_lr)
    seen = [sched.get_last_lr()[0]]
    for _ in range(total):
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(seen, lrs[:total + 1])


def _train(model, opt, sched, X, y, steps):
    for _ in range(steps):
        loss = F.cross_entropy(model(Tensor(X)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return loss.item()


@pytest.mark.parametrize("opt_cls", [optim.AdamW, optim.SGD])
def test_optimizer_and_scheduler_state_round_trip(opt_cls, tmp_path):
    """Training 4 + 4 steps with a save/load in between equals 8 uninterrupted steps, bit for bit."""
    X, y = make_moons(64, seed=1)
    kw = {"lr": 0.05, "momentum": 0.9} if opt_cls is optim.SGD else {"lr": 0.05}

    def fresh():
        minillm.manual_seed(3)
        model = mlp(8)
        opt = opt_cls(model.parameters(), **kw)
        return model, opt, optim.CosineWarmupLR(opt, warmup_steps=2, total_steps=8)

    model, opt, sched = fresh()
    _train(model, opt, sched, X, y, 8)

    model2, opt2, sched2 = fresh()
    _train(model2, opt2, sched2, X, y, 4)
    path = tmp_path / "ckpt.npz"
    minillm.save({"model": model2.state_dict(), "opt": opt2.state_dict(), "sched": sched2.state_dict()}, path)
    sd_in_memory = opt2.state_dict()
    _train(model2, opt2, sched2, X, y, 1)  # keep training the original: the loaded copy must not move
    state = minillm.load(path)
    model3, opt3, sched3 = fresh()
    model3.load_state_dict(state["model"])
    opt3.load_state_dict(state["opt"])
    sched3.load_state_dict(state["sched"])
    _train(model3, opt3, sched3, X, y, 4)
    for (name, p), p3 in zip(model.named_parameters(), model3.parameters()):
        np.testing.assert_array_equal(p.data, p3.data, err_msg=name)
    assert opt3.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    if opt_cls is optim.AdamW:  # a state_dict is a snapshot, not a view of buffers that keep moving
        np.testing.assert_array_equal(sd_in_memory["state"]["0"]["m"], state["opt"]["state"]["0"]["m"])


def test_loading_a_state_dict_copies_the_arrays():
    a, b = mlp(4), mlp(4)
    b.load_state_dict(a.state_dict())
    opt = optim.SGD(b.parameters(), lr=0.1)
    for p in b.parameters():
        p.grad = np.ones_like(p.data)
    opt.step()
    assert not np.array_equal(a[0].weight.data, b[0].weight.data)  # a (e.g. a frozen reference) unchanged


def test_manual_seed_reproduces_a_run_bit_for_bit():
    X, y = make_moons(64, seed=2)

    def run():
        minillm.manual_seed(1234)
        model = nn.Sequential(nn.Linear(2, 16), nn.Dropout(0.2), nn.GELU(), nn.Linear(16, 2))
        opt = optim.AdamW(model.parameters(), lr=0.01)
        for _ in range(5):
            loss = F.cross_entropy(model(Tensor(X)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [p.data.copy() for p in model.parameters()], loss.item()

    (p1, l1), (p2, l2) = run(), run()
    assert l1 == l2
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a, b)
    minillm.manual_seed(4321)
    assert not np.array_equal(nn.Linear(2, 16).weight.data, p1[0])


# ------------------------------------------------------------------------------------ Module API
class TiedLM(nn.Module):
    def __init__(self, V: int = 5, D: int = 3):
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(D, D), nn.Dropout(0.5)) for _ in range(2)])
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, V, bias=False)
        self.head.weight = self.emb.weight  # tied input and output embeddings (GPT-2)

    def forward(self, ids):
        x = self.emb(ids)
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.norm(x))


def test_named_parameters_lists_tied_weights_once():
    model = TiedLM()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["emb.weight", "blocks.0.0.weight", "blocks.0.0.bias", "blocks.1.0.weight",
                     "blocks.1.0.bias", "norm.weight", "norm.bias"]
    assert "head.weight" in model.state_dict()  # the state dict keeps both names
    assert model.num_parameters() == 5 * 3 + 2 * (9 + 3) + 6
    loss = F.cross_entropy(model(np.array([[0, 1, 2]])), np.array([[1, 2, 3]]))
    loss.backward()
    assert model.emb.weight.grad.shape == (5, 3)  # both uses add into the one tensor


def test_train_eval_propagates_to_every_submodule():
    model = TiedLM()
    assert all(m.training for m in model.modules())
    model.eval()
    assert not any(m.training for m in model.modules())
    ids = np.array([[0, 1, 2, 3]])
    with no_grad():
        np.testing.assert_array_equal(model(ids).numpy(), model(ids).numpy())  # dropout is off
    model.train()
    assert all(m.training for m in model.modules())


def test_requires_grad_false_freezes_a_submodule():
    model = TiedLM()
    model.norm.requires_grad_(False)
    loss = F.cross_entropy(model(np.array([[0, 1]])), np.array([[1, 2]]))
    loss.backward()
    assert model.norm.weight.grad is None and model.norm.bias.grad is None
    assert model.blocks[0][0].weight.grad is not None
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_dropout_scales_kept_units_and_is_identity_in_eval():
    x = Tensor(np.ones((200, 50)))
    y = F.dropout(x, p=0.25, training=True).numpy()
    assert set(np.unique(y)) <= {0.0, 1 / 0.75}
    assert abs((y == 0).mean() - 0.25) < 0.02
    assert F.dropout(x, p=0.25, training=False) is x
    with pytest.raises(ValueError, match="p must be in"):
        F.dropout(x, p=1.0)
