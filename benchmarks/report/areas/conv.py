"""Convolution: ``benchmarks/bench_conv.py`` (record ``bench_conv``)."""

from __future__ import annotations

import re

from .. import fmt
from ..results import Machine
from ..rows import where
from ..spec import Area, Bench, Need, any_field

COLUMNS = [(k, k) for k in ("shape", "impl", "pass", "ms", "floor_ms", "x_floor", "speedup_vs_dense", "dtype")]
WIDE = 1024  # input channels from which the sketch's saving is large


def _rows(machine: Machine) -> list[dict]:
    return machine.rows("bench_conv")


def tables(machine: Machine) -> list[tuple[str, str]]:
    return fmt.single_table(_rows(machine), COLUMNS)


def _channels(row: dict) -> int | None:
    found = re.search(r"x(\d+)->", str(row.get("shape", "")))
    return int(found.group(1)) if found else None


def _by_width(rows: list[dict], column: str) -> str:
    wide = [r.get(column) for r in rows if (_channels(r) or 0) >= WIDE]
    narrow = [r.get(column) for r in rows if _channels(r) is not None and _channels(r) < WIDE]
    parts = ([f"{fmt.span(wide)} at ≥ {WIDE} input channels"] if wide else []) + (
        [f"{fmt.span(narrow)} at < {WIDE} input channels"] if narrow else [])
    return ", ".join(parts) or fmt.MISSING


def facts(machine: Machine) -> dict[str, str]:
    sk = [r for r in _rows(machine) if str(r.get("impl", "")).startswith("SKConv2d")]
    fwd, train = where(sk, **{"pass": "fwd"}), where(sk, **{"pass": "fwd+bwd"})
    return {"fwd_speedup": _by_width(fwd, "speedup_vs_dense"), "train_speedup": _by_width(train, "speedup_vs_dense"),
            "sk_x_floor": fmt.span([r.get("x_floor") for r in sk]),
            "dense_x_floor": fmt.span([r.get("x_floor") for r in _rows(machine) if r.get("impl") == "nn.Conv2d"])}


AREA = Area(
    key="conv", title="Convolution",
    benches=(Bench("bench_conv",
                   baseline=Need("`speedup_vs_dense`: `nn.Conv2d`, same run", "speedup_vs_dense",
                                 any_field("speedup_vs_dense")),
                   floor=Need("`floor_ms`: bytes at measured bandwidth, or FLOPs at measured GEMM rate", "floor_ms",
                              any_field("floor_ms"))),),
    tables=tables, facts=facts)
