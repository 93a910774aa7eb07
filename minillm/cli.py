"""The ``minillm`` command line: a table of subcommands, each one module with ``add_arguments(parser)``
and ``main(args)``. The options of a command live in its module; this file holds none of them.

``main`` lets errors propagate (for scripts and tests); the ``minillm`` command itself is
``console_main``, which reports bad input in one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help), in the order a learner meets them
COMMANDS = {
    "pipeline": ("minillm.pipeline", "the main job: every phase on the built-in data, with a report card"),
    "pretrain": ("minillm.phases.pretrain", "pre-train a model (clm: GPT; mlm/nsp: BERT; denoise: BART; "
                                            "span: T5)"),
    "generate": ("minillm.phases.sample", "sample text from a GPT or Llama checkpoint, a Hugging Face "
                                          "folder, or a base model with a PEFT adapter"),
    "finetune-classify": ("minillm.phases.transfer",
                          "transfer learning: pre-trained BERT vs random init, 50/200/1000 labels"),
    "sft": ("minillm.phases.sft", "supervised fine-tuning (chat template), with before/after evaluation"),
    "chat": ("minillm.chat.terminal", "chat with a model in the terminal, tools enabled (reads stdin)"),
    "dpo": ("minillm.phases.dpo", "align an SFT model with DPO on judged preference pairs (before/after)"),
    "memory": ("minillm.peft.memory", "fine-tuning memory: weights, gradients, optimizer, activations"),
    "bench": ("minillm.bench", "benchmarks (numbers, not adjectives)"),
    "workshop": ("minillm.exercises.workshop", "an instructor's kit: student and instructor notebooks, a "
                                               "guide, an offline install bundle"),
}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose error is one line on stderr (what is wrong, and where to read more)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser: global options, then one subparser per entry of COMMANDS filled by its module."""
    p = Parser(prog="minillm", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["numpy", "cupy"],
                   help="array backend (default: numpy, or $MINILLM_BACKEND)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_line) in COMMANDS.items():
        command = importlib.import_module(module)
        sp = sub.add_parser(name, help=help_line, description=help_line)
        command.add_arguments(sp)
        sp.set_defaults(run=command.main)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one ``minillm`` subcommand; errors propagate (for scripts and tests)."""
    args = build_parser().parse_args(argv)
    from minillm.distributed.comm import launched_world_size

    if launched_world_size() > 1 and not hasattr(args, "distributed"):
        raise ValueError(f"minillm {args.command} runs as one process, but mpiexec started "
                         f"{launched_world_size()} ranks: only pretrain and sft train across processes "
                         "(--distributed)")
    if args.backend:
        from minillm import backend

        backend.set_backend(args.backend)
    return int(args.run(args) or 0)


def input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that report bad input (a file, an option, a checkpoint, a NaN loss), not a bug."""
    from minillm.backend import BackendError
    from minillm.checkpoint import CheckpointError
    from minillm.nn import StateDictError
    from minillm.train import TrainingError

    return ValueError, OSError, CheckpointError, StateDictError, BackendError, TrainingError


def console_main(argv: list[str] | None = None) -> int:
    """The ``minillm`` command: ``main``, with bad input reported in one line on stderr and exit status 2
    instead of a traceback (set ``MINILLM_TRACEBACK=1`` to see where it came from). Under mpiexec a rank
    that fails names itself and stops every rank (``minillm.distributed.launch``)."""
    from minillm.distributed.launch import rank_label, stop_all_ranks

    where = f" ({rank_label()})" if rank_label() else ""
    try:
        code = _report_bad_input(argv, where)
    except SystemExit as e:  # argparse's one-line errors
        if e.code:
            stop_all_ranks(2)
        raise
    except BaseException:  # a bug: its traceback, then (under mpiexec) stop the others waiting on us
        if where:
            import traceback

            traceback.print_exc()
            stop_all_ranks(1)
        raise
    if code:
        stop_all_ranks(code)
    return code


def _report_bad_input(argv: list[str] | None, where: str) -> int:
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(f"minillm{where}: interrupted", file=sys.stderr)
        return 130
    except input_errors() as e:
        if os.environ.get("MINILLM_TRACEBACK"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e  # StateDictError: no repr quotes
        print(f"minillm{where}: error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(console_main())
