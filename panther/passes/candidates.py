"""Finding the nodes a plan can act on, and the rules that make a node eligible.

Eligibility (anything else is reported and left exactly as it was):

* **linear** — ``F.linear(x, W, b)`` / ``aten.linear``; ``torch.addmm(b, x, W)`` with
  beta = alpha = 1 (HF GPT-2's Conv1D); ``x @ W`` / ``torch.matmul`` / ``mm`` with W on the
  right. W must be a module parameter or buffer (factors are computed once from its value),
  2-D and floating; x must have W's dtype and device (no autocast in between); a bias must
  be 1-D of out_features in the same dtype.
* **conv2d** — ``F.conv2d`` / ``aten.conv2d`` of a 4-D batched input with a parameter
  weight [C_out, C_in/G, kh, kw]; any stride, dilation, groups, and numeric, "same" or
  "valid" padding (padding modes other than zeros reach the graph as an explicit pad,
  so the conv node itself always pads with zeros).
* **attention** — ``F.scaled_dot_product_attention`` with 4-D q, k, v [B, H, N, D] of equal
  head counts, ``dropout_p=0``, the default scale 1/√D, no GQA, and equal N and S when
  causal. An ``attn_mask`` is accepted only when the graph that builds it proves it a
  key-padding mask (``masks.py``): its value at [b, h, n, s] depends on (b, s) alone — as
  Hugging Face's masks built from a [B, S] ``attention_mask`` do — optionally AND-ed with the
  exact causal triangle (N = S), and it is bool, or additive with values provably 0 or
  ≤ -1e4 (built from a bool tensor by a known formula). Masks varying along the query or
  head axis, and float masks whose values come from data, stay dense: FAVOR+ cannot apply
  them, and guessing would be silently wrong.
* **panther** — our own ops already in the graph (SKLinear, SKConv2d, ...): reported, kept.

Whether sketching *pays* for an eligible node (a rank small enough to save work) is the
plan's business (``planning.py``), not eligibility's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import fx

from . import masks, targets
from .naming import ParamResolver, enclosing_module, layer_name
from .targets import same

KINDS = ("linear", "conv2d", "attention")


@dataclass
class Candidate:
    """One node (or module) a plan may decide on.

    ``weight`` is the real weight in torch layout ([out, in] for linear, even where the
    graph holds its transpose — then ``transposed`` is True). ``info`` holds kind-specific
    facts: in/out features, conv geometry, attention sizes.
    """

    name: str
    kind: str
    eligible: bool
    reason: str = ""
    node: fx.Node | None = None
    family: str = ""
    weight: torch.Tensor | None = None
    param: torch.Tensor | None = None  # the parameter itself (weight may be a transposed view of it)
    # set by a rewrite that copied the bias parameter (info["bias_param"]) into a constant: the
    # compiled graph is then guarded on the bias as on the weight
    bias_folded: bool = False
    transposed: bool = False
    info: dict = field(default_factory=dict)

    @property
    def shape_text(self) -> str:
        i = self.info
        if self.kind == "linear" and "in_features" in i:
            return f"{i['in_features']}->{i['out_features']}"
        if self.kind == "conv2d" and "out_channels" in i:
            return f"{i['in_channels']}->{i['out_channels']} k{i['kernel_size'][0]}x{i['kernel_size'][1]}"
        if self.kind == "attention" and "head_dim" in i:
            return f"H{i['heads']} N{i['q_len']} S{i['k_len']} D{i['head_dim']}"
        return ""


def value_of(node) -> torch.Tensor | None:
    """The (fake) tensor a node produces, as recorded by the tracer (Dynamo or export)."""
    if not isinstance(node, fx.Node):
        return None
    value = node.meta.get("example_value", node.meta.get("val"))
    return value if isinstance(value, torch.Tensor) else None


class _Ineligible(Exception):
    pass


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise _Ineligible(reason)


def _linear(node, family, args, resolver, holder) -> Candidate:
    if family == "linear":
        x, w_node, bias = args["input"], args["weight"], args["bias"]
    elif family == "addmm":
        bias, x, w_node = args["input"], args["mat1"], args["mat2"]
        _require(args["beta"] == 1 and args["alpha"] == 1, "addmm with beta or alpha other than 1")
    else:
        x, w_node, bias = args["input"], args["other"], None
        if resolver.resolve(x) is not None and resolver.resolve(w_node) is None:
            raise _Ineligible("the parameter is on the left of the product (W @ x)")
    resolved = resolver.resolve(w_node)
    _require(resolved is not None, "weight is not a module parameter or buffer")
    fqn, weight = resolved
    cand = Candidate(name=layer_name(fqn), kind="linear", eligible=False, node=node, family=family,
                     param=weight, transposed=family != "linear")
    holder["c"] = cand
    _require(weight.dim() == 2 and weight.is_floating_point(), f"weight {fqn} is not a 2-D floating tensor")
    if cand.transposed:
        weight = weight.T  # [in, out] in the graph; factors want [out, in]
    out_f, in_f = weight.shape
    cand.weight = weight
    cand.info = {"in_features": int(in_f), "out_features": int(out_f), "bias": bias is not None}
    xv = value_of(x)
    _require(xv is not None, "input has no recorded shape")
    _require(xv.dim() >= 1 and same(xv.shape[-1], in_f), f"input {tuple(xv.shape)} does not end in {in_f}")
    _require(family != "addmm" or xv.dim() == 2, "addmm input is not 2-D")
    _require(xv.dtype == weight.dtype and xv.device == weight.device,
             f"input is {xv.dtype} on {xv.device}, weight {weight.dtype} on {weight.device} (autocast?)")
    if bias is not None:
        bv = value_of(bias)
        _require(bv is not None and bv.dim() == 1 and same(bv.shape[0], out_f) and bv.dtype == weight.dtype,
                 "bias is not 1-D [out_features] in the weight's dtype")
    cand.info["input"], cand.info["bias_node"] = x, bias
    resolved_bias = resolver.resolve(bias) if bias is not None else None
    # the bias's real tensor where it is a parameter: a rewrite may fold a copy of it into a constant
    cand.info["bias_param"] = resolved_bias[1] if resolved_bias is not None else None
    return cand


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)


def _conv(node, args, resolver, holder) -> Candidate:
    from ..nn.conv import resolve_padding  # nn.Conv2d's padding rules, one copy

    resolved = resolver.resolve(args["weight"])
    _require(resolved is not None, "weight is not a module parameter or buffer")
    fqn, weight = resolved
    cand = Candidate(name=layer_name(fqn), kind="conv2d", eligible=False, node=node, family="conv2d", weight=weight,
                     param=weight)
    holder["c"] = cand
    _require(weight.dim() == 4 and weight.is_floating_point(), f"weight {fqn} is not a 4-D floating tensor")
    groups = args["groups"]
    _require(isinstance(groups, int), "groups is not a constant int")
    stride, dilation = _pair(args["stride"]), _pair(args["dilation"])
    kernel = tuple(int(s) for s in weight.shape[2:])
    padding = args["padding"]
    padding = padding if isinstance(padding, str) else _pair(padding)
    cand.info = {"in_channels": int(weight.shape[1]) * groups, "out_channels": int(weight.shape[0]),
                 "kernel_size": kernel, "stride": stride, "dilation": dilation, "groups": groups,
                 "padding": resolve_padding(padding, kernel, stride, dilation), "bias": args["bias"] is not None}
    xv = value_of(args["input"])
    _require(xv is not None and xv.dim() == 4, "input is not a 4-D batched tensor")
    _require(xv.dtype == weight.dtype and xv.device == weight.device,
             f"input is {xv.dtype} on {xv.device}, weight {weight.dtype} on {weight.device} (autocast?)")
    bias = args["bias"]
    if bias is not None:
        bv = value_of(bias)
        _require(bv is not None and bv.dim() == 1 and bv.dtype == weight.dtype, "bias is not 1-D in the weight's dtype")
    cand.info["input"], cand.info["bias_node"] = args["input"], bias
    return cand


def _attention(node, args, holder) -> Candidate:
    q, k, v = (value_of(args[n]) for n in ("query", "key", "value"))
    module = enclosing_module(node)
    cand = Candidate(name=module or node.name, kind="attention", eligible=False, node=node, family="sdpa")
    holder["c"] = cand
    _require(all(t is not None and t.dim() == 4 for t in (q, k, v)), "q, k, v are not 4-D [B, H, N, D]")
    D = q.shape[-1]
    cand.info = {"heads": q.shape[1], "q_len": q.shape[2], "k_len": k.shape[2], "head_dim": D,
                 "causal": args["is_causal"]}
    _require(isinstance(D, int), "head dim is not static")
    _require(args["dropout_p"] == 0, "dropout_p is not 0")
    scale = args["scale"]
    _require(scale is None or (isinstance(scale, (int, float)) and math.isclose(scale, D ** -0.5, rel_tol=1e-6)),
             "scale is not 1/sqrt(D)")
    _require(not args["enable_gqa"], "enable_gqa (grouped-query attention)")
    _require(isinstance(args["is_causal"], bool), "is_causal is not a constant bool")
    _require(same(q.shape[1], k.shape[1]) and same(k.shape[1], v.shape[1]), "q, k, v head counts differ")
    _require(same(k.shape[-1], D) and same(k.shape[2], v.shape[2]), "q/k head dims or k/v lengths differ")
    _require(q.dtype == k.dtype == v.dtype and q.is_floating_point(), "q, k, v dtypes differ")
    _require(not args["is_causal"] or same(q.shape[2], k.shape[2]), "causal with N != S")
    if args["attn_mask"] is not None:
        _require(not args["is_causal"], "attn_mask given with is_causal=True")
        try:
            padding = masks.key_padding(args["attn_mask"], q, k)
        except masks.Unproven as why:
            raise _Ineligible(f"attn_mask {why}") from None
        cand.info["key_padding"] = padding
        cand.info["causal"] = padding.causal
    return cand


def describe(node: fx.Node, resolver: ParamResolver) -> Candidate | None:
    """The candidate for one node, eligible or with the reason why not; None if not a kind we know."""
    family = targets.family_of(node)
    if family is None:
        return None
    if family == "panther":
        return Candidate(name=enclosing_module(node) or node.name, kind="panther", eligible=False,
                         reason="already a panther op (kept)", node=node, family=family)
    args = targets.bind(node, family)
    kind = {"linear": "linear", "addmm": "linear", "matmul": "linear", "conv2d": "conv2d", "sdpa": "attention"}[family]
    if args is None:
        return Candidate(name=node.name, kind=kind, eligible=False, reason="arguments not understood", node=node,
                         family=family)
    holder = {}  # the candidate as far as it got, so an ineligible one keeps its name and sizes
    try:
        if kind == "linear":
            _linear(node, family, args, resolver, holder)
        elif kind == "conv2d":
            _conv(node, args, resolver, holder)
        else:
            _attention(node, args, holder)
    except _Ineligible as why:
        cand = holder.get("c") or Candidate(name=node.name, kind=kind, eligible=False, node=node, family=family)
        cand.reason = str(why)
        return cand
    cand = holder["c"]
    cand.eligible = True
    return cand


def find_candidates(gm: fx.GraphModule, resolver: ParamResolver) -> list[Candidate]:
    """Every linear/conv2d/attention/panther node of the graph, in graph order."""
    found = []
    for node in gm.graph.nodes:
        cand = describe(node, resolver)
        if cand is not None:
            found.append(cand)
    return found
