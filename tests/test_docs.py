"""Every ```python example in docs/*.md runs (CPU).

Each page runs in a fresh namespace; the blocks of one page run in order and share it, as a
reader pasting the page into one session would. Fences in other languages (bash, text) are
not run. A block that fails names its page and line.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.glob("*.md"))

# The pages this test owns; other pages in docs/ are collected too (every example runs).
REQUIRED = ["compile.md", "export.md", "index.md", "layers.md", "linalg.md", "ops.md", "sketch.md", "tuner.md"]

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)\s*(?P<info>[^\s`]*)[^`]*$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line, code) for every fenced block whose info string is ``python`` or ``py``."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, info, start = opening.group("fence"), opening.group("info").lower(), i + 1
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and not lines[i].strip().strip(fence[0])):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        if info in ("python", "py"):
            blocks.append((start, "\n".join(body) + "\n"))
    return blocks


@pytest.fixture(autouse=True)
def one_thread():
    """Small examples: one intra-op thread avoids OpenMP oversubscription on busy 2-core machines
    (see tests/test_seed_docs.py). Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_required_pages_exist():
    assert DOCS.is_dir(), f"{DOCS} is missing"
    names = {p.name for p in PAGES}
    assert set(REQUIRED) <= names, sorted(set(REQUIRED) - names)


def test_fence_parser():
    text = "x\n```python\na = 1\n\nb = a + 1\n```\n```bash\nls\n```\n````py\nc = '```'\n````\n"
    assert python_blocks(text) == [(2, "a = 1\n\nb = a + 1\n"), (10, "c = '```'\n")]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_examples_run(page, tmp_path, monkeypatch):
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    if page.name in REQUIRED:
        assert blocks, f"{page.name} has no python examples"
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    torch.manual_seed(0)
    # A real module, so torch.compile can resolve the examples' globals (torch 2.11 looks them up).
    module = types.ModuleType(f"docs_{page.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for line, code in blocks:
        try:
            exec(compile(code, f"<docs/{page.name} line {line}>", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"docs/{page.name}, python block at line {line} failed: "
                                 f"{type(exc).__name__}: {exc}\n--- block ---\n{code}") from exc
