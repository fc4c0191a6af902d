"""Writing BENCHMARKS.md and its plots from a results folder."""

from __future__ import annotations

from pathlib import Path

from .. import plots
from .document import Plot, document
from .results import load


def render(results: str | Path, out: str | Path, img: str | Path | None = None,
           command: str | None = None) -> tuple[str, list[Plot]]:
    """The page for ``out`` and the plots it links (under ``img``, default ``docs/img`` beside
    ``out``), without writing anything."""
    out = Path(out)
    img = out.parent / "docs" / "img" if img is None else Path(img)
    command = command or f"python -m benchmarks.report --results {results} --out {out} --img {img}"
    return document(load(results), command, img, out.parent)


def build(results: str | Path, out: str | Path, img: str | Path | None = None) -> str:
    """Writes the page to ``out`` and draws its plots; returns the page."""
    page, figures = render(results, out, img)
    for figure in figures:
        plots.draw(figure.name, figure.machine.records[plots.PLOTS[figure.name][0]], str(figure.path))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(page)
    return page
