"""Performance targets from the issues, per area, and whether each machine's results meet them.

A target reads one number from one benchmark's rows on machines of one device type and
compares it with a limit (``>=`` for speed-ups, ``<=`` for distances to the floor).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

from . import fmt
from .results import Machine
from .rows import ratio, value, where


@dataclass(frozen=True)
class Target:
    what: str
    device: str  # "cuda" or "cpu"
    bench: str  # record name
    measure: Callable[[list[dict]], float | None]
    op: str  # ">=" or "<="
    limit: float

    def met(self, measured: float | None) -> bool | None:
        if measured is None:
            return None
        return {">=": operator.ge, "<=": operator.le}[self.op](measured, self.limit)


@dataclass(frozen=True)
class Outcome:
    area: str
    target: Target
    machine: str | None  # None: no machine has this benchmark on this device
    measured: float | None
    met: bool | None


def cell(column: str, **equal) -> Callable[[list[dict]], float | None]:
    return lambda rows: value(rows, column, **equal)


def _best_favor(rows, N, causal):
    """The fastest panther FAVOR+ forward row (C++ or Triton) at sequence length N."""
    found = [r for r in where(rows, N=N, causal=causal, **{"pass": "fwd"})
             if str(r.get("impl", "")).startswith("panther") and r.get("ms") is not None]
    return min(found, key=lambda r: r["ms"]) if found else None


def favor_speedup(N: int, causal: bool, peer: str):
    def measure(rows):
        best = _best_favor(rows, N, causal)
        return ratio(value(rows, "ms", N=N, causal=causal, impl=peer, **{"pass": "fwd"}), best and best["ms"])
    return measure


def favor_x_floor(N: int, causal: bool):
    def measure(rows):
        best = _best_favor(rows, N, causal)
        return best and best.get("x_floor")
    return measure


def time_ratio(op: str, peer: str, **equal):
    return lambda rows: ratio(value(rows, "ms", op=op, **equal), value(rows, "ms", op=peer, **equal))


_BIG = dict(tokens=8192, **{"in": 8192}, out=8192, dtype="bfloat16", L=1)

TARGETS: dict[str, list[Target]] = {
    "linear": [
        *(Target(f"fwd+bwd speed-up over nn.Linear, bf16, 8192 tokens, 8192→8192, L=1, k={k}", "cuda", "linear",
                 cell("sk_speedup", **_BIG, k=k, mode="fwd+bwd"), ">=", 10) for k in (16, 64)),
        *(Target(f"fwd speed-up over nn.Linear, bf16, 8192 tokens, 8192→8192, L=1, k={k}", "cuda", "linear",
                 cell("sk_speedup", **_BIG, k=k, mode="fwd"), ">=", 18) for k in (16, 64)),
        *(Target(f"fwd × floor, bf16, 8192 tokens, 8192→8192, L=1, k={k}", "cuda", "linear",
                 cell("sk_x_floor", **_BIG, k=k, mode="fwd"), "<=", 1.3) for k in (16, 64)),
        Target("fwd × floor, bf16, 4096 tokens, 4096→4096, L=1, k=16", "cuda", "linear",
               cell("sk_x_floor", tokens=4096, **{"in": 4096}, out=4096, dtype="bfloat16", L=1, k=16, mode="fwd"),
               "<=", 1.6),
        Target("fwd speed-up over nn.Linear, float32, 2048 tokens, 4096→4096, L=1, k=64", "cpu", "linear",
               cell("sk_speedup", tokens=2048, **{"in": 4096}, out=4096, L=1, k=64, mode="fwd"), ">=", 8),
    ],
    "attention": [
        Target("non-causal fwd, N=16384: SDPA time / best panther time", "cuda", "bench_attention",
               favor_speedup(16384, False, "sdpa"), ">=", 4),
        Target("non-causal fwd, N=16384: plain FAVOR time / best panther time", "cuda", "bench_attention",
               favor_speedup(16384, False, "plain favor"), ">=", 2),
        Target("causal fwd, N=16384: causal SDPA time / best panther time", "cuda", "bench_attention",
               favor_speedup(16384, True, "sdpa"), ">=", 4),
        Target("non-causal fwd, N=16384: best panther × floor", "cuda", "bench_attention",
               favor_x_floor(16384, False), "<=", 2),
        Target("causal fwd, N=16384: best panther × floor", "cuda", "bench_attention",
               favor_x_floor(16384, True), "<=", 2),
    ],
    "sketch": [
        Target(f"{op} apply × one read of A", "cuda", "sketch_apply", cell("x floor", op=f"{op} apply"), "<=", 1.5)
        for op in ("CountSketch", "SJLT nnz=4", "SRHT")
    ],
    "linalg": [
        Target(f"randomized SVD time / torch.svd_lowrank time, {m}×{n} float32", "cuda", "rsvd",
               time_ratio("panther randomized_svd", "torch.svd_lowrank", m=m, n=n, dtype="float32"), "<=", 1)
        for m, n in ((8192, 8192), (65536, 2048))
    ],
    "compile": [
        Target("tokens/s of backend='panther' / backend='inductor'", "cuda", "compile",
               cell("speedup", backend="panther"), ">=", 2),
        Target("tokens/s of backend='panther' / backend='inductor', both with mode='reduce-overhead'", "cuda",
               "compile", cell("ro_speedup", backend="panther"), ">=", 2),
        Target("compile time of backend='panther' / backend='inductor'", "cuda", "compile",
               cell("compile_vs_inductor", backend="panther"), "<=", 1.2),
    ],
}


def evaluate(area: str, machines: list[Machine]) -> list[Outcome]:
    """One outcome per target and machine that ran its benchmark; one 'no data' outcome for a
    target that no machine ran."""
    outcomes = []
    for target in TARGETS.get(area, []):
        ran = [m for m in machines if m.device == target.device and target.bench in m.records]
        for m in ran:
            measured = target.measure(m.records[target.bench]["rows"])
            outcomes.append(Outcome(area, target, m.name, measured, target.met(measured)))
        if not ran:
            outcomes.append(Outcome(area, target, None, None, None))
    return outcomes


def verdict(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "no data"}[met]


def table(outcomes: list[Outcome], with_area: bool = False) -> str:
    keys = (["area"] if with_area else []) + ["target", "machine", "limit", "measured", "verdict"]
    rows = [{"area": o.area, "target": o.target.what, "machine": o.machine or fmt.MISSING,
             "limit": f"{o.target.op} {o.target.limit:g}×", "measured": fmt.times(o.measured),
             "verdict": verdict(o.met)} for o in outcomes]
    return fmt.table(rows, [(k, k) for k in keys])
