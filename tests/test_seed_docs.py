"""The user's documentation pages (``shared/seeds``) run as written against Panther.

Pages covered here: 001 (Neural Networks API), 002 (Sketched Linear Layers tutorial),
003 (Neural Networks with Sketching tutorial) and the non-tuner examples of 000 (the FAQ).
The FAQ's SKAutoTuner example and the AutoTuner guide (004) belong to the tuner's tests
(``tests/test_seed_faq.py`` and the tuner's own files).

Every ``.. code-block:: python`` of a page runs unmodified, in page order, in one namespace
per page, as a reader pasting the page into one session would run it. Blocks in other
languages (bash, bibtex) are not Python and are not run. Names a page uses but never
defines get small stand-ins, injected into the namespace before the page runs; each is
listed in ``STAND_INS`` with the reason. The text of a block is never changed.

The seeds live beside the repository (``<repo>/../shared/seeds``), as in CI's checkout; the
tests skip, saying so, where that folder is absent.
"""

from __future__ import annotations


import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import panther  # noqa: F401  (registers torch.ops.panther.*)

from .seed_pages import code_blocks, seed_path

# Warnings the pages trigger with oversized configurations (e.g. the FAQ's "aggressive" SKLinear
# holds more sketch values than a dense weight): Panther's warning is correct, the page's
# example still runs. They are silenced here only to keep the test output readable.
QUIET = [
    pytest.mark.filterwarnings("ignore:SKLinear.*saves neither:UserWarning"),
    pytest.mark.filterwarnings("ignore:SKConv2d.*costs at least as much:UserWarning"),
]


def python_blocks(prefix: str) -> list[tuple[int, str]]:
    path = seed_path(prefix)
    return [(line, code) for language, line, code in code_blocks(path.read_text(encoding="utf-8"))
            if language == "python"]


def is_tuner_block(code: str) -> bool:
    """The FAQ's SKAutoTuner example: covered by the tuner's tests (tests/test_seed_faq.py)."""
    return "SKAutoTuner" in code


# ----------------------------------------------------------------------------- stand-ins
# Names a page calls but never defines, and the small objects given for them.

def tiny_mnist_like_loader() -> DataLoader:
    """For 001's "Gradient Computation" block, which loops ``for x, y in dataloader`` over a
    784 -> 10 classifier but never defines ``dataloader``: 64 random 784-feature samples with
    labels in 0..9, 4 batches of 16 (what a reader's MNIST loader yields, at a tiny size)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 784, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    return DataLoader(TensorDataset(X, y), batch_size=16, shuffle=False)


STAND_INS = {
    "001": {"dataloader": tiny_mnist_like_loader},
    "000": {},
    "002": {},
    "003": {},
}


def run_blocks(prefix: str, blocks, namespace: dict) -> dict:
    for line, code in blocks:
        try:
            exec(compile(code, f"<seed {prefix} line {line}>", "exec"), namespace)
        except Exception as exc:  # name the block in the failure, with its text
            raise AssertionError(f"seed page {prefix}, code block at line {line} failed: "
                                 f"{type(exc).__name__}: {exc}\n--- block ---\n{code}") from exc
    return namespace


def fresh_namespace(prefix: str) -> dict:
    namespace = {"__name__": f"seed_{prefix}"}
    for name, make in STAND_INS[prefix].items():
        namespace[name] = make()
    return namespace


# ----------------------------------------------------------------------------- tests

@pytest.fixture(autouse=True)
def one_thread():
    """The examples use small tensors, where intra-op threads only add synchronisation. On a
    busy 2-core machine (other processes, or a second pytest worker, on the same cores) two
    OpenMP threads made them 10-20x slower: measured 84 ms against 4 ms per optimizer step of
    002's MLP, and 130 s against 10 s for 003's training block. Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("prefix,expected", [("000", 4), ("001", 9), ("002", 13), ("003", 4)])
def test_pages_found_with_their_python_blocks(prefix, expected):
    """Guards the extraction: a page whose blocks stopped being found would otherwise pass."""
    assert len(python_blocks(prefix)) == expected


def test_code_block_parser_handles_languages_and_indentation():
    text = ("Title\n\n.. code-block:: bash\n\n   pip install x\n\n**Then**\n\n.. code-block:: python\n\n"
            "    def f():\n\n        return 1\n    y = f()\n\nAfter.\n")
    blocks = code_blocks(text)
    assert [(lang, line) for lang, line, _ in blocks] == [("bash", 3), ("python", 9)]
    assert blocks[1][2] == "def f():\n\n    return 1\ny = f()\n"


def _quiet(fn):
    for mark in QUIET:
        fn = mark(fn)
    return fn


@_quiet
def test_faq_examples_except_the_tuner_run_as_written(capsys):
    blocks = [(line, code) for line, code in python_blocks("000") if not is_tuner_block(code)]
    assert len(blocks) == 3
    torch.manual_seed(0)
    ns = run_blocks("000", blocks, fresh_namespace("000"))
    out = capsys.readouterr().out
    assert "S1s shape: torch.Size([4, 1024, 64])" in out
    assert "S2s shape: torch.Size([4, 64, 512])" in out
    assert "U1s shape: torch.Size([4, 64, 512])" in out
    assert "U2s shape: torch.Size([4, 1024, 64])" in out
    assert isinstance(ns["layer"], panther.nn.SKLinear)


@_quiet
def test_neural_networks_api_page_runs_as_written(capsys):
    blocks = python_blocks("001")
    torch.manual_seed(0)
    ns = run_blocks("001", blocks, fresh_namespace("001"))
    out = capsys.readouterr().out
    assert "Output shape: torch.Size([64, 256])" in out
    assert "Output shape: torch.Size([32, 128, 56, 56])" in out
    # the attention example returns no weights (random-feature attention never forms them)
    assert isinstance(ns["attention"], panther.nn.RandMultiHeadAttention) and ns["attn_weights"] is None
    # the training loop ran on the stand-in loader and produced gradients for the sketch factors
    first = ns["model"][0]
    assert first.S1s.grad is not None and first.U1s.requires_grad is False
    # the page defines compare_memory_usage() without calling it; it must work when a reader does
    ns["compare_memory_usage"]()
    out = capsys.readouterr().out
    assert "Standard parameters: 4,196,352" in out and "Sketched parameters:" in out
    # the separate-learning-rate optimizer found the S1s, S2s and bias parameters
    groups = ns["optimizer"].param_groups
    assert [len(g["params"]) for g in groups] == [3, 3, 3]


@_quiet
def test_sketched_linear_tutorial_runs_as_written(capsys):
    blocks = python_blocks("002")
    torch.manual_seed(0)
    ns = run_blocks("002", blocks, fresh_namespace("002"))
    out = capsys.readouterr().out
    assert "Standard layer parameters: 16,781,312" in out
    # learnable parameters: S1s + S2s + bias (the fixed U1s/U2s are buffers, not parameters)
    assert "Sketched layer parameters: 4,198,400" in out
    assert "Memory reduction: 75.0%" in out
    assert "Terms=2, Rank=32: Efficient=True, Reduction=62.5%" in out
    assert len(ns["original_losses"]) == 5 and len(ns["sketched_losses"]) == 5
    assert 0.0 <= ns["sketched_acc"] <= 1.0
    assert "Total learnable: 221,696" in out
    # ProgressiveSketchedLayer (defined, never used by the page) grows as its docstring says
    layer = ns["ProgressiveSketchedLayer"](64, 32, initial_terms=1, max_terms=2, initial_rank=2, max_rank=4)
    assert layer.increase_complexity() and layer.current_layer.num_terms == 2 and layer.current_layer.low_rank == 4
    assert not layer.increase_complexity()
    assert layer(torch.randn(3, 64)).shape == (3, 32)


@_quiet
def test_neural_networks_tutorial_runs_as_written(capsys):
    blocks = python_blocks("003")
    torch.manual_seed(0)
    ns = run_blocks("003", blocks, fresh_namespace("003"))
    out = capsys.readouterr().out
    assert "Parameter reduction:" in out
    # "Training Comparison": both MLPs trained 10 epochs on the page's well-separated classes
    assert "Final Results:" in out
    assert len(ns["standard_losses"]) == 10 and len(ns["sketched_losses"]) == 10
    assert ns["standard_acc"] > 0.9 and ns["sketched_acc"] > 0.9
    assert "Output shape: torch.Size([32, 100, 512])" in out
    # DocumentClassifier / train_document_classifier are defined but never called by the page
    model = ns["train_document_classifier"]()
    assert "Sketched layer parameters:" in capsys.readouterr().out
    model.eval()
    ids = torch.randint(0, 10000, (2, 16))
    assert model(ids).shape == (2, 20)
