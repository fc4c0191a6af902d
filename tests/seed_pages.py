"""The user's documentation pages (``shared/seeds``): where they are and their code blocks.

The seeds live beside the repository (``<repo>/../shared/seeds``), as in CI's checkout; tests
that need them skip with a clear reason when the folder is absent.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SEEDS = Path(__file__).resolve().parents[1].parent / "shared" / "seeds"

def seed_path(prefix: str) -> Path:
    if not SEEDS.is_dir():
        pytest.skip(f"seed documentation folder {SEEDS} not found (expected beside the repository, "
                    "as <repo>/../shared/seeds)")
    found = sorted(SEEDS.glob(f"{prefix}_*.txt"))
    if not found:
        pytest.skip(f"seed page {prefix}_*.txt not found in {SEEDS}")
    return found[0]


def code_blocks(text: str) -> list[tuple[str, int, str]]:
    """Every ``.. code-block:: <language>`` of a reStructuredText page: (language, line, code).

    The body is the run of lines indented deeper than the directive (blank lines included),
    dedented by its smallest indentation; ``line`` is the 1-based line of the directive.
    """
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = re.match(r"^(\s*)\.\. code-block::\s*(\S+)\s*$", lines[i])
        if not match:
            i += 1
            continue
        indent, language, start = len(match.group(1)), match.group(2), i + 1
        i += 1
        body = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        depth = min((len(ln) - len(ln.lstrip()) for ln in body if ln.strip()), default=0)
        code = "\n".join(ln[depth:] for ln in body).strip("\n") + "\n"
        blocks.append((language, start, code))
    return blocks


def seed_text(prefix: str) -> str:
    return seed_path(prefix).read_text(encoding="utf-8")


def python_code(text: str) -> list[str]:
    """The bodies of the page's ``.. code-block:: python`` directives, in order."""
    return [code for language, _, code in code_blocks(text) if language == "python"]
