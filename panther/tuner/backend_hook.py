"""``options={"tune": True, ...}`` of ``backend="panther"``: per-node search on the Dynamo graph.

Registered with ``panther.passes.register_tuner`` when ``panther.tuner`` is imported. For
each graph the backend hands over its candidate nodes; every candidate plan is applied to a
copy of the graph (``panther.passes.apply_plan``) and run on the calibration inputs (option
``calibration``, else the compile's example inputs), and its output error against the dense
graph drives :func:`search_plan`. Linear and conv2d nodes may take ``init="asvd"``: their
factors come from the second moment of their inputs (a conv's: of its input patches) over the
calibration batches — the statistic the backend computes again (same batches, same numbers)
when it applies the chosen plan. With ``storage``, a finished search is reused only for the
same graph, options, weights and calibration data (``weights_fingerprint``); its sensitivity
results serve any budget.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os

import torch
from torch import fx

from ..passes.calibration import graph_batches, graph_second_moments, layer_inputs, moment_size, well_calibrated
from ..passes.candidates import value_of
from ..passes.options import input_batches
from ..passes.planning import _hint
from ..plan import INITS, Plan
from .costs import LatencyCost
from .module_plan import relative_error
from .plan_search import COSTS, PlanNode, search_plan
from .storage import fingerprint

DEFAULT_INITS = ("svd", "asvd")

OPTION_KEYS = {
    "max_error": "tune: relative error budget of the graph's outputs vs dense (default 0.01; 0 keeps all dense)",
    "trials": "tune: plan evaluations in the Optuna phase (default 30)",
    "storage": "tune: Optuna storage URL or journal file path; an interrupted search resumes, a finished one is reused",
    "objective": "tune: cost to minimise: 'flops' (default), 'memory' or 'latency' (measured per node on the "
                 "graph's device)",
    "holdout": "tune: list of input tuples (the model's own tensor inputs, in order), used to confirm the plan",
    "tune_inits": "tune: inits to consider per node, from 'svd', 'asvd', 'sketch' (default ['svd', 'asvd']; "
                  "asvd for linear and conv2d nodes, calibrated on the calibration inputs)",
    "tune_verbose": "tune: print the search summary table",
    "tune_progress": "tune: show a progress bar over the search's evaluations (default True; False silences it)",
}


def _number(value, name: str, kind=numbers.Real):
    if isinstance(value, bool) or not isinstance(value, kind) or not value >= 0:
        what = "an int" if kind is numbers.Integral else "a number"
        raise ValueError(f"option {name!r} must be {what} >= 0, got {value!r}")
    return value


def _inits(value) -> tuple:
    inits = (value,) if isinstance(value, str) else value
    if not isinstance(inits, (list, tuple)) or not inits or any(i not in INITS for i in inits) \
            or len(set(inits)) != len(inits):
        raise ValueError(f"option 'tune_inits' must be a non-empty list of distinct inits from {list(INITS)}, "
                         f"got {value!r}")
    return tuple(inits)


def _storage(value):
    if isinstance(value, (str, os.PathLike)) and os.fspath(value):
        return value
    import optuna

    if isinstance(value, optuna.storages.BaseStorage):
        return value
    raise TypeError(f"option 'storage' must be an Optuna storage URL, a journal file path or an "
                    f"optuna.storages.BaseStorage, got {value!r}")


def check_options(extra: dict) -> dict:
    """The tuner's options validated (and normalised) when the backend parses its options."""
    out = dict(extra)
    if "max_error" in out:
        out["max_error"] = float(_number(out["max_error"], "max_error"))
    if "trials" in out:
        out["trials"] = int(_number(out["trials"], "trials", numbers.Integral))
    if "objective" in out and out["objective"] not in (*COSTS, "latency"):
        raise ValueError(f"option 'objective' must be one of {[*COSTS, 'latency']}, got {out['objective']!r}")
    if "storage" in out:
        out["storage"] = _storage(out["storage"])
    if "holdout" in out:
        out["holdout"] = input_batches(out["holdout"], "holdout")
    if "tune_inits" in out:
        out["tune_inits"] = _inits(out["tune_inits"])
    for name in ("tune_verbose", "tune_progress"):
        if name in out and not isinstance(out[name], bool):
            raise TypeError(f"option {name!r} must be a bool, got {out[name]!r}")
    return out


def _copy_with_map(gm: fx.GraphModule):
    graph = fx.Graph()
    mapping: dict = {}
    out = graph.graph_copy(gm.graph, mapping)
    graph.output(out)
    copy = fx.GraphModule(gm, graph)
    copy.meta = dict(getattr(gm, "meta", {}))
    return copy, mapping


def _remap(value, mapping):
    if isinstance(value, fx.Node):
        return mapping.get(value, value)
    return value


def _outputs(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _outputs(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _outputs(v)]
    return []


def weights_fingerprint(candidates, batches=()) -> str:
    """A digest of the candidates' names and weights and of the tensors in ``batches`` (the
    calibration and held-out inputs; see :func:`panther.tuner.storage.fingerprint`), so that a
    stored search is reused only for the same weights and data."""
    parts = [p for c in candidates for p in (c.name, c.param) if p is not None]
    return fingerprint(parts + [v for batch in batches for v in batch if isinstance(v, torch.Tensor)])


def _shape(node) -> tuple:
    return tuple(_hint(size) for size in value_of(node).shape)


def _rows(cand) -> int:
    """Rows per call at the traced shape: a linear's input rows (leading elements), a conv's
    input patches (its output pixels)."""
    if cand.kind == "conv2d":
        out = _shape(cand.node)
        return out[0] * out[2] * out[3]
    return math.prod(_shape(cand.info["input"])[:-1])


def _node_of(cand, moments: dict) -> PlanNode:
    """The search's view of a candidate: its sizes at the traced shapes; a linear or conv2d
    takes init="asvd" only with calibration activations (see :func:`_asvd_ready`)."""
    i = cand.info
    inits = None if cand.name in moments else ("sketch", "svd")
    if cand.kind == "linear":
        sizes = {"in_features": i["in_features"], "out_features": i["out_features"], "rows": _rows(cand)}
        return PlanNode(cand.name, "linear", sizes, inits=inits)
    if cand.kind == "conv2d":
        sizes = {k: i[k] for k in ("in_channels", "out_channels", "kernel_size", "groups", "stride", "padding",
                                   "dilation")}
        return PlanNode(cand.name, "conv2d", {**sizes, "input_shape": _shape(i["input"]), "pixels": _rows(cand)},
                        inits=inits)
    return PlanNode(cand.name, "attention", {"head_dim": i["head_dim"], "q_len": _hint(i["q_len"]),
                                             "k_len": _hint(i["k_len"]), "heads": _hint(i["heads"]),
                                             "batch": _shape(cand.node)[0], "causal": bool(i["causal"])})


def _asvd_ready(eligible, n_batches: int) -> list:
    """The linear and conv2d candidates whose calibration inputs can choose init="asvd": at
    least as many rows (a conv's: input patches) over the batches as the second moment has
    features (``well_calibrated``, ``moment_size``); only theirs are collected."""
    return [c for c in eligible if c.kind in ("linear", "conv2d")
            and well_calibrated(_rows(c) * n_batches, moment_size(c.kind, c.info))]


def _plan_runner(gm, eligible, example_inputs, seed: int, moments: dict):
    """``run(plan, inputs) -> outputs`` of a copy of ``gm`` with ``plan`` applied (no fusion)."""
    from ..passes import apply_plan

    def run(plan, batches):
        copy, mapping = _copy_with_map(gm)
        cands = [dataclasses.replace(c, node=mapping[c.node], info={k: _remap(v, mapping) for k, v in c.info.items()})
                 for c in eligible]
        apply_plan(copy, cands, plan, seed=seed, fuse=False, example_inputs=example_inputs, second_moments=moments)
        return [t for b in batches for t in _outputs(copy(*b))]

    return run


def _error_on(run, gm, batches):
    """``f(plan) -> relative error`` of the plan's outputs on ``batches`` against the dense graph's."""
    references = [t for b in batches for t in _outputs(gm(*b))]
    return lambda plan: relative_error(run(plan, batches), references)


def _cost(objective: str, eligible):
    """The objective as search_plan's cost; latency is timed on the graph's device and dtype."""
    if objective != "latency":
        return objective
    out = value_of(eligible[0].node)
    return LatencyCost(device=out.device, dtype=out.dtype)


@torch.no_grad()
def tune_graph(candidates, example_inputs, options) -> Plan:
    extra = options.extra
    eligible = [c for c in candidates if c.eligible and c.kind in options.kinds]
    if not eligible:
        return Plan({c.name: None for c in candidates if c.eligible})
    gm = eligible[0].node.graph.owning_module
    batches = graph_batches(gm, example_inputs, options.calibration, "calibration")
    holdout = graph_batches(gm, example_inputs, extra["holdout"], "holdout") if extra.get("holdout") else []
    inits = extra.get("tune_inits", DEFAULT_INITS)
    ready = _asvd_ready(eligible, len(batches)) if "asvd" in inits else []
    moments = graph_second_moments(gm, batches, layer_inputs(ready)) if ready else {}
    run = _plan_runner(gm, eligible, example_inputs, options.seed, moments)
    result = search_plan([_node_of(c, moments) for c in eligible], _error_on(run, gm, batches),
                         max_error=extra.get("max_error", 0.01), trials=extra.get("trials", 30),
                         cost=_cost(extra.get("objective", "flops"), eligible), storage=extra.get("storage"),
                         inits=inits, holdout=_error_on(run, gm, holdout) if holdout else None, seed=options.seed,
                         fingerprint=weights_fingerprint(eligible, batches + holdout),
                         show_progress_bar=extra.get("tune_progress", True))
    if extra.get("tune_verbose"):
        print(result.summary())
    return Plan({**{c.name: None for c in candidates if c.eligible}, **result.plan.entries})


def register() -> None:
    try:
        from ..passes import register_tuner
    except ImportError:  # the compile passes are not available: the rest of the tuner still works
        return
    register_tuner(tune_graph, OPTION_KEYS, check_options)
