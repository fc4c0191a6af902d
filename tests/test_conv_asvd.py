"""Activation-aware SVD for conv2d (``panther.factors.asvd.conv_asvd_factors``): the patch statistic,
the factors, ``SKConv2d.from_conv(init="asvd")``, and the same layers from sketch_model, the
compile backend, export and the tuner."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import panther as pr
from panther.factors import conv_asvd_factors, conv_svd_factors
from panther.passes import layer_generator
from panther.passes.calibration import module_second_moments
from panther.tuner.module_plan import tune_module

from .conftest import BACKEND
from .test_conv import effective_kernel

f64 = torch.float64


def patch_moment(conv: nn.Conv2d, batches):
    """E[p pᵀ] over the patches ``conv`` sees, collected the way sketch_model does (forward hooks)."""
    return module_second_moments(conv, {"conv": conv}, batches)["conv"]


def weighted_error(D: torch.Tensor, C: torch.Tensor, groups: int) -> float:
    """sqrt(E‖D p‖²): the output error of a kernel error D [C_out, C_in/G, kh, kw] on patches of moment C."""
    Dg = D.reshape(groups, D.shape[0] // groups, -1)
    C = C if C.dim() == 3 else C[None]
    return float(torch.einsum("gop,gpq,goq->", Dg, C, Dg).sqrt())


def channel_scaled(n, C_in, H, W, seed):
    """Anisotropic activations: channel c scaled by 10^(-3c/(C_in-1))."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -3, C_in, dtype=f64)[:, None, None]
    return torch.randn(n, C_in, H, W, dtype=f64, generator=g) * scales


# (C_in, C_out, nn.Conv2d keyword arguments): padding modes, even kernels, stride, dilation, groups
GEOMETRIES = [
    (4, 6, dict(kernel_size=3, padding=1)),
    (4, 6, dict(kernel_size=4, padding="same")),
    (4, 6, dict(kernel_size=3, padding=(2, 1), padding_mode="reflect", dilation=2, stride=(1, 2))),
    (4, 6, dict(kernel_size=(2, 3), padding="same", padding_mode="circular")),
    (4, 6, dict(kernel_size=3, padding=1, padding_mode="replicate", groups=2, stride=2)),
    (4, 4, dict(kernel_size=3, padding=1, groups=4)),  # depthwise
]


@pytest.mark.parametrize("C_in, C_out, kwargs", GEOMETRIES)
def test_patch_moment_gives_the_output_error_of_any_kernel(C_in, C_out, kwargs):
    """The statistic is the right one: for any kernel D, ‖conv_D(x)‖² / pixels = Σ_g tr(D_g C_g D_gᵀ),
    with the padding mode applied as nn.Conv2d applies it."""
    torch.manual_seed(0)
    conv = nn.Conv2d(C_in, C_out, bias=False, dtype=f64, **kwargs)
    xs = [torch.randn(2, C_in, 9, 8, dtype=f64), torch.randn(3, C_in, 9, 8, dtype=f64)]
    C = patch_moment(conv, xs)
    G = conv.groups
    P = C_in // G * conv.kernel_size[0] * conv.kernel_size[1]
    assert C.shape == ((P, P) if G == 1 else (G, P, P))
    with torch.no_grad():
        outs = [conv(x) for x in xs]
    pixels = sum(y.shape[0] * y.shape[2] * y.shape[3] for y in outs)
    energy = sum(float(y.square().sum()) for y in outs)
    assert weighted_error(conv.weight.detach(), C, G) ** 2 * pixels == pytest.approx(energy, rel=1e-10)


@pytest.mark.parametrize("groups", [1, 2])
def test_asvd_is_the_best_kernel_in_the_patch_norm(groups):
    """float64: asvd's error in the activation-weighted norm is the optimum sqrt(Σ_{i>r} σ_i²(W_g C_g^½))
    (computed here by an eigendecomposition, not a Cholesky factor), below svd's."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=groups, dtype=f64)
    C = patch_moment(conv, [channel_scaled(4, 8, 10, 10, seed=1)])
    W = conv.weight.detach()
    Cg = C if C.dim() == 3 else C[None]
    lam, V = torch.linalg.eigh(Cg)
    root = V @ torch.diag_embed(lam.clamp_min(0).sqrt()) @ V.mT
    sigma = torch.linalg.svdvals(W.reshape(groups, 16 // groups, -1) @ root)
    for k in (1, 2, 3):  # rank 2k per group
        best = float(sigma[:, 2 * k:].square().sum().sqrt())
        asvd = weighted_error(W - effective_kernel(*conv_asvd_factors(W, 1, k, C, groups), groups), C, groups)
        svd = weighted_error(W - effective_kernel(*conv_svd_factors(W, 1, k, groups), groups), C, groups)
        assert asvd == pytest.approx(best, rel=1e-3)
        assert asvd < svd, (k, asvd, svd)


def test_asvd_strictly_beats_svd_where_the_activations_must_decide():
    """The inputs live on channel 0 (others 1e-3), the weight is 10x larger on channels 1..3: svd keeps
    the large, unused weights; asvd keeps the channel-0 patches (9 directions <= rank 10) and is exact
    there. Checked on fresh inputs through the layer, in float64."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 16, 3, padding=1, dtype=f64)
    with torch.no_grad():
        conv.weight[:, 1:] *= 10

    def inputs(n, seed):
        g = torch.Generator().manual_seed(seed)
        x = 1e-3 * torch.randn(n, 4, 8, 8, dtype=f64, generator=g)
        x[:, 0] = torch.randn(n, 8, 8, dtype=f64, generator=g)
        return x

    C = patch_moment(conv, [inputs(8, 1)])
    fresh = inputs(4, 2)
    with torch.no_grad():
        want = conv(fresh) - conv.bias[:, None, None]
        errs = {init: float((pr.nn.SKConv2d.from_conv(conv, 1, 5, init=init, second_moment=m)(fresh)
                             - conv(fresh)).norm() / want.norm())
                for init, m in (("svd", None), ("asvd", C))}
    assert errs["asvd"] < 0.02 and errs["svd"] > 0.5, errs


@pytest.mark.parametrize("groups, per_group", [(1, False), (2, False), (2, True)])
def test_identity_moment_gives_the_svd_init(groups, per_group):
    """With E[p pᵀ] = I the weighted norm is Frobenius: the same layer as init="svd" (same generator,
    so the surplus sketch rows of 2Lk > rank match too)."""
    W = torch.randn(12, 6 // groups, 3, 3, dtype=f64)
    P = 6 // groups * 9
    eye = torch.eye(P, dtype=f64).expand(groups, P, P) if per_group else torch.eye(6 * 9, dtype=f64)
    for k in (2, 5):  # 2Lk = 4 below, 10 above the rank per group when groups=2 (6)
        a = conv_asvd_factors(W, 1, k, eye, groups, generator=torch.Generator().manual_seed(3))
        s = conv_svd_factors(W, 1, k, groups, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(effective_kernel(*a, groups), effective_kernel(*s, groups), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a[1], s[1], rtol=1e-10, atol=1e-10)


def test_from_conv_asvd_keeps_dtype_bias_and_geometry():
    conv = nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect", groups=2)
    x = torch.randn(2, 4, 7, 7)
    C = patch_moment(conv, [x])
    sk = pr.nn.SKConv2d.from_conv(conv, 1, 2, init="asvd", second_moment=C)
    assert sk.S1s.dtype == torch.float32 and sk.padding_mode == "reflect" and sk.groups == 2
    torch.testing.assert_close(sk.bias, conv.bias)
    S1s, U1s = conv_asvd_factors(conv.weight.double(), 1, 2, C, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(effective_kernel(sk.S1s.double(), sk.U1s.double(), 2), effective_kernel(S1s, U1s, 2),
                               rtol=1e-4, atol=1e-5)  # float32 weights: the same kernel as in float64


def test_from_conv_asvd_errors_name_second_moment_and_its_shape():
    conv = nn.Conv2d(4, 8, 3, groups=2)
    with pytest.raises(ValueError, match=r"init='asvd' needs second_moment .*\[36, 36\]"):
        pr.nn.SKConv2d.from_conv(conv, 1, 2, init="asvd")
    with pytest.raises(ValueError, match=r"second_moment must be a tensor .*\[36, 36\].*\[2, 18, 18\], got \(18, 18\)"):
        pr.nn.SKConv2d.from_conv(conv, 1, 2, init="asvd", second_moment=torch.eye(18))
    with pytest.raises(ValueError, match=r"second_moment must be a tensor .*got list"):
        pr.nn.SKConv2d.from_conv(conv, 1, 2, init="asvd", second_moment=[[1.0]])
    with pytest.raises(ValueError, match="second_moment is used by init='asvd' only"):
        pr.nn.SKConv2d.from_conv(conv, 1, 2, init="svd", second_moment=torch.eye(36))
    with pytest.raises(ValueError, match=r"second_moment must be a tensor .*\[9, 9\], got \(4, 4\)"):
        conv_asvd_factors(torch.randn(8, 1, 3, 3), 1, 2, torch.eye(4))


class ConvNet(nn.Module):
    """Convs of every kind the moment must follow: a reflect pad (an explicit pad node in a graph),
    groups with stride, an even kernel with 'same' circular padding."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 32, 3, padding=1, padding_mode="reflect")
        self.b = nn.Conv2d(32, 32, 3, padding=1, groups=2, stride=2)
        self.c = nn.Conv2d(32, 16, 4, padding="same", padding_mode="circular")

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x)))))


ASVD_PLAN = {name: {"num_terms": 1, "low_rank": 4, "init": "asvd"} for name in ("a", "b", "c")}


def test_sketch_model_backend_and_export_apply_a_conv_asvd_plan_alike():
    torch.manual_seed(0)
    model = ConvNet().eval()
    x = channel_scaled(2, 8, 12, 12, seed=5).float()
    cal = [channel_scaled(2, 8, 12, 12, seed=s).float() for s in (1, 2)]
    swapped = pr.sketch_model(copy.deepcopy(model), ASVD_PLAN, calibration=cal)
    assert all(isinstance(getattr(swapped, n), pr.nn.SKConv2d) for n in "abc")
    # the module swap computes the factors the definition gives: a's moment from F.pad + F.unfold by hand
    p = F.unfold(F.pad(torch.cat(cal).double(), (1, 1, 1, 1), mode="reflect"), 3)  # [B, 72, pixels]
    C = torch.einsum("bip,bjp->ij", p, p) / (p.shape[0] * p.shape[2])
    S1s, U1s = conv_asvd_factors(model.a.weight, 1, 4, C, generator=layer_generator(0, "a", "cpu"))
    torch.testing.assert_close(swapped.a.S1s, S1s, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(swapped.a.U1s, U1s)
    options = {"plan": ASVD_PLAN, "calibration": [(c,) for c in cal], "fallback": False}
    with torch.no_grad():
        want = swapped(x)
        compiled = torch.compile(copy.deepcopy(model), backend=BACKEND, options=options)(x)
        exported = pr.export(copy.deepcopy(model), (x,), options={k: options[k] for k in ("plan", "calibration")})
        exported = exported.module()(x)
        svd_plan = {n: {**s, "init": "svd"} for n, s in ASVD_PLAN.items()}
        errs = {init: float((m(x) - model(x)).norm() / model(x).norm())
                for init, m in (("asvd", swapped), ("svd", pr.sketch_model(copy.deepcopy(model), svd_plan)))}
    torch.testing.assert_close(compiled, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(exported, want, rtol=1e-4, atol=1e-5)
    assert errs["asvd"] < errs["svd"], errs


def test_sketch_model_conv_asvd_needs_calibration():
    with pytest.raises(ValueError, match=r"init='asvd' needs calibration batches .*\['a', 'b', 'c'\]"):
        pr.sketch_model(ConvNet(), ASVD_PLAN)


def correlated_images(n, seed, C=8, latent=2, size=8):
    """Images whose channels mix ``latent`` independent maps (plus a little noise): their 3x3 patches
    span about latent·9 of C·9 directions."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(C, latent, generator=torch.Generator().manual_seed(99))
    z = torch.randn(n, latent, size, size, generator=g)
    return torch.einsum("cl,blhw->bchw", mixing, z) + 0.01 * torch.randn(n, C, size, size, generator=g)


def full_rank_conv():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 64, 3, padding=1)).eval()


def test_tuner_picks_asvd_for_a_conv_where_it_beats_svd():
    pytest.importorskip("optuna")
    model = full_rank_conv()
    cal, held = [correlated_images(4, 1), correlated_images(4, 2)], [correlated_images(4, 3)]
    result = tune_module(model, cal, holdout=held, max_error=0.05, trials=4)
    spec = result.plan.get("0")
    assert spec is not None and spec.init == "asvd", result.summary()
    assert result.sensitivity[f"0|{spec.low_rank}|asvd"] < 0.1 * result.sensitivity[f"0|{spec.low_rank}|svd"]
    with torch.no_grad():
        sketched = pr.sketch_model(copy.deepcopy(model), result.plan, calibration=cal)
        err = float((sketched(held[0]) - model(held[0])).norm() / model(held[0]).norm())
    assert err == pytest.approx(result.holdout_error, rel=1e-4) and err <= 0.05
    # 16 patches < 72 patch features: asvd would fit those patches, not the layer; it is not offered
    few = tune_module(model, [correlated_images(1, 1, size=4)], max_error=0.05, trials=2)
    assert few.sensitivity and not any(key.endswith("|asvd") for key in few.sensitivity)


def test_backend_tune_records_conv_asvd_and_sketch_model_agrees(tmp_path):
    pytest.importorskip("optuna")
    model = full_rank_conv()
    x = correlated_images(4, 5)
    cal = [(correlated_images(4, 1),), (correlated_images(4, 2),)]
    path = tmp_path / "plan.json"
    options = {"tune": True, "max_error": 0.05, "trials": 3, "calibration": cal, "save_plan": str(path),
               "tune_progress": False}
    with torch.no_grad():
        y = torch.compile(model, backend=BACKEND, options=options)(x)
        ref = model(x)
    plan = pr.Plan.load(path)  # the JSON round trip keeps the init
    assert plan.get("0") is not None and plan.get("0").init == "asvd", plan
    assert 1e-4 < float((y - ref).norm() / ref.norm()) <= 0.05  # sketched, within budget
    with torch.no_grad():  # the module swap with the same plan and calibration: the same layer
        swapped = pr.sketch_model(copy.deepcopy(model), plan, calibration=[b for (b,) in cal])(x)
    torch.testing.assert_close(y, swapped, rtol=1e-5, atol=1e-5)
