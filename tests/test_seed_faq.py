"""The FAQ page's Python examples (seed doc 000) run as written.

The tuner example uses a ``model`` and an ``accuracy_eval_func`` that the page leaves to the
reader; the test supplies small ones (a two-layer model with ``layer1``/``layer2`` and an
accuracy = agreement of the model's outputs with the dense model's).
"""


import pytest
import torch
from torch import nn

from .seed_pages import python_code, seed_text


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Linear(256, 256)
        self.act = nn.ReLU()
        self.layer2 = nn.Linear(256, 192)

    def forward(self, x):
        return self.layer2(self.act(self.layer1(x)))


def make_eval(model):
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)

    def accuracy_eval_func(m):
        with torch.no_grad():
            out = m(x)
        return 1.0 - float((out - reference).norm() / reference.norm())

    return accuracy_eval_func


def test_faq_blocks_found():
    blocks = python_code(seed_text("000"))
    assert any("SKAutoTuner" in b for b in blocks)
    assert len(blocks) >= 4


@pytest.mark.filterwarnings("ignore:SKLinear.*saves neither")
def test_faq_python_examples_run_as_written(capsys):
    torch.manual_seed(0)
    model = TwoLayer()
    accuracy_eval_func = make_eval(model)
    # one namespace for the page, as in a reader's session (a later block uses an earlier import)
    namespace = {"__name__": "faq_example", "model": model, "accuracy_eval_func": accuracy_eval_func}
    for block in python_code(seed_text("000")):
        exec(compile(block, "<faq example>", "exec"), namespace)
        if "SKAutoTuner" in block:
            best = namespace["best_params"]
            assert set(best) == {"layer1", "layer2"}
            for entry in best.values():
                assert entry["params"]["num_terms"] in [1, 2, 4, 8]
                assert entry["params"]["low_rank"] in [32, 64, 128]
            tuner = namespace["tuner"]
            # 12 grid points per layer: the search stops when all are measured, none twice
            for key in ("layer1", "layer2"):
                evaluated = [r for r in tuner.results[key] if not r["cached"]]
                assert len(evaluated) == 12
                assert len({str(sorted(r["params"].items())) for r in evaluated}) == 12
                best_acc = max(r["accuracy"] for r in evaluated)
                assert best[key]["accuracy"] == best_acc
            # the model is back to dense after tuning
            assert isinstance(model.layer1, nn.Linear) and isinstance(model.layer2, nn.Linear)
    out = capsys.readouterr().out
    assert "S1s shape: torch.Size([4, 1024, 64])" in out
