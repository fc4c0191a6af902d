"""Formatting of numbers, ranges and tables for the generated BENCHMARKS.md.

Every function takes ``None`` (a value the JSON does not have) and returns ``MISSING``.
"""

from __future__ import annotations

import math
import re

from tabulate import tabulate

MISSING = "—"


def _absent(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def num(value, spec: str = ".3g") -> str:
    """A number; integers as they are (``65536``, not ``6.55e+04``)."""
    if _absent(value):
        return MISSING
    return str(value) if isinstance(value, int) else format(value, spec)


def times(value, spec: str = ".3g") -> str:
    """A ratio: ``12.8×``."""
    return MISSING if _absent(value) else f"{value:{spec}}×"


def pct(fraction, spec: str = ".1f") -> str:
    """A fraction as a percentage: ``0.994`` -> ``99.4%``."""
    return MISSING if _absent(fraction) else f"{100 * fraction:{spec}}%"


def span(values, spec: str = ".2g", unit: str = "×") -> str:
    """The range of some values, ``1.1–1.6×``; one value if they round alike; ``—`` if none."""
    values = [v for v in values if not _absent(v)]
    if not values:
        return MISSING
    lo, hi = format(min(values), spec), format(max(values), spec)
    return f"{lo}{unit}" if lo == hi else f"{lo}–{hi}{unit}"


def command(record: dict) -> str | None:
    """The command that wrote ``record``, without its ``--out``/``--json`` destination."""
    text = record.get("command")
    return None if text is None else re.sub(r"\s--(out|json)(=|\s+)\S+", "", text).strip()


def code(text) -> str:
    return MISSING if _absent(text) else f"`{text}`"


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A GitHub markdown table of ``rows``; ``columns`` are (row key, header). A key that a row
    lacks (or holds None) shows as ``—``."""
    body = [[row.get(key) for key, _ in columns] for row in rows]
    return tabulate(body, headers=[h for _, h in columns], floatfmt=".4g", tablefmt="github",
                    missingval=MISSING, disable_numparse=False)


def faster(ratios, spec: str = ".0f") -> str:
    """Relative speed from ratios other_time / this_time (> 1: this is faster): ``6–9% faster``,
    ``3% slower``, ``between 7% slower and 6% faster``."""
    changes = [100 * (r - 1) for r in ratios if not _absent(r)]
    if not changes:
        return MISSING
    lo, hi = min(changes), max(changes)
    if lo >= 0:
        return span([lo, hi], spec, "% faster")
    if hi <= 0:
        return span([-hi, -lo], spec, "% slower")
    return f"between {-lo:{spec}}% slower and {hi:{spec}}% faster"


def single_table(rows: list[dict], columns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """An area's tables when it has one untitled table: none without rows."""
    return [("", table(rows, columns))] if rows else []
