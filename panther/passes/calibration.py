"""Second moments E[x xᵀ] of layer inputs, for activation-aware SVD (``init="asvd"``).

Two sources, same statistic: running a graph on calibration inputs (the compile backend and
export: option ``calibration``, else the example inputs of the first compiled call), or
forward hooks on modules over calibration batches (``sketch_model``, the module tuner).
"""

from __future__ import annotations

import torch
from torch import fx


class _Moments:
    def __init__(self):
        self.sum, self.count = None, 0

    def add(self, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        gram = rows.T @ rows
        self.sum = gram if self.sum is None else self.sum + gram
        self.count += rows.shape[0]

    def value(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)


def well_calibrated(rows: int, in_features: int) -> bool:
    """Whether a second moment over ``rows`` calibration rows can be trusted to choose
    ``init="asvd"`` for a layer of ``in_features`` inputs: at least one row per input feature.
    With fewer, E[x xᵀ] is rank-deficient and ASVD fits the calibration rows themselves (exact
    on them once the rank reaches their count) rather than the layer, so its calibration error
    says nothing about new inputs. The tuner offers asvd only to well-calibrated layers."""
    return rows >= in_features


def call_model(model, batch):
    """``model(**batch)`` for a dict, ``model(*batch)`` for a tuple or list, ``model(batch)`` otherwise."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    return model(batch)


def _concrete(value):
    """Real values for a graph run: symbolic ints become the sizes they were traced with."""
    if isinstance(value, torch.SymInt):
        return int(value.node.hint)
    return value


def user_input_slots(gm: fx.GraphModule, example_inputs) -> list[int]:
    """Positions of a Dynamo graph's inputs that are the model's own tensors (Dynamo also passes
    parameters and buffers as inputs)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return [i for i, n in enumerate(placeholders)
            if isinstance(example_inputs[i], torch.Tensor) and "_parameters_" not in n.name
            and "_buffers_" not in n.name]


def check_like(batch, examples, option: str, index: int) -> None:
    """Raises unless ``batch`` holds tensors of the examples' count, shapes and dtypes: the graph
    was traced for those (a static graph may hold them as constants)."""
    if len(batch) != len(examples):
        raise ValueError(f"option {option}: each entry must hold the model's {len(examples)} tensor input(s), got "
                         f"{len(batch)} in entry {index}")
    for j, (value, example) in enumerate(zip(batch, examples)):
        if tuple(value.shape) != tuple(example.shape) or value.dtype != example.dtype:
            raise ValueError(f"option {option}: entry {index}, input {j} is {value.dtype} {tuple(value.shape)}; the "
                             f"graph was traced with {example.dtype} {tuple(example.shape)}: give batches shaped "
                             f"like the example inputs")


def graph_batches(gm: fx.GraphModule, example_inputs, batches, option: str = "calibration") -> list[list]:
    """Full input lists of a Dynamo graph for the user's ``batches`` (tuples of the model's tensor
    inputs): their tensors in the model-input slots, the example values (parameters, buffers,
    sizes; symbolic sizes as the ints they were traced with) elsewhere. ``batches=None`` gives
    the example inputs alone."""
    example_inputs = [_concrete(v) for v in example_inputs]
    if batches is None:
        return [example_inputs]
    slots = user_input_slots(gm, example_inputs)
    out = []
    for index, batch in enumerate(batches):
        batch = (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)
        check_like(batch, [example_inputs[i] for i in slots], option, index)
        inputs = list(example_inputs)
        for i, value in zip(slots, batch):
            inputs[i] = value
        out.append(inputs)
    return out


def linear_inputs(candidates) -> dict:
    """{input node: [layer names]} of the linear candidates (what :func:`graph_second_moments` wants)."""
    wanted: dict = {}
    for cand in candidates:
        if cand.kind == "linear":
            wanted.setdefault(cand.info["input"], []).append(cand.name)
    return wanted


def graph_second_moments(gm: fx.GraphModule, batches, wanted: dict) -> dict:
    """{layer name: E[x xᵀ]} for ``wanted`` = {input node: [layer names]}, over runs of ``gm`` on
    ``batches`` (full input lists, as from :func:`graph_batches`)."""
    moments = {node: _Moments() for node in wanted}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in moments and isinstance(out, torch.Tensor):
                moments[n].add(out)
            return out

    with torch.no_grad():
        for inputs in batches:
            Recorder(gm).run(*[_concrete(v) for v in inputs])
    return {name: moments[node].value() for node, names in wanted.items() for name in names
            if moments[node].count}


def module_second_moments(model: torch.nn.Module, modules: dict, batches, *, strict: bool = True) -> dict:
    """{layer name: E[x xᵀ]} of the first input of each module in ``modules`` ({name: module}),
    over ``batches`` (each a tuple of positional inputs, a dict of keyword inputs or one tensor).

    ``strict``: a module the batches never reach raises (naming it); otherwise it is left out.
    """
    moments = {name: _Moments() for name in modules}
    hooks = [mod.register_forward_pre_hook(lambda _m, args, name=name: moments[name].add(args[0]))
             for name, mod in modules.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                call_model(model, batch)
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n, m in moments.items() if not m.count]
    if missing and strict:
        raise ValueError(f"calibration batches never reached layers {missing}: init='asvd' needs their inputs")
    return {name: m.value() for name, m in moments.items() if m.count}
