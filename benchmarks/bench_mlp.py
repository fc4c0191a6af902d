"""Fused low-rank MLP middle: torch.ops.panther.lowrank_expand_project vs the unfused ops and Inductor.

    python -m benchmarks.bench_mlp --device cuda --out DIR
    python -m benchmarks.bench_mlp --device cpu [--out DIR]      # small CPU shapes
    python -m benchmarks.bench_mlp --device cpu --quick          # one small row

A sketched MLP  y = act(x A1 B1 + b1) A2 B2 + b2  runs as t = x A1, u = act(t B1 + b1) A2,
y = u B2 + b2; this times the middle (``form`` gelu), u = gelu(h B + b) C for h [M, r], B [r, hidden],
b [hidden], C [hidden, r], and the gated middle of a SwiGLU MLP (``form`` swiglu),
u = (silu(h B + b) * (hu Bu + bu)) C with ``lowrank_gated_expand_project`` (bfloat16 on CUDA,
float32 on CPU). Columns:

- ``unfused_ms``: ``F.gelu(torch.addmm(b, h, B)) @ C`` eagerly; the hidden activation [M, hidden]
  is written, re-read, re-written and re-read.
- ``inductor_ms``: the same function under ``torch.compile`` (default mode).
- ``fused_ms``: ``torch.ops.panther.lowrank_expand_project(h, B, C, b, "gelu")`` under
  ``torch.compile``, the path the compile backend takes: on CUDA the Triton kernel that keeps the
  hidden activation in registers (every supported rank, <= 256); on CPU the op's unfused
  composite (addmm, gelu, mm) compiled by Inductor, so there it measures the same graph as
  ``inductor_ms``.
- ``speedup`` = unfused_ms / fused_ms; ``vs_inductor`` = inductor_ms / fused_ms.
- ``floor_ms``: the larger of the bytes of h, B, b, C and u at the copy bandwidth and the FLOPs
  2 M hidden (r1 + r2) at the dense GEMM rate, both measured in the run; ``x_floor`` = fused_ms / floor_ms.
- ``rel_err``: ||fused - ref|| / ||ref|| against a float64 reference.

On CUDA every column is timed replaying a CUDA graph (``harness.graph_ms``), so the ~0.1 ms of
host time of a Triton op call from Python does not hide the kernels' time; the compiled functions
are warmed up (compiled, autotuned) with 3 calls first. The inputs stay in L2 between replays.
Shapes are compiled static (``dynamic=False``), each row its own graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import panther  # noqa: F401  (registers torch.ops.panther)

from .harness import floor_ms, graph_ms, run_main

GPU_SHAPES = [(8192, 4096, 64, "gelu"), (8192, 4096, 128, "gelu"), (32768, 4096, 64, "gelu"),
              (8192, 16384, 64, "gelu"), (512, 4096, 64, "gelu"), (8192, 4096, 64, "swiglu"),
              (32768, 4096, 64, "swiglu")]
CPU_SHAPES = [(2048, 1024, 32, "gelu"), (512, 1024, 32, "gelu"), (2048, 1024, 32, "swiglu")]
QUICK_SHAPES = {"cuda": [(512, 4096, 64, "gelu")], "cpu": [(256, 512, 16, "gelu")]}  # --quick: one small row
WARMUP = 3


def unfused(form, h, B, b, C, hu=None, Bu=None, bu=None):
    if form == "swiglu":
        return (F.silu(torch.addmm(b, h, B)) * torch.addmm(bu, hu, Bu)) @ C
    return F.gelu(torch.addmm(b, h, B)) @ C


def fused(form, h, B, b, C, hu=None, Bu=None, bu=None):
    if form == "swiglu":
        return torch.ops.panther.lowrank_gated_expand_project(h, B, hu, Bu, C, b, bu, "silu")
    return torch.ops.panther.lowrank_expand_project(h, B, C, b, "gelu")


def inputs(form, M, hidden, r, dtype, device, seed=0):
    """h [M, r], B [r, hidden], b [hidden], C [hidden, r] (and for swiglu hu, Bu, bu of the up
    projection), scaled so that h B + b and u are O(1)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    h, B, b, C = randn(M, r), randn(r, hidden, scale=r**-0.5), randn(hidden), randn(hidden, r, scale=hidden**-0.5)
    up = (randn(M, r), randn(r, hidden, scale=r**-0.5), randn(hidden)) if form == "swiglu" else ()
    return (h, B, b, C, *up)


def rel_err(form, u, *operands) -> float:
    ref = unfused(form, *(t.double() for t in operands))
    return ((u.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def costs(form, M, hidden, r, element_size):
    """(bytes, FLOPs) of the fused op: the thin inputs and u once, the factors and biases once;
    two GEMMs (three for swiglu)."""
    ranks, biases = (3 * r, 2) if form == "swiglu" else (2 * r, 1)
    return (element_size * (M * ranks + hidden * (ranks + biases)), 2 * M * hidden * ranks)


def row(M, hidden, r, form, dtype, device) -> dict:
    operands = inputs(form, M, hidden, r, dtype, device)
    inductor = torch.compile(unfused, dynamic=False)
    fused_compiled = torch.compile(fused, dynamic=False)
    for _ in range(WARMUP):
        inductor(form, *operands)
        u = fused_compiled(form, *operands)
    unfused_ms = graph_ms(lambda: unfused(form, *operands), device)
    inductor_ms = graph_ms(lambda: inductor(form, *operands), device)
    fused_ms = graph_ms(lambda: fused_compiled(form, *operands), device)
    floor = floor_ms(*costs(form, M, hidden, r, operands[0].element_size()), device, dtype)
    return {"form": form, "M": M, "hidden": hidden, "r": r, "dtype": str(dtype)[6:], "unfused_ms": unfused_ms,
            "inductor_ms": inductor_ms, "fused_ms": fused_ms, "speedup": unfused_ms / fused_ms,
            "vs_inductor": inductor_ms / fused_ms, "floor_ms": floor, "x_floor": fused_ms / floor,
            "rel_err": rel_err(form, u, *operands)}


def run(device: str, quick: bool) -> list[dict]:
    cuda = torch.device(device).type == "cuda"
    shapes = QUICK_SHAPES["cuda" if cuda else "cpu"] if quick else GPU_SHAPES if cuda else CPU_SHAPES
    dtype = torch.bfloat16 if cuda else torch.float32
    with torch.no_grad():
        return [row(M, hidden, r, form, dtype, device) for M, hidden, r, form in shapes]


def main(argv=None) -> dict:
    return run_main("mlp", "bench_mlp", __doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()
