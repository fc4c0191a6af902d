"""Panther's command line: ``python -m panther demo`` and ``python -m panther bench [area]``.

    python -m panther demo [--device cpu|cuda] [--budget 0.05] [--out DIR] [--model module:callable|HF-dir] [--quick]
    python -m panther bench [linear|mlp|conv|attention|sketch|linalg|compile|export|tuner|all] [--device] [--out DIR] [--quick]

``bench`` writes JSON to ``benchmarks/results/<machine>/`` (``cpu``, ``h200``, ...) unless ``--out``
says otherwise (``--quick`` keeps JSON only with ``--out``); ``python -m benchmarks.report``
regenerates BENCHMARKS.md from it.

The same entry point is installed as the ``panther`` console script.
"""

from __future__ import annotations

import argparse
import sys

from .bench import AREAS


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget must be a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"--budget must be a number in (0, 1) (a relative output error), got {text}")
    return value


def _positive(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="panther", description="Panther: sketched layers and RandNLA for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench}")

    demo = sub.add_parser("demo", help="train, sketch, tune, compile and export a model end to end",
                          description="Dense vs sketched training vs backend='panther' under an error budget, "
                                      "then export; prints a table and writes a plot to --out.")
    demo.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    demo.add_argument("--budget", type=_budget, default=0.05,
                      help="tuner error budget: relative error of the model outputs vs dense (default 0.05)")
    demo.add_argument("--out", default="panther_demo_out", help="output folder (default ./panther_demo_out)")
    demo.add_argument("--model", default=None,
                      help="your model instead of the built-in digits MLP: 'module:callable' returning "
                           "(model, example_inputs), or a Hugging Face model directory")
    demo.add_argument("--quick", action="store_true", help="a smoke run: hidden width 256, few epochs and trials")
    demo.add_argument("--epochs", type=_positive("--epochs"), default=None, help="training epochs (default 10; 2 with --quick)")
    demo.add_argument("--trials", type=_positive("--trials"), default=None, help="tuner trials (default 20; 6 with --quick)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")

    bench = sub.add_parser("bench", help="run a benchmark area, print its tables, write its JSON",
                           description="Runs benchmarks/bench_<area>.py from a Panther source checkout, prints its "
                                       "tables and writes its JSON for `python -m benchmarks.report`.")
    bench.add_argument("area", nargs="?", default="all", choices=[*AREAS, "all"], help="benchmark area (default all)")
    bench.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    bench.add_argument("--quick", action="store_true", help="a small subset, for smoke tests")
    bench.add_argument("--out", default=None,
                       help="folder for the JSON results (default benchmarks/results/<machine>, e.g. cpu or h200; "
                            "with --quick: none, tables are only printed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args)
    from .bench import run_bench

    return run_bench(args.area, device=args.device, quick=args.quick, out=args.out)
