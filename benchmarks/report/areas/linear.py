"""Sketched linear: ``benchmarks/bench_linear.py`` (record ``linear``)."""

from __future__ import annotations

import statistics

from .. import fmt
from ..results import Machine
from ..rows import groups, ratio, where
from ..spec import Area, Bench, Need, any_field

EAGER_MIN_BYTES = 1 << 31  # panther.ops.linear.triton_kernels.EAGER_MIN_BYTES (no torch import here)

COLUMNS = [(k, k) for k in ("tokens", "in", "out", "L", "k", "mode", "dense_ms", "4L_products_ms", "sk_ms",
                            "triton_ms", "floor_ms", "sk_x_floor", "sk_speedup", "triton_speedup")]
LARGE_RANK = 128  # L·k from which the two GEMMs are no longer skinny


def _lk(row: dict) -> int | None:
    L, k = row.get("L"), row.get("k")
    return None if L is None or k is None else L * k


def _triton_kernels(row: dict) -> bool:
    """Where ``triton_kernels.preferred`` picks the Triton kernels for an eager call (the benchmark's):
    ≥ 8192 rows, L·k ≤ 16, and x plus y moving at least EAGER_MIN_BYTES."""
    tokens, size = row.get("tokens") or 0, 4 if row.get("dtype") == "float32" else 2
    moved = tokens * ((row.get("in") or 0) + (row.get("out") or 0)) * size
    return tokens >= 8192 and (_lk(row) or LARGE_RANK) <= 16 and moved >= EAGER_MIN_BYTES


def _rows(machine: Machine) -> list[dict]:
    return machine.rows("linear")


def tables(machine: Machine) -> list[tuple[str, str]]:
    return [(str(dtype), fmt.table(rows, COLUMNS)) for dtype, rows in groups(_rows(machine), "dtype").items()]


def _first_dtype(machine: Machine) -> list[dict]:
    """The rows of the run's first dtype (bfloat16 on GPU, float32 on CPU)."""
    rows = _rows(machine)
    return where(rows, dtype=rows[0].get("dtype")) if rows else []


def _floor_by_tokens(fwd: list[dict]) -> str:
    parts = []
    for tokens, rows in sorted(groups(fwd, "tokens").items(), key=lambda kv: -(kv[0] or 0)):
        small = [r.get("sk_x_floor") for r in rows if _lk(r) is not None and _lk(r) < LARGE_RANK]
        large = [r.get("sk_x_floor") for r in rows if _lk(r) is not None and _lk(r) >= LARGE_RANK]
        spans = ([f"{fmt.span(small)} at L·k < {LARGE_RANK}"] if small else []) + (
            [f"{fmt.span(large)} at L·k ≥ {LARGE_RANK}"] if large else [])
        parts.append(f"{tokens} tokens {' and '.join(spans)}")
    return "; ".join(parts) or fmt.MISSING


def _triton_fwd(fwd: list[dict]) -> str:
    """Triton forward vs the C++ op, where its kernels run (≥ 8192 rows, L·k ≤ 16) and elsewhere."""
    kernels = [ratio(r.get("sk_ms"), r.get("triton_ms")) for r in fwd if _triton_kernels(r)]
    other = [ratio(r.get("sk_ms"), r.get("triton_ms")) for r in fwd if not _triton_kernels(r)]
    if not kernels:
        return f"no row here is large enough for its kernels to run eagerly; elsewhere (the C++ op) {fmt.faster(other)}"
    return f"{fmt.faster(kernels)} where its kernels run, {fmt.faster(other)} elsewhere (the C++ op)"


def _triton_train(rows: list[dict]) -> str:
    """The training step of SKLinear_triton against SKLinear's, where its Triton kernels would run."""
    slow = [ratio(r.get("triton_ms"), r.get("sk_ms")) for r in where(rows, mode="fwd+bwd") if _triton_kernels(r)]
    slow = [s for s in slow if s is not None]
    if not slow:
        return ("No row here runs the Triton kernels eagerly, and `SKLinear_triton` runs the C++ op "
                "whenever autograd records the call: its fwd+bwd column is the C++ op's.")
    median = statistics.median(slow)
    where_ = "median over the rows where its kernels run"
    if median > 1.1:
        return (f"The `triton` fwd+bwd column is {fmt.times(median)} the `sk` time ({where_}): this run timed "
                "the Triton op inside the training step, whose Python autograd wrapper costs more. "
                "`SKLinear_triton` now runs the C++ op whenever autograd records the call, so its training "
                "step is the `sk` column.")
    return (f"The `triton` fwd+bwd column is {fmt.times(median)} the `sk` time ({where_}): "
            "`SKLinear_triton` runs the C++ op whenever autograd records the call.")


def facts(machine: Machine) -> dict[str, str]:
    fwd = where(_first_dtype(machine), mode="fwd")
    per_term = [ratio(r.get("4L_products_ms"), r.get("sk_ms")) for r in fwd if (r.get("L") or 0) >= 2]
    return {"two_gemm_vs_4l": fmt.span(per_term), "floor_by_tokens": _floor_by_tokens(fwd),
            "triton_fwd": _triton_fwd(fwd), "triton_train": _triton_train(_first_dtype(machine)),
            "fwd_dtype": fwd[0]["dtype"] if fwd else fmt.MISSING}


AREA = Area(
    key="linear", title="Sketched linear",
    benches=(Bench("linear",
                   baseline=Need("`dense_ms`: `nn.Linear`, same run", "dense_ms", any_field("dense_ms")),
                   floor=Need("`floor_ms`: bytes at measured bandwidth, or FLOPs at measured GEMM rate", "floor_ms",
                              any_field("floor_ms"))),),
    tables=tables, facts=facts, plots=("linear",))
