"""panther.export / panther.package: export IR rewritten by the compile backend's passes,
equality with backend=panther_backend, save/load and AOTInductor packages in fresh processes,
dynamic batch, plan errors, untouched ineligible nodes.
"""

import copy
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import panther as pr
from panther._native import library_path
from panther.backend import panther_backend

from .models import MLP

panther_ops = torch.ops.panther


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.conv = nn.Conv2d(32, 32, 3, padding=1, stride=2)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(F.relu(self.conv(self.stem(x))).mean((2, 3)))


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.heads = heads

    def forward(self, x):
        B, N, d = x.shape
        q, k, v = (p(x).view(B, N, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(a.transpose(1, 2).reshape(B, N, d))


class Transformer(nn.Module):
    """Pre-norm block: causal attention (q/k/v share an input: fused), MLP; an LM head."""

    def __init__(self, d=128, heads=2):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.head = nn.Linear(d, 32)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.down(F.gelu(self.up(self.ln2(x))))
        return self.head(x)


def compiled_reference(model, args, options):
    torch.compiler.reset()
    with torch.no_grad():
        return torch.compile(model, backend=panther_backend, options=options, fullgraph=True)(*args)


def targets(ep):
    return [n.target for n in ep.graph.nodes if n.op == "call_function"]


def run_fresh(script: str, cwd) -> str:
    """Runs ``script`` in a new Python process (cwd: a temporary folder, so the repository is not on sys.path
    unless the script puts it there); returns stdout, failing the test with stderr on a non-zero exit."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("init", ["svd", "asvd"])
def test_mlp_export_equals_compiled_and_drops_dense_weights(init):
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(8, 64) * torch.logspace(0, -2, 64)
    opts = {"num_terms": 1, "low_rank": 8, "seed": 3, "init": init}
    ep = pr.export(model, (x,), options=opts)
    assert targets(ep).count(panther_ops.lowrank_expand_project.default) == 1  # fc1 -> gelu -> fc2, fused
    assert panther_ops.lowrank_linear.default not in targets(ep)
    assert torch.ops.aten.linear.default in targets(ep)  # tiny: sketching cannot win, kept dense
    assert {"fc1.weight", "fc2.weight"}.isdisjoint(ep.state_dict) and "tiny.weight" in ep.state_dict
    assert {"panther_fc1_A", "panther_fc1_B", "panther_fc2_A", "panther_fc2_B"} <= set(ep.state_dict)
    assert ep.state_dict["panther_fc1_A"].shape == (64, 16)
    with torch.no_grad():
        out = ep.module()(x)
    ref = compiled_reference(model, (x,), opts)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-6)
    fresh = torch.randn(8, 64)  # asvd is exact on the span of its 8 calibration rows; a fresh input is not
    with torch.no_grad():
        assert (ep.module()(fresh)[0] - model(fresh)[0]).abs().max() > 1e-3  # really sketched (rank 16 of 64)


def test_export_asvd_calibrates_on_the_calibration_option():
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(8, 64)
    cal = [torch.randn(32, 64) * torch.logspace(0, -2, 64) for _ in range(2)]
    opts = {"num_terms": 1, "low_rank": 8, "init": "asvd"}
    with pytest.raises(ValueError, match=r"option calibration: entry 0, input 0 is .*\(32, 64\)"):
        pr.export(model, (x,), options={**opts, "calibration": [(c,) for c in cal]})  # not x's shape
    x = torch.randn(32, 64)
    ep = pr.export(model, (x,), options={**opts, "calibration": [(c,) for c in cal]})
    swapped = pr.sketch_model(copy.deepcopy(model), options=opts, calibration=cal)
    with torch.no_grad():
        out, want = ep.module()(x), swapped(x)
    torch.testing.assert_close(out[0], want[0], rtol=1e-5, atol=1e-5)


def test_cnn_export_equals_compiled():
    torch.manual_seed(0)
    model = CNN().eval()
    x = torch.randn(2, 3, 12, 12)
    opts = {"num_terms": 1, "low_rank": 4, "seed": 1}
    ep = pr.export(model, (x,), options=opts)
    assert targets(ep).count(panther_ops.sketched_conv2d.default) == 2
    with torch.no_grad():
        out = ep.module()(x)
    torch.testing.assert_close(out, compiled_reference(model, (x,), opts), rtol=1e-5, atol=1e-5)


def test_transformer_export_fuses_qkv_and_sketches_attention_like_compiled():
    torch.manual_seed(0)
    model = Transformer().eval()
    x = torch.randn(2, 64, 128)  # 64 tokens: 16 features per head cost less than the 64x64 scores
    opts = {"num_terms": 1, "low_rank": 16, "seed": 5, "kinds": ["linear", "attention"]}
    ep = pr.export(model, (x,), options=opts)
    t = targets(ep)
    assert panther_ops.favor_attention.default in t and torch.ops.aten.scaled_dot_product_attention.default not in t
    # x·[A_q A_k A_v] shared, on the rows of x; the MLP's x·A1; o's x·A_o (its expansion adds the residual)
    assert t.count(torch.ops.aten.mm.default) == 3
    assert t.count(panther_ops.residual_addmm.default) == 2  # x + o(a), x + mlp(x)
    assert t.count(panther_ops.batched_expand.default) == 1  # q, k, v from x·[A_q A_k A_v]
    assert t.count(panther_ops.lowrank_expand_project.default) == 1  # up -> gelu -> down, hidden never stored
    assert "panther_attn_features" in ep.state_dict  # named after the module, as in the compiled graph
    with torch.no_grad():
        out = ep.module()(x)
    torch.testing.assert_close(out, compiled_reference(model, (x,), opts), rtol=1e-5, atol=1e-5)


def test_hf_bert_from_config_export_equals_compiled():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=32, attn_implementation="sdpa")
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 64, (2, 12))
    opts = {"num_terms": 1, "low_rank": 8, "seed": 5}
    ep = pr.export(model, (ids,), options=opts)
    assert targets(ep).count(panther_ops.lowrank_linear.default) == 3  # o per layer; pooler
    assert targets(ep).count(panther_ops.lowrank_expand_project.default) == 2  # up -> gelu -> down per layer
    fused_a = [k for k in ep.state_dict if k.endswith("_A") and "+" not in k and k.count("query") and k.count("value")]
    assert len(fused_a) == 2, list(ep.state_dict)  # one shared x·[A_q A_k A_v] per layer
    with torch.no_grad():
        out = ep.module()(ids).last_hidden_state
    ref = compiled_reference(model, (ids,), opts).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)



def test_hf_bert_padding_mask_export_rewrites_attention_like_compiled():
    """The aten-level mask graph (aten.index, __and__, expand, ...) is proved the same way."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=64, attn_implementation="sdpa")
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 64, (2, 32))  # 32 tokens: 8 features per head cost less than the scores
    mask = torch.ones(2, 32, dtype=torch.long)
    mask[1, 20:] = 0
    opts = {"num_terms": 1, "low_rank": 8, "seed": 5, "kinds": ["attention"]}
    ep = pr.export(model, (ids,), {"attention_mask": mask}, options=opts)
    favor = [n for n in ep.graph.nodes if n.target is panther_ops.favor_attention.default]
    assert len(favor) == 2 and all(n.args[6] is not None for n in favor)
    assert torch.ops.aten.scaled_dot_product_attention.default not in targets(ep)
    with torch.no_grad():
        out = ep.module()(ids, attention_mask=mask).last_hidden_state
    torch.compiler.reset()
    with torch.no_grad():
        ref = torch.compile(model, backend=panther_backend, options=opts, fullgraph=True)(
            ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

def test_dynamic_batch_dimension():
    torch.manual_seed(0)
    model = MLP().eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = pr.export(model, (torch.randn(4, 64),), options={"num_terms": 1, "low_rank": 8},
                   dynamic_shapes=({0: batch},))
    ref_model = pr.sketch_model(copy.deepcopy(model), options={"num_terms": 1, "low_rank": 8})
    for n in (1, 9, 33):
        x = torch.randn(n, 64)
        with torch.no_grad():
            out, ref = ep.module()(x)[0], ref_model(x)[0]
        assert out.shape == (n, 64)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_plan_errors_name_the_problem():
    model, x = MLP().eval(), torch.randn(3, 64)
    with pytest.raises(ValueError, match=r"(?s)do not exist: \['fc9'\].*'fc1', 'fc2', 'tiny'"):
        pr.export(model, (x,), plan={"fc9": {"num_terms": 1, "low_rank": 2}})
    with pytest.raises(ValueError, match="either as the plan argument or as options"):
        pr.export(model, (x,), plan={}, options={"plan": {}})
    with pytest.raises(ValueError, match="'fallback' does not apply to panther.export"):
        pr.export(model, (x,), options={"num_terms": 1, "low_rank": 2, "fallback": False})
    with pytest.raises(ValueError, match="'mode' does not apply to panther.export.*inductor_configs"):
        pr.export(model, (x,), options={"num_terms": 1, "low_rank": 2, "mode": "reduce-overhead"})
    with pytest.raises(ValueError, match=r"(?s)unknown panther option\(s\) \['low_rnk'\]"):
        pr.export(model, (x,), options={"low_rnk": 2})
    with pytest.raises(TypeError, match="args must be a tuple"):
        pr.export(model, x)
    with pytest.raises(ValueError, match="ending in '.pt2'"):
        pr.package(torch.export.export(model, (x,)), "model.so")


def test_plan_object_sketches_only_its_layers_and_ineligible_nodes_stay_untouched():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 32)
            self.w = nn.Parameter(torch.randn(32, 32))

        def forward(self, x, other):
            return self.fc(x), F.linear(x, other), self.w @ x.T  # weight from an input; parameter on the left

    model, args = Odd().eval(), (torch.randn(5, 32), torch.randn(32, 32))
    before = torch.export.export(model, args)
    ep = pr.export(model, args, plan=pr.Plan({"fc": pr.SketchSpec(1, 4, "svd")}))
    (new,) = [n for n in ep.graph.nodes if n.target is panther_ops.lowrank_linear.default]
    sig = lambda n: (n.op, n.target, str(n.args), str(n.kwargs))  # noqa: E731
    old = {n.name: sig(n) for n in before.graph.nodes if n.name not in ("linear", "p_fc_weight", "output")}
    now = {n.name: sig(n) for n in ep.graph.nodes}
    assert all(now[name] == s for name, s in old.items())  # linear_1, matmul, permute, placeholders
    assert new.args[0].name == "x"
    with torch.no_grad():
        got, ref = ep.module()(*args), model(*args)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=0)
    torch.testing.assert_close(got[2], ref[2], rtol=0, atol=0)


def test_models_with_panther_layers_export_directly():
    model = nn.Sequential(pr.nn.SKLinear(64, 64, num_terms=1, low_rank=8), nn.ReLU()).eval()
    x = torch.randn(3, 64)
    plain = torch.export.export(model, (x,))
    assert panther_ops.sketched_linear.default in targets(plain)
    ep = pr.export(model, (x,), options={"num_terms": 1, "low_rank": 4})  # a panther op: reported, kept
    assert targets(ep) == targets(plain)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x))


def test_save_and_load_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = Transformer().eval()
    x = torch.randn(2, 64, 128)
    ep = pr.export(model, (x,), options={"num_terms": 1, "low_rank": 16, "kinds": ["linear", "attention"]})
    path = tmp_path / "sketched.pt2"
    torch.export.save(ep, path)
    with torch.no_grad():
        torch.save({"x": x, "y": ep.module()(x)}, tmp_path / "io.pt")
    out = run_fresh(f"""
        import sys
        sys.path.insert(0, {REPO!r})
        import torch
        import panther  # registers the ops the program calls
        ep = torch.export.load({str(path)!r})
        io = torch.load({str(tmp_path / "io.pt")!r})
        with torch.no_grad():
            torch.testing.assert_close(ep.module()(io["x"]), io["y"], rtol=1e-6, atol=1e-6)
        ops = {{str(n.target) for n in ep.graph.nodes if n.op == "call_function"}}
        print("ok", sorted(op for op in ops if op.startswith("panther.")))
        """, tmp_path)
    assert ("ok ['panther.batched_expand.default', 'panther.favor_attention.default', "
            "'panther.lowrank_expand_project.default', 'panther.residual_addmm.default']") in out
    dense = tmp_path / "dense.pt2"
    torch.export.save(torch.export.export(model, (x,)), dense)
    assert path.stat().st_size < dense.stat().st_size  # the factors are smaller than the weights they replace

    # without `import panther`, torch names the missing op and says to register (import) it first
    failed = subprocess.run([sys.executable, "-c", f"import torch; torch.export.load({str(path)!r})"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0 and "RuntimeError" in failed.stderr
    assert re.search(r"resolve torch\.ops\.panther\.\w+\.default .*not registered", failed.stderr), \
        failed.stderr[-2000:]


def test_aoti_package_runs_in_a_fresh_process_with_only_the_op_library(tmp_path):
    torch.manual_seed(0)
    model = CNN().eval()
    x = torch.randn(2, 3, 12, 12)
    ep = pr.export(model, (x,), options={"num_terms": 1, "low_rank": 4})
    with torch.no_grad():
        expected = ep.module()(x)
    torch.save({"x": x, "y": expected}, tmp_path / "io.pt")
    path = pr.package(ep, tmp_path / "cnn.pt2")
    out = run_fresh(f"""
        import sys
        import torch
        torch.ops.load_library({library_path()!r})  # panther's C++ ops; no panther Python code
        runner = torch._inductor.aoti_load_package({path!r})
        io = torch.load({str(tmp_path / "io.pt")!r})
        with torch.no_grad():
            torch.testing.assert_close(runner(io["x"]), io["y"], rtol=1e-5, atol=1e-5)
        assert not any(m == "panther" or m.startswith("panther.") for m in sys.modules), "panther was imported"
        print("ok")
        """, tmp_path)
    assert out.strip().endswith("ok")


def test_package_swaps_python_only_triton_ops_for_their_cpp_twins():
    from panther.exporting import _cpp_ops_only

    if not hasattr(panther_ops, "favor_attention_triton"):
        pytest.skip("triton is not installed: no Python-only op to swap")

    class Favor(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("features", torch.randn(8, 16))

        def forward(self, q, k, v):
            return panther_ops.favor_attention_triton(q, k, v, self.features, "softmax", True, None, 0)

    q, k, v = (torch.randn(1, 2, 32, 16) for _ in range(3))
    ep = torch.export.export(Favor(), (q, k, v))  # traced through the fake kernel only
    assert panther_ops.favor_attention_triton.default in targets(ep)
    swapped = _cpp_ops_only(ep)
    assert targets(swapped) == [panther_ops.favor_attention.default]
    assert panther_ops.favor_attention_triton.default in targets(ep)  # the caller's program is left as it was
    with torch.no_grad():
        expected = panther_ops.favor_attention(q, k, v, ep.state_dict["features"], "softmax", True, None, 0)
        torch.testing.assert_close(swapped.module()(q, k, v), expected, rtol=0, atol=0)
