"""panther.passes: candidates, eligibility, planning, rewrite and fusion on real Dynamo and export graphs.

Graphs are captured with a backend that runs the passes and then the graph eagerly (no
Inductor), so these tests are fast; tests/test_backend.py covers the Inductor path.
"""

import copy
import json
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import panther as pr
from panther.factors import svd_factors
from panther.factors.asvd import asvd_factors
from panther.passes import (DynamoResolver, apply_plan, find_candidates, layer_seed, make_plan, parse_options)
from panther.passes.naming import module_path, param_fqn_from_source

from .models import MLP


class QKV(nn.Module):
    """q/k/v projections of one input (fusable), attention by SDPA, an output projection."""

    def __init__(self, d=64, heads=2, causal=False):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.heads, self.causal = heads, causal

    def forward(self, x, mask=None):
        B, N, d = x.shape
        q, k, v = (p(x).view(B, N, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)
        return self.o(a.transpose(1, 2).reshape(B, N, d))


class Capture:
    """A Dynamo backend running the passes, keeping the graph, then running it eagerly."""

    def __init__(self, options=None, rewrite=True):
        self.options, self.rewrite = parse_options(options), rewrite
        self.graphs, self.candidates, self.plans = [], [], []

    def __call__(self, gm, example_inputs, **_):
        cands = find_candidates(gm, DynamoResolver(gm, example_inputs))
        plan = make_plan(cands, example_inputs, self.options)
        if self.rewrite:
            apply_plan(gm, cands, plan, seed=self.options.seed, fuse=self.options.fuse, example_inputs=example_inputs)
        self.graphs.append(gm)
        self.candidates.append(cands)
        self.plans.append(plan)
        return gm.forward


def run(model, *args, options=None, rewrite=True):
    cap = Capture(options, rewrite)
    with torch.no_grad():
        out = torch.compile(model, backend=cap, fullgraph=True)(*args)
    return out, cap


def run_fused_and_unfused(model, *args, options):
    """(fused output, its Capture, unfused output, its Capture): the same plan with fuse on and off."""
    fused, cap = run(model, *args, options=options)
    torch.compiler.reset()
    unfused, cap2 = run(model, *args, options={**options, "fuse": False})
    return fused, cap, unfused, cap2


def check_hf_blocks_fused(model, fused_op, tol):
    """A 2-layer Hugging Face model on token ids: the fused plan matches the unfused one within
    ``tol`` and each of the two blocks' MLPs became one ``fused_op``."""
    ids = torch.randint(0, 64, (2, 12))
    opts = {"num_terms": 1, "low_rank": 8, "seed": 3}
    fused, cap, unfused, _ = run_fused_and_unfused(model.eval(), ids, options=opts)
    torch.testing.assert_close(fused.last_hidden_state, unfused.last_hidden_state, rtol=tol, atol=tol)
    assert targets_of(cap.graphs[0]).count(fused_op) == 2


def node_signature(node, rename=None):
    """op, target and arguments (nodes by name, ``rename`` mapping replaced nodes to their old names)."""
    rename = rename or {}
    name = lambda a: rename.get(a.name, a.name) if isinstance(a, torch.fx.Node) else a  # noqa: E731
    return (node.op, node.target, str(torch.fx.node.map_aggregate(node.args, name)),
            str(torch.fx.node.map_aggregate(node.kwargs, name)))


def targets_of(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_naming_from_dynamo_sources_and_module_stacks():
    class Src:
        def __init__(self, name):
            self.name = name

    assert param_fqn_from_source(Src("L['self']._modules['enc']._modules['0']._parameters['weight']")) == "enc.0.weight"
    assert param_fqn_from_source(Src("L['self']._modules['m']._buffers['w']")) == "m.w"
    assert param_fqn_from_source(Src("L['x']")) is None
    assert param_fqn_from_source(Src("L['self']._parameters['w'].T")) is None  # a derived tensor, not the param
    assert module_path("L['self'].layers[0].attn") == "layers.0.attn"
    assert module_path("L['self'].layers.0.fc1") == "layers.0.fc1"
    assert module_path("L['self']") == ""
    assert layer_seed(0, "fc1") == layer_seed(0, "fc1") != layer_seed(0, "fc2") != layer_seed(1, "fc2")


def test_candidates_names_and_eligibility():
    _, cap = run(MLP().eval(), torch.randn(3, 64), rewrite=False)
    by_name = {c.name: c for c in cap.candidates[0]}
    assert set(by_name) == {"fc1", "fc2", "tiny"}
    assert all(c.eligible and c.kind == "linear" for c in by_name.values())
    assert by_name["fc1"].info["in_features"] == 64 and by_name["fc1"].info["out_features"] == 128


def test_ineligible_nodes_reasons():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(16, 16))
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x, other, img, mask):
            a = F.linear(x, other)  # weight is an input, not a parameter
            b = self.w @ x.T  # parameter on the left
            c = torch.addmm(x[0], x, self.w, beta=0.5)  # scaled addmm
            q = x.view(1, 2, 8, 16)
            d = F.scaled_dot_product_attention(q, q, q, attn_mask=mask)  # a mask tensor
            e = self.conv(img[0])  # unbatched conv input
            return a, b, c, d, e

    args = (torch.randn(16, 16), torch.randn(16, 16), torch.randn(1, 3, 8, 8), torch.ones(8, 8, dtype=torch.bool))
    _, cap = run(Odd(), *args, options={"num_terms": 1, "low_rank": 1, "kinds": ["linear", "conv2d", "attention"]})
    reasons = {c.node.name: c.reason for c in cap.candidates[0]}
    assert not any(c.eligible for c in cap.candidates[0])
    joined = " | ".join(reasons.values())
    for expected in ("not a module parameter", "on the left", "beta or alpha", "attn_mask", "4-D batched"):
        assert expected in joined, (expected, reasons)


def test_ineligible_and_dense_nodes_stay_exactly_as_they_were():
    model = MLP().eval()
    x = torch.randn(3, 64)
    _, before = run(model, x, rewrite=False)
    torch.compiler.reset()
    _, after = run(model, x, options={"plan": {"fc1": {"num_terms": 1, "low_rank": 8}}})
    rewritten = {c.node.name for c in before.candidates[0] if c.name == "fc1"}
    (replacement,) = [n for n in after.graphs[0].graph.nodes if n.target is torch.ops.panther.lowrank_linear.default]
    old = {n.name: node_signature(n) for n in before.graphs[0].graph.nodes}
    new = {n.name: node_signature(n, {replacement.name: next(iter(rewritten))}) for n in after.graphs[0].graph.nodes}
    assert rewritten and all(name not in new for name in rewritten)
    for name, sig in old.items():
        if name not in rewritten:
            assert new[name] == sig, name  # fc2, tiny, gelu, placeholders, output: untouched
    assert torch.ops.panther.lowrank_linear.default in targets_of(after.graphs[0])


def test_fixed_plan_skips_nodes_where_sketching_cannot_win():
    _, cap = run(MLP().eval(), torch.randn(3, 64), options={"num_terms": 1, "low_rank": 8}, rewrite=False)
    plan = cap.plans[0]
    assert plan.get("fc1") == pr.SketchSpec(1, 8, "svd") and plan.get("fc2") == pr.SketchSpec(1, 8, "svd")
    assert "tiny" in plan.entries and plan.get("tiny") is None  # 16*(64+2) > 64*2: listed, dense


def test_rank_ratio_plan():
    _, cap = run(MLP().eval(), torch.randn(3, 64), options={"rank_ratio": 0.25, "init": "sketch"}, rewrite=False)
    assert cap.plans[0].get("fc1") == pr.SketchSpec(1, 8, "sketch")  # 0.25 * 64 / 2


@pytest.mark.parametrize("init", ["sketch", "svd"])
def test_rewritten_graph_equals_sketch_model(init):
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(2, 5, 64)
    opts = {"num_terms": 2, "low_rank": 4, "init": init, "seed": 7}
    out, _ = run(model, x, options=opts)
    with torch.no_grad():
        ref = pr.sketch_model(_copy_of(model), options=opts)(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def _copy_of(model):
    import copy

    return copy.deepcopy(model)


def test_fusion_shares_one_product_and_matches_unfused():
    torch.manual_seed(0)
    model = QKV().eval()
    x = torch.randn(2, 6, 64)
    opts = {"num_terms": 1, "low_rank": 8, "seed": 3}
    fused, cap, unfused, cap2 = run_fused_and_unfused(model, x, options=opts)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)
    aten = torch.ops.aten
    t_fused, t_unfused = targets_of(cap.graphs[0]), targets_of(cap2.graphs[0])
    assert t_fused.count(aten.mm.default) == 1  # x·[A_q A_k A_v], on the rows of x
    assert t_fused.count(torch.ops.panther.batched_expand.default) == 1  # the 3 expansions, biases in the GEMM
    assert aten.addmm.default not in t_fused
    assert aten.linear.default not in t_fused and aten.matmul.default not in t_fused
    assert t_fused.count(torch.ops.panther.lowrank_linear.default) == 1  # o reads another input
    assert t_unfused.count(torch.ops.panther.lowrank_linear.default) == 4


@pytest.mark.parametrize("differ", ["out_features", "bias"])
def test_shared_input_group_of_unlike_members_expands_each_on_its_slice(differ):
    """Linears reading one input whose output sizes or bias presence differ share the product
    x·[A_1 A_2] but cannot run as one batched GEMM: a strided 2-D slice and addmm (mm) each."""
    torch.manual_seed(0)

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(64, 48 if differ == "out_features" else 64)
            self.b = nn.Linear(64, 64, bias=differ != "bias")

        def forward(self, x):
            return self.a(x), self.b(x)

    model = Two().eval()
    x = torch.randn(2, 5, 64)
    opts = {"num_terms": 1, "low_rank": 8, "seed": 3}
    fused, cap, unfused, _ = run_fused_and_unfused(model, x, options=opts)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)
    t = targets_of(cap.graphs[0])
    aten = torch.ops.aten
    # the shared product, then addmm for a member with a bias and mm for one without
    assert (t.count(aten.mm.default), t.count(aten.addmm.default)) == ((2, 1) if differ == "bias" else (1, 2))
    assert torch.ops.panther.batched_expand.default not in t
    assert t.count(aten.slice.Tensor) == 2


class Chain(nn.Module):
    """fc1 -> act -> fc2 -> act -> fc3, optionally with a second use of the first hidden layer
    or a dropout in between (which keep the linears apart)."""

    def __init__(self, act, d=64, h=128, leak=False, dropout=False):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, d)
        self.act, self.leak, self.drop = act, leak, nn.Dropout(0.1) if dropout else nn.Identity()

    def forward(self, x):
        z = self.fc1(x)
        a = self.drop(self.act(z))
        y = self.fc3(self.act(self.fc2(a)))
        return (y, z.sum()) if self.leak else y


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
               "silu": F.silu, "relu_module": nn.ReLU(), "gelu_module": nn.GELU(), "torch_relu": torch.relu,
               "method_relu": lambda z: z.relu()}


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_mlp_chain_fuses_and_matches_unfused(act):
    """fc1 -> act -> fc2 becomes x·A1, lowrank_expand_project, ·B2 + b2 (the first chain wins
    where two overlap: fc3 keeps its own op), equal to the unfused rewrite."""
    torch.manual_seed(0)
    model = Chain(ACTIVATIONS[act]).eval()
    x = torch.randn(2, 5, 64)
    opts = {"num_terms": 1, "low_rank": 8, "seed": 3}
    fused, cap, unfused, cap2 = run_fused_and_unfused(model, x, options=opts)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)
    t = targets_of(cap.graphs[0])
    ops = torch.ops.panther
    assert t.count(ops.lowrank_expand_project.default) == 1 and t.count(ops.lowrank_linear.default) == 1
    assert targets_of(cap2.graphs[0]).count(ops.lowrank_linear.default) == 3
    (node,) = [n for n in cap.graphs[0].graph.nodes if n.target is ops.lowrank_expand_project.default]
    assert node.args[-1] == {"relu_module": "relu", "gelu_module": "gelu", "torch_relu": "relu",
                             "method_relu": "relu"}.get(act, act)


@pytest.mark.parametrize("fuse", [True, False])
def test_rewritten_layers_feeding_rewritten_layers(fuse):
    """Each layer's input is the previous layer's output: MLP blocks back to back (the first
    block's fc2 is the second's input), then two linears and two convolutions in a row. A
    candidate's recorded input is then a node an earlier rewrite replaced; the rewrite must read
    its replacement (it used the erased node: 'used before it has been defined')."""
    torch.manual_seed(0)
    d = 32
    mlp = nn.Sequential(*[m for _ in range(2) for m in (nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))],
                        nn.Linear(d, d), nn.Linear(d, d)).eval()
    x = torch.randn(2, 5, d)
    opts = {"num_terms": 1, "low_rank": 4, "seed": 3, "fuse": fuse}
    out, cap = run(mlp, x, options=opts)
    reference, _ = run(mlp, x, options={**opts, "fuse": False})
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    t = targets_of(cap.graphs[0])
    ops = torch.ops.panther
    assert t.count(ops.lowrank_expand_project.default) == (2 if fuse else 0)
    assert t.count(ops.lowrank_linear.default) == (2 if fuse else 6)
    with torch.no_grad():  # the same plan through swapped modules
        torch.testing.assert_close(out, pr.sketch_model(copy.deepcopy(mlp), options=opts)(x), rtol=1e-5, atol=1e-6)
    convs = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)).eval()
    image = torch.randn(2, 8, 10, 10)
    out, cap = run(convs, image, options=opts)
    assert targets_of(cap.graphs[0]).count(ops.sketched_conv2d.default) == 2
    with torch.no_grad():
        torch.testing.assert_close(out, pr.sketch_model(copy.deepcopy(convs), options=opts)(image), rtol=1e-5,
                                   atol=1e-6)


class PreLNBlock(nn.Module):
    """A pre-LN transformer block: x + o(attention(ln1 x)), then x + fc2(gelu(fc1(ln2 x))).
    ``variant`` breaks one residual add's fusion in a way the pass must refuse."""

    def __init__(self, d=64, variant=None):
        super().__init__()
        self.attn, self.ln1, self.ln2 = QKV(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2, self.variant = nn.Linear(d, 4 * d), nn.Linear(4 * d, d), variant

    def forward(self, x):
        a = self.attn(self.ln1(x))
        if self.variant == "broadcast":  # the residual is a row: the add broadcasts it
            x = x[:, :1] + a
        elif self.variant == "alpha":
            x = torch.add(x, a, alpha=0.5)
        elif self.variant == "second_user":  # the linear's output is used again
            x = x + a + a.mean()
        elif self.variant == "promote":  # float64 residual + float32 output: the add promotes
            x = x.double() + a
            return x
        elif self.variant == "inplace":
            x = x.clone()
            x += a
        else:
            x = x + a
        return torch.add(self.fc2(F.gelu(self.fc1(self.ln2(x)))), x)  # the residual second this time


def test_residual_adds_fuse_into_the_expansions_and_match_sketch_model():
    """x + o(a) and fc2(...) + x each become one panther.residual_addmm (no add left), with the
    output of the unfused rewrite and of the swapped modules."""
    torch.manual_seed(0)
    model = PreLNBlock().eval()
    x = torch.randn(2, 6, 64)
    opts = {"num_terms": 1, "low_rank": 8, "seed": 3}
    fused, cap, unfused, cap2 = run_fused_and_unfused(model, x, options=opts)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(fused, pr.sketch_model(_copy_of(model), options=opts)(x), rtol=1e-5, atol=1e-5)
    ops = torch.ops.panther
    t = targets_of(cap.graphs[0])
    assert t.count(ops.residual_addmm.default) == 2
    assert not any(target in (operator.add, torch.add) for target in t)
    assert t.count(ops.lowrank_linear.default) == 0  # o: its projection x·A_o stays, an mm
    assert t.count(ops.batched_expand.default) == 1  # q, k, v
    assert ops.residual_addmm.default not in targets_of(cap2.graphs[0])


@pytest.mark.parametrize("variant", ["broadcast", "alpha", "second_user", "promote", "inplace"])
def test_residual_adds_the_pass_cannot_fuse_stay(variant):
    """Each variant's first add is left alone (the second, plain one still fuses), and the output
    equals the unfused rewrite's."""
    torch.manual_seed(0)
    model = PreLNBlock(variant=variant).eval()
    x = torch.randn(2, 6, 64)
    opts = {"num_terms": 1, "low_rank": 8, "seed": 3}
    fused, cap, unfused, _ = run_fused_and_unfused(model, x, options=opts)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)
    t = targets_of(cap.graphs[0])
    assert t.count(torch.ops.panther.residual_addmm.default) == (0 if variant == "promote" else 1)
    assert t.count(torch.ops.panther.lowrank_linear.default) == 1  # o kept its op


@pytest.mark.parametrize("kw", [{"leak": True}, {"dropout": True}])
def test_mlp_chain_needs_the_activation_as_the_only_link(kw):
    """A second use of the first linear's output, or a dropout (training-mode op in the graph)
    between the two linears: no fusion there."""
    torch.manual_seed(0)
    model = Chain(F.gelu, **kw).train(kw.get("dropout", False))
    x = torch.randn(3, 64)
    opts = {"num_terms": 1, "low_rank": 8, "seed": 3}
    _, cap = run(model, x, options=opts)
    t = targets_of(cap.graphs[0])
    # fc1 keeps its own op; fc2 -> gelu -> fc3 still fuses
    assert t.count(torch.ops.panther.lowrank_linear.default) == 1
    assert t.count(torch.ops.panther.lowrank_expand_project.default) == 1
    (fc1,) = [n for n in cap.graphs[0].graph.nodes if n.target is torch.ops.panther.lowrank_linear.default]
    assert fc1.args[0].name == "l_x_"


class ViewedMLP(nn.Module):
    """fc1 and fc2 on 2-D rows with the activation applied to a 3-D view between them (HF GPT-2's
    Conv1D pattern); ``split_heads`` views the hidden dim itself instead (not a row view)."""

    def __init__(self, d=64, h=128, split_heads=False):
        super().__init__()
        self.fc1, self.fc2, self.split_heads = nn.Linear(d, h), nn.Linear(h, d), split_heads

    def forward(self, x):
        B, T, d = x.shape
        z = self.fc1(x.view(-1, d))
        z = z.view(B, T, 2, -1) if self.split_heads else z.view(B, T, -1)
        return self.fc2(F.gelu(z).reshape(B * T, -1))


@pytest.mark.parametrize("split_heads", [False, True])
def test_mlp_chain_through_row_views(split_heads):
    torch.manual_seed(0)
    model = ViewedMLP(split_heads=split_heads).eval()
    x = torch.randn(2, 5, 64)
    opts = {"num_terms": 1, "low_rank": 8, "seed": 3}
    fused, cap, unfused, _ = run_fused_and_unfused(model, x, options=opts)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)
    t = targets_of(cap.graphs[0])
    assert t.count(torch.ops.panther.lowrank_expand_project.default) == (0 if split_heads else 1)


def test_hf_gpt2_conv1d_mlp_is_fused():
    """GPT-2 with activation_function="gelu": addmm -> view -> gelu -> view -> addmm per block."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=64, n_layer=2, n_head=2, n_positions=32,
                                  activation_function="gelu", attn_implementation="sdpa")
    check_hf_blocks_fused(transformers.GPT2Model(cfg), torch.ops.panther.lowrank_expand_project.default, 1e-5)


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)), Llama's SwiGLU MLP; ``swap`` writes the product the other way
    round, ``split_input`` feeds up a different tensor than gate."""

    def __init__(self, d=64, h=128, bias=False, act=F.silu, swap=False, split_input=False):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(d, h, bias=bias), nn.Linear(d, h, bias=bias), nn.Linear(h, d, bias=bias)
        self.act, self.swap, self.split_input = act, swap, split_input

    def forward(self, x):
        g = self.act(self.gate(x))
        u = self.up(x * 2 if self.split_input else x)
        return self.down(u * g if self.swap else g * u)


@pytest.mark.parametrize("kw", [{}, {"bias": True, "swap": True}, {"act": F.gelu, "split_input": True}],
                         ids=["swiglu", "bias-swapped", "geglu-two-inputs"])
def test_gated_mlp_fuses_and_matches_unfused(kw):
    torch.manual_seed(0)
    model = GatedMLP(**kw).eval()
    x = torch.randn(2, 5, 64)
    opts = {"num_terms": 1, "low_rank": 8, "seed": 3}
    fused, cap, unfused, cap2 = run_fused_and_unfused(model, x, options=opts)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)
    t = targets_of(cap.graphs[0])
    assert t.count(torch.ops.panther.lowrank_gated_expand_project.default) == 1
    assert torch.ops.panther.lowrank_linear.default not in t
    # x·[A_gate A_up] shared (two products when up reads another tensor); the expansion ·B_down is an mm without bias
    assert t.count(torch.ops.aten.mm.default) == (2 if kw.get("split_input") else 1) + (0 if kw.get("bias") else 1)
    assert targets_of(cap2.graphs[0]).count(torch.ops.panther.lowrank_linear.default) == 3


def test_hf_llama_swiglu_mlp_is_fused():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                   attn_implementation="sdpa")
    check_hf_blocks_fused(transformers.LlamaModel(cfg), torch.ops.panther.lowrank_gated_expand_project.default, 1e-4)


def test_activation_of_reads_only_plain_out_of_place_activations():
    from panther.passes.fusion import activation_of

    def act_node(fn):
        gm = torch.fx.symbolic_trace(fn)
        return [n for n in gm.graph.nodes if n.op in ("call_function", "call_method")][0]

    aten = torch.ops.aten
    assert activation_of(act_node(lambda z: F.gelu(z, approximate="tanh"))) == "gelu_tanh"
    assert activation_of(act_node(lambda z: F.gelu(z))) == "gelu"
    assert activation_of(act_node(lambda z: F.relu(z, inplace=True))) is None
    assert activation_of(act_node(lambda z: F.silu(z, True))) is None
    assert activation_of(act_node(lambda z: torch.tanh(z))) is None
    g = torch.fx.Graph()
    z = g.placeholder("z")
    assert activation_of(g.call_function(aten.gelu.default, (z,), {"approximate": "tanh"})) == "gelu_tanh"
    assert activation_of(g.call_function(aten.gelu.default, (z, "sigmoid"))) is None
    assert activation_of(g.call_function(aten.silu.default, (z,))) == "silu"
    assert activation_of(g.call_function(aten.relu.default, (z, z))) is None  # an argument we do not read


def test_attention_rewrite_equals_favor_with_the_same_features():
    torch.manual_seed(0)
    model = QKV(causal=True).eval()
    x = torch.randn(2, 64, 64)  # 64 tokens: 16 features per head cost less than the 64x64 scores
    out, cap = run(model, x, options={"num_terms": 1, "low_rank": 16, "kinds": ["attention"], "seed": 5})
    assert torch.ops.panther.favor_attention.default in targets_of(cap.graphs[0])
    (att,) = [c for c in cap.candidates[0] if c.kind == "attention"]
    P = pr.passes.attention_projection(pr.SketchSpec(1, 16), 32, att.name, 5, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        q, k, v = (p(x).view(2, 64, 2, 32).transpose(1, 2) for p in (model.q, model.k, model.v))
        a = torch.ops.panther.favor_attention(q, k, v, P, "softmax", True, None, 0)
        ref = model.o(a.transpose(1, 2).reshape(2, 64, 64))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_conv_rewrite_equals_sketch_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding="same"), nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, groups=2))
    model.eval()
    x = torch.randn(2, 16, 10, 10)
    opts = {"num_terms": 1, "low_rank": 4, "seed": 1}
    out, cap = run(model, x, options=opts)
    assert targets_of(cap.graphs[0]).count(torch.ops.panther.sketched_conv2d.default) == 2
    with torch.no_grad():
        ref = pr.sketch_model(_copy_of(model), options=opts)(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_plan_names_missing_from_the_graph_warn_and_ineligible_entries_stay_dense():
    with pytest.warns(UserWarning, match="not in this graph.*nope"):
        _, cap = run(MLP().eval(), torch.randn(3, 64),
                     options={"plan": {"nope": {"num_terms": 1, "low_rank": 2}, "fc1": None}}, rewrite=False)
    assert cap.plans[0].sketched() == {}


def test_plan_json_roundtrip_through_options(tmp_path):
    plan = pr.Plan({"fc1": pr.SketchSpec(1, 8, "sketch"), "fc2": None})
    path = tmp_path / "plan.json"
    plan.save(path)
    _, cap = run(MLP().eval(), torch.randn(3, 64), options={"plan": str(path)}, rewrite=False)
    assert cap.plans[0].get("fc1") == pr.SketchSpec(1, 8, "sketch")
    assert json.loads(path.read_text())["layers"]["fc2"] is None


def test_export_ir_graph_is_rewritten_by_the_same_passes():
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(4, 64)
    gm = torch.export.export(model, (x,)).module()  # aten.linear, parameters as get_attr
    resolver = DynamoResolver(gm, ())
    cands = find_candidates(gm, resolver)
    assert {c.name for c in cands if c.eligible} == {"fc1", "fc2", "tiny"}
    assert all(c.node.target is torch.ops.aten.linear.default for c in cands)
    opts = parse_options({"num_terms": 1, "low_rank": 8, "init": "sketch"})
    apply_plan(gm, cands, make_plan(cands, (x,), opts))
    with torch.no_grad():
        out = gm(x)
        ref = pr.sketch_model(_copy_of(model), options={"num_terms": 1, "low_rank": 8, "init": "sketch"})(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_asvd_beats_svd_on_anisotropic_inputs():
    torch.manual_seed(0)
    W = torch.randn(48, 32, dtype=torch.float64)
    scales = torch.logspace(0, -3, 32, dtype=torch.float64)  # inputs live mostly in a few directions
    X = torch.randn(2000, 32, dtype=torch.float64) * scales
    C = X.T @ X / X.shape[0]
    errs = {}
    for name, factors in (("svd", svd_factors(W, 1, 4)), ("asvd", asvd_factors(W, 1, 4, C))):
        Y = torch.ops.panther.sketched_linear(X, *factors, None)
        errs[name] = ((Y - X @ W.T).norm() / (X @ W.T).norm()).item()
    assert errs["asvd"] < 0.5 * errs["svd"], errs
    with pytest.raises(ValueError, match="second_moment"):
        asvd_factors(W, 1, 4, C[:3])


def test_asvd_calibrated_on_example_inputs_in_the_graph():
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(64, 64) * torch.logspace(0, -2, 64)
    cap = Capture({"num_terms": 1, "low_rank": 8, "init": "asvd"})
    from panther.backend import _second_moments

    with torch.no_grad():
        def backend(gm, ex, **_):
            cands = find_candidates(gm, DynamoResolver(gm, ex))
            plan = make_plan(cands, ex, cap.options)
            apply_plan(gm, cands, plan, example_inputs=ex, second_moments=_second_moments(gm, lambda: [ex], cands, plan))
            return gm.forward

        out = torch.compile(model, backend=backend, fullgraph=True)(x)
        ref = pr.sketch_model(_copy_of(model), options={"num_terms": 1, "low_rank": 8, "init": "asvd"},
                              calibration=[x])(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_options_validation():
    with pytest.raises(ValueError, match=r"(?s)unknown panther option\(s\) \['num_term'\].*low_rank"):
        parse_options({"num_term": 1})
    with pytest.raises(ValueError, match="go together"):
        parse_options({"num_terms": 1})
    with pytest.raises(ValueError, match="one plan source"):
        parse_options({"num_terms": 1, "low_rank": 2, "rank_ratio": 0.1})
    with pytest.raises(ValueError, match="rank_ratio"):
        parse_options({"rank_ratio": 1.5})
    with pytest.raises(ValueError, match="init"):
        parse_options({"init": "qr"})
    with pytest.raises(ValueError, match="kinds"):
        parse_options({"kinds": ["linear", "lstm"]})
    with pytest.raises(TypeError, match="low_rank"):
        parse_options({"num_terms": 1, "low_rank": 2.5})
    with pytest.raises(TypeError, match="options must be a dict"):
        parse_options([("num_terms", 1)])
    assert parse_options(None).num_terms is None


def test_tuner_hook_decides_the_plan(monkeypatch):
    from panther.passes import options as options_mod, planning

    seen = {}

    def tuner(candidates, example_inputs, options):
        seen["names"] = sorted(c.name for c in candidates)
        seen["trials"] = options.extra["trials"]
        return pr.Plan({"fc2": pr.SketchSpec(1, 4, "sketch")})

    monkeypatch.setattr(planning, "_tuner", None)
    monkeypatch.setattr(options_mod, "_tuner_keys", {})
    monkeypatch.setattr(options_mod, "_tuner_check", None)
    planning.register_tuner(tuner, {"trials": "number of trials"})
    _, cap = run(MLP().eval(), torch.randn(3, 64), options={"tune": True, "trials": 3}, rewrite=False)
    assert seen == {"names": ["fc1", "fc2", "tiny"], "trials": 3}
    assert cap.plans[0].sketched() == {"fc2": pr.SketchSpec(1, 4, "sketch")}


def test_factor_caches_compute_one_svd_per_weight_across_ranks(monkeypatch):
    from panther.passes import linear_factors

    calls = []
    real_svd = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(1) or real_svd(*a, **k))
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 32)
    X = torch.randn(200, 48, dtype=torch.float64)
    C = X.T @ X / 200
    for k in (2, 4, 8):  # the tuner's sensitivity: one layer at many ranks
        linear_factors(lin.weight, pr.SketchSpec(1, k, "svd"), "fc", 0)
    assert len(calls) == 1
    for k in (2, 4, 8):
        linear_factors(lin.weight, pr.SketchSpec(1, k, "asvd"), "fc", 0, C)
    assert len(calls) == 2  # the whitened weight once, its SVD once
    for k in (2, 4):  # a transposed view of the parameter (HF Conv1D's layout) is the same weight
        linear_factors(lin.weight.T.T, pr.SketchSpec(1, k, "svd"), "fc", 0, owner=lin.weight)
    assert len(calls) == 2
    with torch.no_grad():
        lin.weight.mul_(2)  # changed in place: new factors
    S1s = linear_factors(lin.weight, pr.SketchSpec(1, 2, "svd"), "fc", 0)[0]
    assert len(calls) == 3
    torch.testing.assert_close(S1s, svd_factors(lin.weight.detach().clone(), 1, 2)[0])
