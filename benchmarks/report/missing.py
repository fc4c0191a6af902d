"""What the JSON lacks for the tables: provenance fields, the baseline, the floor, whole records."""

from __future__ import annotations

from .results import Machine
from .spec import META, META_CUDA, Area


def ran(area: Area, machines: list[Machine]) -> list[Machine]:
    """Machines with at least one of the area's records."""
    return [m for m in machines if area.bench_names() & set(m.records)]


def missing(area: Area, machines: list[Machine]) -> list[str]:
    """One item per machine and record: ``h200 rsvd: no JSON`` or ``cpu tuner: command, when, floor_ms``.
    A machine with none of the area's records counts when the area runs on its device type."""
    items = []
    for m in machines:
        if m.device not in area.devices:
            continue
        if not area.bench_names() & set(m.records):
            items.append(f"{m.name}: no {area.key} results")
            continue
        for bench in area.benches:
            record = m.records.get(bench.name)
            if record is None:
                items.append(f"{m.name} {bench.name}: no JSON")
                continue
            fields = [k for k in META + (META_CUDA if m.device == "cuda" else ()) if not record.get(k)]
            for need in (bench.baseline, bench.floor):
                if not need.present(record["rows"]):
                    fields.append(need.ask)
            if fields:
                items.append(f"{m.name} {bench.name}: {', '.join(fields)}")
    return items


def line(items_by_area: dict[str, list[str]]) -> str:
    """``**Missing:** linalg (h200 rsvd: no JSON); tuner (cpu tuner: command, when)``, or ``nothing``."""
    parts = [f"{area} ({'; '.join(items)})" for area, items in items_by_area.items() if items]
    return "**Missing:** " + ("; ".join(parts) if parts else "nothing.")
