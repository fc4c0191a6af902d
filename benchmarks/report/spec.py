"""What an area of BENCHMARKS.md is made of: its benchmarks' JSON, what each must carry (baseline,
floor, provenance), its tables, computed sentences and plots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .results import Machine

# Provenance every record needs for its table; Triton only on GPU machines.
META = ("device_name", "torch", "when", "command")
META_CUDA = ("triton",)


@dataclass(frozen=True)
class Need:
    """A column group a benchmark's rows must carry (the baseline or the floor)."""

    shows: str  # what the runs table says when present, e.g. "`dense_ms`: nn.Linear"
    ask: str  # the field to ask the benchmark's author for when absent
    present: Callable[[list[dict]], bool]


def any_field(*names: str) -> Callable[[list[dict]], bool]:
    return lambda rows: any(r.get(n) is not None for r in rows for n in names)


def row_with(key: str, value) -> Callable[[list[dict]], bool]:
    return lambda rows: any(r.get(key) == value for r in rows)


@dataclass(frozen=True)
class Bench:
    """One JSON record kind (``benchmark`` field) that an area reads."""

    name: str
    baseline: Need
    floor: Need


@dataclass(frozen=True)
class Area:
    key: str  # the `python -m panther bench` area
    title: str
    benches: tuple[Bench, ...]
    tables: Callable[[Machine], list[tuple[str, str]]]  # (caption, markdown table) per machine
    facts: Callable[[Machine], dict[str, str]]  # template placeholders per machine
    plots: tuple[str, ...] = ()  # keys of benchmarks.plots.PLOTS
    devices: tuple[str, ...] = ("cuda", "cpu")  # where the area's benchmark runs

    def bench_names(self) -> set[str]:
        return {b.name for b in self.benches}
