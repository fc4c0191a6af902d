"""Export: ``benchmarks/bench_export.py`` (record ``export``): AOTInductor packages."""

from __future__ import annotations

from .. import fmt
from ..results import Machine
from ..rows import ratio, value
from ..spec import Area, Bench, Need, any_field, row_with

COLUMNS = [(k, k) for k in ("model", "layers", "d", "tokens", "dtype", "sketched_linears", "weights", "package_MB",
                            "size_vs_dense", "package_s", "ms", "floor_ms", "x_floor", "speedup", "rel_err", "error")]


def _record(machine: Machine) -> dict:
    return machine.records.get("export") or {"rows": []}


def tables(machine: Machine) -> list[tuple[str, str]]:
    rows = _record(machine)["rows"]
    return [("", fmt.table(rows, COLUMNS))] if rows else []


def facts(machine: Machine) -> dict[str, str]:
    record = _record(machine)
    rows = record["rows"]
    first = rows[0] if rows else {}
    failures = " ".join(f"The {r.get('model')} package failed: {r['error']}." for r in rows if r.get("error"))
    quick = "--quick" in str(record.get("command", ""))
    return {
        "model": (f"layers={first.get('layers', fmt.MISSING)}, d={first.get('d', fmt.MISSING)}, "
                  f"{first.get('tokens', fmt.MISSING)} tokens, {first.get('dtype', fmt.MISSING)}"),
        "size": fmt.times(value(rows, "size_vs_dense", model="panther")),
        "weights": fmt.times(ratio(value(rows, "weights", model="panther"), value(rows, "weights", model="dense"))),
        "speedup": fmt.times(value(rows, "speedup", model="panther")),
        "quick_note": (" This run used `--quick`: a load test of a model too small for sketching to pay, so "
                       "its latencies say nothing about the speed-up." if quick else ""),
        "failures": failures or "Both packages built, loaded and ran in fresh processes.",
    }


AREA = Area(
    key="export", title="Export",
    benches=(Bench("export",
                   baseline=Need("`model=dense` package (`speedup`, `size_vs_dense`), same run", "a dense row",
                                 row_with("model", "dense")),
                   floor=Need("`floor_ms`: weights and activations at measured bandwidth, or FLOPs at measured GEMM "
                              "rate", "floor_ms", any_field("floor_ms"))),),
    tables=tables, facts=facts)
