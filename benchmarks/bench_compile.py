"""End-to-end inference: backend="panther" (fixed plan) vs backend="inductor" on the dense model.

    python -m benchmarks.bench_compile --device cuda --out bench_out   # 24 layers, d=1024, 16 heads, bf16, 8192 tokens
    python -m benchmarks.bench_compile --device cpu                    # 4 layers, d=512, float32, 1024 tokens
    python -m benchmarks.bench_compile --device cpu --quick            # 1 layer, d=128: a smoke test (< 1 min)

A pre-LN transformer with random weights (q, k, v, o, fc1, fc2 nn.Linear per block, SDPA,
GELU MLP of width 4d). Panther's plan: num_terms=1, low_rank=64 (rank 128; 16 in
--quick) on all six linears of every block, init "sketch" (random weights have no spectrum for SVD to exploit;
``--init svd`` measures the SVD's cost). Compile times are wall times of the first call, cold: each
backend runs in its own fresh process (so both include Inductor's start-up) with an empty
kernel cache and the FX graph cache off; panther's includes planning and factor computation.
The floor is the larger of (weights + activations read/written once) over the measured
bandwidth and the model's FLOPs over the measured GEMM rate. On CUDA ``graph_ms`` is the forward
replayed from a CUDA graph: the GPU's work alone, without the host's kernel launches, which
bound ``ms`` where the host issues them slower than the GPU runs them. ``ro_ms`` is each backend
compiled again, in the same process, with ``mode="reduce-overhead"`` (Inductor's CUDA graphs,
the usual way to serve a compiled model): how a deployment that replays kernels runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

import panther as pr
from panther.backend import panther_backend

from .harness import floor_ms, graph_ms, parser, report, sync, time_ms

ORDER = ("inductor", "panther")
CONFIGS = {  # layers, d_model, heads, batch, seq, dtype, low_rank
    "cuda": (24, 1024, 16, 8, 1024, torch.bfloat16, 64),
    "cpu": (4, 512, 8, 2, 512, torch.float32, 64),
    "quick": (1, 128, 4, 2, 64, torch.float32, 16),  # k=64 would not save work at d=128
}


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, N, d = x.shape
        h = self.ln1(x)
        q, k, v = (p(h).view(B, N, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, N, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Transformer(nn.Module):
    def __init__(self, layers, d, heads):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.ln(x)


def model_costs(layers, d, heads, batch, seq, rank, elem):
    """(FLOPs, bytes) of one forward: dense, and with every linear at ``rank``."""
    tokens = batch * seq
    attn = 4 * batch * seq * seq * d  # q kᵀ and (·) v over all heads
    shapes = [(d, d)] * 4 + [(d, 4 * d), (4 * d, d)]
    dense_w = sum(i * o for i, o in shapes)
    sk_w = sum(rank * (i + o) for i, o in shapes)
    acts = tokens * d * 16 * elem  # each block reads/writes roughly 16 d-wide activations per token
    out = {}
    for name, w in (("dense", dense_w), ("panther", sk_w)):
        out[name] = (layers * (2 * tokens * w + attn), layers * (w * elem + acts))
    return out


def first_call_s(fn, x, device) -> tuple[float, torch.Tensor]:
    sync(device)
    t0 = time.perf_counter()
    y = fn(x)
    sync(device)
    return time.perf_counter() - t0, y


def measure(device: str, quick: bool, init: str, backend: str, out_file: str) -> None:
    """One backend, in this process: compile time, ms per forward; output saved for the error column."""
    layers, d, heads, batch, seq, dtype, k = CONFIGS["quick" if quick else torch.device(device).type]
    torch.manual_seed(0)
    model = Transformer(layers, d, heads).to(device=device, dtype=dtype).eval()
    x = torch.randn(batch, seq, d, device=device, dtype=dtype)
    torch._inductor.config.fx_graph_cache = False
    plan_path = out_file + ".plan.json"
    options = {"num_terms": 1, "low_rank": k, "init": init, "save_plan": plan_path}
    with torch.no_grad():
        if backend == "inductor":
            fn = torch.compile(model, backend="inductor", fullgraph=True)
        else:
            fn = torch.compile(model, backend=panther_backend, options=options, fullgraph=True)
        compile_s, y = first_call_s(fn, x, device)
        ms = time_ms(lambda: fn(x), device)
        cuda = torch.device(device).type == "cuda"
        # GPU work alone: the forward replayed from a CUDA graph, without the host's launches
        gpu_ms = graph_ms(lambda: fn(x), device) if cuda else None
        ro_ms = _reduce_overhead_ms(model, x, backend, options, device) if cuda else None
    sketched = len(pr.Plan.load(plan_path).sketched()) if backend == "panther" else 0
    torch.save({"compile_s": compile_s, "ms": ms, "graph_ms": gpu_ms, "ro_ms": ro_ms, "y": y.float().cpu(),
                "sketched": sketched}, out_file)


def _reduce_overhead_ms(model, x, backend: str, options: dict, device: str) -> float:
    """ms per forward of the model compiled by ``backend`` with mode="reduce-overhead"."""
    if backend == "inductor":
        fn = torch.compile(model, backend="inductor", mode="reduce-overhead", fullgraph=True)
    else:
        ro_options = {k: v for k, v in options.items() if k != "save_plan"}
        fn = torch.compile(model, backend=panther_backend, options={**ro_options, "mode": "reduce-overhead"},
                           fullgraph=True)
    for _ in range(3):  # compile, then CUDA graph warm-up and recording
        fn(x)
    return time_ms(lambda: fn(x), device)


def run(device: str, quick: bool, init: str) -> list[dict]:
    """Each backend in a fresh process with an empty kernel cache: Inductor caches compiled
    kernels in-process, so whichever backend compiled second would reuse the first's."""
    layers, d, heads, batch, seq, dtype, k = CONFIGS["quick" if quick else torch.device(device).type]
    tmp = tempfile.mkdtemp(prefix="bench_compile_")
    results = {}
    for name in ORDER:
        out_file = os.path.join(tmp, f"{name}.pt")
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.join(tmp, f"cache_{name}")}
        cmd = [sys.executable, "-m", "benchmarks.bench_compile", "--device", device, "--init", init,
               "--backend", name, "--result", out_file] + (["--quick"] if quick else [])
        subprocess.run(cmd, env=env, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        results[name] = torch.load(out_file)
    costs = model_costs(layers, d, heads, batch, seq, 2 * k, torch.finfo(dtype).bits // 8)
    base, ref = results["inductor"], results["inductor"]["y"]
    rows = []
    for name in ORDER:
        r = results[name]
        flops, nbytes = costs["dense" if name == "inductor" else "panther"]
        floor = floor_ms(nbytes, flops, device, dtype)
        rows.append({"backend": name, "layers": layers, "d": d, "tokens": batch * seq, "dtype": str(dtype)[6:],
                     "sketched_linears": r["sketched"], "compile_s": r["compile_s"],
                     "compile_vs_inductor": r["compile_s"] / base["compile_s"], "ms": r["ms"],
                     "tokens/s": batch * seq / (r["ms"] * 1e-3), "speedup": base["ms"] / r["ms"],
                     "graph_ms": r["graph_ms"],
                     "graph_speedup": base["graph_ms"] / r["graph_ms"] if r["graph_ms"] else None,
                     "ro_ms": r.get("ro_ms"), "ro_speedup": base["ro_ms"] / r["ro_ms"] if r.get("ro_ms") else None,
                     "floor_ms": floor,
                     "x_floor": r["ms"] / floor, "rel_err": ((r["y"] - ref).norm() / ref.norm()).item()})
    return rows


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--init", default="sketch", choices=["sketch", "svd"], help="factor init of the panther plan")
    p.add_argument("--backend", choices=ORDER, help=argparse.SUPPRESS)  # internal: one measurement per process
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.backend:
        measure(args.device, args.quick, args.init, args.backend, args.result)
        return
    rows = run(args.device, args.quick, args.init)
    report("compile", rows, args.device, args.out, "python -m benchmarks.bench_compile " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
