"""The optional PyTorch side-by-side of ``minillm bench train`` (tests/torch_reference.py) compares like
with like: same architecture, same parameter count, same loss at initialisation. Needs torch, which is
never a minillm dependency; without it these tests skip and say so (and fail in CI, which installs it)."""

import math

import numpy as np
from optional import optional_import

torch = optional_import("torch", "PyTorch not installed: the side-by-side timing is optional")


def test_reference_gpt_matches_minillm_gpt(capsys):
    import torch_reference

    from minillm.bench.train import main, minillm_step
    from minillm.models.gpt import GPT, GPTConfig

    cfg = dict(vocab_size=50, context_length=8, d_model=16, n_heads=2, n_layers=2, batch_size=3)
    step = torch_reference.torch_step(cfg)
    ours = GPT(GPTConfig(**{k: v for k, v in cfg.items() if k != "batch_size"}))
    assert sum(p.numel() for p in step.model.parameters()) == ours.num_parameters()
    _, n_matmul = minillm_step(cfg)
    assert n_matmul == ours.num_parameters() - cfg["context_length"] * cfg["d_model"]
    ids = torch.randint(0, 50, (3, 9))
    with torch.no_grad():
        loss = step.model(ids[:, :-1], ids[:, 1:]).item()
    assert abs(loss - math.log(50)) < 0.5  # near ln V at initialisation, as minillm's
    main(type("A", (), {"quick": True})(), reference=(torch_reference.label(), torch_reference.torch_step))
    out = capsys.readouterr().out
    assert "PyTorch" in out and "minillm / reference speed ratio" in out
    ratio = float(out.split("speed ratio")[1].split("x")[0])
    assert np.isfinite(ratio) and ratio > 0
