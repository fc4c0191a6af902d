"""Second moments of layer inputs, for activation-aware SVD (``init="asvd"``).

A linear's statistic is E[x xᵀ] over its input rows; a conv's is E[p pᵀ] over the im2col
patches of its (padded) input, per group (see ``panther.factors.asvd``). Two sources, same
statistic: running a graph on calibration inputs (the compile backend and export: option
``calibration``, else the example inputs of the first compiled call), or forward hooks on
modules over calibration batches (``sketch_model``, the module tuner).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx

_CHUNK = 1 << 22  # patch values unfolded at a time: unfold repeats each input value kh·kw times


@dataclass(frozen=True)
class Patches:
    """A conv's im2col geometry: which patches of its input its kernel sees. ``padding`` is
    (left, right, top, bottom), applied in ``padding_mode`` first, as nn.Conv2d and the
    sketched op pad (a graph's conv node pads with zeros: other modes are an explicit pad before it)."""

    kernel_size: tuple
    stride: tuple
    dilation: tuple
    padding: tuple
    groups: int = 1
    padding_mode: str = "zeros"

    @classmethod
    def of_conv(cls, conv: torch.nn.Conv2d) -> "Patches":
        from ..nn.conv import resolve_padding  # nn.Conv2d's padding rules, one copy

        return cls(tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.dilation),
                   resolve_padding(conv.padding, conv.kernel_size, conv.stride, conv.dilation), conv.groups,
                   conv.padding_mode)

    @classmethod
    def of_info(cls, info: dict) -> "Patches":
        """From a graph conv2d candidate's ``info`` (the node itself pads with zeros)."""
        return cls(tuple(info["kernel_size"]), tuple(info["stride"]), tuple(info["dilation"]),
                   tuple(info["padding"]), info["groups"])

    def rows(self, x: torch.Tensor):
        """Yields the patches of ``x`` [B, C_in, H, W] (or unbatched [C_in, H, W]) in float64, as
        [G, n, C_in/G·kh·kw] blocks (a few images at a time, to bound the unfolded copy)."""
        x = x.detach()
        x = x[None] if x.dim() == 3 else x
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode  # F.pad's name for zeros
        per_image = max(1, x[0].numel() * self.kernel_size[0] * self.kernel_size[1])
        for part in x.split(max(1, _CHUNK // per_image)):
            part = F.pad(part.to(torch.float64), list(self.padding), mode=mode)
            cols = F.unfold(part, self.kernel_size, dilation=self.dilation, stride=self.stride)  # [b, C·kh·kw, n]
            b, d, n = cols.shape
            yield cols.reshape(b, self.groups, d // self.groups, n).permute(1, 0, 3, 2).reshape(self.groups, b * n, -1)


class _Moments:
    """Running mean of r rᵀ over rows r: a linear's input rows, or ``patches`` of a conv's input
    (per group). ``value()`` is [d, d], or [G, d, d] for a conv of G > 1 groups."""

    def __init__(self, patches: Patches | None = None):
        self.patches, self.sum, self.count = patches, None, 0

    def add(self, x: torch.Tensor) -> None:
        if self.patches is None:
            blocks = [x.detach().reshape(1, -1, x.shape[-1]).to(torch.float64)]
        else:
            blocks = self.patches.rows(x)
        for rows in blocks:
            gram = rows.mT @ rows
            self.sum = gram if self.sum is None else self.sum + gram
            self.count += rows.shape[1]

    def value(self) -> torch.Tensor:
        mean = self.sum / max(self.count, 1)
        return mean[0] if mean.shape[0] == 1 else mean


def moment_size(kind: str, info: dict) -> int:
    """d of the second moment [d, d] that calibrates ``init="asvd"`` for a candidate: a linear's
    in_features, a conv's C_in/G·kh·kw (one group's patch; each group is truncated alone)."""
    if kind == "conv2d":
        return info["in_channels"] // info["groups"] * info["kernel_size"][0] * info["kernel_size"][1]
    return info["in_features"]


def well_calibrated(rows: int, in_features: int) -> bool:
    """Whether a second moment over ``rows`` calibration rows (a conv's: input patches) can be
    trusted to choose ``init="asvd"`` for a layer of ``in_features`` inputs (a conv's: see
    :func:`moment_size`): at least one row per input feature. With fewer, E[x xᵀ] is
    rank-deficient and ASVD fits the calibration rows themselves (exact on them once the rank
    reaches their count) rather than the layer, so its calibration error says nothing about new
    inputs. The tuner offers asvd only to well-calibrated layers."""
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


def layer_inputs(candidates) -> dict:
    """{(input node, patches): [layer names]} of the linear and conv2d candidates (what
    :func:`graph_second_moments` wants); ``patches`` is None for a linear, the conv's
    :class:`Patches` otherwise. Layers reading one input alike share one statistic."""
    wanted: dict = {}
    for cand in candidates:
        if cand.kind in ("linear", "conv2d"):
            patches = Patches.of_info(cand.info) if cand.kind == "conv2d" else None
            wanted.setdefault((cand.info["input"], patches), []).append(cand.name)
    return wanted


def graph_second_moments(gm: fx.GraphModule, batches, wanted: dict) -> dict:
    """{layer name: second moment} for ``wanted`` = {(input node, patches): [layer names]} (see
    :func:`layer_inputs`), over runs of ``gm`` on ``batches`` (full input lists, as from
    :func:`graph_batches`)."""
    moments = {key: _Moments(key[1]) for key in wanted}
    by_node: dict = {}
    for (node, _), moment in moments.items():
        by_node.setdefault(node, []).append(moment)

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in by_node and isinstance(out, torch.Tensor):
                for moment in by_node[n]:
                    moment.add(out)
            return out

    with torch.no_grad():
        for inputs in batches:
            Recorder(gm).run(*[_concrete(v) for v in inputs])
    return {name: moments[key].value() for key, names in wanted.items() for name in names if moments[key].count}


def module_second_moments(model: torch.nn.Module, modules: dict, batches, *, strict: bool = True) -> dict:
    """{layer name: second moment} of the first input of each module in ``modules`` ({name:
    module}; an nn.Conv2d's over its input patches), over ``batches`` (each a tuple of
    positional inputs, a dict of keyword inputs or one tensor).

    ``strict``: a module the batches never reach raises (naming it); otherwise it is left out.
    """
    moments = {name: _Moments(Patches.of_conv(mod) if isinstance(mod, torch.nn.Conv2d) else None)
               for name, mod in modules.items()}
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
