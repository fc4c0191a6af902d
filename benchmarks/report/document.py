"""Assembling BENCHMARKS.md: the header template, then per area its template's prose with the
numbers filled in from the JSON, a runs table (device, versions, date, command, baseline,
floor), the tables and plots per machine, its targets and what its JSON lacks."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import plots
from . import fmt, missing, targets
from .areas import AREAS
from .results import Machine
from .spec import Area

TEMPLATES = Path(__file__).with_name("templates")
MARKER = re.compile(r"^<!-- (\w+) -->\s*$", re.MULTILINE)
DEFAULT_BLOCK = "{tables}\n\n{plot}"


@dataclass(frozen=True)
class Plot:
    name: str  # key of benchmarks.plots.PLOTS
    machine: Machine
    path: Path


def template(name: str) -> dict[str, str]:
    """The blocks of ``templates/<name>.md``, split at ``<!-- block -->`` lines: ``intro``, then the
    text under each machine's tables, ``cuda`` / ``cpu`` for one device type or ``machine`` for both."""
    parts = MARKER.split((TEMPLATES / f"{name}.md").read_text())
    return {key: text.strip("\n") for key, text in zip(parts[1::2], parts[2::2])}


def fill(text: str, values: dict[str, str], where: str) -> str:
    try:
        return text.format_map(values)
    except KeyError as err:
        raise KeyError(f"template {where} uses {{{err.args[0]}}}, which the generator does not provide "
                       f"(it provides {sorted(values)})") from None


def plots_for(area: Area, machines: list[Machine], img_dir: Path) -> list[Plot]:
    out = []
    for name in area.plots:
        bench, device, _, _ = plots.PLOTS[name]
        for m in machines:
            if m.device == device and bench in m.records:
                slug = re.sub(r"\W+", "_", m.name).strip("_")
                out.append(Plot(name, m, Path(plots.png_path(str(img_dir), name, slug))))
    return out


def _link(plot: Plot, md_dir: Path) -> str:
    rel = Path(os.path.relpath(plot.path, md_dir)).as_posix()
    return f"![{plots.PLOTS[plot.name][3]}]({rel})"


def _runs(area: Area, machines: list[Machine]) -> str:
    rows = []
    for m in missing.ran(area, machines):
        for bench in area.benches:
            record = m.records.get(bench.name)
            row = {"machine": m.name, "json": bench.name}
            if record is not None:
                data = record["rows"]
                row.update({
                    "device": record.get("device_name"), "torch": record.get("torch"),
                    "triton": record.get("triton") if m.device == "cuda" else "n/a",
                    "when": record.get("when"), "command": fmt.code(fmt.command(record)),
                    "baseline": bench.baseline.shows if bench.baseline.present(data) else None,
                    "floor": bench.floor.shows if bench.floor.present(data) else None})
            rows.append(row)
    return fmt.table(rows, [("machine", "machine"), ("json", "record"), ("device", "device"), ("torch", "torch"),
                            ("triton", "Triton"), ("when", "date"), ("command", "command"),
                            ("baseline", "baseline"), ("floor", "floor")])


def _machine_block(area: Area, m: Machine, blocks: dict[str, str], area_plots: list[Plot], md_dir: Path) -> str:
    tables = "\n\n".join(f"{caption}:\n\n{md}" if caption else md for caption, md in area.tables(m))
    links = "\n\n".join(_link(p, md_dir) for p in area_plots if p.machine is m)
    values = {**area.facts(m), "tables": tables or "_No rows._", "plot": links}
    name = m.device if m.device in blocks else "machine" if "machine" in blocks else None
    body = fill(blocks[name] if name else DEFAULT_BLOCK, values, f"{area.key}.md <!-- {name} -->")
    names = [m.records[b.name].get("device_name") for b in area.benches if b.name in m.records]
    heading = f"### {next((n for n in names if n), m.device_name) or fmt.MISSING} (`{m.name}`)"
    return heading + "\n\n" + re.sub(r"\n{3,}", "\n\n", body).strip()


DEVICE_WORDS = {"cuda": "GPU", "cpu": "CPU"}


def _absent_devices(area: Area, ran: list[Machine]) -> list[str]:
    """A line per device type the area runs on that none of its results come from (e.g. a new
    area measured on CPU whose GPU run is still to come)."""
    have = {m.device for m in ran}
    return [f"_No {DEVICE_WORDS.get(dev, dev)} results yet: run `python -m panther bench {area.key} --device {dev}`"
            + (" on a GPU machine (`benchmarks/gpu_all.sh` runs every area)" if dev == "cuda" else "") + "._"
            for dev in area.devices if dev not in have]


def section(area: Area, machines: list[Machine], img_dir: Path, md_dir: Path) -> str:
    blocks = template(area.key)
    parts = [blocks["intro"]]
    ran = missing.ran(area, machines)
    if ran:
        parts.append(_runs(area, machines))
        parts += _absent_devices(area, ran)
    else:
        parts.append(f"_No results: run `python -m panther bench {area.key}`._")
    area_plots = plots_for(area, machines, img_dir)
    parts += [_machine_block(area, m, blocks, area_plots, md_dir) for m in ran]
    outcomes = targets.evaluate(area.key, machines)
    if outcomes:
        parts.append("Targets:\n\n" + targets.table(outcomes))
    parts.append(missing.line({area.key: missing.missing(area, machines)}))
    return "\n\n".join(parts)


def _machines_table(machines: list[Machine]) -> str:
    rows = []
    for m in machines:
        records = list(m.records.values())

        def distinct(key):
            found = sorted({str(r[key]) for r in records if r.get(key) is not None})
            return ", ".join(found) if found else None

        dates = sorted(r["when"] for r in records if r.get("when"))
        rows.append({"machine": m.name, "device": m.device_name, "torch": distinct("torch"),
                     "triton": distinct("triton") if m.device == "cuda" else "n/a", "python": distinct("python"),
                     "bandwidth": fmt.span([r.get("bandwidth_GBps") for r in records], ".4g", " GB/s"),
                     "dates": (dates[0] if dates[0] == dates[-1] else f"{dates[0]} – {dates[-1]}") if dates else None,
                     "records": ", ".join(m.records)})
    return fmt.table(rows, [("machine", "machine"), ("device", "device"), ("torch", "torch"), ("triton", "Triton"),
                            ("python", "Python"), ("bandwidth", "measured copy bandwidth"), ("dates", "measured"),
                            ("records", "records")])


def document(machines: list[Machine], command: str, img_dir: Path, md_dir: Path) -> tuple[str, list[Plot]]:
    """The page and the plots it links (not drawn here)."""
    outcomes = [o for area in AREAS for o in targets.evaluate(area.key, machines)]
    header = fill(template("header")["header"], {
        "command": command,
        "machines": _machines_table(machines),
        "targets": targets.table(outcomes, with_area=True),
        "missing": missing.line({a.key: missing.missing(a, machines) for a in AREAS}),
    }, "header.md")
    sections = [section(area, machines, img_dir, md_dir) for area in AREAS]
    page = "\n\n".join([header, *sections]) + "\n"
    return page, [p for area in AREAS for p in plots_for(area, machines, img_dir)]
