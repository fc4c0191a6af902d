"""``LayerConfig`` (which layers, which search space) and ``TuningConfigs`` (a list of them)."""

from __future__ import annotations

import copy

from .params import as_spec

SELECTOR_KEYS = ("pattern", "contains", "type", "indices", "range")


def check_selector(layer_names) -> None:
    if isinstance(layer_names, str):
        if not layer_names:
            raise ValueError("layer_names must not be empty")
        return
    if isinstance(layer_names, (list, tuple)):
        if not layer_names:
            raise ValueError("layer_names must not be an empty list")
        for item in layer_names:
            if not isinstance(item, str) or not item:
                raise TypeError(f"layer_names as a list must hold non-empty strings (names or regexes), got {item!r}")
        return
    if isinstance(layer_names, dict):
        unknown = sorted(set(layer_names) - set(SELECTOR_KEYS))
        if unknown:
            raise ValueError(f"layer_names dict has unknown keys {unknown}; allowed keys: {list(SELECTOR_KEYS)}")
        if not layer_names:
            raise ValueError(f"layer_names dict must hold at least one of {list(SELECTOR_KEYS)}")
        return
    raise TypeError(f"layer_names must be a name/regex (str), a list of them, or a dict with keys "
                    f"{list(SELECTOR_KEYS)}, got {type(layer_names).__name__}")


class LayerConfig:
    """Layers to tune and the search space of their sketch parameters.

    Args:
        layer_names: a module name or regex (``"encoder.*query"``), a list of them, or a dict
            of rules: ``pattern`` (regex or list), ``contains`` (substring or list), ``type``
            (class name or list; subclasses match), then ``indices`` (int or list) or
            ``range`` ([start, end] or [start, end, step]) over the sorted matches.
        params: ``{name: Categorical | Int | Float | list}`` or ``"auto"`` (a space derived
            from each layer's shape where sketching can save work). Names: ``num_terms``,
            ``low_rank``, ``init`` ("sketch"/"svd") for Linear/Conv2d; ``num_random_features``,
            ``kernel_fn``, ``iscausal`` for MultiheadAttention.
        separate: True tunes each layer on its own; False gives all the selected layers one
            shared parameter set (a joint search).
        copy_weights: the sketched layer starts from the dense layer's weights.
    """

    def __init__(self, layer_names, params, separate: bool = True, copy_weights: bool = True):
        check_selector(layer_names)
        if params == "auto":
            self.params = "auto"
        elif isinstance(params, dict):
            if not params:
                raise ValueError("params must not be empty: give a search space per parameter, or 'auto'")
            self.params = {}
            for name, spec in params.items():
                if not isinstance(name, str):
                    raise TypeError(f"params keys must be parameter names (str), got {name!r}")
                self.params[name] = as_spec(spec, name)
        else:
            raise TypeError(f"params must be a dict {{name: Categorical/Int/Float/list}} or 'auto', got {params!r}")
        if not isinstance(separate, bool):
            raise TypeError(f"separate must be a bool, got {separate!r}")
        if not isinstance(copy_weights, bool):
            raise TypeError(f"copy_weights must be a bool, got {copy_weights!r}")
        self.layer_names = layer_names
        self.separate = separate
        self.copy_weights = copy_weights

    def clone(self) -> "LayerConfig":
        return copy.deepcopy(self)

    def __eq__(self, other):
        return isinstance(other, LayerConfig) and (self.layer_names, self.params, self.separate,
                                                   self.copy_weights) == (other.layer_names, other.params,
                                                                          other.separate, other.copy_weights)

    def __repr__(self):
        return (f"LayerConfig(layer_names={self.layer_names!r}, params={self.params!r}, "
                f"separate={self.separate}, copy_weights={self.copy_weights})")


class TuningConfigs:
    """An ordered list of :class:`LayerConfig`. Functional helpers return new objects."""

    def __init__(self, configs):
        if isinstance(configs, LayerConfig):
            raise TypeError("TuningConfigs takes a list of LayerConfig: write TuningConfigs([config])")
        if not isinstance(configs, (list, tuple)):
            raise TypeError(f"configs must be a list of LayerConfig, got {type(configs).__name__}")
        for i, config in enumerate(configs):
            if not isinstance(config, LayerConfig):
                raise TypeError(f"configs[{i}] must be a LayerConfig, got {type(config).__name__}")
        self.configs = list(configs)

    def __len__(self):
        return len(self.configs)

    def __getitem__(self, index):
        return self.configs[index]

    def __iter__(self):
        return iter(self.configs)

    def __eq__(self, other):
        return isinstance(other, TuningConfigs) and self.configs == other.configs

    def __repr__(self):
        return f"TuningConfigs({self.configs!r})"

    def add(self, config: LayerConfig) -> "TuningConfigs":
        return TuningConfigs(self.configs + [config])

    def remove(self, index: int) -> "TuningConfigs":
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} configs")
        configs = list(self.configs)
        del configs[index]
        return TuningConfigs(configs)

    def replace(self, index: int, config: LayerConfig) -> "TuningConfigs":
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} configs")
        configs = list(self.configs)
        configs[index] = config
        return TuningConfigs(configs)

    def clone(self) -> "TuningConfigs":
        return TuningConfigs([c.clone() for c in self.configs])

    def merge(self, other: "TuningConfigs") -> "TuningConfigs":
        if not isinstance(other, TuningConfigs):
            raise TypeError(f"merge takes a TuningConfigs, got {type(other).__name__}")
        return TuningConfigs(self.configs + other.configs)

    def filter(self, predicate) -> "TuningConfigs":
        return TuningConfigs([c for c in self.configs if predicate(c)])

    def map(self, fn) -> "TuningConfigs":
        return TuningConfigs([fn(c) for c in self.configs])
