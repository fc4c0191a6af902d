"""Deployable artifacts: AOTInductor package of the sketched model vs of the dense model.

    python -m benchmarks.bench_export --device cpu                  # 4 layers, d=512, float32, 1024 tokens
    python -m benchmarks.bench_export --device cpu --quick          # 1 layer, d=128 (a smoke test, ~1 min)
    python -m benchmarks.bench_export --device cuda --out bench_out # 24 layers, d=1024, bf16, 8192 tokens

The model and plan are bench_compile's (pre-LN transformer, num_terms=1, low_rank=64 on all
six linears of every block, init "sketch"). Each model is exported (``panther.export`` for the
sketched one, ``torch.export.export`` for the dense one), packaged with ``panther.package``
(AOTInductor; compile time reported), and then loaded and timed in a fresh process that only
calls ``torch.ops.load_library(<panther .so>)`` and ``aoti_load_package`` — the deployment
setting, and a crash there (torch 2.11 on the GPU machine segfaulted loading AOTI packages)
becomes a row saying so instead of ending the run. Rows give the package file size, the
number of weight elements, latency, speedup over the dense package, the floor (weights and
activations over the measured bandwidth, or FLOPs over the measured GEMM rate) and the
output's error relative to the dense package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time

import torch

import panther as pr
from panther._native import library_path

from .bench_compile import CONFIGS, Transformer, model_costs
from .harness import floor_ms, parser, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh process: no panther Python code, only the op library and the package.
CHILD = textwrap.dedent("""
    import sys
    import torch
    from benchmarks.harness import time_ms
    lib, pkg, io_file, device = sys.argv[1:5]
    torch.ops.load_library(lib)
    runner = torch._inductor.aoti_load_package(pkg)
    x = torch.load(io_file)["x"].to(device)
    with torch.no_grad():
        y = runner(x)
        ms = time_ms(lambda: runner(x), device)
    assert not any(m == "panther" or m.startswith("panther.") for m in sys.modules)
    torch.save({"ms": ms, "y": y.float().cpu()}, io_file + ".out")
""")


def _run_package(pkg: str, io_file: str, device: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, library_path(), pkg, io_file, device], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        why = f"signal {-done.returncode}" if done.returncode < 0 else done.stderr.strip().splitlines()[-1][:200]
        return {"error": f"load/run failed: {why}"}
    return torch.load(io_file + ".out")


def run(device: str, quick: bool) -> list[dict]:
    layers, d, heads, batch, seq, dtype, k = CONFIGS["quick" if quick else torch.device(device).type]
    torch.manual_seed(0)
    model = Transformer(layers, d, heads).to(device=device, dtype=dtype).eval()
    x = torch.randn(batch, seq, d, device=device, dtype=dtype)
    tmp = tempfile.mkdtemp(prefix="bench_export_")
    io_file = os.path.join(tmp, "io.pt")
    torch.save({"x": x}, io_file)
    programs = {"dense": torch.export.export(model, (x,)),
                "panther": pr.export(model, (x,), options={"num_terms": 1, "low_rank": k, "init": "sketch"})}
    costs = model_costs(layers, d, heads, batch, seq, 2 * k, torch.finfo(dtype).bits // 8)
    results = {}
    for name, ep in programs.items():
        t0 = time.perf_counter()
        pkg = pr.package(ep, os.path.join(tmp, f"{name}.pt2"))
        results[name] = {"package_s": time.perf_counter() - t0, "MB": os.path.getsize(pkg) / 2**20,
                         "weights": sum(t.numel() for t in ep.state_dict.values()),
                         # one B (or, fused with linears sharing its input, one Bᵀ) per sketched linear
                         "sketched_linears": sum(key.endswith(("_B", "_Bt")) for key in ep.state_dict),
                         **_run_package(pkg, io_file, device)}
    rows, base = [], results["dense"]
    for name, r in results.items():
        flops, nbytes = costs[name]
        floor = floor_ms(nbytes, flops, device, dtype)
        row = {"model": name, "layers": layers, "d": d, "tokens": batch * seq, "dtype": str(dtype)[6:],
               "sketched_linears": r["sketched_linears"], "weights": r["weights"], "package_MB": r["MB"],
               "size_vs_dense": r["MB"] / base["MB"], "package_s": r["package_s"]}
        if "error" in r:
            row["error"] = r["error"]
        else:
            row.update({"ms": r["ms"], "floor_ms": floor, "x_floor": r["ms"] / floor})
            if "ms" in base:
                row["speedup"] = base["ms"] / r["ms"]
                row["rel_err"] = ((r["y"] - base["y"]).norm() / base["y"].norm()).item()
        rows.append(row)
    return rows


def main(argv=None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    rows = run(args.device, args.quick)
    report("export", rows, args.device, args.out, "python -m benchmarks.bench_export " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
