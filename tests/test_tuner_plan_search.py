"""Per-node plan search (the engine behind ``tune=True``) on an MLP and a small transformer."""

import copy

import pytest
import torch
from torch import nn

import panther as pr
from panther.plan import Plan
from panther.tuner import PlanNode, plot_pareto, search_plan
from panther.tuner.module_plan import apply_plan, relative_error, tune_module

from .conftest import BACKEND


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


def held_out_error(model, plan, held, cal):
    with torch.no_grad():
        refs = [model(b) for b in held]
        sketched = pr.sketch_model(copy.deepcopy(model), plan, calibration=cal)  # asvd entries calibrate on cal
        return relative_error([sketched(b) for b in held], refs), sketched


@pytest.mark.parametrize("make, shape", [(mlp, (32, 128)), (transformer, (4, 16, 64))])
def test_tuned_plan_meets_budget_on_held_out_data(make, shape):
    model = make()
    cal, held = batches(shape, 2, 1), batches(shape, 2, 2)
    result = tune_module(model, cal, holdout=held, max_error=0.05, trials=8, seed=0)
    sketched_names = list(result.plan.sketched())
    assert sketched_names, result.summary()
    assert result.cost < result.dense_cost
    err, sketched = held_out_error(model, result.plan, held, cal)
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
    forward_calls = []
    model = mlp()
    model.register_forward_hook(lambda *a: forward_calls.append(1))
    for kwargs, words in (({"max_error": -1}, "max_error must be"), ({"max_error": 0.1, "inits": ["qr"]}, "inits"),
                          ({"max_error": 0.1, "trials": -2}, "trials must be")):
        with pytest.raises(ValueError, match=words):
            tune_module(model, [torch.randn(4, 128)], **kwargs)
    assert not forward_calls  # checked before any work
    with pytest.raises(ValueError, match="plan names layers that do not exist"):
        apply_plan(mlp(), Plan({"nope": None}))


def test_backend_tune_option_meets_budget_on_held_out_inputs():
    model = mlp()
    x, held = batches((32, 128), 1, 3)[0], batches((32, 128), 1, 4)[0]
    options = {"tune": True, "max_error": 0.05, "trials": 5, "holdout": [[held]]}
    with torch.no_grad():
        ref, ref_held = model(x), model(held)
        compiled = torch.compile(model, backend=BACKEND, options=options)
        y, y_held = compiled(x), compiled(held)
    assert float((y - ref).norm() / ref.norm()) <= 0.05
    assert float((y_held - ref_held).norm() / ref_held.norm()) <= 0.05
    assert float((y - ref).norm() / ref.norm()) > 1e-4  # something was sketched


def test_backend_tune_budget_zero_is_dense():
    model = mlp()
    x = batches((8, 128), 1, 3)[0]
    with torch.no_grad():
        y = torch.compile(model, backend=BACKEND, options={"tune": True, "max_error": 0.0})(x)
        torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)


def test_backend_tune_calibration_batches_drive_the_search():
    model = mlp()
    x = batches((32, 128), 1, 3)[0]
    calib = [[b] for b in batches((32, 128), 2, 5)]
    options = {"tune": True, "max_error": 0.05, "trials": 5, "calibration": calib}
    with torch.no_grad():
        compiled = torch.compile(model, backend=BACKEND, options=options)
        compiled(x)
        for (b,) in calib:  # the budget holds on the calibration batches it was tuned on
            ref = model(b)
            assert float((compiled(b) - ref).norm() / ref.norm()) <= 0.05
    torch.compiler.reset()
    bad = {"tune": True, "max_error": 0.05, "trials": 2, "calibration": [[x, x]], "fallback": False}
    with torch.no_grad(), pytest.raises(Exception, match="option calibration: each entry must hold the model's 1"):
        torch.compile(model, backend=BACKEND, options=bad)(x)


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


# --- init per node: activation-aware SVD where the calibration activations make it better ---------

def correlated(n, seed, dim=64, factors=6):
    """Inputs with correlated features: ``factors`` latent directions plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(factors, dim, generator=torch.Generator().manual_seed(99))
    return torch.randn(n, factors, generator=g) @ mixing + 0.01 * torch.randn(n, dim, generator=g)


def full_rank_linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64)).eval()


def test_tuner_picks_asvd_where_it_beats_svd():
    model = full_rank_linear()
    cal, held = [correlated(128, 1), correlated(128, 2)], [correlated(128, 3)]
    result = tune_module(model, cal, holdout=held, max_error=0.05, trials=4)
    spec = result.plan.get("0")
    assert spec is not None and spec.init == "asvd", result.summary()
    # at every rank both were tried and asvd was the better (the weight is full rank: svd cannot fit)
    assert result.sensitivity[f"0|{spec.low_rank}|asvd"] < 0.2 * result.sensitivity[f"0|{spec.low_rank}|svd"]
    err, sketched = held_out_error(model, result.plan, held, cal)
    assert err <= 0.05 and err == pytest.approx(result.holdout_error, rel=1e-4)
    # without asvd among the inits nothing fits the budget
    assert tune_module(model, cal, max_error=0.05, trials=2, inits=("svd",)).plan.sketched() == {}


def test_asvd_is_offered_only_with_enough_calibration_rows():
    model = full_rank_linear()
    few = [correlated(16, 1)]  # 16 rows < 64 input features: asvd would fit the rows, not the layer
    result = tune_module(model, few, max_error=0.05, trials=2)
    assert not any(key.endswith("|asvd") for key in result.sensitivity)
    assert result.plan.sketched() == {}


def test_backend_tune_chooses_asvd_records_it_and_sketch_model_agrees(tmp_path, capsys):
    model = full_rank_linear()
    x = correlated(128, 5)
    cal = [(correlated(128, 1),), (correlated(128, 2),)]
    path = tmp_path / "plan.json"
    options = {"tune": True, "max_error": 0.05, "trials": 3, "calibration": cal, "save_plan": str(path)}
    with torch.no_grad():
        y = torch.compile(model, backend=BACKEND, options=options)(x)
        ref = model(x)
    assert "panther tune" in capsys.readouterr().err  # the progress bar (on by default)
    plan = pr.Plan.load(path)  # the JSON round trip keeps the init
    assert plan.get("0") is not None and plan.get("0").init == "asvd", plan
    assert 1e-4 < float((y - ref).norm() / ref.norm()) <= 0.05  # sketched, within budget
    with torch.no_grad():  # the module swap with the same plan and calibration: the same layer
        swapped = pr.sketch_model(copy.deepcopy(model), plan, calibration=[b for (b,) in cal])(x)
    torch.testing.assert_close(y, swapped, rtol=1e-5, atol=1e-5)


def test_backend_tune_progress_bar_can_be_silenced(capsys):
    model = mlp()
    x = batches((32, 128), 1, 3)[0]
    options = {"tune": True, "max_error": 0.05, "trials": 2}
    pr.report(model, x, options={**options, "tune_progress": False})
    assert "panther tune" not in capsys.readouterr().err
    pr.report(model, x, options=options)
    assert "panther tune" in capsys.readouterr().err


@pytest.mark.parametrize("key, value, error, words", [
    ("tune_progress", "no", TypeError, "option 'tune_progress' must be a bool"),
    ("max_error", -0.1, ValueError, "option 'max_error' must be a number >= 0"),
    ("trials", 2.5, ValueError, "option 'trials' must be an int >= 0"),
    ("tune_inits", ["svd", "qr"], ValueError, "option 'tune_inits' must be a non-empty list"),
    ("objective", "time", ValueError, "option 'objective' must be one of"),
    ("holdout", torch.zeros(2), TypeError, "option 'holdout' must be a non-empty list of input tuples"),
    ("calibration", [("x",)], TypeError, "option 'calibration': entry 0 must be a tuple of the model's tensor"),
])
def test_backend_tune_options_are_checked_before_any_work(key, value, error, words):
    from panther.passes import parse_options

    with pytest.raises(error, match=words):
        parse_options({"tune": True, key: value})


def test_backend_calibration_must_match_the_traced_inputs():
    model = full_rank_linear()
    options = {"tune": True, "max_error": 0.05, "trials": 2, "calibration": [(torch.randn(8, 64),)],
               "fallback": False, "tune_progress": False}
    with torch.no_grad(), pytest.raises(Exception, match=r"option calibration: entry 0, input 0 is .*\(8, 64\)"):
        pr.report(model, torch.randn(16, 64), options=options)


def test_plan_node_inits_follow_the_kind():
    assert PlanNode("fc", "linear", {}).choices(("svd", "asvd", "sketch")) == ("svd", "asvd", "sketch")
    assert PlanNode("fc", "linear", {}, inits=["svd"]).choices(("svd", "asvd")) == ("svd",)
    assert PlanNode("conv", "conv2d", {}).choices(("svd", "asvd")) == ("svd", "asvd")  # patches' statistic
    assert PlanNode("conv", "conv2d", {}, inits=("sketch", "svd")).choices(("svd", "asvd")) == ("svd",)
    assert PlanNode("attn", "attention", {}).choices(("svd",)) == ("sketch",)  # random features: no init
    with pytest.raises(ValueError, match="a attention node takes"):
        PlanNode("attn", "attention", {}, inits=("asvd",))
    with pytest.raises(ValueError, match="inits must be a non-empty list"):
        search_plan([PlanNode("fc", "linear", {"in_features": 8, "out_features": 8})], lambda p: 0.0,
                     max_error=0.1, inits=())


def test_backend_latency_objective_times_every_node_at_its_traced_shapes(monkeypatch):
    from panther.tuner.costs import LatencyCost

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 32, 3, padding=1)
            self.fc = nn.Linear(32, 64)

        def forward(self, img):
            h = self.conv(img).flatten(2).transpose(1, 2)  # [B, HW, 32]
            q = self.fc(h).unflatten(-1, (2, 32)).transpose(1, 2)  # [B, 2 heads, HW, 32]
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    seen = {}
    measurable = LatencyCost.measurable

    def spy(self, node):
        seen[node.name] = (node.sizes, measurable(self, node))
        return measurable(self, node)

    monkeypatch.setattr(LatencyCost, "measurable", spy)
    options = {"tune": True, "objective": "latency", "max_error": 0.5, "trials": 2, "tune_progress": False,
               "kinds": ("linear", "conv2d", "attention")}
    pr.report(Net().eval(), torch.randn(2, 8, 8, 8), options=options)
    assert len(seen) == 3 and all(ok for _, ok in seen.values()), seen  # conv, fc and the attention node
    assert seen["conv"][0]["input_shape"] == (2, 8, 8, 8) and seen["conv"][0]["pixels"] == 2 * 64
    assert seen["fc"][0]["rows"] == 2 * 64
    attention = [sizes for sizes, _ in seen.values() if "q_len" in sizes]
    assert attention and attention[0]["batch"] == 2 and attention[0]["q_len"] == 64 and attention[0]["heads"] == 2


def test_a_cheaper_plan_failing_held_out_data_does_not_hide_a_dearer_one_that_holds():
    node = PlanNode("a", "linear", {"in_features": 256, "out_features": 256, "rows": 8})

    def calibration_error(plan):
        return sum(0.5 / s.low_rank for s in plan.sketched().values())

    def held_out_error(plan):  # rank 16 overfits the calibration data; rank 32 generalises
        return 1.0 if any(s.low_rank <= 16 for s in plan.sketched().values()) else calibration_error(plan)

    result = search_plan([node], calibration_error, holdout=held_out_error, max_error=0.05, trials=5)
    assert result.plan.get("a") == pr.SketchSpec(1, 32, "svd"), result.summary()
    assert result.holdout_error == pytest.approx(0.5 / 32)


def test_sensitivity_is_measured_once_for_a_sweep_of_budgets_in_one_storage():
    import optuna

    nodes = [PlanNode(f"n{i}", "linear", {"in_features": 256, "out_features": 256, "rows": 8}) for i in range(2)]
    alone = []

    def evaluate(plan):
        specs = plan.sketched()
        if len(specs) == 1:
            alone.append(next(iter(specs.items())))
        return sum(0.5 / s.low_rank for s in specs.values())

    storage = optuna.storages.InMemoryStorage()
    search_plan(nodes, evaluate, max_error=0.05, trials=0, storage=storage, fingerprint="w1")  # sensitivity only
    first = list(alone)
    search_plan(nodes, evaluate, max_error=0.1, trials=0, storage=storage, fingerprint="w1")
    again = alone[len(first):]
    assert first and again and not set(again) & set(first)  # only the lower ranks the larger budget admits
    assert all(spec.low_rank < min(s.low_rank for _, s in first) for _, spec in again)
    search_plan(nodes, evaluate, max_error=0.05, trials=0, storage=storage, fingerprint="w2")
    assert alone[len(first) + len(again):] == first  # other weights or data: measured again
