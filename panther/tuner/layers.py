"""Which modules can be sketched, and building their sketched replacements.

Matching is by ``isinstance`` (subclasses of nn.Linear, nn.Conv2d and nn.MultiheadAttention
count), except that the ``out_proj`` Linear inside an nn.MultiheadAttention is never a
candidate: the attention module reads its weight directly, so replacing it would be ignored.
Modules that already are Panther layers are not candidates either.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..nn import RandMultiHeadAttention, SKConv2d, SKLinear, make_performer

# kind -> (dense type, sketched type, tunable parameter names)
LAYER_KINDS = {
    "linear": (nn.Linear, SKLinear, ("num_terms", "low_rank", "init")),
    "conv2d": (nn.Conv2d, SKConv2d, ("num_terms", "low_rank", "init")),
    "attention": (nn.MultiheadAttention, RandMultiHeadAttention, ("num_random_features", "kernel_fn", "iscausal")),
}
LAYER_TYPE_MAPPING = {dense: (sketched, params) for dense, sketched, params in LAYER_KINDS.values()}
_PANTHER_TYPES = (SKLinear, SKConv2d, RandMultiHeadAttention)


def layer_kind(module: nn.Module) -> str | None:
    """"linear", "conv2d", "attention", or None for a module that cannot be sketched."""
    if isinstance(module, _PANTHER_TYPES):
        return None
    for kind, (dense, _, _) in LAYER_KINDS.items():
        if isinstance(module, dense):
            return kind
    return None


def get_sketched_class(layer_type: type):
    """The Panther class replacing ``layer_type`` (subclass-aware); ValueError if none."""
    for dense, (sketched, _) in LAYER_TYPE_MAPPING.items():
        if isinstance(layer_type, type) and issubclass(layer_type, dense):
            return sketched
    raise ValueError(f"no sketched layer for {getattr(layer_type, '__name__', layer_type)}; supported: "
                     f"{[d.__name__ for d in LAYER_TYPE_MAPPING]} and their subclasses")


def tunable_params(module: nn.Module) -> tuple[str, ...]:
    kind = layer_kind(module)
    return LAYER_KINDS[kind][2] if kind else ()


def sketchable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{qualified name: module} of every module that can be sketched, in model order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inside_mha = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    return {name: m for name, m in model.named_modules()
            if name and layer_kind(m) is not None and id(m) not in inside_mha}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Puts ``new`` at qualified ``name`` in ``model``; returns the module it replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def build_sketched(module: nn.Module, params: dict, copy_weights: bool = True,
                   generator: torch.Generator | None = None) -> nn.Module:
    """The sketched replacement of ``module`` for ``params`` (weights copied if ``copy_weights``)."""
    kind = layer_kind(module)
    if kind is None:
        raise ValueError(f"cannot sketch a {type(module).__name__}; supported: "
                         f"{[d.__name__ for d, _, _ in LAYER_KINDS.values()]} and subclasses")
    allowed = LAYER_KINDS[kind][2]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"parameters {unknown} do not apply to {type(module).__name__}; allowed: {list(allowed)}")
    if kind == "attention":
        if "num_random_features" not in params:
            raise ValueError("sketching an nn.MultiheadAttention needs 'num_random_features'")
        extra = {k: params[k] for k in ("kernel_fn", "iscausal") if k in params}
        if copy_weights:
            layer = make_performer(module, int(params["num_random_features"]), generator=generator, **extra)
        else:
            w = module.out_proj.weight
            layer = RandMultiHeadAttention(module.embed_dim, module.num_heads, int(params["num_random_features"]),
                                           dropout=module.dropout, bias=module.in_proj_bias is not None,
                                           kdim=module.kdim, vdim=module.vdim, batch_first=module.batch_first,
                                           device=w.device, dtype=w.dtype, generator=generator, **extra)
        return layer
    for key in ("num_terms", "low_rank"):
        if key not in params:
            raise ValueError(f"sketching a {type(module).__name__} needs {key!r} (got {sorted(params)})")
    L, k = int(params["num_terms"]), int(params["low_rank"])
    init = params.get("init", "sketch")
    w = module.weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sizes that save nothing are the search's business
        if kind == "linear":
            if copy_weights:
                return SKLinear.from_linear(module, L, k, init=init, generator=generator)
            return SKLinear(module.in_features, module.out_features, L, k, bias=module.bias is not None,
                            dtype=w.dtype, device=w.device, generator=generator)
        if copy_weights:
            return SKConv2d.from_conv(module, L, k, init=init, generator=generator)
        return SKConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                        bias=module.bias is not None, num_terms=L, low_rank=k, dtype=w.dtype, device=w.device,
                        dilation=module.dilation, groups=module.groups, padding_mode=module.padding_mode,
                        generator=generator)
