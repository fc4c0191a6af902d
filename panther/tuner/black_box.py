"""``SkAutoTuner``: Bayesian optimisation of a user objective over box bounds (the AutoTuner guide's API).

    tuner = SkAutoTuner(parameter_bounds={"num_terms": (2, 16), "low_rank": (16, 128)},
                        objective_function=evaluate, n_initial_points=5, n_iterations=20)
    best_params, best_score = tuner.optimize()      # maximises evaluate(**params)

Integer bounds give integers, float bounds floats; a list gives a categorical choice, and
``Int``/``Float``/``Categorical`` specs are accepted too. The first ``n_initial_points``
trials are random; the next ``n_iterations`` come from the model-based sampler (Optuna's
multivariate TPE by default, ``sampler="gp"`` for a Gaussian process). An objective that raises or returns
NaN/inf marks that trial failed and the search goes on. With ``storage`` the study is kept in
an Optuna storage and a second ``optimize()`` (in this or another process) continues it.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings

from .params import Categorical, Float, Int, as_spec, to_distribution
from .progress import progress_bar
from .storage import finished_trials, resolve_storage


def _bounds_to_space(parameter_bounds) -> dict:
    if not isinstance(parameter_bounds, dict) or not parameter_bounds:
        raise ValueError("parameter_bounds must be a non-empty dict {name: (low, high)}, "
                         f"got {parameter_bounds!r}")
    space = {}
    for name, bound in parameter_bounds.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"parameter_bounds keys must be parameter names (str), got {name!r}")
        if isinstance(bound, (Categorical, Int, Float, list)):
            space[name] = as_spec(bound, name)
            continue
        if not isinstance(bound, tuple) or len(bound) != 2:
            raise ValueError(f"parameter_bounds[{name!r}] must be a (low, high) tuple, a list of choices or an "
                             f"Int/Float/Categorical spec, got {bound!r}")
        low, high = bound
        for value in bound:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"parameter_bounds[{name!r}] must hold two finite numbers, got {bound!r}")
        if low > high:
            raise ValueError(f"parameter_bounds[{name!r}]: low must be <= high, got {bound!r}")
        if isinstance(low, numbers.Integral) and isinstance(high, numbers.Integral):
            space[name] = Int(int(low), int(high))
        else:
            space[name] = Float(float(low), float(high))
    return space


def _caller(fn, names):
    """Calls ``fn`` with the parameters by keyword where it takes them by name, else by position."""
    if not callable(fn):
        raise TypeError(f"objective_function must be callable, got {type(fn).__name__}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return lambda params: fn(**params)
    kinds = inspect.Parameter
    ps = sig.parameters
    if any(p.kind == kinds.VAR_KEYWORD for p in ps.values()) or all(
            n in ps and ps[n].kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY) for n in names):
        return lambda params: fn(**params)
    positional = [p for p in ps.values() if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    has_var = any(p.kind == kinds.VAR_POSITIONAL for p in ps.values())
    if len(required) <= len(names) and (has_var or len(names) <= len(positional)):
        return lambda params: fn(*[params[n] for n in names])
    raise TypeError(f"objective_function{sig} must accept the parameters {list(names)} as keyword arguments "
                    f"or as {len(names)} positional arguments")


def _count(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class SkAutoTuner:
    """Maximises (or minimises) ``objective_function(**params)`` over ``parameter_bounds``.

    Args:
        parameter_bounds: ``{name: (low, high)}``; ints → integer search, floats → real search.
            Lists (categorical) and ``Int``/``Float``/``Categorical`` specs are accepted too.
        objective_function: called with the parameters (by keyword when its argument names
            match, else positionally in the bounds' order); returns a float score.
        n_initial_points: random start-up evaluations.
        n_iterations: model-guided evaluations after those.
        maximize: True (default) maximises the score, False minimises it.
        sampler: "tpe" (default: multivariate Tree-structured Parzen Estimator, milliseconds
            per step), "gp" (Gaussian-process Bayesian optimisation: more sample-efficient on
            smooth objectives, but ~0.5-1 s of CPU per step), "random", or an
            ``optuna.samplers.BaseSampler``.
        seed: seeds the sampler (reproducible searches).
        storage, study_name: keep the study in an Optuna storage (URL or journal path) so
            that ``optimize()`` resumes it; ``study_name`` defaults to "sk_autotuner".
        cache_duplicates: an already-evaluated parameter set reuses its score instead of
            calling the objective again (default True; set False for noisy objectives).
        show_progress_bar, verbose: a progress bar; a line per evaluation.
    """

    def __init__(self, parameter_bounds, objective_function, n_initial_points=5, n_iterations=20, *,
                 maximize=True, sampler="tpe", seed=None, storage=None, study_name=None,
                 cache_duplicates=True, show_progress_bar=False, verbose=False):
        self.space = _bounds_to_space(parameter_bounds)
        self.parameter_bounds = dict(parameter_bounds)
        self.names = list(self.space)
        self.objective_function = objective_function
        self._call = _caller(objective_function, self.names)
        self.n_initial_points = _count(n_initial_points, "n_initial_points", 0)
        self.n_iterations = _count(n_iterations, "n_iterations", 0)
        if self.n_initial_points + self.n_iterations < 1:
            raise ValueError("n_initial_points + n_iterations must be >= 1 (the number of evaluations)")
        if not isinstance(maximize, bool):
            raise TypeError(f"maximize must be a bool, got {maximize!r}")
        self.maximize = maximize
        self.seed = seed
        self.sampler = self._make_sampler(sampler)
        self.storage = resolve_storage(storage)
        self.study_name = study_name or "sk_autotuner"
        self.cache_duplicates = bool(cache_duplicates)
        self.show_progress_bar = bool(show_progress_bar)
        self.verbose = bool(verbose)
        self._study = None

    @property
    def n_trials(self) -> int:
        return self.n_initial_points + self.n_iterations

    def _make_sampler(self, sampler):
        import optuna

        if isinstance(sampler, optuna.samplers.BaseSampler):
            return sampler
        startup = max(1, self.n_initial_points)
        if sampler == "tpe":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # multivariate TPE is "experimental" in Optuna
                return optuna.samplers.TPESampler(n_startup_trials=startup, seed=self.seed, multivariate=True)
        if sampler == "gp":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return optuna.samplers.GPSampler(n_startup_trials=startup, seed=self.seed)
        if sampler == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        raise ValueError(f"sampler must be 'tpe', 'gp', 'random' or an optuna.samplers.BaseSampler, got {sampler!r}")

    @property
    def study(self):
        """The Optuna study (created on first use; loaded from ``storage`` if it exists there)."""
        if self._study is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self._study = optuna.create_study(
                storage=self.storage, sampler=self.sampler, study_name=self.study_name if self.storage else None,
                direction="maximize" if self.maximize else "minimize", load_if_exists=True)
        return self._study

    def _evaluate(self, params):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. SKLinear's "no saving" warning for big ranks
            value = self._call(params)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"objective_function must return a number, got {value!r} ({type(value).__name__})")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"objective_function returned {value}")
        return value

    def optimize(self):
        """Runs the search until the study holds ``n_initial_points + n_iterations`` finished
        evaluations; returns ``(best_params, best_score)``."""
        from optuna.trial import TrialState

        study = self.study
        distributions = {n: to_distribution(s, n) for n, s in self.space.items()}
        done = len(finished_trials(study))
        bar = progress_bar(self.n_trials, "SkAutoTuner", self.show_progress_bar, initial=min(done, self.n_trials))
        try:
            while done < self.n_trials:
                trial = study.ask(distributions)
                params = dict(trial.params)
                cached = self._cached(params) if self.cache_duplicates else None
                if cached is not None:
                    trial.set_user_attr("cached", True)
                    study.tell(trial, cached)
                    value, error = cached, None
                else:
                    try:
                        value, error = self._evaluate(params), None
                    except Exception as exc:  # a failed evaluation is a failed trial, not a crash
                        value, error = None, f"{type(exc).__name__}: {exc}"
                    if error is None:
                        study.tell(trial, value)
                    else:
                        trial.set_user_attr("error", error)
                        study.tell(trial, state=TrialState.FAIL)
                if self.verbose:
                    shown = f"{value:.6g}" if error is None else f"failed ({error})"
                    print(f"[SkAutoTuner] trial {trial.number}: {params} -> {shown}")
                bar.update(1)
                done = len(finished_trials(study))
        finally:
            bar.close()
        return self.best_params, self.best_score

    def _cached(self, params):
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.params == params:
                return t.value
        return None

    def _completed(self):
        from optuna.trial import TrialState

        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    @property
    def best_params(self) -> dict:
        if not self._completed():
            errors = [t.user_attrs.get("error") for t in finished_trials(self.study)]
            raise RuntimeError(f"no evaluation succeeded ({len(errors)} failed); first error: "
                               f"{next((e for e in errors if e), 'none recorded')}")
        return {n: self.study.best_trial.params[n] for n in self.names}

    @property
    def best_score(self) -> float:
        self.best_params  # raises the explanatory error when nothing succeeded
        return float(self.study.best_value)

    def get_evaluation_history(self, include_failed: bool = True) -> list[dict]:
        """One dict per evaluation in order: the parameters and ``score`` (NaN for a failed one).

        Only numbers, so ``pandas.DataFrame(history).corr()`` works; see :attr:`failures` for
        the errors of failed evaluations.
        """
        from optuna.trial import TrialState

        history = []
        for t in finished_trials(self.study):
            if t.state == TrialState.FAIL and not include_failed:
                continue
            entry = {n: t.params.get(n) for n in self.names}
            entry["score"] = float(t.value) if t.state == TrialState.COMPLETE else float("nan")
            history.append(entry)
        return history

    @property
    def failures(self) -> list[tuple[dict, str]]:
        """(params, error message) of every failed evaluation."""
        from optuna.trial import TrialState

        return [(dict(t.params), t.user_attrs.get("error", "")) for t in finished_trials(self.study)
                if t.state == TrialState.FAIL]
