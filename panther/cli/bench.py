"""``python -m panther bench [area]``: runs ``benchmarks/bench_<area>.py`` and prints its table.

The benchmarks live in the source checkout (a top-level ``benchmarks/`` folder beside
``panther/``), not in the installed package; without a checkout the command says so.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import time
from pathlib import Path

AREAS = ("linear", "conv", "attention", "sketch", "linalg", "compile", "export", "tuner")


class BenchError(RuntimeError):
    """A benchmark area that cannot run here (no checkout, no script, unsupported option)."""


def checkout_root(root: Path | None = None) -> Path:
    """The source checkout holding ``benchmarks/`` (default: the folder above this ``panther`` package)."""
    root = Path(__file__).resolve().parents[2] if root is None else Path(root)
    if not (root / "benchmarks" / "harness.py").is_file():
        raise BenchError(f"python -m panther bench needs a Panther source checkout: the benchmarks/ folder is not "
                         f"part of the installed package and there is none at {root / 'benchmarks'}. Clone the "
                         f"repository and run the command from it (pip install -e . there).")
    return root


def area_argv(area: str, device: str | None, quick: bool, out: str | None) -> list[str]:
    """Command-line arguments for one area's ``main`` (every area takes the harness's flags)."""
    argv = ["--device", device] if device else []
    return argv + (["--quick"] if quick else []) + (["--out", out] if out else [])


def _call_main(main, argv: list[str], name: str):
    if inspect.signature(main).parameters:
        return main(argv)
    saved = sys.argv
    sys.argv = [name, *argv]  # a main() that reads sys.argv itself
    try:
        return main()
    finally:
        sys.argv = saved


def run_area(area: str, device: str | None, quick: bool, out: str | None) -> None:
    if area not in AREAS:
        raise BenchError(f"unknown benchmark area {area!r}; choose one of {list(AREAS)} or 'all'")
    root = checkout_root()
    script = root / "benchmarks" / f"bench_{area}.py"
    if not script.is_file():
        raise BenchError(f"no benchmark script for area {area!r} in this checkout (expected {script})")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BenchError("--device cuda: no CUDA device is available here")
    argv = area_argv(area, device, quick, out)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module(f"benchmarks.bench_{area}")
    print(f"== panther bench {area}: python -m benchmarks.bench_{area} {' '.join(argv)}", flush=True)
    _call_main(module.main, argv, f"benchmarks/bench_{area}.py")


def run_bench(area: str, *, device: str | None = None, quick: bool = False, out: str | None = None) -> int:
    """Runs one area, or every area present with ``area="all"``; returns the exit status."""
    try:
        checkout_root()
    except BenchError as err:
        print(f"panther bench: {err}", file=sys.stderr)
        return 2
    if area != "all":
        try:
            run_area(area, device, quick, out)
        except BenchError as err:
            print(f"panther bench: {err}", file=sys.stderr)
            return 2
        return 0
    failed = []
    for name in AREAS:
        start = time.perf_counter()
        try:
            run_area(name, device, quick, out)
        except BenchError as err:  # an area that does not apply here: say so, run the rest
            print(f"panther bench {name}: skipped: {err}", file=sys.stderr)
        except Exception as err:  # noqa: BLE001 — one failing area must not hide the others' tables
            failed.append(name)
            print(f"panther bench {name}: FAILED: {type(err).__name__}: {err}", file=sys.stderr)
        else:
            print(f"== {name}: {time.perf_counter() - start:.1f} s\n", flush=True)
    if failed:
        print(f"panther bench: failed areas: {failed}", file=sys.stderr)
        return 1
    return 0
