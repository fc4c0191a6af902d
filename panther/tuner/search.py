"""Search algorithms for ``SKAutoTuner``: the ``SearchAlgorithm`` interface and ``OptunaSearch``."""

from __future__ import annotations

import abc
import json
import warnings

from .params import as_spec, spec_from_dict, spec_to_dict, to_distribution
from .storage import finished_trials, resolve_storage


class SearchAlgorithm(abc.ABC):
    """Ask/tell interface: ``initialize(space)``, then ``get_next_params()`` (None when done)
    and ``update(params, score)`` for each, ``get_best_params()/get_best_score()``."""

    @abc.abstractmethod
    def initialize(self, param_space: dict) -> None: ...

    @abc.abstractmethod
    def get_next_params(self) -> dict | None: ...

    @abc.abstractmethod
    def update(self, params: dict, score: float) -> None: ...

    @abc.abstractmethod
    def get_best_params(self) -> dict | None: ...

    @abc.abstractmethod
    def get_best_score(self) -> float | None: ...

    @abc.abstractmethod
    def is_finished(self) -> bool: ...

    def reset(self) -> None:  # noqa: B027 (optional)
        """Forget everything (optional)."""

    @abc.abstractmethod
    def save_state(self, path) -> None:
        """Write what is needed to resume the search to ``path`` (JSON)."""

    @abc.abstractmethod
    def load_state(self, path) -> None:
        """Resume from a file written by :meth:`save_state`."""


class OptunaSearch(SearchAlgorithm):
    """An Optuna study driven by ask/tell.

    Args:
        n_trials: finished trials per study (a resumed study counts the trials it has).
        sampler: an ``optuna.samplers.BaseSampler`` (TPE seeded with ``seed`` by default).
        direction: "maximize" or "minimize" the score.
        study_name: base name (default "skautotuner_study"); ``SKAutoTuner`` appends the
            layer (or group) name so each layer gets its own study in a shared storage.
        storage: Optuna storage URL (e.g. "sqlite:///tune.db"), journal file path, storage
            object or None (memory).
        load_if_exists: continue a study of that name found in ``storage`` (with storage it
            is what makes resuming work; without, a name clash raises Optuna's error).
        seed: seed of the default sampler.
    """

    def __init__(self, n_trials=100, sampler=None, direction="maximize", study_name=None, storage=None,
                 load_if_exists=False, seed=None):
        import optuna

        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise ValueError(f"n_trials must be an int >= 1, got {n_trials!r}")
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
        if sampler is not None and not isinstance(sampler, optuna.samplers.BaseSampler):
            raise TypeError(f"sampler must be an optuna.samplers.BaseSampler or None, got {type(sampler).__name__}")
        if study_name is not None and (not isinstance(study_name, str) or not study_name):
            raise TypeError(f"study_name must be a non-empty str or None, got {study_name!r}")
        self.n_trials = n_trials
        self.direction = direction
        self.study_name = study_name or "skautotuner_study"
        self.storage = resolve_storage(storage)
        self.load_if_exists = bool(load_if_exists)
        self.seed = seed
        self._sampler_arg = sampler
        self.study = None
        self.param_space = None
        self._pending = None

    def _new_sampler(self):
        import optuna

        if self._sampler_arg is not None:
            return self._sampler_arg
        return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=min(10, max(1, self.n_trials // 3)))

    def initialize(self, param_space: dict, study_key: str | None = None) -> None:
        """Starts (or, with storage and ``load_if_exists``, resumes) the study for ``param_space``.

        ``study_key`` (the layer name) is appended to ``study_name``."""
        import optuna

        if not isinstance(param_space, dict) or not param_space:
            raise ValueError(f"param_space must be a non-empty dict of specs, got {param_space!r}")
        self.param_space = {n: as_spec(s, n) for n, s in param_space.items()}
        self._distributions = {n: to_distribution(s, n) for n, s in self.param_space.items()}
        name = self.study_name if study_key is None else f"{self.study_name}:{study_key}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(storage=self.storage, sampler=self._new_sampler(), direction=self.direction,
                                         study_name=name, load_if_exists=self.load_if_exists)
        self._pending = None

    def _require(self):
        if self.study is None:
            raise RuntimeError("OptunaSearch: call initialize(param_space) first")

    @property
    def trial_count(self) -> int:
        self._require()
        return len(finished_trials(self.study))

    def is_finished(self) -> bool:
        return self.trial_count >= self.n_trials

    def get_next_params(self) -> dict | None:
        self._require()
        if self._pending is not None:
            raise RuntimeError("OptunaSearch: update() the pending parameters before asking for new ones")
        if self.is_finished():
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._pending = self.study.ask(self._distributions)
        return dict(self._pending.params)

    def update(self, params: dict, score: float, user_attrs: dict | None = None) -> None:
        """Reports the pending trial's score (NaN or None marks it failed)."""
        from optuna.trial import TrialState

        self._require()
        if self._pending is None:
            raise RuntimeError("OptunaSearch: update() called without a pending get_next_params()")
        trial, self._pending = self._pending, None
        if params != trial.params:
            raise ValueError(f"update() got params {params} but the pending trial has {trial.params}")
        for key, value in (user_attrs or {}).items():
            trial.set_user_attr(key, value)
        if score is None or score != score:
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial, float(score))

    def completed(self) -> list:
        """The study's completed trials (``params``, ``value``, ``user_attrs``), oldest first."""
        from optuna.trial import TrialState

        self._require()
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def get_best_params(self) -> dict | None:
        return dict(self.study.best_trial.params) if self.study is not None and self.completed() else None

    def get_best_score(self) -> float | None:
        return float(self.study.best_value) if self.study is not None and self.completed() else None

    def reset(self) -> None:
        self.study = None
        self._pending = None

    def get_trials_dataframe(self):
        self._require()
        return self.study.trials_dataframe()

    def set_user_attr(self, key, value) -> None:
        self._require()
        self.study.set_user_attr(key, value)

    def save_state(self, path) -> None:
        """JSON: the space and the completed trials (params, score) — enough to warm-start."""
        self._require()
        state = {"param_space": {n: spec_to_dict(s) for n, s in self.param_space.items()},
                 "direction": self.direction, "n_trials": self.n_trials,
                 "trials": [{"params": t.params, "value": t.value} for t in self.completed()]}
        with open(path, "w") as f:
            json.dump(state, f, indent=1)

    def load_state(self, path) -> None:
        """Re-creates the study from :meth:`save_state`'s file (the trials are added back)."""
        import optuna

        with open(path) as f:
            state = json.load(f)
        self.initialize({n: spec_from_dict(d) for n, d in state["param_space"].items()})
        for t in state["trials"]:
            self.study.add_trial(optuna.trial.create_trial(params=t["params"], distributions=self._distributions,
                                                           value=t["value"]))
