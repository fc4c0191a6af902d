"""panther.sketch_model: module swap per plan, for training."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import panther as pr
from panther.passes import attention_projection, layer_generator, linear_factors


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.attn = nn.MultiheadAttention(32, 2, batch_first=True)

    def forward(self, img):
        h = self.conv(img).flatten(2).transpose(1, 2)  # [B, HW, 32]
        h = self.fc2(F.relu(self.fc1(h)))
        return self.attn(h, h, h)[0]  # RandMultiHeadAttention takes no need_weights


def test_swaps_modules_named_in_the_plan_and_keeps_the_rest():
    model = Net()
    plan = pr.Plan({"fc1": pr.SketchSpec(1, 4, "svd"), "conv": pr.SketchSpec(1, 2, "sketch"),
                    "attn": pr.SketchSpec(1, 16), "fc2": None})
    out = pr.sketch_model(model, plan)
    assert out is model
    assert isinstance(model.fc1, pr.nn.SKLinear) and (model.fc1.num_terms, model.fc1.low_rank) == (1, 4)
    assert isinstance(model.conv, pr.nn.SKConv2d) and model.conv.low_rank == 2
    assert isinstance(model.attn, pr.nn.RandMultiHeadAttention) and model.attn.num_random_features == 16
    assert type(model.fc2) is nn.Linear
    model(torch.randn(2, 3, 4, 4)).sum().backward()  # trains
    assert model.fc1.S1s.grad is not None and model.conv.S1s.grad is not None


def test_factors_and_bias_come_from_the_dense_layer_with_per_layer_seeds():
    torch.manual_seed(0)
    model = Net()
    dense = copy.deepcopy(model.fc1)
    spec = pr.SketchSpec(2, 3, "sketch")
    state = torch.random.get_rng_state()
    pr.sketch_model(model, {"fc1": {"num_terms": 2, "low_rank": 3, "init": "sketch"}}, options={"seed": 11})
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not touched
    S1s, S2s, U1s, U2s = linear_factors(dense.weight, spec, "fc1", 11)
    for name, value in zip(("S1s", "S2s", "U1s", "U2s"), (S1s, S2s, U1s, U2s)):
        assert torch.equal(getattr(model.fc1, name), value), name
    assert torch.equal(model.fc1.bias, dense.bias)
    # the same spec with another seed draws other sketches
    other = linear_factors(dense.weight, spec, "fc1", 12)
    assert not torch.equal(other[2], U1s)


def test_svd_init_keeps_the_layer_when_the_rank_suffices():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64))
    x = torch.randn(5, 8)
    ref = model(x)
    pr.sketch_model(model, {"0": {"num_terms": 1, "low_rank": 4, "init": "svd"}})  # rank 8 = min(in, out)
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)


def test_performer_uses_the_projection_of_the_compile_pass():
    torch.manual_seed(0)
    model = Net()
    pr.sketch_model(model, {"attn": {"num_terms": 1, "low_rank": 8}}, options={"seed": 4})
    P = attention_projection(pr.SketchSpec(1, 8), 16, "attn", 4, device="cpu", dtype=torch.float32)
    assert torch.equal(model.attn.projection_matrix, P)


def test_hf_style_conv1d_is_swapped_as_a_transposed_linear():
    class Conv1D(nn.Module):  # the shape of transformers.pytorch_utils.Conv1D
        def __init__(self, nf, nx):
            super().__init__()
            self.nf = nf
            self.weight = nn.Parameter(torch.randn(nx, nf))
            self.bias = nn.Parameter(torch.randn(nf))

        def forward(self, x):
            return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], self.nf)

    model = nn.Sequential(Conv1D(48, 16))
    x = torch.randn(3, 16)
    ref = model(x)
    pr.sketch_model(model, {"0": {"num_terms": 1, "low_rank": 8, "init": "svd"}})  # full rank 16
    assert isinstance(model[0], pr.nn.SKLinear) and model[0].in_features == 16
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)


def test_fixed_options_follow_the_backend_rules():
    model = Net()
    pr.sketch_model(model, options={"num_terms": 1, "low_rank": 4})
    assert isinstance(model.fc1, pr.nn.SKLinear) and isinstance(model.conv, pr.nn.SKConv2d)
    assert isinstance(model.attn, nn.MultiheadAttention)  # attention only when kinds asks for it
    assert isinstance(model.attn.out_proj, nn.Linear)  # never swapped alone: MHA reads its weight


def test_asvd_needs_calibration_and_uses_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32))
    with pytest.raises(ValueError, match="calibration"):
        pr.sketch_model(copy.deepcopy(model), options={"num_terms": 1, "low_rank": 2, "init": "asvd"})
    x = torch.randn(256, 32) * torch.logspace(0, -3, 32)
    errs = {}
    for init in ("svd", "asvd"):
        m = pr.sketch_model(copy.deepcopy(model), options={"num_terms": 1, "low_rank": 2, "init": init},
                            calibration=[x])
        errs[init] = (m(x) - model(x)).norm().item()
    assert errs["asvd"] < errs["svd"], errs


def test_asvd_calibration_batches_in_every_form():
    class Keywords(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.head = nn.Linear(32, 32), nn.Linear(32, 32)

        def forward(self, x, scale=1.0):
            return self.head(torch.relu(self.fc(x * scale)))

    torch.manual_seed(0)
    model = Keywords()
    x = torch.randn(64, 32) * torch.logspace(0, -3, 32)
    plan = {"fc": {"num_terms": 1, "low_rank": 2, "init": "asvd"}}
    outs = [pr.sketch_model(copy.deepcopy(model), plan, calibration=batches)(x)
            for batches in ([x], [(x,)], [{"x": x}], [{"x": x, "scale": 1.0}])]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=0)  # one statistic, however the batch is given
    via_options = pr.sketch_model(copy.deepcopy(model), plan, options={"calibration": [(x,)]})(x)
    torch.testing.assert_close(via_options, outs[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="not both"):
        pr.sketch_model(copy.deepcopy(model), plan, options={"calibration": [(x,)]}, calibration=[x])
    with pytest.raises(TypeError, match="calibration must be a non-empty list of batches"):
        pr.sketch_model(copy.deepcopy(model), plan, calibration=x)


def test_asvd_layer_the_calibration_never_reaches_is_named():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ValueError, match=r"never reached layers \['unused'\]"):
        pr.sketch_model(Branchy(), {"unused": {"num_terms": 1, "low_rank": 2, "init": "asvd"}},
                        calibration=[torch.randn(4, 16)])
    with pytest.raises(ValueError, match=r"init='asvd' needs calibration batches .* \['used'\]"):
        pr.sketch_model(Branchy(), {"used": {"num_terms": 1, "low_rank": 2, "init": "asvd"}})


def test_bad_arguments():
    with pytest.raises(ValueError, match="do not exist.*fc3"):
        pr.sketch_model(Net(), {"fc3": {"num_terms": 1, "low_rank": 2}})
    with pytest.raises(TypeError, match="model must be"):
        pr.sketch_model("net", {})
    with pytest.raises(ValueError, match="not both"):
        pr.sketch_model(Net(), {}, options={"plan": {}})
    with pytest.raises(ValueError, match="unknown panther option"):
        pr.sketch_model(Net(), options={"lowrank": 3})
    assert layer_generator(0, "a", "cpu").initial_seed() != layer_generator(0, "b", "cpu").initial_seed()
