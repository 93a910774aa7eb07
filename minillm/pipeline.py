"""``minillm pipeline``: every phase end to end on the built-in data, printing a report card.

Each phase is a function ``(ctx) -> dict`` of metrics; ``ctx`` carries the run's options and the
artefacts earlier phases produced (tokenizer, checkpoints). Later phases start from earlier ones.
"""

from __future__ import annotations

import time

from minillm import backend as B


def phase_autograd_mlp(ctx: dict) -> dict:
    """Step 1's demo: a small MLP learns two moons with AdamW (full-batch)."""
    from minillm import functional as F
    from minillm import nn, optim
    from minillm.data.toy import make_moons
    from minillm.tensor import Tensor, no_grad

    X, y = make_moons(256, noise=0.1, seed=ctx["seed"])
    model = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2))
    opt = optim.AdamW(model.parameters(), lr=0.03, weight_decay=0.0)
    steps = 60 if ctx["quick"] else 300
    for _ in range(steps):
        loss = F.cross_entropy(model(Tensor(X)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with no_grad():
        acc = float((model(Tensor(X)).numpy().argmax(-1) == y).mean())
    return {"steps": steps, "final loss": loss.item(), "train accuracy": acc}


PHASES = [
    ("autograd: MLP on two moons", phase_autograd_mlp),
]


def format_value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run_pipeline(args) -> int:
    B.manual_seed(args.seed)
    ctx = {"quick": bool(args.quick), "seed": args.seed, "out": args.out}
    print(f"minillm pipeline (backend={B.get_backend()}, quick={ctx['quick']})")
    for title, fn in PHASES:
        t0 = time.perf_counter()
        metrics = fn(ctx)
        dt = time.perf_counter() - t0
        print(f"\n== {title}  ({dt:.1f} s)")
        for k, v in metrics.items():
            print(f"   {k:<28} {format_value(v)}")
    print("\nall phases done")
    return 0
