"""Sketch application: ``benchmarks/bench_sketch.py`` (record ``sketch_apply``)."""

from __future__ import annotations

from .. import fmt
from ..results import Machine
from ..spec import Area, Bench, Need, any_field

COLUMNS = [(k, k) for k in ("op", "m", "n", "d", "ms", "x floor")]


def _rows(machine: Machine) -> list[dict]:
    return machine.rows("sketch_apply")


def tables(machine: Machine) -> list[tuple[str, str]]:
    return fmt.single_table(_rows(machine), COLUMNS)


def _kind(row: dict) -> str:
    op = str(row.get("op", ""))
    return "apply" if op.endswith(" apply") else "materialised" if "materialised" in op else "fwht" if op.startswith(
        "fwht") else "other"


def facts(machine: Machine) -> dict[str, str]:
    rows = _rows(machine)
    applies = [r for r in rows if _kind(r) == "apply"]
    fwht = [r.get("x floor") for r in rows if _kind(r) == "fwht"]
    srht = [r.get("x floor") for r in applies if str(r.get("op", "")).startswith("SRHT")]
    note = ""
    if fwht and srht and None not in fwht + srht and 2 * max(fwht) < min(srht):
        note = (f" The batched FWHT kernel itself runs at {fmt.span(fwht, '.3g')} its floor, so most of SRHT's "
                "cost lies outside the transform (the transposes around it).")
    return {
        "apply_x_floor": ", ".join(f"{str(r['op'])[:-len(' apply')]} {fmt.times(r.get('x floor'))}"
                                   for r in applies) or fmt.MISSING,
        "materialised_x_floor": fmt.span([r.get("x floor") for r in rows if _kind(r) == "materialised"], ".3g"),
        "fwht_note": note,
    }


AREA = Area(
    key="sketch", title="Sketch application",
    benches=(Bench("sketch_apply",
                   baseline=Need("`dense materialised @ A` rows: the earlier Panther's way, same run",
                                 "speedup_vs_materialised",
                                 lambda rows: any("materialised" in str(r.get("op", "")) for r in rows)),
                   floor=Need("`x floor`: × one read of A at the measured bandwidth", "floor_ms",
                              any_field("x floor", "floor_ms"))),),
    tables=tables, facts=facts)
