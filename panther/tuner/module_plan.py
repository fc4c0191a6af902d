"""Per-node plan search for an ``nn.Module`` (module swap), on top of :func:`search_plan`.

    result = tune_module(model, calibration=[x1, x2], holdout=[x3], max_error=0.02)
    sketched = panther.sketch_model(model, result.plan, calibration=[x1, x2])   # or apply_plan
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn.conv import resolve_padding
from ..passes.calibration import call_model, module_second_moments, moment_size, well_calibrated
from ..plan import Plan
from ..sketch_model import module_candidate, sketched_layer
from .costs import LatencyCost
from .layers import layer_kind, replace_module, sketchable_layers
from .plan_search import PlanNode, check_search_settings, search_plan
from .storage import fingerprint


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


def relative_error(outputs, references) -> float:
    num = sum(float((o.double() - r.double()).square().sum()) for o, r in zip(outputs, references))
    den = sum(float(r.double().square().sum()) for r in references)
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


def apply_plan(model: nn.Module, plan: Plan, originals: dict | None = None, *, second_moments: dict | None = None,
               seed: int = 0) -> nn.Module:
    """Swaps the layers ``plan`` sketches in place (the factors of ``panther.sketch_model`` with
    ``seed``: the same plan and seed give the same layers there, in the backend and here); returns
    ``model``. ``second_moments`` ({layer: E[x xᵀ]}) serves ``init="asvd"`` entries. Layers the plan
    keeps dense are restored from ``originals`` when given."""
    layers = originals or sketchable_layers(model)
    plan.check_names(set(layers))
    for name, spec in plan.entries.items():
        if spec is None:
            if originals:
                replace_module(model, name, originals[name])
            continue
        cand = module_candidate(name, layers[name])
        replace_module(model, name, sketched_layer(cand, spec, seed, (second_moments or {}).get(name)))
    return model


def _record_shapes(modules: dict, shapes: dict) -> list:
    """Forward hooks storing in ``shapes`` each module's (input shape, output shape) of its last
    call and the rows of its inputs over all calls: a linear's leading elements, a conv's
    input patches (output pixels)."""
    def hook(name):
        def record(module, args, out):
            x, y = tuple(args[0].shape), tuple(out.shape)
            rows = math.prod(y) // y[-3] if layer_kind(module) == "conv2d" else math.prod(x[:-1])
            shapes[name] = (x, y, shapes.get(name, (None, None, 0))[2] + rows)
        return record

    return [m.register_forward_hook(hook(n)) for n, m in modules.items()]


def _module_node(name: str, module: nn.Module, shapes, has_moment: bool) -> PlanNode:
    """The search's view of a Linear/Conv2d: sizes at the shapes of its calibration calls (a layer
    the batches never reach counts one row/pixel); "asvd" only with its inputs' second moment."""
    x, y, _ = shapes if shapes is not None else (None, None, 0)
    inits = None if has_moment else ("sketch", "svd")
    if layer_kind(module) == "linear":
        sizes = {"in_features": module.in_features, "out_features": module.out_features,
                 "rows": math.prod(x[:-1]) if x else 1}
        return PlanNode(name, "linear", sizes, inits=inits)
    sizes = {"in_channels": module.in_channels, "out_channels": module.out_channels,
             "kernel_size": module.kernel_size, "groups": module.groups, "stride": module.stride,
             "dilation": module.dilation,
             "padding": resolve_padding(module.padding, module.kernel_size, module.stride, module.dilation)}
    if x is not None:
        batched = len(x) == 4
        sizes["input_shape"] = x if batched else (1, *x)
        sizes["pixels"] = (y[0] if batched else 1) * y[-1] * y[-2]
    return PlanNode(name, "conv2d", sizes, inits=inits)


def _batch_tensors(batch) -> list:
    if isinstance(batch, torch.Tensor):
        return [batch]
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else []
    return [v for v in values if isinstance(v, torch.Tensor)]


def _fingerprint(originals: dict, calibration, holdout, output_fn) -> str:
    """Digest of the tuned layers' names and weights, the batches and the output function's name."""
    parts = [p for name, m in originals.items() for p in (name, m.weight)]
    parts += [t for batch in [*calibration, *(holdout or [])] for t in _batch_tensors(batch)]
    return fingerprint(parts + [getattr(output_fn, "__qualname__", repr(output_fn))])


@torch.no_grad()
def tune_module(model: nn.Module, calibration, *, max_error: float, holdout=None, layers=None, output_fn=first_tensor,
                inits=("svd", "asvd"), **search_kwargs):
    """Searches a plan for ``model``'s Linear/Conv2d layers (all, or the names in ``layers``).

    ``calibration``/``holdout``: lists of batches (a tensor, a tuple of positional inputs or a
    dict of keyword inputs). Error: relative Frobenius error of ``output_fn(model(batch))``
    against the dense model over the batches. ``inits``: as for :func:`search_plan`; "asvd"
    factors come from each layer's inputs over the calibration batches (a conv's input patches;
    offered only to layers with at least as many calibration rows, or patches, as the second
    moment has features: ``moment_size``). Other arguments go to :func:`search_plan` (``seed``
    also seeds the factors; ``cost="latency"`` times the ops on the model's device and dtype;
    ``fingerprint`` defaults to a digest of the layers' weights, the batches and
    ``output_fn``'s name, so a study in ``storage`` is reused only for those). The model is
    left dense; apply the result with ``panther.sketch_model(model, result.plan,
    calibration=calibration, options={"seed": seed})`` (or :func:`apply_plan`).
    """
    if not isinstance(calibration, (list, tuple)) or not calibration:
        raise ValueError("calibration must be a non-empty list of batches")
    if holdout is not None and not isinstance(holdout, (list, tuple)):
        raise ValueError(f"holdout must be a list of batches or None, got {type(holdout).__name__}")
    check_search_settings(max_error, search_kwargs.get("trials", 40), inits)
    originals = {n: m for n, m in sketchable_layers(model).items() if layer_kind(m) in ("linear", "conv2d")}
    if layers is not None:
        unknown = sorted(set(layers) - set(originals))
        if unknown:
            raise ValueError(f"layers {unknown} are not Linear/Conv2d layers of the model; known: {list(originals)}")
        originals = {n: originals[n] for n in layers}
    seed = search_kwargs.get("seed", 0)
    shapes: dict = {}
    handles = _record_shapes(originals, shapes)
    try:
        refs = [output_fn(call_model(model, b)) for b in calibration]
    finally:
        for h in handles:
            h.remove()
    held_refs = [output_fn(call_model(model, b)) for b in holdout] if holdout else None
    # asvd only where the calibration rows can choose it (``well_calibrated``): only their moments are collected
    ready = {n: m for n, m in originals.items() if n in shapes
             and well_calibrated(shapes[n][2], moment_size(layer_kind(m), module_candidate(n, m).info))}
    moments = module_second_moments(model, ready, calibration, strict=False) if "asvd" in inits and ready else {}
    nodes = [_module_node(n, m, shapes.get(n), n in moments) for n, m in originals.items()]

    def error_on(batches, references):
        def run(plan):
            try:
                apply_plan(model, plan, originals, second_moments=moments, seed=seed)
                return relative_error([output_fn(call_model(model, b)) for b in batches], references)
            finally:
                apply_plan(model, Plan({n: None for n in originals}), originals)
        return run

    if "fingerprint" not in search_kwargs:  # a stored search is reused only for these weights and batches
        search_kwargs["fingerprint"] = _fingerprint(originals, calibration, holdout, output_fn)
    if search_kwargs.get("cost") == "latency" and originals:  # timed on the model's device and dtype
        weight = next(iter(originals.values())).weight
        search_kwargs["cost"] = LatencyCost(device=weight.device, dtype=weight.dtype)
    return search_plan(nodes, error_on(calibration, refs), max_error=max_error, inits=inits,
                       holdout=error_on(holdout, held_refs) if holdout else None, **search_kwargs)
