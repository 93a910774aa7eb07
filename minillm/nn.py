"""Modules: parameters organised into layers, named as in PyTorch so learners can find them.

A ``Module`` records every ``Parameter``, sub-``Module`` and buffer assigned to it as an attribute, so
``named_parameters()`` and ``state_dict()`` walk the tree in definition order with dotted names.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator

import numpy

from minillm import backend as B
from minillm import functional as F
from minillm.tensor import Tensor, concat, no_grad


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates (requires_grad by default)."""

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, requires_grad={self.requires_grad})"


class StateDictError(KeyError):
    """A state dict does not fit the module: names the missing, unexpected and mis-shaped keys."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Module:
    """Base class of every layer and model."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        # pop the name from the other registries only, so replacing a child (apply_lora swapping a Linear
        # inside a Sequential) keeps its position in definition order
        home = (self._parameters if isinstance(value, Parameter) else
                self._modules if isinstance(value, Module) else None)
        for d in (self._parameters, self._modules, self._buffers):
            if d is not home:
                d.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value) -> None:
        """A non-trainable array saved in the state dict (e.g. quantised weights, running stats)."""
        object.__setattr__(self, name, value)
        self._buffers[name] = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -------------------------------------------------------------- traversal
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) pairs; a parameter shared by two modules (tied weights) appears once."""
        seen = set()
        for mname, m in self.named_modules(prefix):
            for pname, p in m._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self) -> Iterator[tuple[str, object]]:
        for mname, m in self.named_modules():
            for bname in m._buffers:
                yield (f"{mname}.{bname}" if mname else bname), getattr(m, bname)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # -------------------------------------------------------------- modes and grads
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, flag: bool = True) -> Module:
        """Freeze (False) or unfreeze (True) every parameter of this module."""
        for p in self.parameters():
            p.requires_grad = flag
        return self

    # -------------------------------------------------------------- state
    def state_dict(self) -> OrderedDict:
        """Name → array (on the active backend) for every parameter and buffer, tied ones included."""
        sd = OrderedDict()
        for mname, m in self.named_modules():
            for pname, p in m._parameters.items():
                sd[f"{mname}.{pname}" if mname else pname] = p.data
            for bname in m._buffers:
                val = getattr(m, bname)
                sd[f"{mname}.{bname}" if mname else bname] = val.data if isinstance(val, Tensor) else val
        return sd

    def load_state_dict(self, state: dict, strict: bool = True) -> tuple[list, list]:
        """Copy arrays into this module's parameters and buffers.

        With ``strict`` every key must match in name and shape; the error lists what is missing,
        unexpected, or mis-shaped. Returns (missing, unexpected) when not strict.
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mis = [f"{k}: checkpoint {tuple(numpy.shape(state[k]))} vs model {tuple(own[k].shape)}"
               for k in own if k in state and tuple(numpy.shape(state[k])) != tuple(own[k].shape)]
        if mis or (strict and (missing or unexpected)):
            parts = []
            if missing:
                parts.append(f"missing keys: {missing}")
            if unexpected:
                parts.append(f"unexpected keys: {unexpected}")
            if mis:
                parts.append(f"shape mismatch: {mis}")
            raise StateDictError(f"load_state_dict({type(self).__name__}): " + "; ".join(parts))
        for mname, m in self.named_modules():
            for pname, p in m._parameters.items():
                key = f"{mname}.{pname}" if mname else pname
                if key in state:
                    p.data = B.xp.array(state[key], dtype=p.dtype)  # a copy: never share with the source
            for bname in m._buffers:
                key = f"{mname}.{bname}" if mname else bname
                if key in state:
                    val = getattr(m, bname)
                    arr = B.xp.array(state[key], dtype=getattr(val, "dtype", None))
                    if isinstance(val, Tensor):
                        val.data = arr
                    else:
                        object.__setattr__(m, bname, arr)
        return missing, unexpected

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"

    def extra_repr(self) -> str:
        return ""


class Linear(Module):
    """y = x Wᵀ + b. W is (out_features, in_features), initialised U(-1/√in, 1/√in) as in PyTorch."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter((B.rand(out_features, in_features) * 2 - 1) * bound)
        self.bias = Parameter(B.xp.zeros(out_features, dtype=B.default_dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table of ``num_embeddings`` vectors, initialised N(0, 1) as in PyTorch."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(B.randn(num_embeddings, embedding_dim))

    def forward(self, ids) -> Tensor:
        return F.embedding(ids, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(B.xp.ones(dim, dtype=B.default_dtype))
        self.bias = Parameter(B.xp.zeros(dim, dtype=B.default_dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class RMSNorm(Module):
    """T5-style LayerNorm: scale only, no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(B.xp.ones(dim, dtype=B.default_dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight, self.eps)


class Dropout(Module):
    def __init__(self, p: float = 0.1):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class GELU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.tanh()


class Sequential(Module):
    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)


@contextlib.contextmanager
def evaluating(model: Module):
    """Evaluate inside the block: eval mode (no dropout) and no gradient tracking; the model's own mode
    (training or not) is restored afterwards, also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            yield model
    finally:
        model.train(was_training)


class ModuleList(Module):
    def __init__(self, modules: Iterable[Module] = ()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, m: Module) -> None:
        setattr(self, str(len(self._modules)), m)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)


class ModuleDict(Module):
    def __init__(self, modules: dict | None = None):
        super().__init__()
        for k, m in (modules or {}).items():
            setattr(self, k, m)

    def __getitem__(self, k: str) -> Module:
        return self._modules[k]

    def __setitem__(self, k: str, m: Module) -> None:
        setattr(self, k, m)

    def __contains__(self, k: str) -> bool:
        return k in self._modules

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()

    def __len__(self) -> int:
        return len(self._modules)


# ====================================================================== transformer blocks
# One attention, one feed-forward, one block: GPT, BERT, BART and T5 are all built from these.


class MultiHeadAttention(Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017), self- or cross-attention.

    Queries come from ``x``; keys and values from ``context`` (cross-attention) or ``x`` (self-attention).
    The projections are named ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` (what LoRA targets).
    ``scale`` defaults to 1/√head_dim (T5 sets it to 1.0). ``dropout`` applies in training to the attention
    probabilities (``attn_dropout``, as PyTorch's ``dropout``) and to the output (``dropout``, the residual
    dropout of GPT-2 / nanoGPT).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True,
                 cross: bool = False):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"MultiHeadAttention: d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.cross, self.scale = cross, None
        self.q_proj = Linear(d_model, d_model, bias=bias)
        self.k_proj = Linear(d_model, d_model, bias=bias)
        self.v_proj = Linear(d_model, d_model, bias=bias)
        self.out_proj = Linear(d_model, d_model, bias=bias)
        self.attn_dropout = Dropout(dropout)  # on the attention probabilities
        self.dropout = Dropout(dropout)       # on the output, before the residual add

    def _heads(self, t: Tensor) -> Tensor:
        Bsz, T, _ = t.shape
        return t.reshape(Bsz, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def _project(self, x: Tensor, context: Tensor | None, mask, key_padding_mask, past_kv: tuple | None
                 ) -> tuple[Tensor, Tensor, Tensor, object]:
        """q (B, nh, Tq, hs), k and v (B, nh, Tpast + Tk, hs) with the past prepended, and the boolean
        allowed mask (or None) from ``mask`` and ``key_padding_mask``."""
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"MultiHeadAttention: expected x of shape (B, T, {self.d_model}), got {x.shape}")
        src = x if context is None else context
        if src.ndim != 3 or src.shape[0] != x.shape[0] or src.shape[-1] != self.d_model:
            raise ValueError(f"MultiHeadAttention: context {src.shape} does not fit x {x.shape}")
        Bsz = x.shape[0]
        q = self._heads(self.q_proj(x))    # (B, nh, Tq, hs)
        k = self._heads(self.k_proj(src))  # (B, nh, Tk, hs)
        v = self._heads(self.v_proj(src))  # (B, nh, Tk, hs)
        if past_kv is not None:
            pk, pv = (t if isinstance(t, Tensor) else Tensor(t) for t in past_kv)
            if pk.shape[0] == 1 and Bsz > 1:  # one shared prefix for the whole batch
                ones = B.xp.ones((Bsz, 1, 1, 1), dtype=pk.dtype)
                pk, pv = pk * ones, pv * ones
            k = concat([pk, k], axis=2)  # (B, nh, Tpast + Tk, hs)
            v = concat([pv, v], axis=2)
        Tk = k.shape[2]
        allowed = None if mask is None else B.xp.asarray(B.unwrap(mask), dtype=bool)
        if key_padding_mask is not None:
            kpm = B.xp.asarray(B.unwrap(key_padding_mask), dtype=bool)
            if kpm.ndim == 2 and kpm.shape[0] == Bsz and kpm.shape[1] < Tk:  # the past is never padding
                kpm = B.xp.concatenate([B.xp.zeros((Bsz, Tk - kpm.shape[1]), dtype=bool), kpm], axis=1)
            if kpm.shape != (Bsz, Tk):
                raise ValueError(f"MultiHeadAttention: key_padding_mask has shape {kpm.shape}, "
                                 f"expected (batch, keys) = ({Bsz}, {Tk})")
            keep = ~kpm[:, None, None, :]  # (B, 1, 1, Tk)
            allowed = keep if allowed is None else (allowed & keep)
        return q, k, v, allowed

    def forward(self, x: Tensor, context: Tensor | None = None, mask=None, key_padding_mask=None,
                is_causal: bool = False, past_kv: tuple | None = None,
                position_bias: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Attend from ``x`` (B, Tq, C) to ``context`` (B, Tk, C), or to ``x`` itself when no context.

        mask: boolean, broadcastable to (B, nh, Tq, Tk), True where attention is allowed.
        key_padding_mask: boolean (B, Tk), True marks a padding key nobody may attend to (with a past,
            either (B, Tpast + Tk) or (B, Tk), in which case the past keys count as real).
        is_causal: query i sees keys up to its own position (aligned to the end, so it works with a past).
        past_kv: (k, v), each (B, nh, Tpast, hs), prepended to this call's keys and values: a KV cache, or
            trainable prefixes (prefix tuning) — gradients flow into them.
        position_bias: additive score bias broadcastable to (B, nh, Tq, Tk) (T5); it gets a gradient.

        Returns (y (B, Tq, C), present_kv): present_kv = (k, v), each (B, nh, Tpast + Tk, hs), includes the
        past (the next call's ``past_kv``). ``attention_weights`` gives the probabilities.
        """
        Bsz, Tq, C = x.shape
        q, k, v, allowed = self._project(x, context, mask, key_padding_mask, past_kv)
        p_drop = self.attn_dropout.p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, mask=allowed, is_causal=is_causal, scale=self.scale,
                                           bias=position_bias, dropout_p=p_drop)  # (B, nh, Tq, hs)
        y = y.transpose(1, 2).reshape(Bsz, Tq, C)  # (B, Tq, C): heads side by side
        y = self.dropout(self.out_proj(y))
        return y, (k, v)

    def attention_weights(self, x: Tensor, context: Tensor | None = None, mask=None, key_padding_mask=None,
                          is_causal: bool = False, past_kv: tuple | None = None,
                          position_bias: Tensor | None = None) -> Tensor:
        """The attention probabilities (B, nh, Tq, Tk) ``forward`` with the same arguments uses, for plotting
        (no gradient; in training mode with attention dropout applied, as ``forward`` would draw it)."""
        q, k, _, allowed = self._project(x, context, mask, key_padding_mask, past_kv)
        p_drop = self.attn_dropout.p if self.training else 0.0
        return F.attention_probs(q, k, mask=allowed, is_causal=is_causal, scale=self.scale,
                                 bias=position_bias, dropout_p=p_drop)  # (B, nh, Tq, Tk)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, cross={self.cross}"


class FeedForward(Module):
    """Position-wise MLP: down_proj(act(up_proj(x))), d_model → d_ff → d_model."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "gelu",
                 bias: bool = True):
        super().__init__()
        acts = {"gelu": F.gelu, "relu": F.relu}
        if activation not in acts:
            raise ValueError(f"FeedForward: activation must be one of {sorted(acts)}, got {activation!r}")
        self.activation, self._act = activation, acts[activation]
        self.up_proj = Linear(d_model, d_ff, bias=bias)
        self.down_proj = Linear(d_ff, d_model, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down_proj(self._act(self.up_proj(x))))  # (B, T, d_ff) inside

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


class TransformerBlock(Module):
    """Pre-norm transformer block: x + Attn(LN(x)) [+ CrossAttn(LN(x), context)] + FFN(LN(x)).

    ``causal=True`` for decoders (GPT, BART/T5 decoder), False for encoders (BERT). With
    ``cross_attention`` the block also attends to an encoder's output (BART/T5 decoder).
    Sub-modules: ``ln_1``, ``attn``, [``ln_cross``, ``cross_attn``], ``ln_2``, ``mlp``.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int | None = None, dropout: float = 0.0,
                 cross_attention: bool = False, norm: str = "layernorm", causal: bool = True,
                 activation: str = "gelu", bias: bool = True):
        super().__init__()
        norms = {"layernorm": lambda: LayerNorm(d_model, bias=bias), "rmsnorm": lambda: RMSNorm(d_model)}
        if norm not in norms:
            raise ValueError(f"TransformerBlock: norm must be one of {sorted(norms)}, got {norm!r}")
        self.causal, self.cross_attention = causal, cross_attention
        self.ln_1 = norms[norm]()
        self.attn = MultiHeadAttention(d_model, n_heads, dropout, bias=bias)
        if cross_attention:
            self.ln_cross = norms[norm]()
            self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout, bias=bias, cross=True)
        self.ln_2 = norms[norm]()
        self.mlp = FeedForward(d_model, d_ff or 4 * d_model, dropout, activation, bias=bias)

    def forward(self, x: Tensor, context: Tensor | None = None, mask=None, key_padding_mask=None,
                context_key_padding_mask=None, past_kv: tuple | None = None,
                position_bias: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, C) → (x (B, T, C), present_kv): present_kv = (k, v) of the self-attention including
        ``past_kv``, each (B, nh, Tpast + T, hs).

        ``key_padding_mask`` (B, T) masks padded keys of ``x``; ``context_key_padding_mask`` (B, Tk) those
        of the encoder output ``context``. ``position_bias`` goes to the self-attention only.
        """
        a, present = self.attn(self.ln_1(x), mask=mask, key_padding_mask=key_padding_mask,
                               is_causal=self.causal, past_kv=past_kv, position_bias=position_bias)
        x = x + a
        if self.cross_attention:
            if context is None:
                raise ValueError("TransformerBlock: this block has cross-attention; pass context= "
                                 "(the encoder output, (B, Tk, C))")
            x = x + self.cross_attn(self.ln_cross(x), context=context,
                                    key_padding_mask=context_key_padding_mask)[0]
        x = x + self.mlp(self.ln_2(x))
        return x, present
