"""backend="panther": Inductor hand-off, equality with sketch_model and Inductor, fallback,
options, entry-point discovery, training graphs, dynamic shapes, HF architectures.

Inductor compiles are slow on 2 cores, so models are tiny and each test compiles little.
"""

import copy
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import panther as pr
import panther.backend as backend_mod
from panther.backend import panther_backend
from panther.passes import factors as factors_mod

from .conftest import BACKEND, ENTRY_POINT


class MLP(nn.Module):
    def __init__(self, d=64, h=128):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class ResNetish(nn.Module):
    """conv-bn-relu stem, one residual block, pooled linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.conv1 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        h = self.stem(x)
        h = F.relu(h + self.conv2(F.relu(self.conv1(h))))
        return self.head(h.mean((2, 3)))




def compiled(model, options=None, **kwargs):
    return torch.compile(model, backend=BACKEND, options=options, **kwargs) if options is not None \
        else torch.compile(model, backend=BACKEND, **kwargs)


@pytest.fixture(autouse=True)
def _fresh_warnings():
    backend_mod._warned.clear()
    yield


def test_fixed_plan_equals_sketch_model_with_report_and_saved_plan(tmp_path, capsys):
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(2, 7, 64)
    path = tmp_path / "plan.json"
    opts = {"num_terms": 1, "low_rank": 8, "seed": 3}
    with torch.no_grad():
        out = compiled(model, {**opts, "report": True, "save_plan": str(path)}, fullgraph=True)(x)
        ref = pr.sketch_model(copy.deepcopy(model), options=opts)(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    table = capsys.readouterr().out
    assert "| fc1" in table and "sketch L=1 k=8 svd" in table and "2.67x" in table  # 64*128 / (16*192)
    saved = pr.Plan.load(path)
    assert saved.get("fc1") == pr.SketchSpec(1, 8, "svd") and set(saved.entries) == {"fc1", "fc2"}
    rep = pr.report(model, x, options={"plan": str(path)})  # the saved plan, reused (no compile)
    assert [r["decision"] for r in rep.rows] == ["sketch L=1 k=8 svd"] * 2
    assert "fc2" in str(rep)


def test_all_dense_plan_equals_inductor_bitwise():
    torch.manual_seed(0)
    model = ResNetish().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = compiled(model, {"plan": {}}, fullgraph=True)(x)
        torch.compiler.reset()
        ref = torch.compile(model, backend="inductor", fullgraph=True)(x)
    assert torch.equal(out, ref)


def test_conv_model_fixed_plan_equals_sketch_model():
    torch.manual_seed(0)
    model = ResNetish().eval()
    x = torch.randn(2, 3, 8, 8)
    opts = {"num_terms": 1, "low_rank": 4, "init": "sketch", "seed": 2}
    with torch.no_grad():
        out = compiled(model, opts, fullgraph=True)(x)
        swapped = pr.sketch_model(copy.deepcopy(model), options=opts)
        ref = swapped(x)
    assert isinstance(swapped.conv1, pr.nn.SKConv2d) and isinstance(swapped.stem[0], pr.nn.SKConv2d)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_rewrite_failure_falls_back_to_inductor_with_one_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("synthetic failure")

    monkeypatch.setattr("panther.passes.rewrite.linear_factors", broken)
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(3, 64)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled(model, {"num_terms": 1, "low_rank": 8})(x)
    ours = [w for w in caught if "panther" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    message = str(ours[0].message)
    assert "node 'linear'" in message and "'fc1'" in message and "synthetic failure" in message
    assert "plain Inductor" in message
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)  # dense, not wrong


def test_fallback_false_raises_and_bad_options_are_rejected(monkeypatch):
    model = MLP().eval()
    x = torch.randn(3, 64)
    with pytest.raises(Exception, match=r"(?s)unknown panther option.*valid options.*rank_ratio"):
        compiled(model, {"num_term": 1})(x)
    torch.compiler.reset()
    with pytest.raises(Exception, match="init must be one of"):
        compiled(model, {"num_terms": 1, "low_rank": 4, "init": "pca"})(x)
    torch.compiler.reset()
    monkeypatch.setattr("panther.passes.rewrite.linear_factors",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("synthetic failure")))
    with torch.no_grad(), pytest.raises(Exception, match="synthetic failure"):
        compiled(model, {"num_terms": 1, "low_rank": 8, "fallback": False})(x)


def test_mode_in_options_reaches_inductor(monkeypatch):
    """torch.compile refuses mode= together with options=, so a plan and a mode meet in options['mode']:
    the mode's Inductor patches (the user's own 'inductor' patches on top) go to compile_fx."""
    import panther.backend as backend
    from torch._inductor import list_mode_options

    seen = []
    real = backend.compile_fx
    monkeypatch.setattr(backend, "compile_fx", lambda gm, inputs, config_patches: seen.append(config_patches)
                        or real(gm, inputs, config_patches=None))
    model = MLP().eval()
    x = torch.randn(3, 64)
    options = {"num_terms": 1, "low_rank": 8, "mode": "max-autotune-no-cudagraphs", "inductor": {"max_autotune": False}}
    with torch.no_grad():
        compiled(model, options)(x)
    assert seen == [{**list_mode_options("max-autotune-no-cudagraphs"), "max_autotune": False}]
    with pytest.raises(ValueError, match="mode must be one of"):
        backend.panther_backend(None, [], options={"mode": "fast"})
    with pytest.raises(ValueError, match=r"mode='default' and options\['mode'\]='reduce-overhead' disagree"):
        backend.panther_backend(None, [], mode="default", options={"mode": "reduce-overhead"})


@pytest.mark.skipif(not ENTRY_POINT, reason="panther is built in place, not pip-installed: no entry point")
def test_entry_point_discovery_without_importing_panther():
    script = textwrap.dedent("""
        import sys, torch
        listed = "panther" in torch._dynamo.list_backends()
        assert "panther" not in sys.modules
        m = torch.nn.Sequential(torch.nn.Linear(32, 32)).eval()
        x = torch.randn(4, 32)
        with torch.no_grad():
            y = torch.compile(m, backend="panther", options={"plan": {}})(x)
            ok = torch.allclose(y, m(x), atol=1e-6)
        print(listed, ok, "panther.backend" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-3:] == ["True", "True", "True"]


def test_compiled_code_reused_with_other_weights_stays_correct():
    torch.manual_seed(0)
    a, b = MLP().eval(), MLP().eval()
    x = torch.randn(3, 64)
    opts = {"num_terms": 1, "low_rank": 8}
    with torch.no_grad():
        out_a = compiled(a, opts)(x)
        torch.testing.assert_close(out_a, pr.sketch_model(copy.deepcopy(a), options=opts)(x), rtol=1e-5, atol=1e-6)
        # Dynamo reuses a's compiled code for b (parameters are graph inputs): a's factors must not be used
        with pytest.warns(UserWarning, match="other than those its sketch factors"):
            out_b = compiled(b, opts)(x)
        torch.testing.assert_close(out_b, b(x), rtol=1e-5, atol=1e-6)
        a.fc1.weight.mul_(2)  # an in-place update makes the factors stale too
        torch.testing.assert_close(compiled(a, opts)(x), a(x), rtol=1e-5, atol=1e-6)


def test_folded_biases_are_guarded_like_weights():
    """q/k/v expand in one batched GEMM whose stacked biases are a copy: an in-place bias update
    must not leave the compiled graph using the old ones (it runs uncompiled, with a warning)."""
    from .test_passes import QKV

    torch.manual_seed(0)
    model = QKV().eval()
    x = torch.randn(2, 6, 64)
    opts = {"num_terms": 1, "low_rank": 8}
    with torch.no_grad():
        fn = compiled(model, opts)
        torch.testing.assert_close(fn(x), pr.sketch_model(copy.deepcopy(model), options=opts)(x), rtol=1e-5,
                                   atol=1e-5)
        model.k.bias.add_(1.0)
        with pytest.warns(UserWarning, match="other than those its sketch factors"):
            out = fn(x)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)


def test_training_graph_is_not_rewritten():
    model = MLP()  # weights require grad, grad enabled: a training graph
    seen = {}

    def spy(gm, example_inputs, **_):
        seen["cands"], seen["plan"] = backend_mod.analyse(gm, example_inputs, pr.passes.parse_options(
            {"num_terms": 1, "low_rank": 8}))
        return gm.forward

    with pytest.warns(UserWarning, match="sketch_model"):
        torch.compile(model, backend=spy)(torch.randn(3, 64))
    assert seen["plan"].sketched() == {} and {c.name for c in seen["cands"]} == {"fc1", "fc2"}


def test_lowrank_linear_reaches_inductor_as_two_gemms():
    """The backend hands Inductor panther.lowrank_linear as its two ATen GEMMs (no op call in the
    compiled code: the call cost host time on every run), with the op's result."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)

    class Model(nn.Module):  # a sketched linear (bias) feeding a hand-written lowrank_linear (no bias)
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(48, 40)
            self.A, self.B = torch.randn(40, 6) / 40 ** 0.5, torch.randn(6, 24) / 6 ** 0.5

        def forward(self, x):
            return torch.ops.panther.lowrank_linear(torch.tanh(self.lin(x)), self.A, self.B)

    model = Model().eval()
    x = torch.randn(2, 5, 48)
    opts = {"num_terms": 1, "low_rank": 4, "init": "sketch", "seed": 1}
    with torch.no_grad():
        out, code = run_and_get_code(compiled(model, opts, fullgraph=True), x)
        ref = pr.sketch_model(copy.deepcopy(model), options=opts)(x)
    calls = [line for line in "".join(code).splitlines() if not line.lstrip().startswith("#")]
    assert not any("lowrank_linear(" in line for line in calls)
    assert sum("extern_kernels.mm(" in line for line in calls) == 3 and sum("addmm(" in line for line in calls) == 1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_lowrank_linear_decomposition_keeps_gradients():
    """In a training graph (not rewritten) the decomposed op still trains: the forward's GEMMs are
    the decomposition, the backward is the op's own (C++ autograd), equal to eager."""
    torch.manual_seed(0)
    A, B, b = (nn.Parameter(t) for t in (torch.randn(32, 8) / 32 ** 0.5, torch.randn(8, 16) / 8 ** 0.5,
                                          torch.randn(16)))

    def loss(x):
        return torch.ops.panther.lowrank_linear(x, A, B, b).square().sum()

    x = torch.randn(2, 5, 32, requires_grad=True)
    want = torch.autograd.grad(loss(x), (x, A, B, b))
    got = torch.autograd.grad(compiled(loss, fullgraph=True)(x), (x, A, B, b))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_panther_layers_already_in_the_model_compile_as_they_are():
    torch.manual_seed(0)
    model = pr.sketch_model(MLP(), options={"num_terms": 1, "low_rank": 8, "init": "sketch"})
    x = torch.randn(3, 64)
    rep = pr.report(model, x, options={"num_terms": 1, "low_rank": 4})
    assert [r["kind"] for r in rep.rows] == ["panther", "panther"]
    assert all(r["decision"].startswith("kept: already a panther op") for r in rep.rows)


def test_dynamic_shapes_do_not_recompute_factors_or_recompile():
    torch.manual_seed(0)
    model = MLP().eval()
    calls = []

    def counting(gm, example_inputs, **kwargs):
        calls.append(1)
        return panther_backend(gm, example_inputs, **kwargs)

    opts = {"options": {"num_terms": 1, "low_rank": 8, "seed": 1}}
    before = factors_mod.stats["computed"]
    fn = torch.compile(model, backend=lambda gm, ex: counting(gm, ex, **opts), dynamic=True)
    with torch.no_grad():
        outs = {n: fn(torch.randn(n, 5, 64)) for n in (2, 3, 6)}
    assert len(calls) == 1  # one graph for every batch size
    assert factors_mod.stats["computed"] - before == 2  # fc1, fc2 once
    # automatic dynamic (the default): the recompile for a new size reuses the factors
    torch.compiler.reset()
    fn = torch.compile(model, backend=lambda gm, ex: counting(gm, ex, **opts))
    with torch.no_grad():
        for n in (2, 3):
            torch.testing.assert_close(fn(torch.randn(n, 5, 64)).shape, outs[n].shape)
    assert len(calls) == 3 and factors_mod.stats["computed"] - before == 2


transformers = pytest.importorskip("transformers")


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=64, n_layer=2, n_head=2, n_positions=32,
                                  attn_implementation="sdpa", bos_token_id=0, eos_token_id=0)
    return transformers.GPT2Model(cfg).eval()


def _bert():
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=32, attn_implementation="sdpa")
    return transformers.BertModel(cfg).eval()


@pytest.mark.parametrize("make", [_gpt2, _bert], ids=["gpt2-conv1d-addmm", "bert-sdpa"])
def test_hf_models_fixed_plan_equals_sketch_model(make):
    torch.manual_seed(0)
    model = make()
    ids = torch.randint(0, 64, (2, 12))
    opts = {"num_terms": 1, "low_rank": 8, "seed": 5}
    rep = pr.report(model, ids, options=opts)
    sketched = [r["layer"] for r in rep.rows if r["decision"].startswith("sketch")]
    assert len(sketched) >= 8, rep  # every projection and MLP linear of both layers
    with torch.no_grad():
        out = compiled(model, opts, fullgraph=True)(ids).last_hidden_state
        ref = pr.sketch_model(copy.deepcopy(model), options=opts)(ids).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_hf_bert_all_dense_equals_inductor():
    torch.manual_seed(0)
    model = _bert()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        out = compiled(model, {"plan": {}}, fullgraph=True)(ids).last_hidden_state
        torch.compiler.reset()
        ref = torch.compile(model, backend="inductor", fullgraph=True)(ids).last_hidden_state
    assert torch.equal(out, ref)


def _padded_bert_inputs():
    """A BERT too long for the scores to beat 8 features per head (32 tokens), with padding."""
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=64, attn_implementation="sdpa")
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 64, (2, 32))
    mask = torch.ones(2, 32, dtype=torch.long)
    mask[1, 20:] = 0
    return model, ids, mask


def test_hf_bert_padding_mask_is_rewritten_into_favor_with_its_key_padding(monkeypatch):
    torch.manual_seed(0)
    model, ids, mask = _padded_bert_inputs()
    opts = {"num_terms": 1, "low_rank": 8, "kinds": ["attention"], "seed": 5}
    graphs = []

    def keeping(gm, example_inputs):
        compiled_fn = panther_backend(gm, example_inputs, options=opts)
        graphs.append(gm)  # rewritten in place
        return compiled_fn

    with torch.no_grad():
        fn = torch.compile(model, backend=keeping, fullgraph=True)
        out = fn(ids, attention_mask=mask).last_hidden_state
    (gm,) = graphs
    favor = [n for n in gm.graph.nodes if n.target is torch.ops.panther.favor_attention.default]
    assert len(favor) == 2 and all(n.args[6] is not None for n in favor)  # a key_padding_mask each
    assert not any(n.target is F.scaled_dot_product_attention for n in gm.graph.nodes)

    # HF BERT has no nn.MultiheadAttention for sketch_model to swap: the reference is the eager
    # model with its SDPA calls replaced by the FAVOR+ op, same features, the mask from the input
    calls = []

    def favor_sdpa(q, k, v, attn_mask=None, **kwargs):
        name = f"encoder.layer.{len(calls)}.attention.self"
        calls.append(name)
        P = pr.passes.attention_projection(pr.SketchSpec(1, 8), q.shape[-1], name, 5, device="cpu", dtype=q.dtype)
        return torch.ops.panther.favor_attention(q, k, v, P, "softmax", False, mask == 0, 0)

    with torch.no_grad(), monkeypatch.context() as patch:
        patch.setattr(F, "scaled_dot_product_attention", favor_sdpa)
        ref = model(ids, attention_mask=mask).last_hidden_state
    assert calls == ["encoder.layer.0.attention.self", "encoder.layer.1.attention.self"]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)

    # padded tokens do not reach the others; with an all-ones mask they do (the check has teeth)
    other = ids.clone()
    other[1, 20:] = (other[1, 20:] + 1) % 64
    kept = mask.bool()
    with torch.no_grad():
        torch.testing.assert_close(fn(other, attention_mask=mask).last_hidden_state[kept], out[kept],
                                   rtol=1e-5, atol=1e-5)
        ones = torch.ones_like(mask)
        moved = fn(other, attention_mask=ones).last_hidden_state - fn(ids, attention_mask=ones).last_hidden_state
    assert moved[1, :20].abs().max() > 1e-3
    assert len(graphs) == 1  # new mask values, same compiled graph
