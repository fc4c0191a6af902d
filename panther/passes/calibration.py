"""Second moments E[x xᵀ] of layer inputs, for activation-aware SVD (``init="asvd"``).

Two sources, same statistic: running a graph on its example inputs (the compile backend:
the inputs of the first compiled call calibrate), or forward hooks on modules over
calibration batches (``sketch_model``).
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


def _concrete(value):
    """Real values for a graph run: symbolic ints become the sizes they were traced with."""
    if isinstance(value, torch.SymInt):
        return int(value.node.hint)
    return value


def graph_second_moments(gm: fx.GraphModule, example_inputs, wanted: dict) -> dict:
    """{layer name: E[x xᵀ]} for ``wanted`` = {input node: [layer names]}, from one run of ``gm``."""
    moments = {node: _Moments() for node in wanted}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in moments and isinstance(out, torch.Tensor):
                moments[n].add(out)
            return out

    with torch.no_grad():
        Recorder(gm).run(*[_concrete(v) for v in example_inputs])
    return {name: moments[node].value() for node, names in wanted.items() for name in names
            if moments[node].count}


def module_second_moments(model: torch.nn.Module, modules: dict, batches) -> dict:
    """{layer name: E[x xᵀ]} of the first input of each module in ``modules`` ({name: module}),
    over ``batches`` (an iterable of positional-argument tuples, or of single tensors)."""
    moments = {name: _Moments() for name in modules}
    hooks = [mod.register_forward_pre_hook(lambda _m, args, name=name: moments[name].add(args[0]))
             for name, mod in modules.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n, m in moments.items() if not m.count]
    if missing:
        raise ValueError(f"calibration batches never reached layers {missing}: init='asvd' needs their inputs")
    return {name: m.value() for name, m in moments.items()}
