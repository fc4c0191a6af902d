"""Which FX call targets the passes understand, at both IR levels, and how to read their arguments.

The same op appears under different targets depending on who made the graph:

* Dynamo (``torch.compile`` backends) gives torch-level IR: ``F.linear`` (``torch._C._nn.linear``),
  ``torch.addmm``, ``torch.matmul``/``operator.matmul``/``Tensor.matmul`` (a ``call_method``),
  ``torch.conv2d``, ``F.scaled_dot_product_attention``.
* ``torch.export`` gives pre-dispatch aten IR: ``aten.linear.default``, ``aten.addmm.default``,
  ``aten.matmul.default``/``aten.mm.default``, ``aten.conv2d.default``,
  ``aten.scaled_dot_product_attention.default``.

Each family maps to one argument signature so the rest of the passes read arguments by name,
whether a caller passed them positionally or by keyword.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

aten = torch.ops.aten

# family -> (call_function targets, call_method names)
LINEAR = ({F.linear, aten.linear.default}, set())
ADDMM = ({torch.addmm, aten.addmm.default}, {"addmm"})
MATMUL = ({torch.matmul, operator.matmul, torch.mm, aten.matmul.default, aten.mm.default},
          {"matmul", "mm", "__matmul__"})
CONV2D = ({F.conv2d, torch.conv2d, aten.conv2d.default, aten.conv2d.padding}, set())
SDPA = ({F.scaled_dot_product_attention, aten.scaled_dot_product_attention.default}, set())

# Argument names in order, as the Python callables and the aten schemas both spell them.
SIGNATURES = {
    "linear": ("input", "weight", "bias"),
    "addmm": ("input", "mat1", "mat2"),  # plus keyword-only beta, alpha
    "matmul": ("input", "other"),
    "conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "sdpa": ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"),
}
DEFAULTS = {
    "linear": {"bias": None},
    "addmm": {"beta": 1, "alpha": 1},
    "matmul": {},
    "conv2d": {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1},
    "sdpa": {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False},
}

PANTHER_OPS = ("sketched_linear", "sketched_linear_triton", "lowrank_linear", "lowrank_linear_triton", "lowrank_expand",
               "lowrank_expand_project", "lowrank_gated_expand_project", "sketched_conv2d",
               "favor_attention", "favor_attention_triton")


def _matches(node: fx.Node, family) -> bool:
    functions, methods = family
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in methods


def op_name(node: fx.Node) -> str | None:
    """A name shared by a torch-level target and its aten twin ("ge", "to", "view", "mul", ...)."""
    if node.op == "call_method":
        return node.target
    if node.op != "call_function":
        return None
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return target._overloadpacket.__name__ if target.namespace == "aten" else None
    name = getattr(target, "__name__", "")
    if getattr(operator, name, None) is target or getattr(torch, name, None) is target:
        return name
    return None


def family_of(node: fx.Node) -> str | None:
    """"linear", "addmm", "matmul", "conv2d", "sdpa", "panther" (an op of ours) or None."""
    for name, family in (("linear", LINEAR), ("addmm", ADDMM), ("matmul", MATMUL), ("conv2d", CONV2D),
                         ("sdpa", SDPA)):
        if _matches(node, family):
            return name
    if node.op == "call_function" and isinstance(node.target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        qualified = str(node.target)
        if qualified.startswith("panther.") and qualified.split(".")[1] in PANTHER_OPS:
            return "panther"
    return None


def bind(node: fx.Node, family: str) -> dict | None:
    """The node's arguments by name with defaults filled in, or None for a call we don't read.

    ``call_method`` nodes carry the tensor as their first argument, which lines up with the
    signatures above. Unknown keywords (an API newer than this table) return None, so the
    node is left alone rather than misread.
    """
    names = SIGNATURES[family]
    if len(node.args) > len(names):
        return None
    bound = dict(DEFAULTS[family])
    bound.update(zip(names, node.args))
    for key, value in node.kwargs.items():
        if key not in names and key not in DEFAULTS[family]:
            return None
        bound[key] = value
    if any(name not in bound for name in names if name not in DEFAULTS[family]):
        return None
    return bound


def same(a, b) -> bool:
    """a == b for sizes that may be symbolic, without adding a guard (unknown counts as different)."""
    return bool(statically_known_true(a == b))
