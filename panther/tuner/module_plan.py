"""Per-node plan search for an ``nn.Module`` (module swap), on top of :func:`search_plan`.

    result = tune_module(model, calibration=[x1, x2], holdout=[x3], max_error=0.02)
    sketched = apply_plan(model, result.plan)      # or panther.sketch_model(model, result.plan)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..plan import Plan
from .layers import build_sketched, layer_kind, replace_module, sketchable_layers
from .plan_search import PlanNode, search_plan


def first_tensor(output):
    """The first tensor in a model output (tensor, tuple/list, dict or HF ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (list, tuple)) else \
        getattr(output, "to_tuple", lambda: ())()
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


def _call(model, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    return model(batch)


def relative_error(outputs, references) -> float:
    num = sum(float((o.double() - r.double()).square().sum()) for o, r in zip(outputs, references))
    den = sum(float(r.double().square().sum()) for r in references)
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


def apply_plan(model: nn.Module, plan: Plan, originals: dict | None = None) -> nn.Module:
    """Swaps the layers ``plan`` sketches (Linear/Conv2d; ``init`` "sketch"/"svd") in place; returns ``model``.
    Layers the plan keeps dense are restored from ``originals`` when given."""
    layers = originals or sketchable_layers(model)
    plan.check_names(set(layers))
    for name, spec in plan.entries.items():
        if spec is None:
            if originals:
                replace_module(model, name, originals[name])
            continue
        params = {"num_terms": spec.num_terms, "low_rank": spec.low_rank, "init": spec.init}
        if layer_kind(layers[name]) == "attention":
            params = {"num_random_features": spec.low_rank}
        replace_module(model, name, build_sketched(layers[name], params, copy_weights=True,
                                                   generator=torch.Generator(device="cpu").manual_seed(0)))
    return model


@torch.no_grad()
def tune_module(model: nn.Module, calibration, *, max_error: float, holdout=None, layers=None, output_fn=first_tensor,
                **search_kwargs):
    """Searches a plan for ``model``'s Linear/Conv2d layers (all, or the names in ``layers``).

    ``calibration``/``holdout``: lists of batches (a tensor, a tuple of positional inputs or a
    dict of keyword inputs). Error: relative Frobenius error of ``output_fn(model(batch))``
    against the dense model over the batches. Other arguments go to :func:`search_plan`.
    The model is left dense; apply the result with :func:`apply_plan`.
    """
    if not calibration:
        raise ValueError("calibration must be a non-empty list of batches")
    originals = {n: m for n, m in sketchable_layers(model).items() if layer_kind(m) in ("linear", "conv2d")}
    if layers is not None:
        unknown = sorted(set(layers) - set(originals))
        if unknown:
            raise ValueError(f"layers {unknown} are not Linear/Conv2d layers of the model; known: {list(originals)}")
        originals = {n: originals[n] for n in layers}
    rows = {}

    def hook(name):
        def record(module, args, out):
            x = args[0]
            rows[name] = x.numel() // x.shape[-1] if layer_kind(module) == "linear" else \
                out.shape[0] * out.shape[-1] * out.shape[-2]
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in originals.items()]
    try:
        refs = [output_fn(_call(model, b)) for b in calibration]
    finally:
        for h in handles:
            h.remove()
    held_refs = [output_fn(_call(model, b)) for b in holdout] if holdout else None
    nodes = []
    for name, m in originals.items():
        if layer_kind(m) == "linear":
            sizes = {"in_features": m.in_features, "out_features": m.out_features, "rows": rows.get(name, 1)}
            nodes.append(PlanNode(name, "linear", sizes))
        else:
            sizes = {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": m.kernel_size,
                     "groups": m.groups, "pixels": rows.get(name, 1)}
            nodes.append(PlanNode(name, "conv2d", sizes))

    def error_on(batches, references):
        def run(plan):
            try:
                apply_plan(model, plan, originals)
                return relative_error([output_fn(_call(model, b)) for b in batches], references)
            finally:
                apply_plan(model, Plan({n: None for n in originals}), originals)
        return run

    return search_plan(nodes, error_on(calibration, refs), max_error=max_error,
                       holdout=error_on(holdout, held_refs) if holdout else None, **search_kwargs)
