"""Stable layer names for graph nodes: the qualified names of ``model.named_modules()``.

Plans are keyed by these names, so the module swap, the compile backend and export agree
on what "encoder.layer.0.attention.self.query" means. A graph knows parameters only as
placeholders (Dynamo, export) or attributes (``get_attr``); a :class:`ParamResolver`
turns such a node into (qualified parameter name, real tensor).
"""

from __future__ import annotations

import abc

import re

import torch
from torch import fx

# ._modules['layers'] / ._parameters['weight'] / ._buffers['scale'] in a Dynamo source name
_DICT_ITEM = re.compile(r"\._(modules|parameters|buffers)\['([^']*)'\]")
# .layers[0] / ['key'] / .attr segments in an nn_module_stack path
_PATH_SEGMENT = re.compile(r"\.([A-Za-z_0-9]+)|\[(\d+)\]|\['([^']*)'\]")


def _source_name(source) -> str:
    name = source.name
    return name() if callable(name) else name  # a method before torch 2.12, a property since


def param_fqn_from_source(source) -> str | None:
    """``L['self']._modules['fc1']._parameters['weight']`` -> ``"fc1.weight"``.

    Only chains that end in a parameter or buffer of a module count; anything else (a
    user input, a tensor attribute) gives None.
    """
    text = _source_name(source)
    items = _DICT_ITEM.findall(text)
    if not items or items[-1][0] not in ("parameters", "buffers"):
        return None
    if any(kind != "modules" for kind, _ in items[:-1]):
        return None
    # the chain must be contiguous: nothing but ._modules[...] hops after the root
    root_end = text.find("._")
    if root_end < 0 or "".join(f"._{k}['{n}']" for k, n in items) != text[root_end:]:
        return None
    return ".".join(name for _, name in items)


def module_path(stack_path: str) -> str:
    """An nn_module_stack path (``L['self'].layers[0].attn``) as a named_modules name (``layers.0.attn``).

    Dynamo's paths start at a root (``L['self']``, ``self``, ``L__self__``); torch.export's are
    already qualified names (``encoder.layer.0``), whose first segment is a real submodule.
    """
    root = re.match(r"^[A-Za-z_]*\['[^']*'\]|^(?:self|L__self__)(?![A-Za-z_0-9])", stack_path)
    rest = stack_path[root.end():] if root else "." + stack_path
    rest = re.sub(r"\._modules\['([^']*)'\]", r".\1", rest)
    return ".".join(a or b or c for a, b, c in _PATH_SEGMENT.findall(rest))


def layer_name(param_fqn: str, param: str = "weight") -> str:
    """``"fc1.weight"`` -> ``"fc1"``; a weight with another name keeps its full name (``"attn.Wq"``)."""
    return param_fqn[: -len(param) - 1] if param_fqn.endswith("." + param) else param_fqn


def enclosing_module(node: fx.Node) -> str:
    """The innermost module the node was traced in (``""`` at the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1]
    path = path[0] if isinstance(path, tuple) else path
    return module_path(str(path))


class ParamResolver(abc.ABC):
    """Maps parameter-like nodes to (qualified name, real tensor); None for anything else."""

    @abc.abstractmethod
    def resolve(self, node) -> tuple[str, torch.Tensor] | None: ...


class DynamoResolver(ParamResolver):
    """For a Dynamo graph: placeholders carry their origin in ``meta["grapharg"]`` and their
    real values in the backend's ``example_inputs`` (same order as the placeholders);
    ``get_attr`` nodes (older Dynamo, or our own constants) are looked up on the module."""

    def __init__(self, gm: fx.GraphModule, example_inputs):
        self.gm = gm
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self._values = dict(zip(placeholders, example_inputs))

    def resolve(self, node):
        if not isinstance(node, fx.Node):
            return None
        if node.op == "get_attr":
            value = _get_attr(self.gm, node.target)
            return (node.target, value) if isinstance(value, torch.Tensor) else None
        if node.op != "placeholder":
            return None
        grapharg = node.meta.get("grapharg")
        value = self._values.get(node)
        if grapharg is None or getattr(grapharg, "source", None) is None or not isinstance(value, torch.Tensor):
            return None
        fqn = param_fqn_from_source(grapharg.source)
        return (fqn, value) if fqn else None


class ExportResolver(ParamResolver):
    """For a ``torch.export`` graph: parameter/buffer placeholders via the graph signature."""

    def __init__(self, exported_program):
        self.ep = exported_program
        sig = exported_program.graph_signature
        self._targets = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
        self._state = {**exported_program.state_dict, **dict(exported_program.constants)}

    def resolve(self, node):
        if not isinstance(node, fx.Node) or node.op != "placeholder":
            return None
        fqn = self._targets.get(node.name)
        value = self._state.get(fqn) if fqn else None
        return (fqn, value) if isinstance(value, torch.Tensor) else None


def _get_attr(module, target: str):
    obj = module
    for part in target.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj
