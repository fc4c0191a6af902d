"""panther.plan: the JSON contract between the tuner and the rewrites."""

import pytest

from panther.plan import Plan, SketchSpec


def test_round_trip_json_and_file(tmp_path):
    plan = Plan({"a.fc1": SketchSpec(1, 64), "a.fc2": None, "conv": SketchSpec(2, 8, init="svd"),
                 "a.fc3": SketchSpec(1, 16, init="asvd")})
    assert Plan.from_json(plan.to_json()) == plan
    assert Plan.from_json(plan.to_json()).get("a.fc3").init == "asvd"  # the init is part of the decision
    plan.save(tmp_path / "p.json")
    assert Plan.load(tmp_path / "p.json") == plan
    assert plan.sketched() == {"a.fc1": SketchSpec(1, 64), "conv": SketchSpec(2, 8, "svd"),
                               "a.fc3": SketchSpec(1, 16, "asvd")}
    assert SketchSpec(2, 8).rank == 32


@pytest.mark.parametrize("args,exc,words", [
    ((0, 8), ValueError, "num_terms"), ((1, 2.0), TypeError, "low_rank"), ((1, 8, "qr"), ValueError, "init")])
def test_bad_specs(args, exc, words):
    with pytest.raises(exc, match=words):
        SketchSpec(*args)


def test_bad_plans_and_unknown_names():
    with pytest.raises(TypeError, match="SketchSpec or None"):
        Plan({"fc": (1, 8)})
    with pytest.raises(ValueError, match="version"):
        Plan.from_dict({"version": 2, "layers": {}})
    with pytest.raises(ValueError, match=r"do not exist: \['fc3'\]"):
        Plan({"fc3": None}).check_names({"fc1", "fc2"})
