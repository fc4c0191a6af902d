"""``SKAutoTuner``: picks sketch parameters for a model's layers by searching with Optuna.

    config = LayerConfig(layer_names=["fc1", "fc2"], params={"num_terms": [1, 2], "low_rank": [16, 32]})
    tuner = SKAutoTuner(model, TuningConfigs([config]), accuracy_eval_func)
    tuner.tune(); model = tuner.apply_best_params(); plan = tuner.to_plan()

For every trial the selected layer(s) are replaced in place by sketched layers built from the
dense originals, ``accuracy_eval_func(model)`` is called (``num_runs_per_param`` times, fresh
random sketches each time; the *mean* counts), and the dense layers are put back. The score
is the accuracy, or — with ``accuracy_threshold`` and ``optimization_eval_func`` — the
optimisation value (e.g. throughput) of trials whose accuracy meets the threshold (-inf for
the others). Higher is better. A parameter set already evaluated is not evaluated again; a
search whose finite grid is exhausted stops early. An evaluation that raises is recorded as a
failed trial. Layers are tuned one layer (or one joint group) at a time with the others dense.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os

from torch import nn

from ..plan import Plan, SketchSpec
from .configs import LayerConfig, TuningConfigs
from .layers import LAYER_KINDS, build_sketched, layer_kind, replace_module, sketchable_layers
from .params import first_value, grid_size, spec_from_dict, spec_to_dict
from .progress import progress_bar
from .resolver import LayerNameResolver, ParamsResolver
from .search import OptunaSearch, SearchAlgorithm

RESULTS_VERSION = 1


def _canon(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _accepts(fn, name) -> bool:
    try:
        ps = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in ps or any(p.kind == p.VAR_KEYWORD for p in ps.values())


class _Group:
    def __init__(self, key, names, space, copy_weights):
        self.key, self.names, self.space, self.copy_weights = key, names, space, copy_weights


class SKAutoTuner:
    """Tunes sketch parameters of selected layers (the earlier Panther's API, improved).

    Args:
        model: the model; tuning swaps its layers in place and restores them.
        configs: a :class:`TuningConfigs` (a list of :class:`LayerConfig` is accepted too).
        accuracy_eval_func: ``f(model) -> float``, higher is better.
        search_algorithm: a :class:`SearchAlgorithm` (default ``OptunaSearch()``).
        verbose: print a line per trial.
        accuracy_threshold: minimum accuracy; trials below it never become the best, and a
            layer none of whose trials reaches it stays dense.
        optmization_eval_func / optimization_eval_func (same thing, either spelling):
            ``f(model) -> float`` (e.g. speed, higher is better) maximised among the trials
            meeting ``accuracy_threshold`` (which it requires).
        num_runs_per_param: evaluations per parameter set, averaged.
        show_progress_bar: a progress bar over all trials.
    """

    def __init__(self, model, configs, accuracy_eval_func, search_algorithm=None, verbose=False,
                 accuracy_threshold=None, optmization_eval_func=None, num_runs_per_param=1, *,
                 optimization_eval_func=None, show_progress_bar=False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(configs, LayerConfig):
            configs = TuningConfigs([configs])
        elif isinstance(configs, (list, tuple)):
            configs = TuningConfigs(list(configs))
        if not isinstance(configs, TuningConfigs):
            raise TypeError(f"configs must be a TuningConfigs, got {type(configs).__name__}")
        if not callable(accuracy_eval_func):
            raise TypeError(f"accuracy_eval_func must be callable f(model) -> float, got {accuracy_eval_func!r}")
        if optmization_eval_func is not None and optimization_eval_func is not None \
                and optmization_eval_func is not optimization_eval_func:
            raise ValueError("give optimization_eval_func once (optmization_eval_func is its old spelling)")
        opt = optimization_eval_func if optimization_eval_func is not None else optmization_eval_func
        if opt is not None and not callable(opt):
            raise TypeError(f"optimization_eval_func must be callable f(model) -> float, got {opt!r}")
        if accuracy_threshold is not None and (isinstance(accuracy_threshold, bool) or
                                               not isinstance(accuracy_threshold, numbers.Real)):
            raise TypeError(f"accuracy_threshold must be a number or None, got {accuracy_threshold!r}")
        if opt is not None and accuracy_threshold is None:
            raise ValueError("optimization_eval_func is maximised among trials that meet accuracy_threshold: "
                             "give accuracy_threshold too")
        if isinstance(num_runs_per_param, bool) or not isinstance(num_runs_per_param, int) or num_runs_per_param < 1:
            raise ValueError(f"num_runs_per_param must be an int >= 1, got {num_runs_per_param!r}")
        if search_algorithm is None:
            search_algorithm = OptunaSearch()
        if not isinstance(search_algorithm, SearchAlgorithm):
            raise TypeError(f"search_algorithm must be a panther.tuner.SearchAlgorithm, got "
                            f"{type(search_algorithm).__name__}")
        self.model = model
        self.accuracy_eval_func = accuracy_eval_func
        self.optimization_eval_func = opt
        self.accuracy_threshold = accuracy_threshold
        self.search_algorithm = search_algorithm
        self.verbose = bool(verbose)
        self.num_runs_per_param = num_runs_per_param
        self.show_progress_bar = bool(show_progress_bar)
        self.layer_map = sketchable_layers(model)
        self._originals = dict(self.layer_map)
        self.resolver = LayerNameResolver(model, self.layer_map)
        self.paramsResolver = ParamsResolver(model, self.layer_map, verbose=self.verbose)
        self.results: dict[str, list[dict]] = {}
        self.best_params: dict[str, dict] = {}
        self._best_modules: dict[str, dict[str, nn.Module]] = {}
        self.setConfigs(configs)

    # -- configuration ----------------------------------------------------------------------
    @property
    def optmization_eval_func(self):  # the earlier spelling
        return self.optimization_eval_func

    def getResolver(self) -> LayerNameResolver:  # noqa: N802 (earlier API)
        return self.resolver

    def getConfigs(self) -> TuningConfigs:  # noqa: N802
        return self.configs

    def setConfigs(self, configs: TuningConfigs) -> None:  # noqa: N802
        """Sets, resolves and checks the configs (raises ValueError naming what is wrong)."""
        if not isinstance(configs, TuningConfigs):
            raise TypeError(f"configs must be a TuningConfigs, got {type(configs).__name__}")
        groups = []
        for i, config in enumerate(configs):
            names = self.resolver.resolve(config.layer_names)
            if not names:
                raise ValueError(f"configs[{i}]: layer_names={config.layer_names!r} matches no layer that can be "
                                 f"sketched; such layers are: {list(self.layer_map)}")
            for sub in self.paramsResolver.resolve(config, names):
                sub_names = self.resolver.resolve(sub.layer_names) if sub is not config else names
                self._check(i, sub_names, sub.params)
                if sub.separate:
                    groups += [_Group(n, [n], sub.params, sub.copy_weights) for n in sub_names]
                else:
                    groups.append(_Group("_".join(sub_names), sub_names, sub.params, sub.copy_weights))
        keys = [g.key for g in groups]
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        if duplicated:
            raise ValueError(f"layers {duplicated} are selected by more than one config; each layer may be tuned once")
        self.configs = configs
        self._groups = groups

    def _check(self, index, names, space):
        for name in names:
            module = self.layer_map[name]
            allowed = LAYER_KINDS[layer_kind(module)][2]
            unknown = sorted(set(space) - set(allowed))
            if unknown:
                raise ValueError(f"configs[{index}]: parameters {unknown} do not apply to layer {name!r} "
                                 f"({type(module).__name__}); allowed: {list(allowed)}")
            required = ("num_random_features",) if layer_kind(module) == "attention" else ("num_terms", "low_rank")
            missing = [p for p in required if p not in space]
            if missing:
                raise ValueError(f"configs[{index}]: layer {name!r} ({type(module).__name__}) needs a search space "
                                 f"for {missing}")

    # -- tuning -----------------------------------------------------------------------------
    def tune(self) -> dict:
        """Runs the search for every layer/group; returns ``best_params``
        (``{key: {"params", "score", "accuracy", "speed", "layers", "copy_weights", "best_layer"}}``)."""
        total = sum(getattr(self.search_algorithm, "n_trials", 0) for _ in self._groups) or None
        bar = progress_bar(total, "SKAutoTuner", self.show_progress_bar)
        try:
            for group in self._groups:
                self._tune_group(group, bar)
        finally:
            bar.close()
        return self.best_params

    def _tune_group(self, group, bar):
        search = self.search_algorithm
        if _accepts(search.initialize, "study_key"):
            search.initialize(group.space, study_key=group.key)
        else:
            search.initialize(group.space)
        records = self.results.setdefault(group.key, [])
        cache = {}
        if isinstance(search, OptunaSearch):  # a resumed study: its finished trials count and are reused
            for t in search.completed():
                rec = {"params": dict(t.params), "score": t.value, "accuracy": t.user_attrs.get("accuracy"),
                       "speed": t.user_attrs.get("speed"), "cached": False, "error": None}
                cache[_canon(rec["params"])] = rec
                records.append(rec)
        for rec in records:
            if rec["error"] is None:
                cache.setdefault(_canon(rec["params"]), rec)
        size = grid_size(group.space)
        while not (size is not None and len(cache) >= size):
            params = search.get_next_params()
            if params is None:
                break
            key = _canon(params)
            if key in cache:  # no re-evaluation of a parameter set already measured
                rec = dict(cache[key], cached=True)
                attrs = {"accuracy": rec["accuracy"], "speed": rec["speed"], "cached": True}
                self._update(search, params, rec["score"], attrs)
            else:
                rec, modules = self._evaluate(group, params)
                if rec["error"] is None:
                    cache[key] = rec
                attrs = {"accuracy": rec["accuracy"], "speed": rec["speed"]}
                if rec["error"]:
                    attrs["error"] = rec["error"]
                self._update(search, params, None if rec["error"] else rec["score"], attrs)
                if rec["error"] is None:
                    self._consider_best(group, rec, modules)
            records.append(rec)
            if self.verbose:
                shown = rec["error"] or f"score={rec['score']:.6g} accuracy={rec['accuracy']:.6g}"
                print(f"[SKAutoTuner] {group.key}: {params} -> {shown}{' (cached)' if rec['cached'] else ''}")
            bar.update(1)
        for rec in records:  # results restored from storage may hold the best
            if rec["error"] is None and not rec["cached"]:
                self._consider_best(group, rec, None)
        if group.key not in self.best_params:
            self.best_params[group.key] = self._entry(group, None)

    @staticmethod
    def _update(search, params, score, attrs):
        if _accepts(search.update, "user_attrs"):
            search.update(params, score, user_attrs=attrs)
        else:
            search.update(params, score if score is not None else float("nan"))

    def _evaluate(self, group, params):
        accs, speeds, best_modules, best_acc = [], [], None, -math.inf
        resource = self.search_algorithm.get_resource() if hasattr(self.search_algorithm, "get_resource") else None
        try:
            for _ in range(self.num_runs_per_param):
                modules = {n: build_sketched(self._originals[n], params, group.copy_weights) for n in group.names}
                for n, m in modules.items():
                    replace_module(self.model, n, m)
                try:
                    acc = self.accuracy_eval_func(self.model) if resource is None else \
                        self.accuracy_eval_func(self.model, resource=resource)
                    acc = float(acc)
                    if not math.isfinite(acc):
                        raise ValueError(f"accuracy_eval_func returned {acc}")
                    accs.append(acc)
                    if self.optimization_eval_func is not None and acc >= self.accuracy_threshold:
                        speeds.append(float(self.optimization_eval_func(self.model)))
                finally:
                    for n in group.names:
                        replace_module(self.model, n, self._originals[n])
                if acc > best_acc:
                    best_acc, best_modules = acc, modules
        except Exception as exc:  # a failed evaluation is a failed trial, not a crash
            return {"params": dict(params), "score": None, "accuracy": None, "speed": None, "cached": False,
                    "error": f"{type(exc).__name__}: {exc}"}, None
        accuracy = sum(accs) / len(accs)
        speed = sum(speeds) / len(speeds) if speeds else None
        feasible = self.accuracy_threshold is None or accuracy >= self.accuracy_threshold
        if self.optimization_eval_func is not None:
            score = speed if feasible and speed is not None else -math.inf
        else:
            score = accuracy
        return {"params": dict(params), "score": score, "accuracy": accuracy, "speed": speed if feasible else None,
                "cached": False, "error": None}, best_modules

    def _feasible(self, rec) -> bool:
        return (rec["score"] is not None and rec["score"] > -math.inf and
                (self.accuracy_threshold is None or rec["accuracy"] >= self.accuracy_threshold))

    def _consider_best(self, group, rec, modules):
        if not self._feasible(rec):
            return
        current = self.best_params.get(group.key)
        if current is None or current["params"] is None or rec["score"] > current["score"]:
            self.best_params[group.key] = self._entry(group, rec)
            self._best_modules[group.key] = modules or {}
            self.best_params[group.key]["best_layer"] = self._best_layer(group)

    def _best_layer(self, group):
        modules = self._best_modules.get(group.key) or {}
        if len(group.names) == 1:
            return modules.get(group.names[0])
        return modules or None

    @staticmethod
    def _entry(group, rec):
        if rec is None:
            return {"params": None, "score": None, "accuracy": None, "speed": None, "layers": list(group.names),
                    "copy_weights": group.copy_weights, "best_layer": None}
        return {"params": dict(rec["params"]), "score": rec["score"], "accuracy": rec["accuracy"],
                "speed": rec["speed"], "layers": list(group.names), "copy_weights": group.copy_weights,
                "best_layer": None}

    # -- applying ---------------------------------------------------------------------------
    def apply_best_params(self) -> nn.Module:
        """Puts the best sketched layer of every tuned layer into the model (the very module
        measured, or one rebuilt from the parameters after :meth:`load_tuning_results`).
        Layers with no trial meeting the threshold stay dense. Returns the model."""
        for key, entry in self.best_params.items():
            if entry["params"] is None:
                if self.verbose:
                    print(f"[SKAutoTuner] {key}: no trial met the requirements; layer stays dense")
                continue
            modules = self._best_modules.get(key) or {}
            for name in entry["layers"]:
                module = modules.get(name) or build_sketched(self._originals[name], entry["params"],
                                                             entry["copy_weights"])
                replace_module(self.model, name, module)
        return self.model

    def replace_without_tuning(self) -> nn.Module:
        """Sketches every selected layer with the first value of each search space. Returns the model."""
        for group in self._groups:
            params = {n: first_value(s) for n, s in group.space.items()}
            for name in group.names:
                replace_module(self.model, name, build_sketched(self._originals[name], params, group.copy_weights))
        return self.model

    def restore_dense(self) -> nn.Module:
        """Puts every original dense layer back. Returns the model."""
        for name, module in self._originals.items():
            replace_module(self.model, name, module)
        return self.model

    def get_best_params(self) -> dict:
        """``{layer or group key: best params (None where nothing met the requirements)}``."""
        return {key: (dict(e["params"]) if e["params"] is not None else None) for key, e in self.best_params.items()}

    def to_plan(self) -> Plan:
        """The tuned decisions as a :class:`panther.plan.Plan` (keyed by layer name).

        Linear/Conv2d: ``SketchSpec(num_terms, low_rank, init)``; attention:
        ``SketchSpec(1, num_random_features)`` (a plan holds no kernel_fn: only "softmax"
        converts). Layers with no feasible trial are None (dense).
        """
        entries = {}
        for key, entry in self.best_params.items():
            for name in entry["layers"]:
                params = entry["params"]
                if params is None:
                    entries[name] = None
                elif layer_kind(self._originals[name]) == "attention":
                    if params.get("kernel_fn", "softmax") != "softmax" or params.get("iscausal", False):
                        raise ValueError(f"layer {name!r}: a Plan cannot express kernel_fn/iscausal {params}")
                    entries[name] = SketchSpec(1, int(params["num_random_features"]))
                else:
                    entries[name] = SketchSpec(int(params["num_terms"]), int(params["low_rank"]),
                                               params.get("init", "sketch"))
        return Plan(entries)

    # -- results ----------------------------------------------------------------------------
    def get_results_records(self) -> list[dict]:
        """Every trial as a flat dict (layer, params..., score, accuracy, speed, cached, error)."""
        rows = []
        for key, records in self.results.items():
            for rec in records:
                rows.append({"layer": key, **rec["params"], "score": rec["score"], "accuracy": rec["accuracy"],
                             "speed": rec["speed"], "cached": rec["cached"], "error": rec["error"]})
        return rows

    def get_results_dataframe(self):
        """:meth:`get_results_records` as a pandas DataFrame (ImportError without pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("get_results_dataframe needs pandas (pip install pandas); "
                              "get_results_records() gives the same rows as a list of dicts") from exc
        return pd.DataFrame(self.get_results_records())

    def save_tuning_results(self, path) -> None:
        """Writes results, best parameters and the resolved search spaces as JSON (no modules)."""
        def clean(value):
            return None if isinstance(value, float) and not math.isfinite(value) else value

        data = {
            "version": RESULTS_VERSION,
            "results": {k: [{**r, "score": clean(r["score"]), "infeasible": r["score"] == -math.inf}
                            for r in v] for k, v in self.results.items()},
            "best_params": {k: {f: v for f, v in e.items() if f != "best_layer"} for k, e in self.best_params.items()},
            "groups": [{"key": g.key, "layers": g.names, "copy_weights": g.copy_weights,
                        "space": {n: spec_to_dict(s) for n, s in g.space.items()}} for g in self._groups],
        }
        with open(path, "w") as f:
            json.dump(data, f, indent=1, default=str)

    def load_tuning_results(self, path) -> None:
        """Reads :meth:`save_tuning_results`' file; ``apply_best_params()`` then rebuilds the layers."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"no tuning results at {path!r}")
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path!r} is not a JSON file written by save_tuning_results: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != RESULTS_VERSION or "best_params" not in data:
            raise ValueError(f"{path!r} is not a tuning-results file of version {RESULTS_VERSION}")
        for key, entry in data["best_params"].items():
            unknown = [n for n in entry["layers"] if n not in self._originals]
            if unknown:
                raise ValueError(f"tuning results name layers {unknown} that this model does not have")
        self.results = {k: [{**r, "score": -math.inf if r.pop("infeasible", False) else r["score"]} for r in v]
                        for k, v in data["results"].items()}
        self.best_params = {k: {**e, "best_layer": None} for k, e in data["best_params"].items()}
        self._best_modules = {}
        self._saved_spaces = {g["key"]: {n: spec_from_dict(s) for n, s in g["space"].items()} for g in data["groups"]}
