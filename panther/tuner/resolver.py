"""Layer selection (``LayerNameResolver``) and ``params="auto"`` spaces (``ParamsResolver``)."""

from __future__ import annotations

import numbers
import re

from torch import nn

from .configs import LayerConfig, TuningConfigs, check_selector
from .layers import layer_kind, sketchable_layers
from .params import Categorical


def _as_list(value, key):
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        raise TypeError(f"layer_names[{key!r}] must be a string or a list of strings, got {value!r}")
    return list(values)


def _regex(text):
    try:
        return re.compile(text)
    except re.error:
        return re.compile(re.escape(text))  # not a regex: a literal substring


class LayerNameResolver:
    """Turns a selector into qualified names of sketchable layers, in model order.

    * ``str``: an exact module name, else a regex searched in every name (an invalid regex
      is taken literally);
    * ``list``: the union of its strings;
    * ``dict``: rules ``pattern``, ``contains``, ``type`` (a class name; subclasses match),
      then ``indices`` or ``range`` applied to the matches.

    Only layers that can be sketched are returned (containers whose names match are skipped).
    """

    def __init__(self, model: nn.Module, layer_map: dict | None = None):
        self.model = model
        self.layer_map = layer_map if layer_map is not None else sketchable_layers(model)

    def refresh(self) -> None:
        self.layer_map = sketchable_layers(self.model)

    def resolve(self, selector) -> list[str]:
        check_selector(selector)
        names = list(self.layer_map)
        if isinstance(selector, str):
            return self._match_one(selector, names)
        if isinstance(selector, (list, tuple)):
            chosen = set()
            for item in selector:
                chosen.update(self._match_one(item, names))
            return [n for n in names if n in chosen]
        return self._match_rules(selector, names)

    def _match_one(self, text, names):
        if text in self.layer_map:
            return [text]
        pattern = _regex(text)
        return [n for n in names if pattern.search(n)]

    def _match_rules(self, rules, names):
        out = list(names)
        if "pattern" in rules:
            patterns = [_regex(p) for p in _as_list(rules["pattern"], "pattern")]
            out = [n for n in out if any(p.search(n) for p in patterns)]
        if "contains" in rules:
            parts = _as_list(rules["contains"], "contains")
            out = [n for n in out if any(p in n for p in parts)]
        if "type" in rules:
            types = set(_as_list(rules["type"], "type"))
            out = [n for n in out if types & {c.__name__ for c in type(self.layer_map[n]).__mro__}]
        if "indices" in rules and "range" in rules:
            raise ValueError("layer_names: give 'indices' or 'range', not both")
        if "indices" in rules:
            indices = rules["indices"]
            indices = [indices] if isinstance(indices, numbers.Integral) else indices
            if not isinstance(indices, (list, tuple)) or not all(
                    isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in indices):
                raise TypeError(f"layer_names['indices'] must be an int or a list of ints, got {rules['indices']!r}")
            for i in indices:
                if not 0 <= i < len(out):
                    raise ValueError(f"layer_names['indices']: {i} is out of range for the {len(out)} matching "
                                     f"layers {out}")
            out = [out[i] for i in dict.fromkeys(indices)]
        if "range" in rules:
            spec = rules["range"]
            if not isinstance(spec, (list, tuple)) or len(spec) not in (2, 3) or not all(
                    isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in spec):
                raise ValueError(f"layer_names['range'] must be [start, end] or [start, end, step] ints, got {spec!r}")
            start, end, step = (*spec, 1) if len(spec) == 2 else spec
            if start < 0 or end <= start or end > len(out) or step < 1:
                raise ValueError(f"layer_names['range'] {list(spec)} must satisfy 0 <= start < end <= "
                                 f"{len(out)} (matches) and step >= 1")
            out = out[start:end:step]
        return out


def _ladder(win, start):
    """Ranks k = start, 2·start, ... while ``win(k)``."""
    out, k = [], start
    while win(k) and k <= 4096:
        out.append(k)
        k *= 2
    return out


def auto_space(module: nn.Module) -> dict:
    """A search space for ``module`` holding only sizes that can save work.

    Linear: num_terms ∈ {1, 2, 3}; low_rank k = 16, 32, 64, … while some L keeps
    2·L·k·(in + out) < in·out. Conv2d: the same on the kernel (C_in·kh·kw inputs, C_out
    outputs), k from 8. MultiheadAttention: num_random_features ∈ {32, 64, 128, 256}.
    """
    kind = layer_kind(module)
    if kind == "attention":
        return {"num_random_features": Categorical([32, 64, 128, 256])}
    if kind == "linear":
        d_in, d_out, start = module.in_features, module.out_features, 16
    elif kind == "conv2d":
        kh, kw = module.kernel_size
        d_in, d_out, start = module.in_channels // module.groups * kh * kw, module.out_channels, 8
    else:
        raise ValueError(f"params='auto' cannot handle a {type(module).__name__}")
    ranks = _ladder(lambda k: 2 * k * (d_in + d_out) < d_in * d_out, start)
    if not ranks:
        ranks = _ladder(lambda k: 2 * k * (d_in + d_out) < 2 * d_in * d_out, max(1, start // 4))[:2] or [1]
    terms = [L for L in (1, 2, 3) if 2 * L * ranks[0] * (d_in + d_out) < d_in * d_out] or [1]
    return {"num_terms": Categorical(terms), "low_rank": Categorical(ranks)}


class ParamsResolver:
    """Expands ``params="auto"`` configs: one LayerConfig per group of same-shaped layers."""

    def __init__(self, model: nn.Module, layer_map: dict | None = None, verbose: bool = False):
        self.model = model
        self.layer_map = layer_map if layer_map is not None else sketchable_layers(model)
        self.verbose = verbose

    def resolve(self, config: LayerConfig, names: list[str]) -> TuningConfigs:
        if config.params != "auto":
            return TuningConfigs([config])
        groups: dict[tuple, list[str]] = {}
        for name in names:
            space = auto_space(self.layer_map[name])
            key = tuple((k, tuple(v.choices)) for k, v in space.items())
            groups.setdefault(key, []).append(name)
        out = []
        for key, group in groups.items():
            params = {k: Categorical(list(v)) for k, v in key}
            if self.verbose:
                print(f"[SKAutoTuner] auto space for {group}: {params}")
            out.append(LayerConfig(group, params, separate=config.separate, copy_weights=config.copy_weights))
        return TuningConfigs(out)
