"""The ``minillm`` command line: one subcommand per phase, plus ``pipeline`` (everything) and ``bench``."""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "autograd": "minillm.bench.autograd",
}


def _cmd_bench(args) -> int:
    names = ["gpu"] if args.gpu else (args.names or list(BENCHMARKS))
    for name in names:
        module = "minillm.bench.gpu" if name == "gpu" else BENCHMARKS.get(name)
        if module is None:
            print(f"minillm bench: unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)} or --gpu",
                  file=sys.stderr)
            return 2
        importlib.import_module(module).main(args)
    return 0


def _cmd_pipeline(args) -> int:
    from minillm.pipeline import run_pipeline

    return run_pipeline(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minillm", description=__doc__)
    p.add_argument("--backend", choices=["numpy", "cupy"],
                   help="array backend (default: numpy, or $MINILLM_BACKEND)")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="benchmarks (numbers, not adjectives)")
    b.add_argument("names", nargs="*", help=f"which: {', '.join(BENCHMARKS)} (default: all CPU ones)")
    b.add_argument("--gpu", action="store_true", help="the GPU kernel benchmark (needs CuPy and a GPU)")
    b.add_argument("--quick", action="store_true", help="fewer repeats (for tests)")
    b.set_defaults(func=_cmd_bench)

    pl = sub.add_parser("pipeline", help="the main job: every phase on the built-in data, with a report card")
    pl.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for tests)")
    pl.add_argument("--out", default="runs/pipeline", help="where checkpoints and reports go")
    pl.add_argument("--seed", type=int, default=0)
    pl.set_defaults(func=_cmd_pipeline)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.backend:
        from minillm import backend

        backend.set_backend(args.backend)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
