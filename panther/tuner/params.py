"""Search-space specs: ``Categorical``, ``Int`` and ``Float`` (the earlier Panther's ParamSpec).

A plain list or tuple of values is shorthand for ``Categorical``. Specs turn into Optuna
suggestions (:func:`suggest`), into finite choice lists where they are small enough
(:func:`get_param_choices`) and into JSON (:func:`spec_to_dict` / :func:`spec_from_dict`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Union

_CHOICE_TYPES = (type(None), bool, int, float, str)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass
class Categorical:
    """One of a finite list of values (None, bool, int, float or str)."""

    choices: list = field(default_factory=list)

    def __post_init__(self):
        if isinstance(self.choices, (str, bytes)) or not hasattr(self.choices, "__iter__"):
            raise TypeError(f"Categorical choices must be a list of values, got {self.choices!r}")
        self.choices = list(self.choices)
        if not self.choices:
            raise ValueError("Categorical choices must not be empty")
        for value in self.choices:
            if not isinstance(value, _CHOICE_TYPES):
                raise TypeError(f"Categorical choices must be None, bool, int, float or str, got {value!r} "
                                f"({type(value).__name__})")


@dataclass
class Int:
    """An integer in [low, high] (both included), on a grid of ``step``, optionally log-scaled."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def __post_init__(self):
        for name in ("low", "high", "step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"Int {name} must be an int, got {value!r}")
            setattr(self, name, int(value))
        if self.low > self.high:
            raise ValueError(f"Int low must be <= high, got low={self.low}, high={self.high}")
        if self.step < 1:
            raise ValueError(f"Int step must be >= 1, got {self.step}")
        if self.log and self.low <= 0:
            raise ValueError(f"Int with log=True needs low > 0, got low={self.low}")
        if self.log and self.step != 1:
            raise ValueError("Int with log=True needs step=1 (Optuna cannot combine them)")


@dataclass
class Float:
    """A float in [low, high], optionally on a grid of ``step`` or log-scaled."""

    low: float
    high: float
    step: float | None = None
    log: bool = False

    def __post_init__(self):
        for name in ("low", "high"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value):
                raise TypeError(f"Float {name} must be a finite number, got {value!r}")
            setattr(self, name, float(value))
        if self.low > self.high:
            raise ValueError(f"Float low must be <= high, got low={self.low}, high={self.high}")
        if self.step is not None:
            if not _is_number(self.step) or not self.step > 0:
                raise ValueError(f"Float step must be a positive number or None, got {self.step!r}")
            self.step = float(self.step)
        if self.log and self.low <= 0:
            raise ValueError(f"Float with log=True needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("Float with log=True needs step=None (Optuna cannot combine them)")


ParamSpec = Union[Categorical, Int, Float, list]


def is_param_spec(value) -> bool:
    return isinstance(value, (Categorical, Int, Float, list, tuple))


def as_spec(value, name: str = "parameter"):
    """A Categorical/Int/Float from a spec or a list/tuple of choices; TypeError otherwise."""
    if isinstance(value, (Categorical, Int, Float)):
        return value
    if isinstance(value, (list, tuple)):
        return Categorical(list(value))
    raise TypeError(f"the search space of {name!r} must be Categorical, Int, Float or a list of values, "
                    f"got {value!r} ({type(value).__name__})")


def to_categorical(value) -> Categorical:
    """A Categorical from a Categorical or a list/tuple (TypeError for anything else)."""
    if isinstance(value, Categorical):
        return value
    if isinstance(value, (list, tuple)):
        return Categorical(list(value))
    raise TypeError(f"expected a Categorical or a list of choices, got {type(value).__name__}")


def get_param_choices(spec, limit: int = 100) -> list | None:
    """Every value of ``spec`` if there are at most ``limit`` of them, else None."""
    spec = as_spec(spec)
    if isinstance(spec, Categorical):
        return list(spec.choices)
    if isinstance(spec, Int):
        count = (spec.high - spec.low) // spec.step + 1
        return list(range(spec.low, spec.high + 1, spec.step)) if count <= limit else None
    if spec.step is None:
        return [spec.low] if spec.low == spec.high else None
    count = int(math.floor((spec.high - spec.low) / spec.step + 1e-9)) + 1
    return [spec.low + i * spec.step for i in range(count)] if count <= limit else None


def first_value(spec):
    """The value ``replace_without_tuning`` uses: the first choice, or ``low`` of a range."""
    spec = as_spec(spec)
    return spec.choices[0] if isinstance(spec, Categorical) else spec.low


def grid_size(space: dict) -> int | None:
    """Number of distinct points of a space made only of finite specs (None if any is continuous)."""
    total = 1
    for spec in space.values():
        choices = get_param_choices(spec, limit=10**9)
        if choices is None:
            return None
        total *= len(choices)
    return total


def suggest(trial, name: str, spec) -> Any:
    """``trial.suggest_*`` for one spec."""
    spec = as_spec(spec, name)
    if isinstance(spec, Categorical):
        return trial.suggest_categorical(name, spec.choices)
    if isinstance(spec, Int):
        return trial.suggest_int(name, spec.low, spec.high, step=spec.step, log=spec.log)
    return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)


def to_distribution(spec, name: str = "parameter"):
    """The Optuna distribution of one spec (for ``study.ask(fixed_distributions)``)."""
    import optuna.distributions as d

    spec = as_spec(spec, name)
    if isinstance(spec, Categorical):
        return d.CategoricalDistribution(spec.choices)
    if isinstance(spec, Int):
        return d.IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    return d.FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)


def spec_to_dict(spec) -> dict:
    spec = as_spec(spec)
    if isinstance(spec, Categorical):
        return {"type": "categorical", "choices": list(spec.choices)}
    if isinstance(spec, Int):
        return {"type": "int", "low": spec.low, "high": spec.high, "step": spec.step, "log": spec.log}
    return {"type": "float", "low": spec.low, "high": spec.high, "step": spec.step, "log": spec.log}


def spec_from_dict(data: dict):
    kind = data.get("type") if isinstance(data, dict) else None
    args = {k: v for k, v in data.items() if k != "type"} if isinstance(data, dict) else {}
    if kind == "categorical":
        return Categorical(**args)
    if kind == "int":
        return Int(**args)
    if kind == "float":
        return Float(**args)
    raise ValueError(f"a saved parameter spec must have type 'categorical', 'int' or 'float', got {data!r}")
