"""Per-node plan search (the engine behind ``tune=True``) on an MLP and a small transformer."""

import copy

import pytest
import torch
from torch import nn

import panther as pr
from panther.plan import Plan
from panther.tuner import PlanNode, plot_pareto, search_plan
from panther.tuner.module_plan import apply_plan, relative_error, tune_module


def lowrank_(linear, rank, noise=0.002):
    o, i = linear.weight.shape
    with torch.no_grad():
        linear.weight.copy_((torch.randn(o, rank) @ torch.randn(rank, i)) / (rank * i) ** 0.5
                            + noise * torch.randn(o, i))
    return linear


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(lowrank_(nn.Linear(128, 256), 12), nn.GELU(), lowrank_(nn.Linear(256, 256), 20), nn.GELU(),
                         lowrank_(nn.Linear(256, 64), 8)).eval()


class Block(nn.Module):
    """A pre-norm transformer block (nn.TransformerEncoderLayer's eval fast path reads
    ``linear1.weight`` directly, so its Linear layers cannot be swapped for SKLinear)."""

    def __init__(self, d=64, heads=4, hidden=256):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.fc1, self.fc2 = lowrank_(nn.Linear(d, hidden), 10), lowrank_(nn.Linear(hidden, d), 10)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


def transformer():
    torch.manual_seed(0)
    return nn.Sequential(Block(), lowrank_(nn.Linear(64, 128), 8)).eval()


def batches(shape, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def held_out_error(model, plan, held):
    with torch.no_grad():
        refs = [model(b) for b in held]
        sketched = apply_plan(copy.deepcopy(model), plan)
        return relative_error([sketched(b) for b in held], refs), sketched


@pytest.mark.parametrize("make, shape", [(mlp, (32, 128)), (transformer, (4, 16, 64))])
def test_tuned_plan_meets_budget_on_held_out_data(make, shape):
    model = make()
    cal, held = batches(shape, 2, 1), batches(shape, 2, 2)
    result = tune_module(model, cal, holdout=held, max_error=0.05, trials=8, seed=0)
    sketched_names = list(result.plan.sketched())
    assert sketched_names, result.summary()
    assert result.cost < result.dense_cost
    err, sketched = held_out_error(model, result.plan, held)
    assert err <= 0.05 and err == pytest.approx(result.holdout_error, rel=1e-4)
    for name in sketched_names:
        assert isinstance(sketched.get_submodule(name), pr.nn.SKLinear)
    assert "attn.out_proj" not in " ".join(result.plan.entries)  # never a candidate
    assert "decision" in result.summary()


def test_budget_zero_gives_dense_plan():
    model = mlp()
    result = tune_module(model, batches((8, 128), 1, 1), max_error=0.0)
    assert result.plan.sketched() == {} and set(result.plan.entries) == {"0", "2", "4"}


def test_nothing_fits_gives_dense_plan_with_message():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))  # full rank: nothing fits 1e-4
    result = tune_module(model, batches((8, 64), 1, 1), max_error=1e-4, trials=4)
    assert result.plan.sketched() == {} and "dense" in result.message


def test_engine_with_synthetic_error_model_and_resume(tmp_path):
    # error of a plan = sum over nodes of 1/k (a known additive model); cost = flops
    nodes = [PlanNode(f"n{i}", "linear", {"in_features": 256, "out_features": 256, "rows": 8}) for i in range(3)]
    calls = []

    def evaluate(plan):
        calls.append(plan)
        return sum(0.5 / s.low_rank for s in plan.sketched().values())

    url = f"sqlite:///{tmp_path / 'plan.db'}"
    result = search_plan(nodes, evaluate, max_error=0.05, trials=10, storage=url, seed=0)
    assert result.error <= 0.05 and result.plan.sketched()
    # every node with k >= 32 fits alone (0.5/32 < 0.05); the best plan spends the budget
    assert sum(0.5 / s.low_rank for s in result.plan.sketched().values()) <= 0.05
    n_first = len(calls)
    again = search_plan(nodes, evaluate, max_error=0.05, trials=10, storage=url, seed=0)
    assert len(calls) == n_first  # a finished search for the same nodes and options is reused
    assert again.plan == result.plan
    png = plot_pareto(result, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png


def test_bad_arguments():
    node = PlanNode("a", "linear", {"in_features": 8, "out_features": 8})
    with pytest.raises(ValueError, match="max_error must be a number >= 0"):
        search_plan([node], lambda p: 0.0, max_error=-1)
    with pytest.raises(ValueError, match="cost must be"):
        search_plan([node], lambda p: 0.0, max_error=0.1, cost="time")
    with pytest.raises(ValueError, match="kind must be one of"):
        PlanNode("a", "pool", {})
    with pytest.raises(ValueError, match="distinct names"):
        search_plan([node, node], lambda p: 0.0, max_error=0.1)
    with pytest.raises(ValueError, match="calibration must be a non-empty list"):
        tune_module(mlp(), [], max_error=0.1)
    with pytest.raises(ValueError, match="plan names layers that do not exist"):
        apply_plan(mlp(), Plan({"nope": None}))


def test_backend_tune_option_meets_budget_on_held_out_inputs():
    model = mlp()
    x, held = batches((32, 128), 1, 3)[0], batches((32, 128), 1, 4)[0]
    options = {"tune": True, "max_error": 0.05, "trials": 5, "holdout": [[held]]}
    with torch.no_grad():
        ref, ref_held = model(x), model(held)
        compiled = torch.compile(model, backend="panther", options=options)
        y, y_held = compiled(x), compiled(held)
    assert float((y - ref).norm() / ref.norm()) <= 0.05
    assert float((y_held - ref_held).norm() / ref_held.norm()) <= 0.05
    assert float((y - ref).norm() / ref.norm()) > 1e-4  # something was sketched


def test_backend_tune_budget_zero_is_dense():
    model = mlp()
    x = batches((8, 128), 1, 3)[0]
    with torch.no_grad():
        y = torch.compile(model, backend="panther", options={"tune": True, "max_error": 0.0})(x)
        torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)


def test_backend_tune_calibration_batches_drive_the_search():
    model = mlp()
    x = batches((32, 128), 1, 3)[0]
    calib = [[b] for b in batches((32, 128), 2, 5)]
    options = {"tune": True, "max_error": 0.05, "trials": 5, "calibration": calib}
    with torch.no_grad():
        compiled = torch.compile(model, backend="panther", options=options)
        compiled(x)
        for (b,) in calib:  # the budget holds on the calibration batches it was tuned on
            ref = model(b)
            assert float((compiled(b) - ref).norm() / ref.norm()) <= 0.05
    torch.compiler.reset()
    bad = {"tune": True, "max_error": 0.05, "trials": 2, "calibration": [[x, x]], "fallback": False}
    with torch.no_grad(), pytest.raises(Exception, match="option calibration: each entry must hold the model's 1"):
        torch.compile(model, backend="panther", options=bad)(x)


def test_stored_search_is_reused_only_for_the_same_weights(tmp_path):
    from panther.tuner.backend_hook import weights_fingerprint

    class Cand:
        def __init__(self, name, param):
            self.name, self.param = name, param

    w = torch.randn(64, 32)
    same = weights_fingerprint([Cand("fc", w.clone())])
    assert weights_fingerprint([Cand("fc", w)]) == same
    w2 = w.clone()
    w2[3, 5] += 1e-3
    assert weights_fingerprint([Cand("fc", w2)]) != same  # retrained weights: a new study
    assert weights_fingerprint([Cand("other", w)]) != same
