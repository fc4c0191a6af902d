"""``panther.sketch_model(model, plan)``: swap dense modules for sketched ones, for training.

nn.Linear (and HF's GPT-2 ``Conv1D``, a linear stored transposed) -> :class:`SKLinear`,
nn.Conv2d -> :class:`SKConv2d`, nn.MultiheadAttention -> :class:`RandMultiHeadAttention`,
as the plan says, in place. Names, plan sources, eligibility and factors are those of the
compile backend (``panther.passes``), so the same plan and seed give the same layers the
backend computes with: a model swapped here and the model compiled with
``backend="panther"`` agree.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .nn import RandMultiHeadAttention, SKConv2d, SKLinear
from .nn.attention import make_performer
from .nn.conv import resolve_padding
from .passes import Candidate, attention_projection, conv_factors, layer_generator, linear_factors, make_plan, \
    parse_options, with_plan
from .passes.calibration import module_second_moments
from .plan import Plan


def _is_conv1d(module: nn.Module) -> bool:
    """HF transformers' Conv1D (GPT-2): y = x W + b with W [in, out]; matched by shape, not import."""
    return type(module).__name__ == "Conv1D" and isinstance(getattr(module, "weight", None), torch.Tensor) \
        and module.weight.dim() == 2 and getattr(module, "nf", None) == module.weight.shape[1]


def _inside_mha(name: str, mha_names: set[str]) -> bool:
    # nn.MultiheadAttention reads out_proj.weight directly: its Linear cannot be swapped alone
    return any(name.startswith(m + ".") for m in mha_names)


def module_candidate(name: str, mod: nn.Module) -> Candidate | None:
    """The candidate for one module (named as in ``model.named_modules()``), or None for a module
    that cannot be swapped (not a Linear, HF Conv1D, Conv2d or MultiheadAttention)."""
    if isinstance(mod, nn.Linear) or _is_conv1d(mod):
        transposed = not isinstance(mod, nn.Linear)
        weight = mod.weight.T if transposed else mod.weight
        ok = weight.is_floating_point()
        return Candidate(name, "linear", ok, "" if ok else "weight is not floating", weight=weight, param=mod.weight,
                         transposed=transposed, info={"in_features": weight.shape[1], "out_features": weight.shape[0],
                                                      "bias": mod.bias is not None, "module": mod})
    if isinstance(mod, nn.Conv2d):
        info = {"in_channels": mod.in_channels, "out_channels": mod.out_channels, "kernel_size": mod.kernel_size,
                "stride": mod.stride, "dilation": mod.dilation, "groups": mod.groups,
                "padding": resolve_padding(mod.padding, mod.kernel_size, mod.stride, mod.dilation),
                "bias": mod.bias is not None, "module": mod}
        ok = mod.weight.is_floating_point()
        return Candidate(name, "conv2d", ok, "" if ok else "weight is not floating", weight=mod.weight,
                         param=mod.weight, info=info)
    if isinstance(mod, nn.MultiheadAttention):
        ok = mod.bias_k is None and not mod.add_zero_attn
        return Candidate(name, "attention", ok, "" if ok else "add_bias_kv / add_zero_attn",
                         info={"heads": mod.num_heads, "head_dim": mod.head_dim, "q_len": None, "k_len": None,
                               "causal": False, "module": mod})
    return None


def module_candidates(model: nn.Module) -> list[Candidate]:
    """Candidates for every swappable module, named as in ``model.named_modules()``."""
    mha_names = {n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    found = []
    for name, mod in model.named_modules():
        if name and not _inside_mha(name, mha_names):
            cand = module_candidate(name, mod)
            if cand is not None:
                found.append(cand)
    return found


def _sketched_linear(cand: Candidate, spec, seed: int, second_moment) -> SKLinear:
    weight = cand.weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SKLinear's "saves nothing" warning: the plan chose these sizes
        layer = SKLinear(weight.shape[1], weight.shape[0], spec.num_terms, spec.low_rank, bias=cand.info["bias"],
                         dtype=weight.dtype, device="meta")
    layer = layer.to_empty(device=weight.device)  # no throw-away init: the factors are set next
    with torch.no_grad():
        layer._set_factors(linear_factors(weight, spec, cand.name, seed, second_moment, owner=cand.param))
        if layer.bias is not None:
            layer.bias.copy_(cand.info["module"].bias)
    return layer


def _sketched_conv(cand: Candidate, spec, seed: int, second_moment) -> SKConv2d:
    conv: nn.Conv2d = cand.info["module"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = SKConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         bias=conv.bias is not None, num_terms=spec.num_terms, low_rank=spec.low_rank,
                         dtype=conv.weight.dtype, device="meta", dilation=conv.dilation, groups=conv.groups,
                         padding_mode=conv.padding_mode)
    layer = layer.to_empty(device=conv.weight.device)
    with torch.no_grad():
        layer._set_factors(conv_factors(conv.weight, spec, conv.groups, cand.name, seed, second_moment))
        if conv.bias is not None:
            layer.bias.copy_(conv.bias)
    return layer


def _performer(cand: Candidate, spec, seed: int) -> RandMultiHeadAttention:
    mha: nn.MultiheadAttention = cand.info["module"]
    device = mha.out_proj.weight.device
    # the layer's own init draws are overwritten by mha's weights; a private generator keeps
    # them off the global RNG
    layer = make_performer(mha, spec.low_rank, generator=layer_generator(seed, cand.name, device))
    P = layer.projection_matrix
    with torch.no_grad():
        P.copy_(attention_projection(spec, layer.head_dim, cand.name, seed, device=P.device, dtype=P.dtype))
    return layer


def sketched_layer(cand: Candidate, spec, seed: int = 0, second_moment=None) -> nn.Module:
    """The sketched module for an eligible module candidate under ``spec`` (factors from
    ``panther.passes.linear_factors``/``conv_factors``, as the backend computes them), in the
    dense module's train/eval mode. ``second_moment``: E[x xᵀ] of the layer's inputs (a conv's:
    E[p pᵀ] of its input patches), needed by ``init="asvd"`` (a ValueError names the layer
    without it)."""
    if cand.kind == "linear":
        new = _sketched_linear(cand, spec, seed, second_moment)
    elif cand.kind == "conv2d":
        new = _sketched_conv(cand, spec, seed, second_moment)
    else:
        new = _performer(cand, spec, seed)
    new.train(cand.info["module"].training)
    return new


def _calibration(calibration, opts):
    """The batches that calibrate init="asvd": the argument or ``options["calibration"]`` (not both)."""
    if calibration is not None and opts.calibration is not None:
        raise ValueError("give calibration batches either as the calibration argument or as "
                         "options['calibration'], not both")
    if calibration is None:
        return opts.calibration
    if not isinstance(calibration, (list, tuple)) or not calibration:
        raise TypeError(f"calibration must be a non-empty list of batches (each a tensor, a tuple of positional "
                        f"inputs or a dict of keyword inputs), got {type(calibration).__name__}")
    return calibration


def sketch_model(model: nn.Module, plan=None, *, options: dict | None = None, calibration=None) -> nn.Module:
    """Replaces the modules the plan sketches (in place) and returns ``model``.

    Args:
        model: any nn.Module.
        plan: a :class:`panther.Plan`, a plan dict or a plan JSON path; or None with the
            plan source in ``options``.
        options: the backend's options (``num_terms``/``low_rank``, ``rank_ratio``, ``init``,
            ``kinds``, ``seed``, ...; see ``panther.passes.options.OPTIONS``).
        calibration: for ``init="asvd"`` entries, a list of input batches (each a tuple of
            positional inputs, a dict of keyword inputs or one tensor); the model runs on them
            (forward pre-hooks record each sketched linear's or conv's inputs) and their second
            moment (E[x xᵀ]; a conv's over its input patches) calibrates the SVD.
            ``options["calibration"]`` is the same (tuples only).
            An asvd entry without calibration, or whose layer the batches never reach, raises a
            ValueError naming the layer.

    Plan names must exist in the model (a typo raises). A swapped layer starts from the
    dense layer's weights (factors per the spec's init) and bias.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    opts = parse_options(with_plan(options, plan))
    calibration = _calibration(calibration, opts)
    candidates = module_candidates(model)
    if opts.plan is not None:
        opts.plan.check_names({c.name for c in candidates})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a module plan names every layer; "not in this graph" cannot happen
        chosen: Plan = make_plan(candidates, None, opts)
    todo = [(c, chosen.get(c.name)) for c in candidates if c.eligible and chosen.get(c.name) is not None]
    asvd = {c.name: c.info["module"] for c, spec in todo if spec.init == "asvd"}
    if asvd and calibration is None:
        raise ValueError(f"init='asvd' needs calibration batches (calibration=...) for layers {sorted(asvd)}")
    moments = module_second_moments(model, asvd, calibration) if asvd else {}
    for cand, spec in todo:
        new = sketched_layer(cand, spec, opts.seed, moments.get(cand.name))
        parent_name, _, child = cand.name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model
