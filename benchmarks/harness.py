"""Shared benchmark harness: timing, measured hardware ceilings, tables and JSON.

Every timing is a median after warm-up: ``triton.testing.do_bench`` on CUDA (L2 flushed
between repetitions; :func:`graph_ms` replays a CUDA graph instead, for ops so short that host
launch cost would dominate), ``torch.utils.benchmark.Timer.blocked_autorange`` on CPU. Floors
use the bandwidth and GEMM rate measured in the same run on the same device, so a
"× floor" column is a ratio against this machine, not a datasheet.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time

import torch
from tabulate import tabulate


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="folder for the JSON results (printed only if absent)")
    p.add_argument("--quick", action="store_true", help="a small subset, for smoke tests")
    return p


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device: str, *, min_run_time: float = 0.5) -> float:
    """Median milliseconds of one call of ``fn``."""
    if torch.device(device).type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    from torch.utils import benchmark

    fn()  # warm-up (allocations, oneDNN primitive caches)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def graph_ms(fn, device: str) -> float:
    """Median milliseconds of one call of ``fn`` with host launch cost excluded: on CUDA many calls
    are captured in one CUDA graph and replayed (``triton.testing.do_bench_cudagraph``; the L2
    cache is not flushed between calls); on CPU :func:`time_ms`. A torch.compile'd ``fn`` can be
    captured once warm-up calls have compiled (and autotuned) it."""
    if torch.device(device).type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median"))
    return time_ms(fn, device)


def paired_ms(fn_a, fn_b, device: str, *, repeats: int = 20, warmup: int = 3) -> tuple[float, float]:
    """Median milliseconds of ``fn_a`` and of ``fn_b``. On CUDA each goes through :func:`time_ms`;
    on CPU the two are timed alternately, call by call, so that load from other processes on a
    shared machine hits both alike."""
    if torch.device(device).type == "cuda":
        return time_ms(fn_a, device), time_ms(fn_b, device)
    for _ in range(warmup):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times_a), 1e3 * statistics.median(times_b)


@functools.lru_cache(maxsize=None)
def bandwidth_bytes_per_s(device: str) -> float:
    """Copy bandwidth (bytes read + written per second) of a 1 GiB (GPU) / 256 MiB (CPU) copy."""
    n = (1 << 30 if torch.device(device).type == "cuda" else 1 << 28) // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * 4 / (ms * 1e-3)


@functools.lru_cache(maxsize=None)
def gemm_flops_per_s(device: str, dtype: torch.dtype) -> float:
    """Dense GEMM rate at a large square size (8192 on GPU, 2048 on CPU)."""
    n = 8192 if torch.device(device).type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = time_ms(lambda: a @ b, device)
    return 2 * n**3 / (ms * 1e-3)


def floor_ms(bytes_moved: float, flops: float, device: str, dtype: torch.dtype) -> float:
    """Physical floor: the larger of memory time and compute time at measured rates."""
    return max(bytes_moved / bandwidth_bytes_per_s(device), flops / gemm_flops_per_s(device, dtype)) * 1e3


def device_info(device: str) -> dict:
    info = {"torch": torch.__version__, "device": device, "python": platform.python_version()}
    if torch.device(device).type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        info["device_name"] = f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"
        info["threads"] = torch.get_num_threads()
    info["bandwidth_GBps"] = round(bandwidth_bytes_per_s(device) / 1e9, 1)
    return info


def portable_command(command: str) -> str:
    """The command with the folder given to --out replaced by OUT (results carry no machine paths)."""
    parts = command.split()
    for i, part in enumerate(parts):
        if part == "--out" and i + 1 < len(parts):
            parts[i + 1] = "OUT"
        elif part.startswith("--out="):
            parts[i] = "--out=OUT"
    return " ".join(parts)


def report(name: str, rows: list[dict], device: str, out_dir: str | None, command: str) -> dict:
    """Prints a table and writes ``<out_dir>/<name>_<device>.json``; returns the record."""
    command = portable_command(command)
    info = device_info(device)
    print(f"\n## {name} on {info['device_name']} (torch {info['torch']})\n")
    print(tabulate(rows, headers="keys", floatfmt=".4g", tablefmt="github"))
    record = {"benchmark": name, "command": command, "when": time.strftime("%Y-%m-%d %H:%M"), **info, "rows": rows}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"{name}_{torch.device(device).type}.json")
        with open(path, "w") as f:
            json.dump(record, f, indent=1)
        print(f"\nwrote {path}")
    return record


def run_main(name: str, module: str, description: str, run, argv: list[str] | None = None) -> dict:
    """A benchmark's ``main`` when it takes only the harness's flags: ``run(device, quick)``'s rows
    through :func:`report` as record ``name``, with the command ``python -m benchmarks.<module> ARGS``."""
    args = parser(description).parse_args(argv)
    command = f"python -m benchmarks.{module} " + " ".join(sys.argv[1:] if argv is None else argv)
    return report(name, run(args.device, args.quick), args.device, args.out, command)
