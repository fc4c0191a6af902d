"""The AutoTuner guide's examples (seed doc 004) run as written, with small stand-ins.

How the page is executed:

* all Python blocks run in order in one namespace (later blocks use earlier definitions);
* the seed file stores docstring quotes escaped (``\\"\\"\\"...\\"\\"\\""``); they are turned
  back into ``\"\"\"``. Nothing else in the code is changed;
* functions the page leaves to the reader (``train_and_evaluate_model``, ``create_model``,
  ``evaluate_model_function``, ...) are small stand-ins defined here;
* the page's own evaluation functions that train for seconds per call (``evaluate_linear_layer``,
  ``evaluate_mnist_model``, ``multi_objective_evaluation``) are compiled as written, called once
  as written where they can run offline, and the tuners (run as written) call a fast stand-in
  of the same signature. ``PANTHER_SLOW_TESTS=1`` also runs the first example fully as written;
* ``evaluate_mnist_model`` downloads MNIST (no network here): only its stand-in runs. When
  torchvision cannot be imported (it is not a Panther dependency) a stub module lets the block's
  imports run;
* the PyTorch Lightning block is skipped where ``pytorch_lightning`` is not installed.
"""

import ast
import math
import os
import sys
import types

import pytest
import torch
from torch import nn

import panther as pr

from .seed_pages import python_code, seed_text

SLOW = os.environ.get("PANTHER_SLOW_TESTS") == "1"
STANDIN = "_as_written"


def unescape(block):
    return block.replace('\\"\\"\\""', '"""').replace('\\"\\"\\"', '"""')


def run_block(block, namespace, swap=()):
    """Executes ``block``; functions named in ``swap`` are defined as ``<name>_as_written``
    so that the stand-in already in ``namespace`` under ``<name>`` is what later code calls."""
    tree = ast.parse(unescape(block))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in swap:
            node.name += STANDIN
    exec(compile(tree, "<autotuner guide>", "exec"), namespace)


def blocks():
    found = python_code(seed_text("004"))
    assert len(found) == 11, "the guide's Python blocks changed; update this test"
    return found


# -- stand-ins --------------------------------------------------------------------------------------
def fake_accuracy(num_terms, low_rank):
    """Smooth, known optimum at num_terms=6, low_rank=64 (value 0.95)."""
    return 0.95 - 0.002 * (num_terms - 6) ** 2 - 0.5 * (math.log2(low_rank) - 6) ** 2 / 9


def small_model(num_terms, low_rank):
    return nn.Sequential(pr.nn.SKLinear(64, 48, num_terms=num_terms, low_rank=low_rank), nn.ReLU(), nn.Linear(48, 10))


def standins():
    def evaluate_linear_layer(num_terms, low_rank):
        assert isinstance(num_terms, int) and isinstance(low_rank, int)
        return fake_accuracy(num_terms, low_rank)

    def multi_objective_evaluation(num_terms, low_rank):
        return 0.7 * fake_accuracy(num_terms, low_rank) + 0.3

    def train_and_evaluate_model(model):
        with torch.no_grad():
            model(torch.randn(4, model[0].in_features))
        return 0.8

    def create_model(num_terms, low_rank):
        return small_model(max(1, num_terms // 8), max(1, low_rank // 64))

    def quick_train_and_evaluate(model):
        return 0.7

    def evaluate_model_function(num_terms, low_rank):
        return fake_accuracy(num_terms, low_rank)

    def create_small_model(num_terms, low_rank):
        return small_model(num_terms, low_rank)

    def quick_train(model, max_epochs, max_batches_per_epoch):
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(max_epochs):
            for _ in range(2):
                opt.zero_grad()
                model(torch.randn(8, 64)).square().mean().backward()
                opt.step()

    def quick_evaluate(model, validation_subset_size):
        return 0.5

    val_accs = iter([0.5, 0.6, 0.6, 0.6, 0.6, 0.9])

    def train_one_epoch(model):
        pass

    def validate_model(model):
        return next(val_accs)

    def expensive_evaluation_function(num_terms, low_rank):
        return fake_accuracy(num_terms, low_rank)

    def generate_parameter_grid():
        return [{"num_terms": t, "low_rank": r} for t in (2, 6) for r in (32, 64)]

    import numpy as np

    return {k: v for k, v in locals().items() if not k.startswith("_")}


def torchvision_stub(monkeypatch):
    try:
        import torchvision  # noqa: F401
        return
    except Exception:
        pass
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)  # a half-imported broken install

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision stub: MNIST is not available offline")

    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.datasets = types.ModuleType("torchvision.datasets")
    for name in ("Compose", "ToTensor", "Normalize"):
        setattr(tv.transforms, name, unavailable)
    tv.datasets.MNIST = unavailable
    for name, module in (("torchvision", tv), ("torchvision.transforms", tv.transforms),
                         ("torchvision.datasets", tv.datasets)):
        monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture
def page(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    torch.manual_seed(0)
    return {"__name__": "autotuner_guide", **standins()}


# -- the page, block by block -----------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_guide_examples_run(page, capsys):
    b = blocks()

    # 1. Simple linear layer optimisation: evaluate_linear_layer runs once as written (a cheap
    #    configuration); the tuner as written calls the stand-in and must find its optimum.
    run_block(b[0], page, swap={"evaluate_linear_layer"})
    acc = page["evaluate_linear_layer" + STANDIN](2, 16)
    assert 0.0 <= acc <= 1.0
    best_params, best_score = page["best_params"], page["best_score"]
    assert set(best_params) == {"num_terms", "low_rank"}
    assert all(isinstance(v, int) for v in best_params.values())
    assert 2 <= best_params["num_terms"] <= 16 and 16 <= best_params["low_rank"] <= 128
    assert best_score >= fake_accuracy(6, 64) - 0.02  # near the known optimum within 25 evaluations
    assert "Best accuracy:" in capsys.readouterr().out
    tuner = page["tuner"]
    assert len(tuner.get_evaluation_history()) == 25

    # 2. MNIST pipeline (needs a download): the guide's model class is built and run by the stand-in.
    with pytest.MonkeyPatch.context() as mp:  # the stub exists only while the block imports it
        torchvision_stub(mp)
        run_block(b[1], page, swap={"evaluate_mnist_model"})

    built = []

    def evaluate_mnist_model(layer1_terms, layer1_rank, layer2_terms, layer2_rank):
        if len(built) < 3:  # the guide's network, built and run for the first few configurations
            net = page["SketchedMNISTNet"](layer1_terms, layer1_rank, layer2_terms, layer2_rank)
            with torch.no_grad():
                assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
            built.append(net)
        return fake_accuracy(layer1_terms, layer1_rank) + fake_accuracy(layer2_terms, 2 * layer2_rank)

    page["evaluate_mnist_model"] = evaluate_mnist_model
    page["__name__"] = "__main__"
    run_block("if __name__ == '__main__':\n    best_params, best_score = tune_mnist_model()\n", page)
    page["__name__"] = "autotuner_guide"
    assert set(page["best_params"]) == {"layer1_terms", "layer1_rank", "layer2_terms", "layer2_rank"}
    assert "AutoTuning completed!" in capsys.readouterr().out

    # 3. Multi-objective: multi_objective_evaluation as written once (real model, real timing loop).
    run_block(b[2], page, swap={"multi_objective_evaluation"})
    combined = page["multi_objective_evaluation" + STANDIN](1, 8)
    assert 0.0 < combined <= 1.0
    assert set(page["best_params"]) == {"num_terms", "low_rank"}

    # 4. Memory-constrained: the objective is a lambda taking (nt, lr) positionally. The page only
    #    builds the tuner; each call of its objective runs gc.collect() (~0.3 s), so instead of a
    #    full search the objective is called through the tuner for both of its branches.
    run_block(b[3], page)
    memory_tuner = page["memory_tuner"]
    assert page["estimate_parameter_count"](1, 8) == 2 * 8 * (1536 + 768 + 266)
    assert page["memory_constrained_evaluation"](32, 512, max_memory_gb=0.1) == 0.0  # early rejection
    assert memory_tuner._call({"num_terms": 1, "low_rank": 8}) > 0.0  # measured path (psutil or CUDA)
    assert memory_tuner.n_trials == 52

    # 5. Progressive two-phase tuning.
    run_block(b[4], page)
    params, score = page["progressive_autotuning"]()
    assert all(isinstance(v, int) for v in params.values())
    assert score >= fake_accuracy(6, 64) - 0.02

    # 6. PyTorch Lightning: see test_guide_lightning_block.

    # 7-10. Best practices: the functions run with the stand-ins.
    run_block(b[6], page)
    assert page["quick_evaluation_for_tuning"](2, 16) == 0.5
    run_block(b[7], page)
    assert page["evaluation_with_early_stopping"](2, 16) == 0.6
    run_block(b[8], page)
    assert page["cached_evaluation"](6, 64) == page["cached_evaluation"](6, 64) == fake_accuracy(6, 64)
    run_block(b[9], page)
    import joblib

    with joblib.parallel_config(backend="threading"):  # no worker processes re-importing torch in CI
        best, value = page["parallel_autotuning"]()
    assert best == {"num_terms": 6, "low_rank": 64} and value == fake_accuracy(6, 64)

    # 11. Analysing results (pandas + matplotlib) with the first example's tuner.
    pytest.importorskip("pandas")
    pytest.importorskip("matplotlib")
    run_block(b[10], page)
    page["analyze_tuning_results"](tuner)
    assert "Parameter correlations:" in capsys.readouterr().out


def test_guide_lightning_block(page):
    pytest.importorskip("pytorch_lightning", reason="pytorch_lightning is not installed (the Lightning block "
                                                    "of the guide needs it)")
    run_block(blocks()[5], page)
    assert page["lightning_tuner"].n_trials == 26


@pytest.mark.skipif(not SLOW, reason="the first example fully as written trains 25 models (~1 min); "
                                     "set PANTHER_SLOW_TESTS=1")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_guide_first_example_fully_as_written(capsys):
    namespace = {"__name__": "autotuner_guide"}
    torch.manual_seed(0)
    run_block(blocks()[0], namespace)
    assert 0.0 <= namespace["best_score"] <= 1.0
    assert "Best accuracy:" in capsys.readouterr().out
