"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation").

Every attention layer of a frozen model gets P extra key/value vectors in front of the real ones, as if
P "virtual tokens" had been read before the prompt. Only those vectors train: 2·L·P·d numbers for L layers
whose keys are d wide (d = n_kv_heads·head_dim: d_model, or less with grouped-query attention). They
enter through attention's ``past_kv`` (the same door the KV cache uses), so generation with the cache
works unchanged: the prefix simply is the first part of the cache.

Optimising the prefix directly is unstable (§4.3 of the paper), so during training it can be produced by
a small MLP from P learned embeddings (the reparameterisation, ``reparameterize=True``):
    [K; V] = MLP(E),  E (P × d_model),  MLP: d_model → hidden → 2·L·d (tanh in between)
``fold()`` runs the MLP once and keeps only its output as plain parameters: after training the MLP is gone.
"""

from __future__ import annotations

from minillm import backend as B
from minillm import nn
from minillm.peft.surgery import switched_off
from minillm.tensor import Tensor, no_grad


def prefix_param_count(n_layers: int, d_model: int, num_virtual_tokens: int, kv_width: int | None = None
                       ) -> int:
    """Numbers the folded prefix holds: keys and values, P per layer, each d wide: 2·L·P·d, with
    d = ``kv_width`` (n_kv_heads·head_dim, for grouped-query attention) or ``d_model``."""
    return 2 * n_layers * num_virtual_tokens * (d_model if kv_width is None else kv_width)


class PrefixTuning(nn.Module):
    """A frozen GPT-like ``model`` (``blocks``, ``config`` with n_heads/d_model and, for grouped-query
    attention, n_kv_heads; ``forward`` and ``forward_cached`` taking ``past_kv`` and ``start_pos``) behind P
    trainable key/value prefixes per layer (GPT, Llama).

    Call it like the model: ``logits, loss = prefixed(ids, targets)``; ``generate(prefixed, ...)`` works
    too (the prefix is the start of the KV cache, and token positions still start at 0).
    """

    def __init__(self, model: nn.Module, num_virtual_tokens: int = 8, reparameterize: bool = True,
                 hidden: int = 64, init_ids=None):
        super().__init__()
        if num_virtual_tokens < 1:
            raise ValueError(f"PrefixTuning: num_virtual_tokens must be ≥ 1, got {num_virtual_tokens}")
        c = model.config
        self.model = model.requires_grad_(False)
        self.n_layers, self.n_heads, self.d_model = len(model.blocks), c.n_heads, c.d_model
        self.n_kv_heads = getattr(c, "n_kv_heads", None) or c.n_heads  # the heads a cache holds (GQA: fewer)
        self.head_dim = c.d_model // c.n_heads
        self.num_virtual_tokens = P = int(num_virtual_tokens)
        self.reparameterize = bool(reparameterize)
        self.disabled = False  # True: the frozen model alone, no prefix (see ``prefix_disabled``)
        kv_width = self.n_kv_heads * self.head_dim
        if self.reparameterize:
            self.prefix_embedding = nn.Parameter(B.randn(P, c.d_model) * 0.02)
            self.prefix_mlp = nn.Sequential(nn.Linear(c.d_model, hidden), nn.Tanh(),
                                            nn.Linear(hidden, 2 * self.n_layers * kv_width))
        else:
            self.prefix_kv = nn.Parameter(self._initial_kv(init_ids))  # (L, 2, nkv, P, hs)

    @property
    def config(self):
        return self.model.config

    def _initial_kv(self, init_ids=None):
        """Keys/values the frozen model itself produces for P real tokens (Li & Liang §7.2: initialising with
        real words' activations trains better than random); random token ids unless ``init_ids`` given."""
        P = self.num_virtual_tokens
        ids = (B.rng.integers(0, self.config.vocab_size, size=(1, P)) if init_ids is None
               else B.to_numpy(init_ids).reshape(1, P))
        with no_grad():
            _, present = self.model.forward_cached(ids)
        kv = B.xp.stack([B.xp.stack([k.data[0], v.data[0]]) for k, v in present])  # (L, 2, nkv, P, hs)
        return kv.astype(B.default_dtype)

    def prefix_kv_tensor(self) -> Tensor:
        """The prefix as one tensor (L, 2, nkv, P, hs): from the MLP while reparameterised, else the
        parameter itself."""
        if not self.reparameterize:
            return self.prefix_kv
        L, nkv, hs, P = self.n_layers, self.n_kv_heads, self.head_dim, self.num_virtual_tokens
        out = self.prefix_mlp(self.prefix_embedding)            # (P, 2·L·nkv·hs)
        out = out.reshape(P, L, 2, nkv, hs)                       # (P, L, 2, nkv, hs)
        return out.permute(1, 2, 3, 0, 4)                         # (L, 2, nkv, P, hs)

    def past_key_values(self) -> list[tuple[Tensor, Tensor]]:
        """One (k, v) per layer, each (1, nkv, P, hs): attention broadcasts it over the batch."""
        kv = self.prefix_kv_tensor()
        return [(kv[i, 0][None], kv[i, 1][None]) for i in range(self.n_layers)]

    def _past_and_start(self, past_kv: list | None, start_pos: int | None) -> tuple[list | None, int | None]:
        """The past the model attends to and the position of ids[:, 0]."""
        if self.disabled:  # the frozen model alone: no prefix in front, positions as the model counts them
            return past_kv, start_pos
        if past_kv is None:  # a fresh call: the prefix is the whole past, real tokens start at position 0
            return self.past_key_values(), 0 if start_pos is None else start_pos
        # a cached call: the cache already begins with the prefix
        start = int(past_kv[0][0].shape[2]) - self.num_virtual_tokens if start_pos is None else start_pos
        return past_kv, start

    def forward(self, ids, targets=None, past_kv: list | None = None, start_pos: int | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """(logits, loss) of the model with the prefix in front (``past_kv``: a cache that begins with it)."""
        past_kv, start = self._past_and_start(past_kv, start_pos)
        return self.model(ids, targets, past_kv=past_kv, start_pos=start)

    def forward_cached(self, ids, past_kv: list | None = None, start_pos: int | None = None
                       ) -> tuple[Tensor, list]:
        """(logits, present_kv) as the model's ``forward_cached``; the cache begins with the prefix."""
        past_kv, start = self._past_and_start(past_kv, start_pos)
        return self.model.forward_cached(ids, past_kv=past_kv, start_pos=start)

    def fold(self) -> None:
        """Replace the MLP reparameterisation by its output (plain trainable parameters); drops the MLP."""
        if not self.reparameterize:
            return
        with no_grad():
            kv = self.prefix_kv_tensor().data.copy()
        del self._parameters["prefix_embedding"], self._modules["prefix_mlp"]
        object.__delattr__(self, "prefix_embedding")
        object.__delattr__(self, "prefix_mlp")
        self.reparameterize = False
        self.prefix_kv = nn.Parameter(kv)

    def extra_repr(self) -> str:
        return (f"num_virtual_tokens={self.num_virtual_tokens}, layers={self.n_layers}, "
                f"reparameterize={self.reparameterize}")


def prefix_disabled(model: nn.Module):
    """A ``with`` block in which every ``PrefixTuning`` in ``model`` runs its frozen model alone, no prefix:
    the pre-trained model exactly (like ``lora.lora_disabled``; PEFT's ``disable_adapter()``)."""
    return switched_off(model, PrefixTuning)


def prefix_state_dict(prefixed: PrefixTuning) -> dict:
    """The prefix alone, folded: ``{"prefix_kv": (L, 2, nkv, P, hs)}`` whether or not the MLP is still there
    (it is training scaffolding): what one ships per task, loadable by a ``reparameterize=False`` wrapper."""
    with no_grad():
        return {"prefix_kv": prefixed.prefix_kv_tensor().data.copy()}


def apply_prefix_tuning(model: nn.Module, num_virtual_tokens: int = 8, reparameterize: bool = True,
                        hidden: int = 64, init_ids=None) -> PrefixTuning:
    """Freeze ``model`` and return it wrapped with trainable prefixes (see ``PrefixTuning``)."""
    return PrefixTuning(model, num_virtual_tokens, reparameterize, hidden, init_ids)


__all__ = ["PrefixTuning", "apply_prefix_tuning", "prefix_disabled", "prefix_param_count",
           "prefix_state_dict"]
