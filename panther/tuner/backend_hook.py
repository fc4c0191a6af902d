"""``options={"tune": True, ...}`` of ``backend="panther"``: per-node search on the Dynamo graph.

Registered with ``panther.passes.register_tuner`` when ``panther.tuner`` is imported. For
each graph the backend hands over its candidate nodes; every candidate plan is applied to a
copy of the graph (``panther.passes.apply_plan``) and run on the calibration inputs (option
``calibration``, else the compile's example inputs), and its output error against the dense
graph drives :func:`search_plan`. With ``storage``, a finished search is reused only for the
same graph, options and weights (``weights_fingerprint``).
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch
from torch import fx

from ..plan import Plan
from .module_plan import relative_error
from .plan_search import PlanNode, search_plan

OPTION_KEYS = {
    "max_error": "tune: relative error budget of the graph's outputs vs dense (default 0.01; 0 keeps all dense)",
    "trials": "tune: plan evaluations in the Optuna phase (default 30)",
    "storage": "tune: Optuna storage URL or journal file path; an interrupted search resumes, a finished one is reused",
    "objective": "tune: cost to minimise: 'flops' (default), 'memory' or 'latency'",
    "calibration": "tune: list of input tuples (the model's own tensor inputs, in order) whose output error "
                   "drives the search (default: the compile's example inputs)",
    "holdout": "tune: list of input tuples (the model's own tensor inputs, in order), used to confirm the plan",
    "tune_inits": "tune: inits to consider per node, e.g. ['svd', 'sketch'] (default: [options init])",
    "tune_verbose": "tune: print the search summary table",
}


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


def _graph_inputs(gm, example_inputs, user_inputs, option: str):
    """The graph's inputs with the user's tensors in the slots of the model's own inputs
    (Dynamo also passes parameters and buffers as inputs: those keep their example values)."""
    if isinstance(user_inputs, torch.Tensor):
        user_inputs = [user_inputs]
    user_inputs = list(user_inputs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    slots = [i for i, n in enumerate(placeholders)
             if isinstance(example_inputs[i], torch.Tensor) and "_parameters_" not in n.name
             and "_buffers_" not in n.name]
    if len(slots) != len(user_inputs):
        raise ValueError(f"option {option}: each entry must hold the model's {len(slots)} tensor input(s), got "
                         f"{len(user_inputs)}")
    inputs = list(example_inputs)
    for i, value in zip(slots, user_inputs):
        inputs[i] = value
    return inputs


def weights_fingerprint(candidates) -> str:
    """A digest of the candidates' names, shapes and weights, so that a stored search is reused
    only for the same weights. Large weights are sampled (every n-th value, at most 65536 of
    them) and their float64 sum is included, which changes with any real retraining."""
    digest = hashlib.sha1()
    for cand in candidates:
        digest.update(cand.name.encode())
        if cand.param is None:
            continue
        flat = cand.param.detach().reshape(-1)
        digest.update(f"{tuple(cand.param.shape)}{cand.param.dtype}{float(flat.double().sum())!r}".encode())
        digest.update(flat[:: max(1, flat.numel() // 65536)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _node_of(cand) -> PlanNode:
    i = cand.info
    if cand.kind == "linear":
        return PlanNode(cand.name, "linear", {"in_features": i["in_features"], "out_features": i["out_features"]})
    if cand.kind == "conv2d":
        return PlanNode(cand.name, "conv2d", {k: i[k] for k in ("in_channels", "out_channels", "kernel_size", "groups")})
    return PlanNode(cand.name, "attention", {"head_dim": i["head_dim"], "q_len": int(i["q_len"]),
                                             "k_len": int(i["k_len"]), "heads": int(i["heads"])})


@torch.no_grad()
def tune_graph(candidates, example_inputs, options) -> Plan:
    from ..passes import apply_plan

    extra = dict(options.extra)
    eligible = [c for c in candidates if c.eligible and c.kind in options.kinds]
    if not eligible:
        return Plan({c.name: None for c in candidates if c.eligible})
    gm = eligible[0].node.graph.owning_module
    calibration = extra.get("calibration")
    batches = ([_graph_inputs(gm, example_inputs, b, "calibration") for b in calibration] if calibration
               else [list(example_inputs)])
    refs = [_outputs(gm(*b)) for b in batches]
    holdout = [_graph_inputs(gm, example_inputs, b, "holdout") for b in extra.get("holdout") or []]
    held_refs = [_outputs(gm(*b)) for b in holdout]

    def error_on(inputs, references):
        def run(plan):
            copy, mapping = _copy_with_map(gm)
            cands = []
            for c in eligible:
                info = {k: _remap(v, mapping) for k, v in c.info.items()}
                cands.append(dataclasses.replace(c, node=mapping[c.node], info=info))
            apply_plan(copy, cands, plan, seed=options.seed, fuse=False, example_inputs=example_inputs)
            outs = [_outputs(copy(*b)) for b in inputs]
            return relative_error([t for o in outs for t in o], [t for r in references for t in r])
        return run

    inits = tuple(extra.get("tune_inits") or (options.init if options.init != "asvd" else "svd",))
    result = search_plan([_node_of(c) for c in eligible], error_on(batches, refs),
                         max_error=float(extra.get("max_error", 0.01)), trials=int(extra.get("trials", 30)),
                         cost=extra.get("objective", "flops"), storage=extra.get("storage"), inits=inits,
                         holdout=error_on(holdout, held_refs) if holdout else None, seed=options.seed,
                         fingerprint=weights_fingerprint(eligible))
    if extra.get("tune_verbose"):
        print(result.summary())
    return Plan({**{c.name: None for c in candidates if c.eligible}, **result.plan.entries})


def register() -> None:
    try:
        from ..passes import register_tuner
    except ImportError:  # the compile passes are not available: the rest of the tuner still works
        return
    register_tuner(tune_graph, OPTION_KEYS)
