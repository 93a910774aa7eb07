"""``minillm bench``: measured figures, side by side in one run (numbers, not adjectives).

Each benchmark module has ``main(args)`` and prints what it measured; this package is the command.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "autograd": "minillm.bench.autograd",
    "train": "minillm.bench.train",
    "tokenizer": "minillm.bench.tokenizer",
    "peft": "minillm.bench.peft",
    "decode": "minillm.bench.decode",
    "distributed": "minillm.bench.distributed",
}


def benchmark_name(text: str) -> str:
    """An argparse type: one of BENCHMARKS."""
    if text not in BENCHMARKS:
        raise argparse.ArgumentTypeError(f"unknown benchmark {text!r}; choose from {', '.join(BENCHMARKS)} "
                                         "(or --gpu)")
    return text


def add_arguments(p) -> None:
    """The ``minillm bench`` options."""
    p.add_argument("names", nargs="*", type=benchmark_name, metavar="NAME",
                   help=f"which: {', '.join(BENCHMARKS)} (default: all CPU ones)")
    p.add_argument("--gpu", action="store_true", help="the GPU kernel benchmark (needs CuPy and a GPU)")
    p.add_argument("--quick", action="store_true", help="fewer repeats (for tests)")
    from minillm.bench import decode, distributed

    decode.add_arguments(p)
    distributed.add_arguments(p)


def main(args) -> int:
    """Run the named benchmarks (all CPU ones by default), or the GPU kernel benchmark with ``--gpu``."""
    modules = ["minillm.bench.gpu"] if args.gpu else [BENCHMARKS[n] for n in args.names or BENCHMARKS]
    for module in modules:
        importlib.import_module(module).main(args)
    return 0
