"""``python -m panther bench [area|all]``: runs ``benchmarks/bench_<area>.py``, prints its tables and
writes its JSON to ``benchmarks/results/<machine>/`` (``cpu``, ``h200``, ...: see :func:`machine_kind`)
or ``--out``, where ``python -m benchmarks.report`` turns it into BENCHMARKS.md. ``--quick`` runs
a small subset and keeps its JSON only where ``--out`` says, so a smoke run never replaces results.

The benchmarks live in the source checkout (a top-level ``benchmarks/`` folder beside
``panther/``), not in the installed package; without a checkout the command says so.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import time
from pathlib import Path

AREAS = ("linear", "mlp", "conv", "attention", "sketch", "linalg", "compile", "export", "tuner")


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


_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "quadro", "amd", "instinct", "radeon"}


def kind_from_name(device_name: str) -> str:
    """A short folder name for a GPU: ``NVIDIA H200`` -> ``h200``, ``NVIDIA H100 80GB HBM3`` -> ``h100``,
    ``NVIDIA A100-SXM4-80GB`` -> ``a100``, ``NVIDIA GeForce RTX 4090`` -> ``rtx4090``."""
    words = [w for w in re.split(r"[\s_-]+", device_name.lower()) if w and w not in _VENDOR_WORDS]
    if not words:
        return "gpu"
    kind = words[0] + (words[1] if words[0].isalpha() and len(words) > 1 else "")
    return re.sub(r"[^a-z0-9]", "", kind) or "gpu"


def machine_kind(device: str) -> str:
    """The results folder name of the machine that runs on ``device``: ``cpu``, or the GPU's short name."""
    import torch

    dev = torch.device(device)
    return kind_from_name(torch.cuda.get_device_name(dev)) if dev.type == "cuda" else "cpu"


def resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device is available here")
    return device


def default_out(root: Path, device: str, quick: bool) -> str | None:
    """``benchmarks/results/<machine>`` for a full run; None (print only) for a ``--quick`` one."""
    return None if quick else str(root / "benchmarks" / "results" / machine_kind(device))


def area_argv(area: str, device: str | None, quick: bool, out: str | None) -> list[str]:
    """Command-line arguments for one area's ``main`` (every area takes the harness's flags)."""
    argv = ["--device", device] if device else []
    return argv + (["--quick"] if quick else []) + (["--out", out] if out else [])


def _call_main(main, argv: list[str], name: str):
    """``main(argv)``, or ``main()`` for one that parses ``sys.argv`` itself; ``sys.argv`` is the
    script's own either way, as some scripts record it as the command that made their JSON."""
    saved = sys.argv
    sys.argv = [name, *argv]
    try:
        return main(argv) if inspect.signature(main).parameters else main()
    finally:
        sys.argv = saved


def run_area(area: str, device: str | None, quick: bool, out: str | None) -> None:
    if area not in AREAS:
        raise BenchError(f"unknown benchmark area {area!r}; choose one of {list(AREAS)} or 'all'")
    root = checkout_root()
    script = root / "benchmarks" / f"bench_{area}.py"
    if not script.is_file():
        raise BenchError(f"no benchmark script for area {area!r} in this checkout (expected {script})")
    argv = area_argv(area, resolve_device(device) if device else None, quick, out)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module(f"benchmarks.bench_{area}")
    print(f"== panther bench {area}: python -m benchmarks.bench_{area} {' '.join(argv)}", flush=True)
    _call_main(module.main, argv, f"benchmarks/bench_{area}.py")


def _where_json_went(out: str | None) -> None:
    if out is None:
        print("panther bench: --quick without --out: JSON not kept (pass --out DIR to keep it)")
    else:
        print(f"panther bench: JSON in {out}; `python -m benchmarks.report` regenerates BENCHMARKS.md from "
              f"benchmarks/results/")


def run_bench(area: str, *, device: str | None = None, quick: bool = False, out: str | None = None) -> int:
    """Runs one area, or every area present with ``area="all"``, writing JSON to ``out`` (default:
    :func:`default_out`); returns the exit status."""
    try:
        root = checkout_root()
        if area != "all" and area not in AREAS:
            raise BenchError(f"unknown benchmark area {area!r}; choose one of {list(AREAS)} or 'all'")
        device = "cpu" if area == "tuner" and device is None else resolve_device(device)  # the tuner is CPU only
        out = out if out is not None else default_out(root, device, quick)
    except BenchError as err:
        print(f"panther bench: {err}", file=sys.stderr)
        return 2
    if area != "all":
        try:
            run_area(area, device, quick, out)
        except BenchError as err:
            print(f"panther bench: {err}", file=sys.stderr)
            return 2
        _where_json_went(out)
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
    _where_json_went(out)
    if failed:
        print(f"panther bench: failed areas: {failed}", file=sys.stderr)
        return 1
    return 0
