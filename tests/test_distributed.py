"""Data parallelism: DDP and ZeRO stages 1-3 train like one process, on a world of 1 and on 2 MPI ranks.

A world of 1 runs the same code and must match plain training bit for bit. The 2-rank tests run this file
as a script under ``mpiexec -n 2`` (once, every configuration in one launch) and compare each rank's
losses, weights and measured bytes with a 1-process run of the same global batch. Tolerances: float64
1e-12 (measured 2e-14); float32 1e-5 on losses and 1e-4 on weights (the two halves' gradients are averaged
in another order than one batch's; Adam turns that rounding into weight differences of 9e-6 after 6
steps). Measured bytes per rank must equal ``zero_bytes_per_rank`` exactly.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minillm
from minillm import backend as B
from minillm import optim
from minillm.distributed import (
    DataParallel,
    Layout,
    LocalComm,
    MPIComm,
    NCCLComm,
    ZeRO,
    init_comm,
    make_strategy,
)
from minillm.distributed.comm import find_mpiexec
from minillm.models import GPT, GPTConfig, Llama, LlamaConfig
from minillm.peft import LoRAConfig, apply_lora
from minillm.peft.memory import zero_bytes_per_rank
from minillm.train import TrainConfig, lm_loss, train

STAGES = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3}
KINDS = ("gpt", "lora", "llama")
DTYPES = ("float32", "float64")
TOL = {"float32": {"loss": 1e-5, "weights": 1e-4}, "float64": {"loss": 1e-12, "weights": 1e-12}}
DATA = np.tile(np.arange(11), 300)


def get_batch(split, rng):
    d = DATA[:2500] if split == "train" else DATA[2500:]
    ix = rng.integers(0, len(d) - 9, 4)  # global batch B = 4
    return np.stack([d[i:i + 8] for i in ix]), np.stack([d[i + 1:i + 9] for i in ix])


def tiny(kind: str) -> GPT | Llama:
    """A GPT with an odd number of parameters (d_ff 7), so the last shard is padded; its LoRA form; or a
    Llama of the same size with grouped-query attention."""
    minillm.manual_seed(0)
    if kind == "llama":
        return Llama(LlamaConfig(vocab_size=11, context_length=8, d_model=16, n_heads=2, n_kv_heads=1,
                                 n_layers=1, d_ff=7))
    model = GPT(GPTConfig(vocab_size=11, context_length=8, d_model=16, n_heads=2, n_layers=1, d_ff=7))
    if kind == "lora":
        apply_lora(model, LoRAConfig(r=3, target_modules=("q_proj", "up_proj")))
    return model


def run(kind: str, dtype: str, strategy=None, out_dir=None, batch_size: int = 4) -> dict:
    """Train ``tiny(kind)`` for 6 steps (grad clipping active) in ``dtype``; losses, norms, weights, bytes."""
    old = B.get_default_dtype()
    B.set_default_dtype(dtype)
    try:
        model = tiny(kind)
        config = TrainConfig(steps=6, lr=1e-2, warmup=1, batch_size=batch_size, grad_clip=0.5, eval_every=3,
                             eval_steps=1, out_dir=out_dir, progress=False)
        h = train(model, lm_loss, get_batch, config, distributed=strategy)
    finally:
        B.set_default_dtype(old)
    out = {"loss": np.array(h["loss"]), "grad_norm": np.array(h["grad_norm"]),
           "val_loss": np.array(h["val_loss"]),
           "n_params": np.array(model.num_parameters(trainable_only=True))}
    out.update({f"w/{k}": B.to_numpy(v) for k, v in model.state_dict().items()})
    if strategy is not None:
        out.update({f"bytes/{k}": np.array(v) for k, v in strategy.bytes_per_rank().items()})
    return out


def max_diff(a: dict, b: dict, prefix: str) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a if k.startswith(prefix))


def predicted(n_params: int, world_size: int, strategy: str, dtype: str) -> dict:
    return zero_bytes_per_rank(n_params, world_size, STAGES[strategy], np.dtype(dtype).itemsize)


def measured(result: dict) -> dict:
    return {k: int(result[f"bytes/{k}"]) for k in ("params", "grads", "optimizer")}


# ------------------------------------------------------------------ a world of 1: the same code path
@pytest.mark.parametrize("strategy", list(STAGES))
def test_a_world_of_one_trains_bit_for_bit_like_plain_training(strategy):
    ref = run("gpt", "float32")
    got = run("gpt", "float32", make_strategy(strategy, LocalComm()))
    assert got["loss"].tolist() == ref["loss"].tolist()
    assert max_diff(got, ref, "w/") == 0.0
    assert measured(got) == predicted(int(ref["n_params"]), 1, strategy, "float32")


class TwoRanks(LocalComm):
    """Rank ``rank`` of a world of 2 for the checks that run before any collective."""

    def __init__(self, rank: int = 0):
        self.rank, self.world_size = rank, 2


def test_a_batch_not_divisible_by_the_world_size_is_one_clear_error():
    with pytest.raises(ValueError, match="batch size 5 is not divisible by world size 2"):
        run("gpt", "float32", make_strategy("zero2", TwoRanks()), batch_size=5)


def test_each_rank_takes_its_rows_of_the_global_batch():
    x, y = np.arange(12).reshape(4, 3), np.arange(4)
    bx, by = DataParallel(TwoRanks(rank=1)).local_batch((x, y))
    assert bx.tolist() == x[2:].tolist() and by.tolist() == [2, 3]
    with pytest.raises(ValueError, match="batch size 3 is not divisible by world size 2"):
        DataParallel(TwoRanks()).local_batch(x[:3])


def test_the_layout_pads_to_a_multiple_of_n_and_gives_rank_r_elements_r_s_to_r_plus_1_s():
    params = [minillm.Tensor(np.zeros((2, 2))), minillm.Tensor(np.zeros(1))]  # Ψ = 5, N = 2: s = 3
    lay = Layout(params, world_size=2, rank=1)
    assert (lay.shard, lay.padded, lay.start) == (3, 6, 3)
    assert lay.pieces() == [(0, 3, 4, 0), (1, 0, 1, 1)]  # p0's last element, then p1; element 5 is padding
    assert Layout(params, 2, 0).pieces() == [(0, 0, 3, 0)]


def test_init_comm_without_a_launcher_is_a_world_of_one(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    comm = init_comm()
    assert isinstance(comm, LocalComm) and (comm.rank, comm.world_size) == (0, 1)
    with pytest.raises(ValueError, match="backend must be"):
        init_comm("gloo")


def test_mpi_without_mpi4py_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"pip install 'minillm\[distributed\]'"):
        MPIComm()


def test_unknown_strategies_and_stages_are_refused_clearly():
    with pytest.raises(ValueError, match="expected one of ddp, zero1, zero2, zero3"):
        make_strategy("fsdp", LocalComm())
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        ZeRO(LocalComm(), stage=3)  # stage 3 is its own class, ZeRO3


@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_a_sharded_run_resumes_bit_for_bit(tmp_path, strategy):
    """Crash after step 4 (last checkpoint: step 3), resume: the losses equal an uninterrupted run's."""
    config = TrainConfig(steps=6, lr=1e-2, warmup=1, batch_size=4, eval_every=0, checkpoint_every=3,
                         out_dir=str(tmp_path), progress=False)
    full = train(tiny("gpt"), lm_loss, get_batch, config, distributed=make_strategy(strategy, LocalComm()))
    calls = [0]

    def crashing(split, rng):
        calls[0] += 1
        if calls[0] > 4:
            raise KeyboardInterrupt("simulated crash")
        return get_batch(split, rng)

    with pytest.raises(KeyboardInterrupt):
        train(tiny("gpt"), lm_loss, crashing, config, distributed=make_strategy(strategy, LocalComm()))
    resumed = train(tiny("gpt"), lm_loss, get_batch, config, resume=tmp_path / "checkpoint.npz",
                    distributed=make_strategy(strategy, LocalComm()))
    assert resumed["loss"] == full["loss"]


def test_zero3_gathers_one_block_at_a_time_and_keeps_only_its_shard_between_steps():
    minillm.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, context_length=8, d_model=16, n_heads=2, n_layers=2))
    strategy = make_strategy("zero3", LocalComm())
    opt = strategy.setup(model, optim.AdamW(model.parameters()))
    seen = []
    inner = model.blocks[1].attn.forward  # runs inside block 1's gathered forward (and backward)

    def spy(*args, **kwargs):
        seen.append([p.data.size > 0 for b in model.blocks for p in b.parameters()])
        return inner(*args, **kwargs)

    model.blocks[1].attn.forward = spy
    x, y = get_batch("train", np.random.default_rng(0))
    _, loss = model(x, y)
    loss.backward()  # each block's gradients are reduce-scattered as soon as its backward is done
    assert all(p.grad is None and p.data.size == 0 for b in model.blocks for p in b.parameters())
    assert model.tok_emb.weight.grad is not None  # the rest waits for reduce_gradients
    strategy.reduce_gradients(1.0)
    opt.step()
    n = len(list(model.blocks[0].parameters()))
    assert seen == [[False] * n + [True] * n]  # block 0 freed while block 1 runs
    assert all(p.data.size == 0 and p.grad is None for p in strategy.params)
    assert model.state_dict()["blocks.0.ln_1.weight"].shape == (16,)  # gathered on demand


# ------------------------------------------------------------------ 2 ranks under mpiexec
@pytest.fixture(scope="module")
def mpiexec() -> str:
    """mpiexec next to this Python (the ``mpich`` wheel) or on PATH; skips locally without mpi4py, fails
    in CI."""
    from optional import optional_import

    optional_import("mpi4py", "2-rank tests need mpi4py: pip install 'minillm[distributed]'")
    path = find_mpiexec()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("mpiexec not found (pip install 'minillm[distributed]')")
        pytest.skip("mpiexec not found: pip install 'minillm[distributed]'")
    return path


ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}  # 2 ranks, not 2 × all cores


@pytest.fixture(scope="module")
def two_ranks(mpiexec, tmp_path_factory) -> list:
    """Every configuration trained once under ``mpiexec -n 2``: [rank 0's dict, rank 1's, the folder]."""
    out = tmp_path_factory.mktemp("mpi")
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, __file__, "train", str(out)], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(2)] + [out]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("strategy", list(STAGES))
def test_two_ranks_with_half_batches_train_like_one_process(two_ranks, strategy, kind, dtype):
    ref = run(kind, dtype)
    for rank in (0, 1):
        got = {k.split("/", 3)[3]: v for k, v in two_ranks[rank].items()
               if k.startswith(f"{strategy}/{kind}/{dtype}/")}
        tol = TOL[dtype]
        assert max_diff(got, ref, "loss") < tol["loss"]
        assert max_diff(got, ref, "val_loss") < tol["loss"]
        assert max_diff(got, ref, "grad_norm") < tol["loss"]  # the global norm, also from shards
        assert max_diff(got, ref, "w/") < tol["weights"]
        assert measured(got) == predicted(int(ref["n_params"]), 2, strategy, dtype)


def test_both_ranks_end_with_the_same_weights(two_ranks):
    r0, r1 = two_ranks[:2]
    assert all(np.array_equal(r0[k], r1[k]) for k in r0 if "/w/" in k)


@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_a_sharded_checkpoint_holds_the_whole_model_and_optimizer_state(two_ranks, tmp_path, strategy):
    """Rank 0 writes one checkpoint with the all-gathered weights and moments, as one process would."""
    run("gpt", "float64", out_dir=str(tmp_path))
    ref = minillm.load(tmp_path / "checkpoint.npz")
    got = minillm.load(two_ranks[2] / f"ckpt_{strategy}" / "checkpoint.npz")
    assert max(float(np.abs(got["model"][k] - v).max()) for k, v in ref["model"].items()) < 1e-12
    ref, got = ref["optimizer"], got["optimizer"]
    assert got["step_count"] == ref["step_count"] == 6 and got["state"].keys() == ref["state"].keys()
    for i, s in ref["state"].items():
        assert got["state"][i]["t"] == s["t"]
        assert np.abs(got["state"][i]["m"] - s["m"]).max() < 1e-12
        assert np.abs(got["state"][i]["v"] - s["v"]).max() < 1e-12


# ------------------------------------------------------------------ minillm pretrain --distributed
PRETRAIN = ["pretrain", "--steps", "4", "--d-model", "16", "--n-layers", "2", "--n-heads", "2",
            "--context-length", "16", "--batch-size", "4", "--num-stories", "60", "--eval-every", "2",
            "--eval-steps", "2", "--warmup", "1", "--checkpoint-every", "0", "--no-progress"]


@pytest.mark.parametrize("strategy", ["ddp", "zero3"])
def test_pretrain_distributed_on_two_ranks_matches_one_process(mpiexec, tmp_path, strategy, capsys):
    from minillm.cli import main as cli

    assert cli([*PRETRAIN, "--out", str(tmp_path / "one")]) == 0
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "minillm", *PRETRAIN, "--out",
                           str(tmp_path / "two"), "--distributed", strategy], env=ENV, capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("val loss") == 1  # rank 0 reports, once
    one, two = (minillm.load(tmp_path / d / "checkpoint.npz") for d in ("one", "two"))
    assert np.abs(np.array(one["history"]["loss"]) - two["history"]["loss"]).max() < TOL["float32"]["loss"]
    assert max(float(np.abs(one["model"][k] - v).max()) for k, v in two["model"].items()) < 1e-4
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["checkpoint.npz", "model.npz"]


def test_two_ranks_resume_a_one_process_checkpoint(mpiexec, tmp_path):
    """Checkpoints hold the whole state, so a run can move between world sizes: 1 process for 2 steps,
    then 2 ZeRO-2 ranks for 2 more, equals 1 process for 4."""
    from minillm.cli import main as cli

    assert cli([*PRETRAIN, "--out", str(tmp_path / "whole")]) == 0
    assert cli([*PRETRAIN, "--steps", "2", "--out", str(tmp_path / "moved")]) == 0
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "minillm", *PRETRAIN, "--out",
                           str(tmp_path / "moved"), "--resume", str(tmp_path / "moved" / "checkpoint.npz"),
                           "--distributed", "zero2"], env=ENV, capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    whole, moved = (minillm.load(tmp_path / d / "checkpoint.npz") for d in ("whole", "moved"))
    assert moved["step"] == 4
    losses = np.array(whole["history"]["loss"]) - moved["history"]["loss"]
    assert np.abs(losses).max() < TOL["float32"]["loss"]
    assert max(float(np.abs(whole["model"][k] - v).max()) for k, v in moved["model"].items()) < 1e-4


def test_pretrain_distributed_is_checked_before_any_work(monkeypatch, capsys):
    from minillm.cli import main as cli

    with pytest.raises(SystemExit):  # argparse: invalid choice
        cli([*PRETRAIN, "--distributed", "zero4"])
    assert "invalid choice: 'zero4'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--distributed trains --objective clm only"):
        cli([*PRETRAIN, "--objective", "mlm", "--distributed", "ddp"])
    monkeypatch.setenv("PMI_SIZE", "3")
    with pytest.raises(ValueError, match="batch size 4 is not divisible by world size 3"):
        cli([*PRETRAIN, "--distributed", "ddp"])


# ------------------------------------------------------------------ NCCL
@pytest.mark.gpu
@pytest.mark.skipif(not B.gpu_available(), reason="no CUDA GPU (or no CuPy): NCCL test skipped")
def test_nccl_collectives_on_a_world_of_one():
    """NCCLComm on one GPU (MPI's singleton world): each collective returns what LocalComm does."""
    from optional import optional_import

    optional_import("mpi4py", "NCCLComm gets its unique id over MPI: pip install 'minillm[distributed]'")
    import cupy

    comm, a = NCCLComm(), cupy.arange(6, dtype=cupy.float32)
    assert (comm.rank, comm.world_size) == (0, 1)
    for got in (comm.all_reduce(a), comm.reduce_scatter(a), comm.all_gather(a), comm.broadcast(a.copy())):
        assert cupy.asnumpy(got).tolist() == list(range(6))
    comm.barrier()


# ------------------------------------------------------------------ a rank that fails
@pytest.mark.parametrize("how", ["raises", "is killed"])
def test_a_rank_that_fails_stops_every_rank_and_the_last_checkpoint_stays_good(mpiexec, tmp_path, how):
    """Rank 1 fails in step 5 of 8 (checkpoints every 2 steps): mpiexec stops both ranks at once instead
    of rank 0 waiting for ever, the message names the rank, and the last checkpoint (step 4's, or step 2's
    when rank 0 was stopped while writing step 4's) loads and resumes."""
    mode = "raise" if how == "raises" else "kill"
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, __file__, mode, str(tmp_path)], env=ENV,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0
    if mode == "raise":
        assert "minillm (rank 1 of 2): error: OSError: simulated disk failure" in proc.stderr, proc.stderr
        assert "minillm (rank 1 of 2): stopping every rank" in proc.stderr
    else:
        assert "BAD TERMINATION" in proc.stdout + proc.stderr  # mpiexec's own report of the killed rank
    ckpt = minillm.load(tmp_path / "checkpoint.npz")  # rank 0 may be stopped while it writes step 4's
    assert ckpt["step"] in (2, 4) and all(np.isfinite(v).all() for v in ckpt["model"].values())
    from minillm.cli import main as cli

    assert cli([*PRETRAIN, "--steps", "8", "--checkpoint-every", "2", "--out", str(tmp_path),
                "--resume", str(tmp_path / "checkpoint.npz")]) == 0  # at a world of 1: consolidated
    assert minillm.load(tmp_path / "checkpoint.npz")["step"] == 8


def test_launch_is_checked_before_any_work(monkeypatch):
    from minillm.cli import main as cli

    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="was started alone: run mpiexec -n 2 minillm sft"):
        cli(["sft", "--distributed", "zero1", "--steps", "1"])
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(ValueError, match="mpiexec started 2 ranks but --distributed is not set"):
        cli([*PRETRAIN])
    with pytest.raises(ValueError, match="mpiexec started 2 ranks but --distributed is not set"):
        cli([*PRETRAIN, "--objective", "mlm"])
    with pytest.raises(ValueError, match="minillm memory runs as one process"):
        cli(["memory"])
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ValueError, match=r"needs mpi4py and an MPI: pip install 'minillm\[distributed\]'"):
        cli(["sft", "--distributed", "ddp", "--steps", "1"])


# ------------------------------------------------------------------ minillm sft --distributed
SFT = ["sft", "--task", "code", "--steps", "3", "--n-train", "40", "--batch-size", "4", "--no-eval",
       "--no-progress"]


@pytest.mark.parametrize("strategy, peft", [("ddp", []), ("zero3", ["--peft", "lora"])])
def test_sft_distributed_on_two_ranks_matches_one_process(mpiexec, tmp_path, strategy, peft):
    from minillm.cli import main as cli

    assert cli([*SFT, *peft, "--out", str(tmp_path / "one" / "model.npz")]) == 0
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "minillm", *SFT, *peft, "--out",
                           str(tmp_path / "two" / "model.npz"), "--distributed", strategy], env=ENV,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("final train loss") == 1  # rank 0 reports, once
    one, two = (minillm.load(tmp_path / d / "checkpoint.npz") for d in ("one", "two"))
    assert np.abs(np.array(one["history"]["loss"]) - two["history"]["loss"]).max() < TOL["float32"]["loss"]
    assert max(float(np.abs(one["model"][k] - v).max()) for k, v in two["model"].items()) < 1e-4
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in
                                                                          (tmp_path / "one").iterdir())


# ------------------------------------------------------------------ the scripts mpiexec runs
def main(out: Path) -> None:
    """Under mpiexec: every (strategy, model, dtype) on this rank, saved to ``out/rank{r}.npz``."""
    comm, results = init_comm(), {}
    assert comm.world_size == 2, f"run under mpiexec -n 2, got world size {comm.world_size}"
    for strategy in STAGES:
        for kind in KINDS:
            for dtype in DTYPES:
                ckpt = str(out / f"ckpt_{strategy}") if (kind, dtype) == ("gpt", "float64") else None
                r = run(kind, dtype, make_strategy(strategy, comm), out_dir=ckpt)
                results.update({f"{strategy}/{kind}/{dtype}/{k}": v for k, v in r.items()})
    np.savez(out / f"rank{comm.rank}.npz", **results)


def fail(mode: str, out: Path) -> int:
    """Under mpiexec: ``minillm pretrain --distributed ddp`` in which rank 1 fails in step 5 (``mode``
    "raise": an OSError; "kill": SIGKILL, as the out-of-memory killer would)."""
    import signal

    import minillm.train
    from minillm.cli import console_main
    from minillm.distributed.comm import launched_rank

    step = minillm.train.train_step

    def failing_step(*args, **kwargs):
        if launched_rank() == 1 and args[6] == 5:  # the step number
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError("simulated disk failure")
        return step(*args, **kwargs)

    minillm.train.train_step = failing_step
    return console_main([*PRETRAIN, "--steps", "8", "--checkpoint-every", "2", "--out", str(out),
                         "--distributed", "ddp"])


if __name__ == "__main__":
    if sys.argv[1] == "train":
        main(Path(sys.argv[2]))
    else:
        sys.exit(fail(sys.argv[1], Path(sys.argv[2])))
