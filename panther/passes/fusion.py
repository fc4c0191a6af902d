"""Fusion found by graph analysis among the linears a plan sketches.

* Horizontal (``shared_input_groups``): attention's q/k/v projections and an MLP's gate/up
  projections read one input. Once each is a low-rank product x·A_i·B_i, the n thin GEMMs
  x·A_i (each reading all of x, the big operand) become one x·[A_1 … A_n], which reads x
  once; the small products ·B_i follow on slices. Same input node, same dtype and device.
* Gated (``gated_chains``): down(act(gate(x)) * up(x)), Llama's SwiGLU MLP, all three sketched:
  x·[A_gate A_up] once, then ``lowrank_gated_expand_project`` (neither hidden activation nor
  their product stored), then ·B_down + b_down. Found before the other two, which then leave
  these linears alone.
* Vertical (``mlp_chains``): a sketched linear whose only use is an activation whose only use
  is another sketched linear, as in a transformer's MLP. act(x·A1·B1 + b1)·A2·B2 + b2 then
  runs as x·A1, the fused ``lowrank_expand_project`` (the hidden activation never stored) and
  ·B2 + b2. Activations: ``F.relu``, ``F.gelu`` (exact or tanh), ``F.silu``, at torch and
  aten level, not in place; views that keep the hidden dim may sit on either side (HF GPT-2's
  Conv1D); anything else between the two linears (dropout, a second user) leaves them apart.
* Residual (``residual_add``): a sketched linear whose only user adds it to another tensor, as a
  transformer block's x + o(a) and x + fc2(...), expands with ``panther.residual_addmm``: the
  GEMM reads x and writes the sum, where the add would read its output back and write another.
  Only an out-of-place tensor + tensor add (``operator.add``, ``torch.add``, ``Tensor.add``,
  ``aten.add.Tensor``, without alpha) whose operands and result share one shape, dtype and
  device: no broadcast, no type promotion.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx

from .candidates import Candidate, value_of
from .targets import op_name, same

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


_VIEWS = {"view", "reshape", "_unsafe_view"}


def _sole_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_row_view(node: fx.Node, source: fx.Node, hidden: int) -> bool:
    """A view or reshape of ``source`` keeping the last dim (hidden): the same elements in the same
    order, so an elementwise activation commutes with it (HF GPT-2's Conv1D views its 2-D addmm)."""
    value, before = value_of(node), value_of(source)
    return (op_name(node) in _VIEWS and node.args[:1] == (source,) and value is not None and before is not None
            and value.dtype == before.dtype and value.dim() >= 1 and value.shape[-1] == hidden)


def _walk_views(node: fx.Node, hidden: int) -> tuple[list[fx.Node], fx.Node | None]:
    """The row views after ``node``, each the only user of the one before, and the sole user after them."""
    views, user = [], _sole_user(node)
    while user is not None and _is_row_view(user, views[-1] if views else node, hidden):
        views.append(user)
        user = _sole_user(user)
    return views, user


def _lead(node) -> list | None:
    value = value_of(node)
    return None if value is None else list(value.shape[:-1])


def mlp_chains(linears: list[Candidate]) -> list[tuple[Candidate, str, Candidate, list[fx.Node]]]:
    """(up, activation, down, links): up's only user is the activation node (through views that
    keep the hidden dim), whose only user is down (likewise), reading it as its input with the
    leading dims of up's input; both linears in one dtype and on one device. ``links`` are the
    nodes between them in graph order."""
    by_node = {c.node: c for c in linears if c.weight is not None}
    chains = []
    for up in by_node.values():
        hidden = up.info.get("out_features")
        before, act_node = _walk_views(up.node, hidden)
        if act_node is None or act_node.args[:1] != ((before[-1] if before else up.node),):
            continue
        activation = activation_of(act_node)
        after, down_node = _walk_views(act_node, hidden)
        down = by_node.get(down_node)
        if (activation is not None and down is not None and down.info.get("input") is (after[-1] if after else act_node)
                and down.weight.dtype == up.weight.dtype and down.weight.device == up.weight.device
                and _lead(down.info["input"]) == _lead(up.info.get("input"))):
            chains.append((up, activation, down, [*before, act_node, *after]))
    return chains


def _is_product(node: fx.Node) -> bool:
    return (op_name(node) in ("mul", "__mul__") and len(node.args) == 2 and not node.kwargs
            and all(isinstance(a, fx.Node) for a in node.args))


def gated_chains(linears: list[Candidate]) -> list[tuple[Candidate, str, Candidate, Candidate, list[fx.Node]]]:
    """(gate, activation, up, down, links): down reads act(gate) * up (either order), each of
    gate, the activation, up and the product used only there; gate and up of one hidden size;
    the three in one dtype and on one device, with the leading dims of gate's input.
    ``links`` = [the activation node, the product]."""
    by_node = {c.node: c for c in linears if c.weight is not None}
    chains = []
    for down in by_node.values():
        product = down.info.get("input")
        if not isinstance(product, fx.Node) or not _is_product(product) or _sole_user(product) is not down.node:
            continue
        for act_node, up_node in (product.args, reversed(product.args)):
            activation = activation_of(act_node)
            gate = by_node.get(act_node.args[0]) if activation is not None else None
            up = by_node.get(up_node)
            if gate is None or up is None or gate is up:
                continue
            same = all(c.weight.dtype == down.weight.dtype and c.weight.device == down.weight.device
                       for c in (gate, up))
            if (same and _sole_user(act_node) is product and _sole_user(gate.node) is act_node
                    and _sole_user(up.node) is product and gate.info.get("out_features") == up.info.get("out_features")
                    and _lead(gate.info.get("input")) == _lead(up.info.get("input")) == _lead(product)):
                chains.append((gate, activation, up, down, [act_node, product]))
                break
    return chains


_ADDS = {operator.add, torch.add, aten.add.Tensor}


def _is_plain_add(node: fx.Node) -> bool:
    """tensor + tensor, out of place, without alpha (or alpha=1 as aten spells it)."""
    if node.op == "call_function":
        if node.target not in _ADDS:
            return False
    elif node.op != "call_method" or node.target != "add":
        return False
    alpha_ok = not node.kwargs or (node.target is aten.add.Tensor and dict(node.kwargs) == {"alpha": 1})
    return len(node.args) == 2 and alpha_ok and all(isinstance(a, fx.Node) for a in node.args)


def _alike(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.device == b.device and a.dim() == b.dim()
            and all(same(x, y) for x, y in zip(a.shape, b.shape)))


def residual_add(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(add, residual) where ``node``'s only user is a plain add of ``node`` and ``residual``, all
    three of one shape, dtype and device; else None."""
    add = _sole_user(node)
    if add is None or not _is_plain_add(add) or add.args[0] is add.args[1]:
        return None
    residual = add.args[1] if add.args[0] is node else add.args[0]
    values = value_of(node), value_of(residual), value_of(add)
    if any(v is None for v in values) or not (_alike(values[0], values[1]) and _alike(values[0], values[2])):
        return None
    return add, residual
