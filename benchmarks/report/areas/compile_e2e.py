"""Compile end to end: ``benchmarks/bench_compile.py`` (record ``compile``)."""

from __future__ import annotations

from .. import fmt
from ..results import Machine
from ..rows import value
from ..spec import Area, Bench, Need, any_field, row_with

COLUMNS = [(k, k) for k in ("backend", "layers", "d", "tokens", "dtype", "sketched_linears", "compile_s",
                            "compile_vs_inductor", "ms", "tokens/s", "speedup", "graph_ms", "graph_speedup", "ro_ms",
                            "ro_speedup", "floor_ms",
                            "x_floor", "rel_err")]


def _rows(machine: Machine) -> list[dict]:
    return machine.rows("compile")


def tables(machine: Machine) -> list[tuple[str, str]]:
    return fmt.single_table(_rows(machine), COLUMNS)


def facts(machine: Machine) -> dict[str, str]:
    rows = _rows(machine)
    first = rows[0] if rows else {}

    def ours(column):
        return value(rows, column, backend="panther")

    return {
        "model": (f"layers={first.get('layers', fmt.MISSING)}, d={first.get('d', fmt.MISSING)}, "
                  f"{first.get('tokens', fmt.MISSING)} tokens per batch, {first.get('dtype', fmt.MISSING)}"),
        "sketched": fmt.num(ours("sketched_linears")),
        "speedup": fmt.times(ours("speedup")),
        "graph_speedup": fmt.times(ours("graph_speedup")),
        "ro_speedup": fmt.times(ours("ro_speedup")),
        "compile_ratio": fmt.times(ours("compile_vs_inductor")),
        "panther_x_floor": fmt.times(ours("x_floor")),
        "inductor_x_floor": fmt.times(value(rows, "x_floor", backend="inductor")),
        "rel_err": fmt.num(ours("rel_err")),
    }


AREA = Area(
    key="compile", title="Compile end to end",
    benches=(Bench("compile",
                   baseline=Need("`backend=\"inductor\"` row (`speedup`, `compile_vs_inductor`), same run",
                                 "an inductor row", row_with("backend", "inductor")),
                   floor=Need("`floor_ms`: weights and activations at measured bandwidth, or FLOPs at measured GEMM "
                              "rate", "floor_ms", any_field("floor_ms"))),),
    tables=tables, facts=facts)
