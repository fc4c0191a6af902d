"""Fusion found by graph analysis among the linears a plan sketches.

* Horizontal (``shared_input_groups``): attention's q/k/v projections and an MLP's gate/up
  projections read one input. Once each is a low-rank product x·A_i·B_i, the n thin GEMMs
  x·A_i (each reading all of x, the big operand) become one x·[A_1 … A_n], which reads x
  once; the small products ·B_i follow on slices. Same input node, same dtype and device.
* Vertical (``mlp_chains``): a sketched linear whose only use is an activation whose only use
  is another sketched linear, as in a transformer's MLP. act(x·A1·B1 + b1)·A2·B2 + b2 then
  runs as x·A1, the fused ``lowrank_expand_project`` (the hidden activation never stored) and
  ·B2 + b2. Activations: ``F.relu``, ``F.gelu`` (exact or tanh), ``F.silu``, at torch and
  aten level, not in place; anything else between the two linears (dropout, a view, a
  second user) leaves them apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

from .candidates import Candidate

aten = torch.ops.aten


def shared_input_groups(linears: list[Candidate]) -> list[list[Candidate]]:
    """Groups (in graph order, two or more members) of linear candidates reading the same node."""
    by_input: dict = {}
    for cand in linears:
        x = cand.info.get("input")
        if x is None or cand.weight is None:
            continue
        key = (x, cand.weight.dtype, cand.weight.device)
        by_input.setdefault(key, []).append(cand)
    groups = [group for group in by_input.values() if len(group) > 1]
    order = {node: i for i, node in enumerate(groups[0][0].node.graph.nodes)} if groups else {}
    return [sorted(group, key=lambda c: order[c.node]) for group in groups]


# target -> (activation name, the names of its arguments after the input, their accepted values)
_GELU = {"approximate": {"none": "gelu", "tanh": "gelu_tanh"}}
_ACTIVATION_TARGETS = {
    F.relu: ("relu", {"inplace": {False: None}}),
    torch.relu: ("relu", {}),
    aten.relu.default: ("relu", {}),
    F.gelu: ("gelu", _GELU),
    aten.gelu.default: ("gelu", _GELU),
    F.silu: ("silu", {"inplace": {False: None}}),
    aten.silu.default: ("silu", {}),
}
_ACTIVATION_METHODS = {"relu": ("relu", {})}


def activation_of(node: fx.Node) -> str | None:
    """The ``ACTIVATIONS`` name of an activation node applied out of place to its first
    argument, or None for any other node (or an argument we do not read)."""
    if node.op == "call_function":
        entry = _ACTIVATION_TARGETS.get(node.target)
    elif node.op == "call_method":
        entry = _ACTIVATION_METHODS.get(node.target)
    else:
        return None
    if entry is None or not node.args:
        return None
    name, options = entry
    given = dict(zip(options, node.args[1:]))
    if len(node.args) - 1 > len(options) or any(key in given for key in node.kwargs):
        return None
    given.update(node.kwargs)
    for key, value in given.items():
        accepted = options.get(key)
        if accepted is None or value not in accepted:
            return None
        name = accepted[value] or name
    return name


def mlp_chains(linears: list[Candidate]) -> list[tuple[Candidate, str, Candidate]]:
    """(up, activation, down) triples: up's only user is the activation node, whose only user
    is down, reading it as its input; both linears in one dtype and on one device."""
    by_node = {c.node: c for c in linears if c.weight is not None}
    chains = []
    for up in by_node.values():
        users = list(up.node.users)
        if len(users) != 1 or users[0].args[:1] != (up.node,):
            continue
        act_node = users[0]
        activation = activation_of(act_node)
        after = list(act_node.users)
        if activation is None or len(after) != 1 or after[0] not in by_node:
            continue
        down = by_node[after[0]]
        if (down.info.get("input") is act_node and down.weight.dtype == up.weight.dtype
                and down.weight.device == up.weight.device):
            chains.append((up, activation, down))
    return chains
