"""Selecting rows and values from a record's ``rows`` (lists of flat dicts)."""

from __future__ import annotations


def where(rows: list[dict], **equal) -> list[dict]:
    """Rows whose fields equal every keyword (a missing field never matches)."""
    return [r for r in rows if all(k in r and r[k] == v for k, v in equal.items())]


def value(rows: list[dict], column: str, **equal):
    """``column`` of the first row matching ``equal``, or None."""
    found = where(rows, **equal)
    return found[0].get(column) if found else None


def values(rows: list[dict], column: str) -> list:
    return [r[column] for r in rows if r.get(column) is not None]


def ratio(a, b):
    """a / b, None when either is missing or b is 0."""
    return None if a is None or b in (None, 0) else a / b


def groups(rows: list[dict], key: str) -> dict:
    """Rows grouped by ``key``, groups and rows in their first-seen order."""
    out: dict = {}
    for r in rows:
        out.setdefault(r.get(key), []).append(r)
    return out
