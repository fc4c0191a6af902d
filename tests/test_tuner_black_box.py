"""SkAutoTuner: the AutoTuner guide's black-box Bayesian optimiser."""

import math

import pytest

from panther.tuner import Categorical, Float, SkAutoTuner


def quadratic(num_terms, low_rank):
    return -(num_terms - 7) ** 2 - ((low_rank - 50) / 8) ** 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finds_known_optimum_within_budget(seed):
    tuner = SkAutoTuner({"num_terms": (2, 16), "low_rank": (16, 128)}, quadratic, n_initial_points=5,
                        n_iterations=25, seed=seed)
    best, score = tuner.optimize()
    assert score == quadratic(**best)
    assert abs(best["num_terms"] - 7) <= 1 and abs(best["low_rank"] - 50) <= 12
    assert score >= -2.5  # random search with 30 points averages about -6 here


def test_gp_sampler_hits_exact_optimum():
    tuner = SkAutoTuner({"x": (0, 20)}, lambda x: -abs(x - 13), n_initial_points=3, n_iterations=9, sampler="gp",
                        seed=0)
    assert tuner.optimize() == ({"x": 13}, 0.0)


def test_minimize_and_float_bounds_and_types():
    seen = []

    def f(a, b, c):
        seen.append((a, b, c))
        return (a - 0.3) ** 2 + b + (0 if c == "x" else 1)

    tuner = SkAutoTuner({"a": (0.0, 1.0), "b": (1, 4), "c": ["x", "y"]}, f, 4, 16, maximize=False, seed=0)
    best, score = tuner.optimize()
    assert all(isinstance(a, float) and isinstance(b, int) and c in ("x", "y") for a, b, c in seen)
    assert best["b"] == 1 and best["c"] == "x" and score < 1.1


def test_failures_are_recorded_not_raised():
    def f(x):
        if x % 3 == 0:
            raise RuntimeError("boom")
        if x % 3 == 1:
            return float("nan")
        return float(x)

    tuner = SkAutoTuner({"x": (0, 30)}, f, n_initial_points=10, n_iterations=10, seed=0)
    best, score = tuner.optimize()
    assert best["x"] % 3 == 2 and score == best["x"]
    history = tuner.get_evaluation_history()
    assert len(history) == 20
    failed = [h for h in history if math.isnan(h["score"])]
    assert failed and len(failed) == len(tuner.failures)
    messages = {msg.split(":")[0] for _, msg in tuner.failures}
    assert messages <= {"RuntimeError", "ValueError"}
    assert all(math.isnan(h["score"]) == (h["x"] % 3 != 2) for h in history)
    assert len(tuner.get_evaluation_history(include_failed=False)) == 20 - len(failed)


def test_all_failed_gives_clear_error():
    tuner = SkAutoTuner({"x": (0, 3)}, lambda x: 1 / 0, n_initial_points=2, n_iterations=1)
    with pytest.raises(RuntimeError, match="no evaluation succeeded.*ZeroDivisionError"):
        tuner.optimize()


def test_duplicates_are_not_reevaluated():
    calls = []

    def f(x):
        calls.append(x)
        return -abs(x - 1)

    tuner = SkAutoTuner({"x": (0, 3)}, f, n_initial_points=3, n_iterations=17, seed=0)
    tuner.optimize()
    assert len(calls) == len(set(calls)) <= 4
    assert len(tuner.get_evaluation_history()) == 20


def test_positional_objective_and_specs():
    tuner = SkAutoTuner({"num_terms": (1, 4), "low_rank": Categorical([8, 16])}, lambda nt, lr: nt * lr, 2, 10, seed=0)
    best, score = tuner.optimize()
    assert best == {"num_terms": 4, "low_rank": 16} and score == 64
    SkAutoTuner({"lr": Float(1e-4, 1e-1, log=True)}, lambda lr: lr, 1, 1).optimize()


@pytest.mark.parametrize("bounds, match", [
    ({}, "non-empty dict"),
    ({"x": (5, 1)}, "low must be <= high"),
    ({"x": (1,)}, r"\(low, high\) tuple"),
    ({"x": ("a", 3)}, "two finite numbers"),
    ({"x": (0, float("inf"))}, "two finite numbers"),
])
def test_bad_bounds(bounds, match):
    with pytest.raises(ValueError, match=match):
        SkAutoTuner(bounds, lambda x: x)


def test_bad_arguments():
    with pytest.raises(TypeError, match="objective_function must be callable"):
        SkAutoTuner({"x": (0, 1)}, 3)
    with pytest.raises(TypeError, match=r"must accept the parameters \['x', 'y'\]"):
        SkAutoTuner({"x": (0, 1), "y": (0, 1)}, lambda a: a)
    with pytest.raises(ValueError, match="n_initial_points must be an int >= 0"):
        SkAutoTuner({"x": (0, 1)}, lambda x: x, n_initial_points=-1)
    with pytest.raises(ValueError, match="n_initial_points \\+ n_iterations must be >= 1"):
        SkAutoTuner({"x": (0, 1)}, lambda x: x, 0, 0)
    with pytest.raises(ValueError, match="sampler must be"):
        SkAutoTuner({"x": (0, 1)}, lambda x: x, sampler="bayes")
    tuner = SkAutoTuner({"x": (0, 1)}, lambda x: "high", 1, 0)
    with pytest.raises(RuntimeError, match="must return a number"):
        tuner.optimize()


def test_storage_resumes_the_study(tmp_path):
    calls = []

    def f(x, y):
        calls.append((x, y))
        return -(x - 3) ** 2 - (y - 5) ** 2

    url = f"sqlite:///{tmp_path / 'bb.db'}"
    first = SkAutoTuner({"x": (0, 9), "y": (0, 9)}, f, 3, 3, storage=url, seed=0)
    first.optimize()
    assert len(calls) == 6
    again = SkAutoTuner({"x": (0, 9), "y": (0, 9)}, f, 3, 3, storage=url, seed=0)
    again.optimize()  # the study already holds 6 finished evaluations: nothing to do
    assert len(calls) == 6
    more = SkAutoTuner({"x": (0, 9), "y": (0, 9)}, f, 3, 9, storage=url, seed=0)
    more.optimize()
    assert len(more.get_evaluation_history()) == 12
    assert more.best_score >= first.best_score
