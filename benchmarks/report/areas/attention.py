"""Attention: ``benchmarks/bench_attention.py`` (record ``bench_attention``), one table row per
(sequence length, causal, pass) with every implementation's time side by side."""

from __future__ import annotations

from .. import fmt
from ..results import Machine
from ..rows import ratio
from ..spec import Area, Bench, Need, any_field

IMPLS = ("sdpa", "plain favor", "panther", "panther triton")
COLUMNS = ([("N", "N"), ("causal", "causal"), ("pass", "pass")] + [(i, f"{i} ms") for i in IMPLS]
           + [("floor_ms", "floor ms"), ("best_x_floor", "best panther × floor"),
              ("best_vs_sdpa", "best panther vs SDPA")])


def _rows(machine: Machine) -> list[dict]:
    return machine.rows("bench_attention")


def pivot(rows: list[dict]) -> list[dict]:
    """One dict per (N, causal, pass): each implementation's ms, the floor and the best panther op."""
    table: dict[tuple, dict] = {}
    for r in rows:
        key = (r.get("N"), r.get("causal"), r.get("pass"))
        line = table.setdefault(key, {"N": key[0], "causal": "yes" if key[1] else "no", "pass": key[2]})
        line[r.get("impl")] = r.get("ms")
        if r.get("floor_ms") is not None:
            line["floor_ms"] = r["floor_ms"]
        if str(r.get("impl", "")).startswith("panther") and r.get("ms") is not None:
            if line.get("_best") is None or r["ms"] < line["_best"]["ms"]:
                line["_best"] = r
    for line in table.values():
        best = line.pop("_best", None)
        if best is not None:
            line["best_x_floor"] = best.get("x_floor")
            line["best_vs_sdpa"] = ratio(line.get("sdpa"), best["ms"])
    return list(table.values())


def tables(machine: Machine) -> list[tuple[str, str]]:
    rows = _rows(machine)
    return [("", fmt.table(pivot(rows), COLUMNS))] if rows else []


def _crossover(lines: list[dict]) -> str:
    wins = sorted(line["N"] for line in lines if line["causal"] == "no" and line["pass"] == "fwd"
                  and (line.get("best_vs_sdpa") or 0) > 1)
    return f"from N = {wins[0]} on" if wins else "at no length measured"


def facts(machine: Machine) -> dict[str, str]:
    rows = _rows(machine)
    lines = pivot(rows)
    first = rows[0] if rows else {}
    shape = ", ".join(f"{k}={first[k]}" for k in ("B", "H", "D", "m") if k in first)
    fwd = [line for line in lines if line["pass"] == "fwd"]
    longest = max((line for line in fwd if line["causal"] == "no"), key=lambda line: line["N"] or 0, default={})
    train = {line["causal"]: line for line in lines if line["pass"] == "fwd+bwd" and line["N"] == longest.get("N")}
    return {
        "shape": f"{shape}, {first.get('dtype', fmt.MISSING)}" if shape else fmt.MISSING,
        "crossover": _crossover(lines),
        "longest_n": fmt.num(longest.get("N")),
        "longest_vs_sdpa": fmt.times(longest.get("best_vs_sdpa")),
        "noncausal_x_floor": fmt.span([line.get("best_x_floor") for line in fwd if line["causal"] == "no"], ".3g"),
        "causal_x_floor": fmt.span([line.get("best_x_floor") for line in fwd if line["causal"] == "yes"], ".3g"),
        "train_vs_sdpa": fmt.times(train.get("no", {}).get("best_vs_sdpa")),
        "causal_train_vs_sdpa": fmt.times(train.get("yes", {}).get("best_vs_sdpa")),
    }


AREA = Area(
    key="attention", title="Attention",
    benches=(Bench("bench_attention",
                   # vs_sdpa since the FAVOR+ kernel rewrite; speedup_vs_sdpa in older records
                   baseline=Need("`vs_sdpa`: `F.scaled_dot_product_attention`, same run", "vs_sdpa",
                                 any_field("vs_sdpa", "speedup_vs_sdpa")),
                   floor=Need("`floor_ms`: bytes at measured bandwidth, or FLOPs at measured GEMM rate", "floor_ms",
                              any_field("floor_ms"))),),
    tables=tables, facts=facts, plots=("attention",))
