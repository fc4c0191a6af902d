"""Facts about the tensors that build an attention mask, derived op by op (see ``masks.py``).

Each producer of a mask gets a :class:`Fact`: along which of its dims the value is constant,
which values it can hold, whether it is an ``arange`` index (value = position + offset) or
holds a causal triangle AND something else. Rules per op derive a node's fact from its
inputs'; an op without a rule is a leaf — constant only along its size-1 dims, any value of
its dtype. Rules only ever lose precision, so what a fact claims holds whatever the data.
Ops are named so a torch-level target and its aten twin share one rule ("ge", "to", ...).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .targets import op_name, same

_MAX_NODES = 200  # a mask's producer cone is ~20 nodes; deeper means "not a mask we know"
_MAX_VALUES = 16


class Unproven(Exception):
    """The mask is not provably a key-padding mask; the message says why."""


@dataclass(frozen=True)
class Fact:
    """What is known about one tensor's values, per dim of its own shape.

    ``inv[i]``: constant along dim i. ``values``: every value it can hold (None: unknown).
    ``index``: (dim, offset) when value[p] = p[dim] + offset (an ``arange``).
    ``causal``: (q dim, kv dim) when value = (p[kv] <= p[q]) AND rest, ``inv`` describing rest.
    """

    inv: tuple
    values: frozenset | None = None
    index: tuple | None = None
    causal: tuple | None = None

    def flat(self) -> Fact:
        """The same tensor with the causal factor folded in (it varies along both of its dims)."""
        if self.causal is None:
            return self
        inv = tuple(False if i in self.causal else v for i, v in enumerate(self.inv))
        return Fact(inv, _BOOLS)


_BOOLS = frozenset({False, True})


def value_of(node):
    """The (fake) value Dynamo or export recorded for a node; None for constants."""
    if not isinstance(node, fx.Node):
        return None
    return node.meta.get("example_value", node.meta.get("val"))


def _one(size) -> bool:
    return bool(statically_known_true(size == 1))


_CASTS = {"to", "_to_copy", "type", "type_as", "float", "half", "bfloat16", "double", "bool", "int", "long",
          "clone", "contiguous", "detach", "alias", "lift_fresh_copy"}
_RESHAPES = {"view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "view_as", "reshape_as"}
_EXPANDS = {"expand", "expand_as", "broadcast_to"}
_ANDS = {"and_", "__and__", "bitwise_and", "logical_and"}
_POINTWISE = _ANDS | {
    "or_", "__or__", "bitwise_or", "logical_or", "xor", "__xor__", "bitwise_xor", "logical_xor",
    "invert", "__invert__", "bitwise_not", "logical_not", "neg", "__neg__",
    "add", "__add__", "__radd__", "sub", "__sub__", "__rsub__", "rsub", "mul", "__mul__", "__rmul__",
    "truediv", "div", "__truediv__", "ge", "gt", "le", "lt", "eq", "ne", "where", "masked_fill"}
_CONSTANTS = {"new_ones": 1, "new_zeros": 0, "ones": 1, "zeros": 0, "ones_like": 1, "zeros_like": 0}
_FILLED = {"new_full": 2, "full": 1, "full_like": 1, "scalar_tensor": 0, "tensor": 0}  # fill argument position
# a cmp b, as (lhs, rhs, "ge"/"gt") with the larger side first
_COMPARE = {"ge": (0, 1, "ge"), "gt": (0, 1, "gt"), "le": (1, 0, "ge"), "lt": (1, 0, "gt")}


def _python_dtype(v):
    return torch.bool if isinstance(v, bool) else torch.int64 if isinstance(v, int) else torch.float64


def _cast(values, src, dst):
    if values is None:
        return None
    try:
        return frozenset(torch.tensor(sorted(values, key=float), dtype=src).to(dst).tolist())
    except Exception:  # noqa: BLE001 — a cast we cannot mirror: unknown values
        return None


class Analysis:
    """Facts of the nodes reached from one mask (memoised: the producers are shared)."""

    def __init__(self):
        self.facts: dict[fx.Node, Fact] = {}

    def fact(self, node) -> Fact:
        """The fact of a graph value; Python numbers are 0-dim constants."""
        if not isinstance(node, fx.Node):
            known = isinstance(node, (bool, int, float))
            return Fact((), frozenset({node}) if known else None)
        if node not in self.facts:
            if len(self.facts) >= _MAX_NODES:
                raise Unproven("its producer graph is too large to analyse")
            value = value_of(node)
            if not isinstance(value, torch.Tensor):
                self.facts[node] = Fact(())  # a symbolic scalar: unknown value
            else:
                self.facts[node] = _make(value, self._derive(node, value) or _leaf(value))
        return self.facts[node]

    def _derive(self, node, value) -> Fact | None:
        name = op_name(node)
        args = node.args
        src = value_of(args[0]) if args else None
        if name in _CASTS | _RESHAPES | _EXPANDS and isinstance(src, torch.Tensor):
            f = self.fact(args[0])
            if name in _RESHAPES:
                return _reshape(f, src.shape, value.shape)
            if name in _EXPANDS:
                return _expand(f, src.dim(), value.dim())
            same = src.dtype == value.dtype  # a move or a copy: an index or a triangle stays one
            return Fact(f.inv, _cast(f.values, src.dtype, value.dtype), f.index if same else None,
                        f.causal if same else None)
        if name in ("getitem", "slice", "select", "index") and isinstance(src, torch.Tensor):
            return self._indexing(node, name, value)
        if name in _CONSTANTS or name in _FILLED:
            fill = _CONSTANTS.get(name)
            if fill is None:
                pos = _FILLED[name]
                fill = node.kwargs.get("fill_value", node.kwargs.get("data", args[pos] if len(args) > pos else None))
            if not isinstance(fill, (bool, int, float)):
                return None
            return Fact((True,) * value.dim(), _cast({fill}, _python_dtype(fill), value.dtype))
        if name == "arange":
            return _arange(node)
        if name in _POINTWISE:
            return self._pointwise(node, name, value)
        return None

    def _pointwise(self, node, name, value) -> Fact:
        inputs = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
        facts = [self.fact(a) for a in inputs]
        R = value.dim()
        compared = self._compare(node, name, value)
        if compared is not None:
            return compared
        keep_causal = name in _ANDS and value.dtype == torch.bool
        causal = None
        inv = [True] * R
        for a, f in zip(inputs, facts):
            if f.causal is not None and keep_causal:
                shift = R - len(f.inv)
                mapped = (f.causal[0] + shift, f.causal[1] + shift)
                if causal not in (None, mapped):
                    f = f.flat()  # two different triangles: no longer one causal factor
                else:
                    causal = mapped
            f = f if keep_causal else f.flat()
            shift = R - len(f.inv)
            for j in range(shift, R):
                inv[j] = inv[j] and f.inv[j - shift]
        values = self._values(node, name, value, inputs, facts)
        return Fact(tuple(inv), values, _offset(name, node, facts, value), causal)

    def _compare(self, node, name, value) -> Fact | None:
        """``index >= c`` (always true) and ``kv_index <= q_index`` (the causal triangle)."""
        if name.strip("_") not in _COMPARE or len(node.args) != 2:
            return None
        big, small, op = _COMPARE[name.strip("_")]
        hi, lo = node.args[big], node.args[small]
        fh, fl = self.fact(hi), self.fact(lo)
        R = value.dim()
        if fh.index is not None and isinstance(lo, int) and not isinstance(lo, bool):
            # positions start at 0, so hi >= offset everywhere
            if fh.index[1] > lo or (op == "ge" and fh.index[1] == lo):
                return Fact((True,) * R, frozenset({True}))
        if op == "ge" and fh.index is not None and fl.index is not None and fh.index[1] == fl.index[1]:
            q = fh.index[0] + R - len(fh.inv)
            kv = fl.index[0] + R - len(fl.inv)
            if q != kv:
                return Fact((True,) * R, _BOOLS, causal=(q, kv))
        return None

    def _values(self, node, name, value, inputs, facts):
        if name == "masked_fill":
            x, cond = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("mask")
            fill = node.args[2] if len(node.args) > 2 else node.kwargs.get("value")
            fill_values = self.fact(fill).values
            x_values = self.fact(x).values
            if _nonzero_test(cond, x):  # x.masked_fill(x != 0, c): only x's zeros survive
                x_values = frozenset({0.0 if value.dtype.is_floating_point else 0})
            x_values = _cast(x_values, value.dtype, value.dtype)
            fill_values = _cast(fill_values, torch.float64, value.dtype)
            return None if x_values is None or fill_values is None else x_values | fill_values
        known = [f.values for f in facts]
        if any(v is None for v in known):
            return _BOOLS if value.dtype == torch.bool else None
        return _evaluate(node, name, inputs, known, value.dtype)

    def _indexing(self, node, name, value) -> Fact | None:
        x = node.args[0]
        f_x, shape = self.fact(x), value_of(x).shape
        if name == "getitem":
            idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        elif name == "slice":
            dim, start, end, step = (list(node.args[1:]) + [0, None, None, 1][len(node.args) - 1:])[:4]
            idx = (slice(None),) * (dim % len(shape)) + (slice(start, end, step),)
        elif name == "select":
            idx = (slice(None),) * (node.args[1] % len(shape)) + (node.args[2],)
        else:
            idx = tuple(node.args[1])
        if name == "index" or any(isinstance(value_of(i), torch.Tensor) for i in idx):
            return self._advanced(idx, f_x, shape, value)  # aten.index: None entries are not new dims
        return _basic(idx, f_x, shape)

    def _advanced(self, idx, f_x, shape, value) -> Fact | None:
        """x[i0, i1, ...] with one integer tensor per dim: out[p] = x[i0[p], i1[p], ...]."""
        if len(idx) != len(shape) or not all(isinstance(value_of(i), torch.Tensor) for i in idx):
            return None
        if any(value_of(i).dtype in (torch.bool, torch.uint8) or value_of(i).is_floating_point() for i in idx):
            return None  # a boolean index selects, it does not gather
        R = value.dim()
        inv = [True] * R
        for i in idx:
            f = self.fact(i).flat()
            shift = R - len(f.inv)
            for j in range(shift, R):
                inv[j] = inv[j] and f.inv[j - shift]
        return Fact(tuple(inv), f_x.values)


def _leaf(value: torch.Tensor) -> Fact:
    return Fact(tuple(_one(s) for s in value.shape), _BOOLS if value.dtype == torch.bool else None)


def _make(value: torch.Tensor, fact: Fact) -> Fact:
    """Size-1 dims are constant, and so is a tensor with one possible value. An index or a
    triangle lives on dims longer than 1 (broadcasting could stretch a size-1 dim)."""
    if len(fact.inv) != value.dim():
        return _leaf(value)
    if fact.causal is not None and any(_one(value.shape[d]) for d in fact.causal):
        fact = fact.flat()
    if fact.index is not None and _one(value.shape[fact.index[0]]):
        fact = replace(fact, index=None)
    inv = tuple(v or _one(s) for v, s in zip(fact.inv, value.shape))
    values = fact.values
    if values is not None and len(values) > _MAX_VALUES:
        values = None
    if fact.causal is None and values is not None and len(values) == 1:
        inv = (True,) * len(inv)
    return replace(fact, inv=inv, values=values)


def _nonzero_test(cond, x) -> bool:
    """cond is ``x.bool()`` / ``x.to(torch.bool)`` / ``x != 0``."""
    if not isinstance(cond, fx.Node) or not cond.args or cond.args[0] is not x:
        return False
    name = op_name(cond)
    if name in _CASTS:
        return getattr(value_of(cond), "dtype", None) == torch.bool
    return name in ("ne", "__ne__") and len(cond.args) == 2 and cond.args[1] == 0


def _evaluate(node, name, inputs, known, dtype):
    """The op on every combination of its inputs' possible values (a small grid per input)."""
    k = len(inputs)
    grid = {}
    for i, (a, values) in enumerate(zip(inputs, known)):
        shape = [1] * k
        shape[i] = -1
        grid[a] = torch.tensor(sorted(values, key=float), dtype=value_of(a).dtype).reshape(shape)
    try:
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        args = fx.node.map_arg(node.args, grid.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, grid.__getitem__)
        with unset_fake_temporarily():
            out = getattr(args[0], name)(*args[1:], **kwargs) if node.op == "call_method" else \
                node.target(*args, **kwargs)
        return frozenset(torch.as_tensor(out).to(dtype).flatten().tolist())
    except Exception:  # noqa: BLE001 — an op we cannot mirror: unknown values
        return None


def _offset(name, node, facts, value):
    """index + c / index - c / c + index for an int constant c stays an index."""
    if name not in ("add", "__add__", "__radd__", "sub", "__sub__") or len(node.args) != 2:
        return None
    if node.kwargs.get("alpha", 1) != 1 or value.is_floating_point():
        return None
    a, b = node.args
    fa = facts[0] if isinstance(a, fx.Node) else None
    if isinstance(a, fx.Node) and fa.index is not None and isinstance(b, int) and not isinstance(b, bool):
        return (fa.index[0], fa.index[1] + (b if "add" in name else -b))
    if "add" in name and isinstance(b, fx.Node) and isinstance(a, int) and not isinstance(a, bool):
        fb = facts[0]
        if fb.index is not None:
            return (fb.index[0], fb.index[1] + a)
    return None


def _arange(node) -> Fact | None:
    nums = list(node.args) + [None] * (3 - len(node.args))
    if len(node.args) == 1:
        nums = [0, node.args[0], 1]
    start = node.kwargs.get("start", nums[0] if nums[0] is not None else 0)
    step = node.kwargs.get("step", nums[2] if nums[2] is not None else 1)
    if not isinstance(start, int) or isinstance(start, bool) or step != 1:
        return None
    return Fact((False,), None, (0, start))


def _reshape(f: Fact, src, dst) -> Fact | None:
    """A view that only adds or drops size-1 dims keeps every fact, dim by dim."""
    a = [i for i, s in enumerate(src) if not _one(s)]
    b = [j for j, s in enumerate(dst) if not _one(s)]
    if len(a) != len(b) or not all(same(src[i], dst[j]) for i, j in zip(a, b)):
        return Fact((False,) * len(dst), f.values)  # values survive any reshape
    where = dict(zip(a, b))
    inv = [True] * len(dst)
    for i, j in where.items():
        inv[j] = f.inv[i]
    index = (where[f.index[0]], f.index[1]) if f.index and f.index[0] in where else None
    causal = tuple(where[d] for d in f.causal) if f.causal and all(d in where for d in f.causal) else None
    if f.causal and causal is None:
        return _reshape(f.flat(), src, dst)
    return Fact(tuple(inv), f.values, index, causal)


def _expand(f: Fact, r: int, R: int) -> Fact:
    shift = R - r
    moved = lambda d: d + shift  # noqa: E731
    return Fact((True,) * shift + f.inv, f.values, (moved(f.index[0]), f.index[1]) if f.index else None,
                tuple(map(moved, f.causal)) if f.causal else None)


def _trivial(s, size) -> bool:
    if not isinstance(s, slice):
        return False
    stop_ok = s.stop is None or (isinstance(s.stop, int) and bool(statically_known_true(s.stop >= size)))
    return s.start in (None, 0) and s.step in (None, 1) and stop_ok


def _basic(idx, f: Fact, shape) -> Fact | None:
    """x[None, :, 3, 1:, ...] and the like: each out dim is an in dim (or a new one)."""
    if not all(i is None or i is Ellipsis or isinstance(i, (slice, int, fx.Node)) for i in idx) or \
            any(isinstance(i, bool) for i in idx):  # x[True] adds a dim, it does not pick one
        return None
    used = sum(1 for i in idx if i is not None and i is not Ellipsis)
    ellipses = [n for n, i in enumerate(idx) if i is Ellipsis]
    if len(ellipses) > 1 or used > len(shape):
        return None
    fill = (slice(None),) * (len(shape) - used)
    idx = idx[:ellipses[0]] + fill + idx[ellipses[0] + 1:] if ellipses else tuple(idx) + fill
    out, d, trivial = [], 0, set()
    for i in idx:
        if i is None:
            out.append(None)
            continue
        if isinstance(i, slice):
            out.append(d)
            if _trivial(i, shape[d]):
                trivial.add(d)
        d += 1  # an integer index drops the dim
    where = {src: j for j, src in enumerate(out) if src is not None}
    if f.causal and not all(dim in trivial for dim in f.causal):
        f = f.flat()  # a triangle cut off-centre or a single row of it is no longer the triangle
    inv = tuple(True if src is None else f.inv[src] for src in out)
    index = (where[f.index[0]], f.index[1]) if f.index and f.index[0] in trivial else None
    causal = tuple(where[dim] for dim in f.causal) if f.causal else None
    return Fact(inv, f.values, index, causal)
