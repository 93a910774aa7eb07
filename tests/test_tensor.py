"""The engine's values against NumPy, its graph bookkeeping, and its error messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import arrays, axes, broadcastable_shapes, index_keys, matmul_shapes, shapes, tensor64

import minillm
from minillm import F, Tensor, nn, no_grad
from minillm.nn import StateDictError
from minillm.tensor import concat, stack, topological_order, where

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "truediv": (lambda a, b: a / b, np.divide),
}


# ------------------------------------------------------------------------------------ values vs NumPy
@pytest.mark.parametrize("name", BINARY)
@given(data=st.data())
def test_binary_ops_broadcast_like_numpy(name, data):
    """Property: for any broadcastable pair, value and result shape match NumPy, and each input's
    gradient of sum(out) has that input's shape (broadcast copies summed back)."""
    ours, ref = BINARY[name]
    sa, sb = data.draw(broadcastable_shapes())
    a = data.draw(arrays(sa, away_from=(0.0,), margin=0.5))
    b = data.draw(arrays(sb, away_from=(0.0,), margin=0.5))
    ta, tb = tensor64(a), tensor64(b)
    out = ours(ta, tb)
    expected = ref(a, b)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)
    out.sum().backward()
    assert ta.grad.shape == a.shape and tb.grad.shape == b.shape
    if name == "add":  # d(sum(a+b))/da = number of copies broadcasting made of each element of a
        np.testing.assert_allclose(ta.grad, np.full(a.shape, expected.size / max(a.size, 1)))


@given(data=st.data())
def test_matmul_matches_numpy(data):
    sa, sb = data.draw(matmul_shapes())
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    np.testing.assert_allclose((tensor64(a) @ tensor64(b)).numpy(), a @ b, rtol=1e-12, atol=1e-12)


UNARY = {
    "exp": (lambda t: t.exp(), np.exp),
    "tanh": (lambda t: t.tanh(), np.tanh),
    "abs": (lambda t: t.abs(), np.abs),
    "neg": (lambda t: -t, np.negative),
    "sigmoid": (lambda t: t.sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    "relu": (F.relu, lambda x: np.maximum(x, 0)),
    "gelu": (F.gelu, lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
    "silu": (F.silu, lambda x: x / (1 + np.exp(-x))),
    "clip": (lambda t: t.clip(-1, 0.5), lambda x: np.clip(x, -1, 0.5)),
    "square": (lambda t: t ** 2, np.square),
}


@pytest.mark.parametrize("name", UNARY)
@given(x=arrays(shapes(), low=-5, high=5))
def test_unary_ops_match_numpy(name, x):
    ours, ref = UNARY[name]
    np.testing.assert_allclose(ours(tensor64(x)).numpy(), ref(x), rtol=1e-12, atol=1e-15)


@given(x=arrays(shapes(), low=0.1, high=5))
def test_log_sqrt_match_numpy(x):
    np.testing.assert_allclose(tensor64(x).log().numpy(), np.log(x), rtol=1e-12)
    np.testing.assert_allclose(tensor64(x).sqrt().numpy(), np.sqrt(x), rtol=1e-12)


@pytest.mark.parametrize("name", ["sum", "mean", "max", "var"])
@given(data=st.data())
def test_reductions_match_numpy(name, data):
    shape = data.draw(shapes(1, 3))
    x = data.draw(arrays(shape))
    axis, keepdims = data.draw(axes(len(shape))), data.draw(st.booleans())
    out = getattr(tensor64(x), name)(axis=axis, keepdims=keepdims)
    expected = getattr(np, name)(x, axis=axis, keepdims=keepdims)
    assert out.shape == np.shape(expected)
    assert out.dtype == np.float64  # a full reduction must not drop to float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-14)


@given(data=st.data())
def test_shape_ops_match_numpy(data):
    shape = data.draw(shapes(1, 3))
    x = data.draw(arrays(shape))
    t = tensor64(x)
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    np.testing.assert_array_equal(t.permute(*perm).numpy(), x.transpose(perm))
    np.testing.assert_array_equal(t.T.numpy(), x.T)
    np.testing.assert_array_equal(t.reshape(-1).numpy(), x.reshape(-1))
    key = data.draw(index_keys(shape))
    np.testing.assert_array_equal(t[key].numpy(), x[key])
    if len(shape) >= 2:  # PyTorch's transpose(i, j) swaps two axes, also on 2-D
        np.testing.assert_array_equal(t.transpose(0, -1).numpy(), np.swapaxes(x, 0, -1))
    np.testing.assert_array_equal(concat([t, t * 2], axis=-1).numpy(), np.concatenate([x, x * 2], axis=-1))
    np.testing.assert_array_equal(stack([t, t], axis=1).numpy(), np.stack([x, x], axis=1))


def test_python_numbers_keep_float_dtype_and_never_truncate():
    f32 = Tensor(np.ones(2, np.float32))
    assert (f32 * 0.5).dtype == np.float32 and (2 - f32).dtype == np.float32
    ints = Tensor(np.arange(3))
    np.testing.assert_array_equal((ints * 0.5).numpy(), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal((ints + 1).numpy(), [1, 2, 3])
    assert (ints + 1).dtype.kind == "i"
    np.testing.assert_array_equal((Tensor(np.array([True, False])) * 2.5).numpy(), [2.5, 0.0])


def test_repeated_indices_scatter_add():
    x = tensor64(np.arange(4.0))
    x[np.array([1, 1, 3, 1])].sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 3, 0, 1])


def test_where_and_masked_fill_match_numpy():
    a, b = np.arange(6.0).reshape(2, 3), -np.ones(3)
    cond = np.array([True, False, True])
    np.testing.assert_array_equal(where(cond, tensor64(a), tensor64(b)).numpy(), np.where(cond, a, b))
    np.testing.assert_array_equal(tensor64(a).masked_fill(cond, 9.0).numpy(), np.where(cond, 9.0, a))


# ------------------------------------------------------------------------------------ numerics of F
@given(x=arrays(shapes(1, 3), low=-30, high=30))
def test_softmax_rows_sum_to_one(x):
    s = F.softmax(tensor64(x), axis=-1).numpy()
    assert (s >= 0).all()
    np.testing.assert_allclose(s.sum(axis=-1), 1.0, rtol=1e-12)


def test_log_softmax_is_stable_at_large_inputs():
    x = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]])
    t = tensor64(x)
    out = F.log_softmax(t, axis=-1)
    ln2 = math.log(2)
    expected = np.array([[0.0, -1e4, -2e4], [-math.log(3)] * 3, [-ln2, -ln2, -2e4 - ln2]])
    assert np.isfinite(out.numpy()).all()
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)
    out.sum().backward()
    assert np.isfinite(t.grad).all()
    lse = F.logsumexp(tensor64(x), axis=-1).numpy()
    np.testing.assert_allclose(lse, [1e4, -1e4 + math.log(3), 1e4 + math.log(2)], rtol=1e-12)
    loss = F.cross_entropy(tensor64(x), np.array([2, 0, 1]))
    assert loss.item() == pytest.approx((2e4 + math.log(3) + math.log(2)) / 3, rel=1e-12)


@given(data=st.data())
def test_cross_entropy_matches_its_definition(data):
    N, C = data.draw(st.integers(1, 5)), data.draw(st.integers(2, 5))
    x = data.draw(arrays((N, C), low=-5, high=5))
    t = data.draw(st.lists(st.integers(0, C - 1), min_size=N, max_size=N))
    ls = data.draw(st.sampled_from([0.0, 0.2]))
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    smooth = np.full((N, C), ls / C)
    smooth[np.arange(N), t] += 1 - ls
    expected = -(smooth * logp).sum(-1)
    out = F.cross_entropy(tensor64(x), np.array(t), reduction="none", label_smoothing=ls)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10)
    ignored = np.array(t)
    ignored[0] = -100
    mean = F.cross_entropy(tensor64(x), ignored).item()
    if N > 1:
        assert mean == pytest.approx(-logp[np.arange(1, N), t[1:]].mean(), rel=1e-10)
    else:
        assert mean == 0.0


@given(x=arrays(st.tuples(st.integers(1, 4), st.integers(2, 16)), low=-10, high=10))
def test_layer_norm_output_moments(x):
    x = x + np.linspace(0, 1, x.shape[-1])  # rows never constant
    y = F.layer_norm(tensor64(x), eps=0.0).numpy()
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-10)
    np.testing.assert_allclose(y.var(-1), 1.0, rtol=1e-8)
    w, b = np.linspace(0.5, 2, x.shape[-1]), np.linspace(-1, 1, x.shape[-1])
    y2 = F.layer_norm(tensor64(x), tensor64(w), tensor64(b), eps=0.0).numpy()
    np.testing.assert_allclose(y2, y * w + b, rtol=1e-10, atol=1e-12)
    r = F.rms_norm(tensor64(x), eps=0.0).numpy()
    np.testing.assert_allclose((r * r).mean(-1), 1.0, rtol=1e-8)


def test_attention_matches_a_direct_softmax():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 2))
    s = q @ k.transpose(0, 2, 1) / 2.0
    s = np.where(np.tril(np.ones((3, 5), bool), k=2), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = F.scaled_dot_product_attention(tensor64(q), tensor64(k), tensor64(v), is_causal=True)
    np.testing.assert_allclose(out.numpy(), p @ v, rtol=1e-12)


# ------------------------------------------------------------------------------------ graph bookkeeping
def test_no_grad_records_nothing():
    x = tensor64(np.ones(3))
    with no_grad():
        y = (x * 2).exp().sum()
        assert not minillm.is_grad_enabled()
    assert minillm.is_grad_enabled()
    assert not y.requires_grad and y._prev == () and y._backward is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_no_grad_is_restored_after_an_exception_and_detach_cuts_the_graph():
    with pytest.raises(ValueError), no_grad():
        assert not minillm.is_grad_enabled()
        raise ValueError("boom")
    assert minillm.is_grad_enabled()
    x = tensor64(np.array([1.0, 2.0]))
    y = (x * 2).detach()
    assert not y.requires_grad and y._prev == ()
    z = (x * y).sum()  # y is a constant here
    z.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])


def test_graph_is_freed_after_backward_and_kept_with_retain_graph():
    x = tensor64(np.array([1.0, 2.0]))
    h = x * 3
    loss = (h * h).sum()
    assert h._prev and loss._prev
    loss.backward()
    assert h._prev == () and h._backward is None and h.grad is None  # intermediates let go
    assert x.grad is not None  # leaves keep theirs
    with pytest.raises(RuntimeError, match="freed"):
        loss.backward()

    x2 = tensor64(np.array([1.0, 2.0]))
    h2 = (x2 * 3).retain_grad()
    loss2 = (h2 * h2).sum()
    loss2.backward(retain_graph=True)
    assert h2._prev and loss2._prev
    np.testing.assert_allclose(h2.grad, 2 * h2.data)  # retained intermediate grad
    loss2.backward()  # works a second time, and accumulates
    np.testing.assert_allclose(x2.grad, 2 * 18 * x2.data)  # 18x per pass, not fed by h2's retained grad
    np.testing.assert_allclose(h2.grad, 2 * 2 * h2.data)


def test_gradients_accumulate_across_two_backward_calls():
    x = tensor64(np.array([0.5, -1.0, 2.0]))
    (x * x).sum().backward()
    first = x.grad.copy()
    (x ** 3).sum().backward()
    np.testing.assert_allclose(first, 2 * x.data)
    np.testing.assert_allclose(x.grad, 2 * x.data + 3 * x.data ** 2)


def test_topological_order_lists_inputs_before_results():
    a, b = tensor64(np.array([1.0])), tensor64(np.array([2.0]))
    c = a * b
    d = c + a
    e = d * c
    order = topological_order(e)
    pos = {id(t): i for i, t in enumerate(order)}
    assert order[-1] is e and len(order) == 5
    for t in order:
        assert all(pos[id(p)] < pos[id(t)] for p in t._prev)


def test_a_reused_input_gets_both_gradients():
    x = tensor64(np.array([3.0]))
    y = x * x + x  # x feeds two ops: dy/dx = 2x + 1
    y.backward(np.ones(1))
    assert x.grad[0] == 7.0


def test_deep_graph_does_not_hit_recursion_limit():
    x = tensor64(np.array([1.0]))
    y = x
    for _ in range(5000):
        y = y + 1e-3
    y.sum().backward()
    assert x.grad[0] == 1.0


# ------------------------------------------------------------------------------------ clear errors
def test_matmul_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 5\) and \(6, 7\)"):
        Tensor(np.zeros((4, 5))) @ Tensor(np.zeros((6, 7)))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 3\)"):
        Tensor(np.zeros((2, 3))) @ Tensor(np.zeros((2, 3)))


def test_backward_on_non_scalar_says_so():
    y = tensor64(np.ones((2, 3))) * 2
    with pytest.raises(RuntimeError, match=r"shape \(2, 3\).*grad="):
        y.backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), tensor has shape \(2, 3\)"):
        y.backward(np.ones(3))


def test_only_floats_require_grad():
    with pytest.raises(TypeError, match="int64"):
        Tensor(np.arange(3), requires_grad=True)


def test_reshape_error_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4,\)"):
        Tensor(np.zeros((2, 3))).reshape(4)


def test_cross_entropy_and_embedding_reject_out_of_range_ids():
    with pytest.raises(ValueError, match="target 3 out of range for 3 classes"):
        F.cross_entropy(Tensor(np.zeros((2, 3))), np.array([0, 3]))
    with pytest.raises(IndexError, match="token id 10 out of range for a vocabulary of 4"):
        F.embedding(np.array([1, 10]), Tensor(np.zeros((4, 2))))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.norm = nn.LayerNorm(2)


def test_load_state_dict_wrong_shape_names_the_key():
    net = _Net()
    sd = dict(net.state_dict())
    sd["fc.weight"] = np.zeros((4, 3))
    with pytest.raises(StateDictError, match=r"fc\.weight: checkpoint \(4, 3\) vs model \(2, 3\)"):
        net.load_state_dict(sd)


def test_load_state_dict_lists_missing_and_unexpected_keys():
    net = _Net()
    sd = dict(net.state_dict())
    del sd["norm.bias"]
    sd["head.weight"] = np.zeros(2)
    with pytest.raises(StateDictError) as e:
        net.load_state_dict(sd)
    assert "missing keys: ['norm.bias']" in str(e.value)
    assert "unexpected keys: ['head.weight']" in str(e.value)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert missing == ["norm.bias"] and unexpected == ["head.weight"]
    np.testing.assert_array_equal(net.fc.weight.data, sd["fc.weight"])
