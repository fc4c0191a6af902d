"""SKAutoTuner (the earlier Panther's layer tuner) and its pieces."""

import json
import math

import pytest
import torch
from torch import nn

import panther as pr
from panther.plan import Plan, SketchSpec
from panther.tuner import (Categorical, Float, Int, LayerConfig, LayerNameResolver, ModelVisualizer, OptunaSearch,
                           SKAutoTuner, TuningConfigs, auto_space, get_param_choices, get_sketched_class)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(96, 128)
        self.fc2 = nn.Linear(128, 96)
        self.blocks = nn.ModuleList([nn.Linear(96, 96) for _ in range(3)])
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = self.fc2(h)
        for b in self.blocks:
            h = h + b(h)
        return h


class Quantized(nn.Linear):
    """A subclass of nn.Linear: still a candidate."""


def accuracy_of(model):
    x = torch.randn(32, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)

    def accuracy(m):
        with torch.no_grad():
            return 1.0 - float((m(x) - ref).norm() / ref.norm())

    return accuracy


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net()


def test_resolver_rules(net):
    r = LayerNameResolver(net)
    assert r.resolve("fc1") == ["fc1"]
    assert r.resolve(r"blocks\.\d") == ["blocks.0", "blocks.1", "blocks.2"]
    assert r.resolve(["fc2", "fc1", "fc1"]) == ["fc1", "fc2"]  # model order, no duplicates
    assert r.resolve({"type": "Linear", "range": [0, 2]}) == ["fc1", "fc2"]
    assert r.resolve({"contains": "blocks", "indices": [2, 0]}) == ["blocks.2", "blocks.0"]
    assert r.resolve({"type": ["Conv2d", "MultiheadAttention"]}) == ["conv", "attn"]
    assert "attn.out_proj" not in r.layer_map  # read directly by nn.MultiheadAttention: never a candidate
    assert r.resolve("blocks") == ["blocks.0", "blocks.1", "blocks.2"]  # the container itself is skipped
    with pytest.raises(ValueError, match="unknown keys"):
        r.resolve({"name": "fc1"})
    with pytest.raises(ValueError, match="out of range"):
        r.resolve({"type": "Linear", "indices": 9})
    with pytest.raises(ValueError, match="not both"):
        r.resolve({"type": "Linear", "indices": 0, "range": [0, 1]})
    with pytest.raises(TypeError, match="layer_names must be"):
        r.resolve(3)


def test_subclass_matching():
    model = nn.Sequential(Quantized(64, 64))
    assert LayerNameResolver(model).resolve({"type": "Linear"}) == ["0"]
    assert get_sketched_class(Quantized) is pr.nn.SKLinear
    with pytest.raises(ValueError, match="no sketched layer for ReLU"):
        get_sketched_class(nn.ReLU)


def test_param_specs():
    assert get_param_choices(Int(1, 7, step=3)) == [1, 4, 7]
    assert get_param_choices(Int(1, 1000)) is None
    assert get_param_choices(Float(0.0, 1.0, step=0.5)) == [0.0, 0.5, 1.0]
    assert get_param_choices([2, 4]) == [2, 4]
    with pytest.raises(ValueError, match="low must be <= high"):
        Int(5, 1)
    with pytest.raises(ValueError, match="must not be empty"):
        Categorical([])
    with pytest.raises(ValueError, match="log=True needs low > 0"):
        Float(0.0, 1.0, log=True)


def test_auto_space_only_offers_sizes_that_save_work(net):
    space = auto_space(net.fc1)
    for k in space["low_rank"].choices:
        assert 2 * k * (96 + 128) < 96 * 128
    conv = auto_space(nn.Conv2d(32, 64, 3))
    assert conv["low_rank"].choices == [8, 16]  # 2k(288 + 64) < 288·64
    small = auto_space(net.conv)  # no k >= 8 saves work: smaller ranks are offered
    assert small["low_rank"].choices == [2, 4] and small["num_terms"].choices == [1, 2, 3]
    assert auto_space(net.attn) == {"num_random_features": Categorical([32, 64, 128, 256])}


def test_config_errors(net):
    acc = accuracy_of(net)
    with pytest.raises(ValueError, match="matches no layer that can be sketched"):
        SKAutoTuner(net, TuningConfigs([LayerConfig("nope", {"num_terms": [1], "low_rank": [8]})]), acc)
    with pytest.raises(ValueError, match=r"parameters \['rank'\] do not apply to layer 'fc1'"):
        SKAutoTuner(net, TuningConfigs([LayerConfig("fc1", {"num_terms": [1], "rank": [8]})]), acc)
    with pytest.raises(ValueError, match=r"needs a search space for \['low_rank'\]"):
        SKAutoTuner(net, TuningConfigs([LayerConfig("fc1", {"num_terms": [1]})]), acc)
    with pytest.raises(ValueError, match="selected by more than one config"):
        SKAutoTuner(net, TuningConfigs([LayerConfig("fc1", "auto"), LayerConfig("fc.", "auto")]), acc)
    with pytest.raises(TypeError, match=r"TuningConfigs\(\[config\]\)"):
        TuningConfigs(LayerConfig("fc1", "auto"))
    with pytest.raises(ValueError, match="params must not be empty"):
        LayerConfig("fc1", {})
    with pytest.raises(TypeError, match="params must be a dict"):
        LayerConfig("fc1", "everything")
    with pytest.raises(ValueError, match="give accuracy_threshold too"):
        SKAutoTuner(net, TuningConfigs([LayerConfig("fc1", "auto")]), acc, optimization_eval_func=lambda m: 1.0)
    with pytest.raises(ValueError, match="num_runs_per_param"):
        SKAutoTuner(net, TuningConfigs([LayerConfig("fc1", "auto")]), acc, num_runs_per_param=0)
    with pytest.raises(TypeError, match="search_algorithm must be"):
        SKAutoTuner(net, TuningConfigs([LayerConfig("fc1", "auto")]), acc, search_algorithm="optuna")


def test_separate_tuning_mean_over_runs_and_no_duplicates(net):
    calls = []
    acc = accuracy_of(net)

    def counted(m):
        calls.append(1)
        return acc(m)

    config = LayerConfig(["fc1", "fc2"], {"num_terms": [1, 2], "low_rank": [8, 16], "init": ["svd"]})
    tuner = SKAutoTuner(net, TuningConfigs([config]), counted, search_algorithm=OptunaSearch(n_trials=30, seed=0),
                        num_runs_per_param=2)
    best = tuner.tune()
    assert len(calls) == 2 * 4 * 2  # 2 layers × 4 grid points × 2 runs, each point once
    for key in ("fc1", "fc2"):
        assert best[key]["params"] == {"num_terms": 2, "low_rank": 16, "init": "svd"}  # the largest rank wins
        assert isinstance(best[key]["best_layer"], pr.nn.SKLinear)
    assert isinstance(net.fc1, nn.Linear)  # restored after tuning

    # mean, not max, over runs: a run-dependent accuracy averages
    values = iter([0.2, 0.8] * 10)
    tuner2 = SKAutoTuner(net, TuningConfigs([LayerConfig("fc1", {"num_terms": [1], "low_rank": [8]})]),
                         lambda m: next(values), num_runs_per_param=2)
    tuner2.tune()
    assert tuner2.best_params["fc1"]["accuracy"] == pytest.approx(0.5)


def test_joint_threshold_speed_apply_plan_and_save_load(net, tmp_path):
    acc = accuracy_of(net)
    config = LayerConfig({"pattern": r"blocks\.\d"}, {"num_terms": [1, 2], "low_rank": [8, 32], "init": ["svd"]},
                         separate=False)
    speed = lambda m: -sum(b.num_terms * b.low_rank for b in m.blocks)  # noqa: E731 (smaller is faster)
    tuner = SKAutoTuner(net, [config], acc, accuracy_threshold=acc(net) - 0.35, optmization_eval_func=speed,
                        search_algorithm=OptunaSearch(n_trials=8, seed=0))
    best = tuner.tune()
    key = "blocks.0_blocks.1_blocks.2"
    assert set(best) == {key}
    entry = best[key]
    assert entry["accuracy"] >= acc(net) - 0.35
    feasible = [r for r in tuner.results[key] if r["score"] is not None and r["score"] > -math.inf]
    assert entry["score"] == max(r["score"] for r in feasible)
    assert any(r["score"] == -math.inf for r in tuner.results[key]) or len(feasible) == 4

    plan = tuner.to_plan()
    assert isinstance(plan, Plan) and set(plan.entries) == {"blocks.0", "blocks.1", "blocks.2"}
    p = entry["params"]
    assert plan.get("blocks.1") == SketchSpec(p["num_terms"], p["low_rank"], "svd")

    path = tmp_path / "results.json"
    tuner.save_tuning_results(path)
    saved = json.loads(path.read_text())  # plain JSON, no pickled modules
    assert saved["best_params"][key]["params"] == p

    model = tuner.apply_best_params()
    assert all(isinstance(b, pr.nn.SKLinear) for b in model.blocks)
    assert model.blocks[0] is entry["best_layer"]["blocks.0"]  # the very module measured

    other = SKAutoTuner(Net(), [config], acc)
    other.load_tuning_results(path)
    assert other.get_best_params() == {key: p}
    rebuilt = other.apply_best_params()
    assert all(isinstance(b, pr.nn.SKLinear) and b.low_rank == p["low_rank"] for b in rebuilt.blocks)
    with pytest.raises(FileNotFoundError):
        other.load_tuning_results(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        other.load_tuning_results(tmp_path / "bad.json")


def test_nothing_meets_threshold_stays_dense(net):
    acc = accuracy_of(net)
    tuner = SKAutoTuner(net, [LayerConfig("fc1", {"num_terms": [1], "low_rank": [4]})], acc, accuracy_threshold=2.0)
    best = tuner.tune()
    assert best["fc1"]["params"] is None
    tuner.apply_best_params()
    assert isinstance(net.fc1, nn.Linear)
    assert tuner.to_plan().get("fc1") is None


def test_conv_attention_auto_and_replace_without_tuning(net):
    configs = TuningConfigs([LayerConfig("conv", {"num_terms": [1], "low_rank": [4, 8]}),
                             LayerConfig("attn", {"num_random_features": [16, 32]}),
                             LayerConfig("fc2", "auto")])
    tuner = SKAutoTuner(net, configs, lambda m: 1.0)
    model = tuner.replace_without_tuning()
    assert isinstance(model.conv, pr.nn.SKConv2d) and model.conv.low_rank == 4
    assert isinstance(model.attn, pr.nn.RandMultiHeadAttention) and model.attn.num_random_features == 16
    assert isinstance(model.fc2, pr.nn.SKLinear) and model.fc2.num_terms == 1
    tuner.restore_dense()
    assert isinstance(net.conv, nn.Conv2d)


def test_failed_evaluations_are_recorded(net):
    def flaky(m):
        if m.fc1.low_rank == 8:
            raise RuntimeError("eval broke")
        return 0.5

    tuner = SKAutoTuner(net, [LayerConfig("fc1", {"num_terms": [1], "low_rank": [8, 16]})], flaky,
                        search_algorithm=OptunaSearch(n_trials=6, seed=0))
    best = tuner.tune()
    assert best["fc1"]["params"]["low_rank"] == 16
    errors = [r for r in tuner.results["fc1"] if r["error"]]
    assert errors and "RuntimeError: eval broke" in errors[0]["error"]
    assert isinstance(net.fc1, nn.Linear)


def test_results_dataframe_or_records(net):
    tuner = SKAutoTuner(net, [LayerConfig("fc1", {"num_terms": [1], "low_rank": [8]})], lambda m: 0.5)
    tuner.tune()
    rows = tuner.get_results_records()
    assert rows[0]["layer"] == "fc1" and rows[0]["low_rank"] == 8 and rows[0]["score"] == 0.5
    pd = pytest.importorskip("pandas")
    assert isinstance(tuner.get_results_dataframe(), pd.DataFrame)


def test_distinct_studies_per_layer_in_shared_storage(net, tmp_path):
    url = f"sqlite:///{tmp_path / 'layers.db'}"
    config = LayerConfig(["fc1", "fc2"], {"num_terms": [1, 2], "low_rank": [8]})
    tuner = SKAutoTuner(net, [config], accuracy_of(net),
                        search_algorithm=OptunaSearch(n_trials=2, storage=url, load_if_exists=True, seed=0))
    tuner.tune()
    import optuna

    names = sorted(s.study_name for s in optuna.get_all_study_summaries(url))
    assert names == ["skautotuner_study:fc1", "skautotuner_study:fc2"]
    # a second tuner on the same storage resumes: the finished trials are reused, nothing re-run
    calls = []
    again = SKAutoTuner(net, [config], lambda m: calls.append(1) or 0.0,
                        search_algorithm=OptunaSearch(n_trials=2, storage=url, load_if_exists=True, seed=0))
    again.tune()
    assert calls == [] and again.best_params["fc1"]["params"] == tuner.best_params["fc1"]["params"]


def test_model_visualizer(net, capsys):
    ModelVisualizer.print_module_tree(nn.Sequential(*[nn.Linear(4, 4) for _ in range(11)]), root_name="seq")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "seq (Sequential)"
    assert out[1].endswith("0 (Linear) *") and out[3].endswith("2 (Linear) *") and out[-1].startswith("└── 10")
    tree = ModelVisualizer.module_tree(net)
    assert "out_proj (NonDynamicallyQuantizableLinear)\n" in tree + "\n"  # listed, not marked
