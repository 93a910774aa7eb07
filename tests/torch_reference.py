"""PyTorch eager side by side with ``minillm bench train`` (optional: torch is never a minillm dependency,
and the package never imports it; this file lives beside the tests for that reason).

    python tests/torch_reference.py [--quick]

runs the training-step benchmark with the same GPT written in PyTorch timed in turn with minillm's, on as
many threads as ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS`` say when set, and prints the ratio.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn as tnn
import torch.nn.functional as tF


class Block(tnn.Module):
    """minillm's pre-norm block: LayerNorm, causal attention, residual; LayerNorm, 4·d GELU MLP, residual."""

    def __init__(self, d: int, nh: int):
        super().__init__()
        self.nh = nh
        self.ln_1, self.ln_2 = tnn.LayerNorm(d), tnn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (tnn.Linear(d, d) for _ in range(4))
        self.up, self.down = tnn.Linear(d, 4 * d), tnn.Linear(4 * d, d)

    def forward(self, x):
        Bz, Tz, C = x.shape
        h = self.ln_1(x)
        q, k, v = (p(h).view(Bz, Tz, self.nh, C // self.nh).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = tF.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(Bz, Tz, C)
        x = x + self.o(a)
        return x + self.down(tF.gelu(self.up(self.ln_2(x)), approximate="tanh"))


class TorchGPT(tnn.Module):
    """The benchmark GPT: token + learned position embeddings, blocks, final LayerNorm, tied LM head."""

    def __init__(self, V: int, T: int, d: int, nh: int, L: int):
        super().__init__()
        self.V = V
        self.tok, self.pos = tnn.Embedding(V, d), tnn.Embedding(T, d)
        self.blocks = tnn.ModuleList(Block(d, nh) for _ in range(L))
        self.ln_f = tnn.LayerNorm(d)
        for m in self.modules():  # GPT-2 initialisation, as minillm's GPT: N(0, 0.02) weights, zero biases
            if isinstance(m, (tnn.Linear, tnn.Embedding)):
                tnn.init.normal_(m.weight, std=0.02)
            if isinstance(m, tnn.Linear):
                tnn.init.zeros_(m.bias)

    def forward(self, ids, targets):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for b in self.blocks:
            x = b(x)
        logits = self.ln_f(x) @ self.tok.weight.T
        return tF.cross_entropy(logits.reshape(-1, self.V), targets.reshape(-1))


def torch_step(cfg: dict):
    """A function running one training step (forward, backward, AdamW) of the benchmark GPT in PyTorch."""
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if threads:  # same thread count as our BLAS, for a like-for-like comparison
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    model = TorchGPT(cfg["vocab_size"], cfg["context_length"], cfg["d_model"], cfg["n_heads"],
                     cfg["n_layers"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, cfg["vocab_size"], (cfg["batch_size"], cfg["context_length"] + 1))
    x, y = ids[:, :-1], ids[:, 1:]

    def step():
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step.model = model
    return step


def label() -> str:
    return f"PyTorch {torch.__version__} eager ({torch.get_num_threads()} thr)"


if __name__ == "__main__":
    from minillm.bench.train import main

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny configuration (seconds)")
    args = parser.parse_args()
    main(args, reference=(label(), torch_step))
