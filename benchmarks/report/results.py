"""Reading benchmark JSON: a results folder holds one folder per machine (``cpu/``, ``h200/``), or
is itself one machine's folder (what ``--out`` of a benchmark or ``gpu_all.sh OUT`` writes).

Two record layouts exist: ``harness.report``'s (``benchmark``, ``command``, ``when``,
``device_name``, ``torch``, ``triton``, ``rows``, ...) and ``bench_tuner --json``'s
(``meta`` + ``rows``). Both come out as the first, with only the fields the file has.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path


class ReportError(ValueError):
    """Bad input to the report generator (the message names the argument)."""


@dataclass
class Machine:
    """The records of one machine and device type, keyed by benchmark name (``linear``, ``cqrrpt``...)."""

    name: str
    device: str  # "cuda" or "cpu"
    records: dict[str, dict] = field(default_factory=dict)

    def rows(self, name: str) -> list[dict]:
        """The rows of record ``name`` (none when the machine has no such record)."""
        record = self.records.get(name)
        return record["rows"] if record else []

    @property
    def device_name(self) -> str | None:
        names = [r["device_name"] for r in self.records.values() if r.get("device_name")]
        return names[0] if names else None


def normalise(raw: dict) -> dict | None:
    """A record in ``harness.report``'s layout, or None for JSON that is no benchmark result."""
    if not isinstance(raw, dict) or not isinstance(raw.get("rows"), list):
        return None
    if "benchmark" in raw:
        return raw
    meta = raw.get("meta")
    if isinstance(meta, dict):  # bench_tuner --json: CPU only, meta = device, threads, torch, trials
        record = {"benchmark": "tuner", "device": "cpu", "rows": raw["rows"]}
        if "torch" in meta:
            record["torch"] = meta["torch"]
        if "device" in meta:
            n = meta.get("threads")
            threads = "" if n is None else f" ({n} thread{'' if n == 1 else 's'})"
            record["device_name"] = f"{meta['device']}{threads}"
        for key in ("command", "when", "triton", "threads", "trials"):
            if key in meta:
                record[key] = meta[key]
        return record
    return None


def device_type(record: dict) -> str:
    return "cuda" if str(record.get("device", "cpu")).startswith("cuda") else "cpu"


def _machine_folders(root: Path) -> list[Path]:
    if any(root.glob("*.json")):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*.json")))


def load(results: str | Path) -> list[Machine]:
    """Machines under ``results``, GPUs first, each with its records. Raises ReportError when the
    folder is missing or holds no benchmark JSON."""
    root = Path(results)
    if not root.is_dir():
        raise ReportError(f"--results: no such folder: {root}")
    machines: dict[tuple[str, str], Machine] = {}
    for folder in _machine_folders(root):
        for path in sorted(folder.glob("*.json")):
            with open(path) as f:
                try:
                    record = normalise(json.load(f))
                except json.JSONDecodeError as err:
                    raise ReportError(f"--results: {path} is not valid JSON: {err}") from None
            if record is None:
                print(f"benchmarks.report: skipping {path}: not a benchmark result", file=sys.stderr)
                continue
            dev = device_type(record)
            machine = machines.setdefault((folder.name, dev), Machine(folder.name, dev))
            name = record["benchmark"]
            if name in machine.records:  # e.g. tuner.json (--json layout) beside tuner_cpu.json: the newer wins
                older, record = sorted([machine.records[name], record], key=lambda r: r.get("when") or "")
                print(f"benchmarks.report: {folder} has two {name!r} records; using the one measured "
                      f"{record.get('when') or 'at an unknown date'}", file=sys.stderr)
            machine.records[name] = record
    if not machines:
        raise ReportError(f"--results: no benchmark JSON in {root} or in its sub-folders")
    folders_with_two = {f for f, _ in machines if sum(f == g for g, _ in machines) > 1}
    for (folder, dev), machine in machines.items():
        if folder in folders_with_two:
            machine.name = f"{folder} ({dev})"
    return sorted(machines.values(), key=lambda m: (m.device != "cuda", m.name))
