"""Applying a plan: replacing chosen nodes by panther ops whose factors live on the module.

* linear (any family) -> ``panther.lowrank_linear(x, A, B, bias)`` with the two stacked
  factor matrices of SKLinear (A [in, 2Lk], B [2Lk, out], the 1/(2L) folded into B):
  inference needs no separate S/U tensors, and two GEMMs are the whole cost.
* conv2d -> ``panther.sketched_conv2d(x, S1s, U1s, bias, ...)`` (SKConv2d's op).
* attention -> ``panther.favor_attention(q, k, v, features, "softmax", causal, key_padding_mask)``
  (RandMultiHeadAttention's op; the Triton one on CUDA); a proved key-padding ``attn_mask``
  becomes the [B, S] ``key_padding_mask`` (``masks.py``), and queries that see no key get 0,
  as from SDPA.
* linears that read the same input and are all sketched -> one shared ``x @ [A_1 .. A_n]``,
  then ``panther.batched_expand`` (one batched GEMM for all members) where their ranks, output
  sizes and bias presence agree (attention's q/k/v), else a slice and ``addmm`` per member
  (``fusion.py`` finds the groups).
* down(act(gate(x)) * up(x)), all sketched (SwiGLU) -> ``x @ [A_g A_u]``, then
  ``panther.lowrank_gated_expand_project`` on the two slices, then ``addmm(b_d, u, B_d)``.
* sketched linear -> activation -> sketched linear (an MLP) -> ``x @ A1``, then
  ``panther.lowrank_expand_project(t, B1, A2, b1, act)`` (the hidden activation never stored),
  then ``addmm(b2, u, B2)`` (``fusion.py`` finds the chains).
* a sketched linear's output added to a residual r of its shape and dtype (its only user) ->
  ``panther.residual_addmm(r, h, B, bias)`` on its ``h = x @ A``, replacing the expansion and the add.

Factors are installed once per layer name through a :class:`ConstantInstaller` (``get_attr``
buffers on the GraphModule by default; export installs them its own way). New nodes get
fake values computed under the graph's fake mode, so Inductor's passes see shapes as for
any other node. A node's replacement is built completely before the node is touched, and
every failure is a :class:`RewriteError` naming the node.
"""

from __future__ import annotations

import itertools
import re

import torch
from torch import fx

from ..plan import Plan
from .candidates import Candidate, value_of
from ..factors import lowrank_pair
from .factors import attention_projection, conv_factors, linear_factors
from .fusion import activation_of, gated_chains, mlp_chains, residual_add, shared_input_groups
from .masks import emit_empty_rows_zero, emit_key_padding

aten = torch.ops.aten
panther = torch.ops.panther


class RewriteError(RuntimeError):
    """A chosen node could not be rewritten; ``node`` names it."""

    def __init__(self, node: str, reason: str):
        super().__init__(f"node {node!r}: {reason}")
        self.node, self.reason = node, reason


def fake_mode_of(gm: fx.GraphModule, example_inputs=()):
    """The fake mode of the graph's recorded values (new nodes' values must share it), or None."""
    for node in gm.graph.nodes:
        value = value_of(node)
        if value is not None and hasattr(value, "fake_mode"):
            return value.fake_mode
    from torch._guards import detect_fake_mode

    return detect_fake_mode(list(example_inputs))


class ConstantInstaller:
    """Registers factor tensors as buffers of the GraphModule and reads them with ``get_attr``.

    AOTAutograd lifts a Dynamo graph's buffers to inputs and looks each one up in
    ``gm._param_name_to_source``; ours get a ``ConstantSource`` there (nothing is guarded
    on it: the tensors belong to the compiled graph, not to user code).
    """

    def __init__(self, gm: fx.GraphModule, fake_mode, meta_key: str):
        self.gm, self.fake_mode, self.meta_key = gm, fake_mode, meta_key
        self._names: dict[str, str] = {}

    def node(self, key: str, tensor: torch.Tensor, before: fx.Node) -> fx.Node:
        attr = self._names.get(key)
        if attr is None:
            attr = "_panther_" + re.sub(r"\W", "_", key)
            while hasattr(self.gm, attr):
                attr += "_"
            self.gm.register_buffer(attr, tensor, persistent=False)
            sources = getattr(self.gm, "_param_name_to_source", None)
            if isinstance(sources, dict):
                from torch._dynamo.source import ConstantSource

                sources[attr] = ConstantSource(f"__panther_{attr}")
            self._names[key] = attr
        with self.gm.graph.inserting_before(before):
            node = self.gm.graph.get_attr(attr)
        if self.fake_mode is not None:
            node.meta[self.meta_key] = self.fake_mode.from_tensor(getattr(self.gm, attr), static_shapes=True)
        return node


class _Emitter:
    def __init__(self, gm, installer, fake_mode, meta_key):
        self.gm, self.installer, self.fake_mode, self.meta_key = gm, installer, fake_mode, meta_key
        self._replaced: dict[fx.Node, fx.Node] = {}
        # (output node, projection node or None, B node, bias node or None) of every low-rank linear
        # emitted: the residual fusion's candidates. A None projection: the output is a lowrank_linear.
        self.expansions: list[tuple[fx.Node, fx.Node | None, fx.Node, fx.Node | None]] = []

    def replace(self, old: fx.Node, new: fx.Node) -> None:
        """Gives ``old``'s uses to ``new`` and erases ``old``, remembering it for :meth:`current`."""
        old.replace_all_uses_with(new)
        self.gm.graph.erase_node(old)
        self._replaced[old] = new

    def current(self, node):
        """``node``, or the node that replaced it. A candidate records its input when the graph is
        scanned; when that input is a linear rewritten earlier (an MLP's output feeding the next
        MLP), the recorded node is gone from the graph and its replacement is the input now."""
        while isinstance(node, fx.Node) and node in self._replaced:
            node = self._replaced[node]
        return node

    def input_of(self, cand: Candidate) -> fx.Node:
        return self.current(cand.info["input"])

    def call(self, target, args, like: fx.Node) -> fx.Node:
        """A call_function node with ``like``'s module-stack meta and a fake value."""
        node = self.gm.graph.call_function(target, tuple(args))
        for key in ("nn_module_stack", "stack_trace"):
            if key in like.meta:
                node.meta[key] = like.meta[key]
        if self.fake_mode is not None:  # nested too: an expand's sizes may be SymInt nodes
            fake_args = fx.node.map_arg(tuple(args), lambda a: a.meta.get("example_value", a.meta.get("val")))
            with self.fake_mode:
                node.meta[self.meta_key] = target(*fake_args)
        return node


def _meta_key(gm: fx.GraphModule) -> str:
    for node in gm.graph.nodes:
        if "example_value" in node.meta:
            return "example_value"  # Dynamo
    return "val"  # export / aot


def _linear_factor_pair(cand: Candidate, spec, seed: int, second_moments):
    factors = linear_factors(cand.weight, spec, cand.name, seed, (second_moments or {}).get(cand.name),
                             owner=cand.param)
    return lowrank_pair(*factors)


def apply_plan(gm: fx.GraphModule, candidates: list[Candidate], plan: Plan, *, seed: int = 0, fuse: bool = True,
               example_inputs=(), second_moments: dict | None = None, installer=None) -> list[Candidate]:
    """Rewrites the eligible candidates the plan sketches; returns those rewritten.

    Nodes the plan keeps dense, ineligible nodes and every other node stay as they were.
    ``second_moments``: {layer name: E[x xᵀ] (a conv's: of its input patches)} for ``init="asvd"``
    entries.
    """
    chosen = [c for c in candidates if c.eligible and plan.get(c.name) is not None]
    if not chosen:
        return []
    fake_mode = fake_mode_of(gm, example_inputs)
    meta_key = _meta_key(gm)
    installer = installer or ConstantInstaller(gm, fake_mode, meta_key)
    emit = _Emitter(gm, installer, fake_mode, meta_key)

    # compute every factor first: a failure leaves the graph untouched
    prepared = {}
    for cand in chosen:
        spec = plan.get(cand.name)
        try:
            if cand.kind == "linear":
                prepared[cand.node] = _linear_factor_pair(cand, spec, seed, second_moments)
            elif cand.kind == "conv2d":
                prepared[cand.node] = conv_factors(cand.weight, spec, cand.info["groups"], cand.name, seed,
                                                   (second_moments or {}).get(cand.name))
            else:
                q = value_of(cand.node.args[0] if cand.node.args else cand.node.kwargs["query"])
                prepared[cand.node] = attention_projection(spec, cand.info["head_dim"], cand.name, seed,
                                                           device=q.device, dtype=q.dtype)
        except Exception as err:  # noqa: BLE001 — reported with the node's name, then the backend falls back
            raise RewriteError(cand.node.name, f"computing factors for {cand.name!r} failed: {err}") from err

    linears = [c for c in chosen if c.kind == "linear"]
    gated = gated_chains(linears) if fuse else []
    fused = {c.node for gate, _, up, down, _ in gated for c in (gate, up, down)}
    for gate, activation, up, down, links in gated:
        _rewrite_gated(emit, gate, activation, up, down, links, prepared)
    groups = shared_input_groups([c for c in linears if c.node not in fused]) if fuse else []
    fused |= {c.node for group in groups for c in group}
    for group in groups:
        _rewrite_fused(emit, group, prepared)
    for up, activation, down, links in mlp_chains([c for c in linears if c.node not in fused]) if fuse else []:
        if up.node in fused or down.node in fused:  # chains of three linears overlap: first come
            continue
        _rewrite_mlp(emit, up, activation, down, links, prepared)
        fused.update((up.node, down.node))
    for cand in chosen:
        if cand.node in fused:
            continue
        try:
            with gm.graph.inserting_before(cand.node):
                new = _REWRITERS[cand.kind](emit, cand, prepared[cand.node])
        except Exception as err:  # noqa: BLE001
            raise RewriteError(cand.node.name, f"rewriting {cand.name!r} failed: {err}") from err
        emit.replace(cand.node, new)
    if fuse:
        _fuse_residuals(emit)
    gm.graph.lint()
    gm.recompile()
    return chosen


def _bias(emit, cand: Candidate):
    return emit.current(cand.info.get("bias_node"))


def _rewrite_linear(emit, cand, pair):
    A, B = pair
    a = emit.installer.node(f"{cand.name}.A", A, cand.node)
    b = emit.installer.node(f"{cand.name}.B", B, cand.node)
    bias = _bias(emit, cand)
    out = emit.call(panther.lowrank_linear.default, (emit.input_of(cand), a, b, bias), cand.node)
    emit.expansions.append((out, None, b, bias))
    return out


def _rewrite_conv(emit, cand, factors):
    S1s, U1s = factors
    s = emit.installer.node(f"{cand.name}.S1s", S1s, cand.node)
    u = emit.installer.node(f"{cand.name}.U1s", U1s, cand.node)
    i = cand.info
    args = (emit.input_of(cand), s, u, _bias(emit, cand), list(i["stride"]), list(i["padding"]), list(i["dilation"]),
            i["groups"], "zeros")
    return emit.call(panther.sketched_conv2d.default, args, cand.node)


def favor_op(device):
    """The FAVOR+ op an attention rewrite emits on ``device``: the Triton one on CUDA where available."""
    from ..ops.attention import triton_available

    on_cuda = torch.device(device).type == "cuda"
    return panther.favor_attention_triton.default if on_cuda and triton_available else panther.favor_attention.default


def _rewrite_attention(emit, cand, projection):
    node = cand.node
    names = ("query", "key", "value")
    q, k, v = (node.args[i] if i < len(node.args) else node.kwargs[n] for i, n in enumerate(names))
    p = emit.installer.node(f"{cand.name}.features", projection, node)
    op = favor_op(projection.device)
    causal = bool(cand.info["causal"])
    padding = cand.info.get("key_padding")
    if padding is None:
        return emit.call(op, (q, k, v, p, "softmax", causal, None, 0), node)
    mask = emit_key_padding(emit, padding, k, node)
    out = emit.call(op, (q, k, v, p, "softmax", causal, mask, 0), node)
    return emit_empty_rows_zero(emit, out, mask, causal, node)


_REWRITERS = {"linear": _rewrite_linear, "conv2d": _rewrite_conv, "attention": _rewrite_attention}


def _rewrite_fused(emit, group: list[Candidate], prepared) -> None:
    """h = x2 @ [A_1 .. A_n] once on the rows x2 = x.reshape(-1, in), then y_i = addmm(b_i, h[:, slice_i], B_i)
    reshaped back, for each member.

    Two-dimensional on purpose: a ``linear`` on a slice of a 3-D product is not contiguous, so
    it decomposes into a batched matmul plus a separate bias pass (measured on an H200: one
    extra read and write of each output), where ``addmm`` on the strided 2-D slice keeps
    the bias in the GEMM's epilogue.
    """
    gm = emit.gm
    first = group[0].node  # groups are in graph order
    pairs = [prepared[c.node] for c in group]
    try:
        batched = _batchable(emit, group, pairs)
        with gm.graph.inserting_before(first):
            parts, lead = _projections(emit, group, [A for A, _ in pairs], first, split=not batched)
            if batched:
                replacements = _batched_expansions(emit, group, parts[0], [B for _, B in pairs], lead)
        if not batched:
            replacements = []
            for cand, part, (_, B) in zip(group, parts, pairs):
                with gm.graph.inserting_before(cand.node):
                    replacements.append(_expand(emit, cand, part, B, lead))
    except Exception as err:  # noqa: BLE001
        raise RewriteError(first.name, f"fusing {[c.name for c in group]} failed: {err}") from err
    for cand, new in zip(group, replacements):
        emit.replace(cand.node, new)


def _batchable(emit, group: list[Candidate], pairs) -> bool:
    """Whether the group's expansions can run as one ``batched_expand``: one shared input, equal
    ranks and output sizes, and no member with a bias or every bias a parameter (the biases are
    stacked once into a constant, guarded like the weights: ``Candidate.bias_folded``)."""
    x = emit.input_of(group[0])
    biases = [c.info.get("bias_param") for c in group]
    return (all(emit.input_of(c) is x for c in group)
            and len({(A.shape[1], B.shape[1], B.dtype) for A, B in pairs}) == 1
            and (not any(c.info.get("bias") for c in group)
                 or all(b is not None and b.dtype == pairs[0][1].dtype for b in biases)))


def _batched_expansions(emit, group: list[Candidate], h: fx.Node, Bs: list[torch.Tensor], lead) -> list[fx.Node]:
    """batched_expand(h, [B_1 .. B_n], [b_1 .. b_n]) once, then each member's [*lead, out] slice of it."""
    first = group[0].node
    key = "+".join(c.name for c in group)
    b = emit.installer.node(f"{key}.B", torch.stack(Bs).contiguous(), first)
    bias = None
    if group[0].info.get("bias"):
        bias = emit.installer.node(f"{key}.bias", torch.stack([c.info["bias_param"].detach() for c in group]),
                                   first)
        for c in group:
            c.bias_folded = True
    out = emit.call(panther.batched_expand.default, (h, b, bias), first)
    n = Bs[0].shape[1]
    return [emit.call(aten.reshape.default, (emit.call(aten.select.int, (out, 0, i), c.node), [*lead, n]), c.node)
            for i, c in enumerate(group)]


def _projections(emit, cands: list[Candidate], As: list[torch.Tensor], before: fx.Node, split: bool = True):
    """h_i = x_i2 @ A_i on the rows of each candidate's input, and the leading sizes of the first's.
    Candidates reading one input share one x2 @ [A_1 .. A_n] (a column slice each; with
    ``split=False`` the whole product, alone in the list); otherwise each gets its own product.
    Factors are installed before ``before``."""
    x = emit.input_of(cands[0])
    if all(emit.input_of(c) is x for c in cands):
        key = "+".join(c.name for c in cands)
        a = emit.installer.node(f"{key}.A", torch.cat(As, dim=1).contiguous() if len(As) > 1 else As[0].contiguous(),
                                before)
        rows, lead = _rows(emit, x, As[0].shape[0], cands[0].node)
        shared = emit.call(aten.mm.default, (rows, a), cands[0].node)
        if len(cands) == 1 or not split:
            return [shared], lead
        bounds = list(itertools.accumulate((A.shape[1] for A in As), initial=0))
        return [emit.call(aten.slice.Tensor, (shared, 1, lo, hi), c.node)
                for c, lo, hi in zip(cands, bounds, bounds[1:])], lead
    parts, lead = [], None
    for cand, A in zip(cands, As):
        rows, cand_lead = _rows(emit, emit.input_of(cand), A.shape[0], cand.node)
        a = emit.installer.node(f"{cand.name}.A", A.contiguous(), before)
        parts.append(emit.call(aten.mm.default, (rows, a), cand.node))
        lead = cand_lead if lead is None else lead
    return parts, lead


def _rows(emit, x: fx.Node, in_features: int, like: fx.Node):
    """x.reshape(-1, in_features) and x's leading sizes (``sym_size`` nodes where symbolic)."""
    rows = emit.call(aten.reshape.default, (x, [-1, in_features]), like)
    return rows, _lead_sizes(emit, x, like)


def _lead_sizes(emit, x: fx.Node, like: fx.Node) -> list:
    """x's leading sizes: ints, or ``sym_size`` nodes where symbolic."""
    return [size if isinstance(size, int) else emit.call(aten.sym_size.int, (x, dim), like)
            for dim, size in enumerate(value_of(x).shape[:-1])]


def _expand(emit, cand: Candidate, h: fx.Node, B: torch.Tensor, lead) -> fx.Node:
    """addmm(bias, h, B) (mm without bias) on the rows h, reshaped to the linear's output."""
    b = emit.installer.node(f"{cand.name}.B", B.contiguous(), cand.node)
    bias = _bias(emit, cand)
    out = (emit.call(aten.addmm.default, (bias, h, b), cand.node) if bias is not None
           else emit.call(aten.mm.default, (h, b), cand.node))
    out = emit.call(aten.reshape.default, (out, [*lead, B.shape[1]]), cand.node)
    emit.expansions.append((out, h, b, bias))
    return out


def _fuse_residuals(emit) -> None:
    """r + y -> residual_addmm(r, h, B, bias) for each low-rank linear y = h B + bias whose only user
    adds it to r (``fusion.residual_add``); h is the linear's projection x @ A, as rows viewed with
    r's leading dims (a lowrank_linear is split into that projection here)."""
    graph = emit.gm.graph
    for out, h, b, bias in emit.expansions:
        found = None if out._erased else residual_add(out)
        if found is None:
            continue
        add, residual = found
        try:
            with graph.inserting_before(add):
                if h is None:  # lowrank_linear(x, A, B, bias)
                    x, a = out.args[:2]
                    rows = emit.call(aten.reshape.default, (x, [-1, value_of(a).shape[0]]), add)
                    h = emit.call(aten.mm.default, (rows, a), add)
                h = emit.call(aten.reshape.default, (h, [*_lead_sizes(emit, residual, add), value_of(b).shape[0]]), add)
                new = emit.call(panther.residual_addmm.default, (residual, h, b, bias), add)
        except Exception as err:  # noqa: BLE001
            raise RewriteError(add.name, f"adding the residual in the expansion of {out.name!r} failed: {err}") from err
        emit.replace(add, new)
        dead = [out]
        while dead:  # the expansion, and what only it used
            node = dead.pop()
            if not node.users and node.op == "call_function" and node.target in (
                    aten.reshape.default, aten.addmm.default, aten.mm.default, panther.lowrank_linear.default):
                dead.extend(a for a in node.all_input_nodes if a.op == "call_function")
                graph.erase_node(node)


def _rewrite_mlp(emit, up: Candidate, activation: str, down: Candidate, links: list[fx.Node], prepared) -> None:
    """y = addmm(b2, lowrank_expand_project(x2 @ A1, B1, A2, b1, act), B2) on the rows x2 of x,
    replacing up, the links (the activation and any views around it) and down (built before any
    of them is touched). ``mlp_chains`` guarantees down's input has x's leading dims."""
    gm = emit.gm
    (A1, B1), (A2, B2) = prepared[up.node], prepared[down.node]
    act_node = next(n for n in links if activation_of(n) is not None)
    try:
        with gm.graph.inserting_before(down.node):
            (t,), lead = _projections(emit, [up], [A1], down.node)
            b1 = emit.installer.node(f"{up.name}.B", B1.contiguous(), down.node)
            a2 = emit.installer.node(f"{down.name}.A", A2.contiguous(), down.node)
            u = emit.call(panther.lowrank_expand_project.default, (t, b1, a2, _bias(emit, up), activation), act_node)
            new = _expand(emit, down, u, B2, lead)
    except Exception as err:  # noqa: BLE001
        raise RewriteError(up.node.name, f"fusing the MLP {up.name!r} -> {activation} -> {down.name!r} failed: "
                                         f"{err}") from err
    emit.replace(down.node, new)
    for node in (*reversed(links), up.node):
        gm.graph.erase_node(node)


def _rewrite_gated(emit, gate: Candidate, activation: str, up: Candidate, down: Candidate, links: list[fx.Node],
                   prepared) -> None:
    """y = addmm(b_d, lowrank_gated_expand_project(h_g, B_g, h_u, B_u, A_d, b_g, b_u, act), B_d), with
    h_g, h_u slices of one x2 @ [A_g A_u] where gate and up read the same x (else two products),
    replacing gate, up, the activation, the product and down."""
    gm = emit.gm
    (Ag, Bg), (Au, Bu), (Ad, Bd) = prepared[gate.node], prepared[up.node], prepared[down.node]
    act_node, product = links
    try:
        with gm.graph.inserting_before(down.node):
            (h_g, h_u), lead = _projections(emit, [gate, up], [Ag, Au], down.node)
            b_g = emit.installer.node(f"{gate.name}.B", Bg.contiguous(), down.node)
            b_u = emit.installer.node(f"{up.name}.B", Bu.contiguous(), down.node)
            a_d = emit.installer.node(f"{down.name}.A", Ad.contiguous(), down.node)
            u = emit.call(panther.lowrank_gated_expand_project.default,
                          (h_g, b_g, h_u, b_u, a_d, _bias(emit, gate), _bias(emit, up), activation), product)
            new = _expand(emit, down, u, Bd, lead)
    except Exception as err:  # noqa: BLE001
        raise RewriteError(gate.node.name, f"fusing the gated MLP {gate.name!r} ({activation}) * {up.name!r} -> "
                                           f"{down.name!r} failed: {err}") from err
    emit.replace(down.node, new)
    for node in (product, act_node, gate.node, up.node):
        gm.graph.erase_node(node)
