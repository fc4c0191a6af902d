"""pr.nn.SKLinear and pr.nn.SKLinear_triton: construction, init, training paths, compile, export."""

import io
import warnings

import pytest
import torch
from torch import nn

import panther as pr
from panther.ops.linear import sketched_linear_reference

from .conftest import DEVICES

LAYERS = [pr.nn.SKLinear, pr.nn.SKLinear_triton]


def quiet(cls, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(*args, **kwargs)


@pytest.mark.parametrize("cls", LAYERS)
def test_parameters_buffers_and_repr(cls):
    layer = cls(64, 48, num_terms=3, low_rank=4)
    assert dict((n, tuple(p.shape)) for n, p in layer.named_parameters()) == {
        "S1s": (3, 64, 4), "S2s": (3, 4, 48), "bias": (48,)}
    assert dict((n, tuple(b.shape)) for n, b in layer.named_buffers()) == {"U1s": (3, 4, 48), "U2s": (3, 64, 4)}
    # U entries are ±1/√k, as in the earlier Panther, for both layer classes.
    for u in (layer.U1s, layer.U2s):
        assert torch.allclose(u.abs(), torch.full_like(u, 0.5))
    assert "in_features=64, out_features=48, num_terms=3, low_rank=4, bias=True" in repr(layer)
    assert cls(64, 48, 1, 4, bias=False).bias is None


def test_sketch_init_from_weight_is_exact_formula():
    W = torch.randn(20, 30, dtype=torch.float64)
    layer = quiet(pr.nn.SKLinear, 30, 20, 2, 5, W_init=W, dtype=torch.float64)
    for i in range(2):
        torch.testing.assert_close(layer.S1s[i], W.T @ layer.U1s[i].T)
        torch.testing.assert_close(layer.S2s[i], layer.U2s[i].T @ W.T)


def test_sketch_init_is_unbiased_with_the_predicted_noise():
    d, L, k = 64, 1, 8
    W = torch.randn(d, d, dtype=torch.float64) / d**0.5
    x = torch.randn(16, d, dtype=torch.float64)
    dense = x @ W.T
    g = torch.Generator().manual_seed(1)
    outs = torch.stack([
        quiet(pr.nn.SKLinear, d, d, L, k, W_init=W, bias=False, dtype=torch.float64, generator=g)(x).detach()
        for _ in range(300)])
    single = ((outs - dense).norm(dim=(1, 2)) / dense.norm()).mean().item()
    predicted = (d / (2 * L * k)) ** 0.5  # DESIGN.md: relative error ≈ √(d/(2Lk))
    assert predicted / 2 < single < predicted * 2
    mean_err = ((outs.mean(0) - dense).norm() / dense.norm()).item()
    assert mean_err < 3 * single / 300**0.5  # averaging 300 independent draws shrinks the error ~√300×


def test_svd_init_is_the_best_rank_2lk_approximation():
    lin = nn.Linear(40, 30, dtype=torch.float64)
    layer = pr.nn.SKLinear.from_linear(lin, num_terms=2, low_rank=3, init="svd")
    U, s, Vh = torch.linalg.svd(lin.weight.detach())
    W12 = (U[:, :12] * s[:12]) @ Vh[:12]
    x = torch.randn(7, 40, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ W12.T + lin.bias, rtol=1e-10, atol=1e-10)
    # entries of the U's keep the sign sketches' magnitude (~1/√k) for training
    assert 0.2 < layer.U1s.abs().mean().item() * 3**0.5 < 2


def test_svd_init_is_exact_when_rank_covers_the_weight():
    lin = nn.Linear(12, 8, dtype=torch.float64)
    layer = pr.nn.SKLinear.from_linear(lin, num_terms=1, low_rank=6, init="svd")
    x = torch.randn(5, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("init", ["sketch", "svd"])
def test_from_linear_copies_bias_dtype_device(init):
    lin = nn.Linear(32, 16, bias=True)
    layer = pr.nn.SKLinear.from_linear(lin, 1, 4, init=init)
    assert layer.S1s.dtype == lin.weight.dtype and layer.S1s.device == lin.weight.device
    torch.testing.assert_close(layer.bias, lin.bias)
    assert pr.nn.SKLinear.from_linear(nn.Linear(32, 16, bias=False), 1, 4, init=init).bias is None


def test_seeding_generator_and_global_rng():
    torch.manual_seed(3)
    a = pr.nn.SKLinear(32, 32, 1, 4)
    torch.manual_seed(3)
    b = pr.nn.SKLinear(32, 32, 1, 4)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n
    # a generator makes the layer independent of, and invisible to, the global RNG
    state = torch.random.get_rng_state()
    c = pr.nn.SKLinear(32, 32, 1, 4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(torch.random.get_rng_state(), state)
    d = pr.nn.SKLinear(32, 32, 1, 4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(c.U1s, d.U1s) and torch.equal(c.S1s, d.S1s)


@pytest.mark.parametrize("device", DEVICES)
def test_state_dict_moves_between_sklinear_and_triton(device):
    a = pr.nn.SKLinear(32, 24, 2, 4, device=device)
    b = pr.nn.SKLinear_triton(32, 24, 2, 4, device=device)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 32, device=device)
    torch.testing.assert_close(a(x), b(x))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    c = pr.nn.SKLinear(32, 24, 2, 4, device=device)
    c.load_state_dict(torch.load(buf))
    torch.testing.assert_close(c(x), a(x))


def test_parameter_count_warning():
    with pytest.warns(UserWarning, match="more than the 1,024 of a dense weight"):
        pr.nn.SKLinear(32, 32, num_terms=2, low_rank=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pr.nn.SKLinear(1024, 512, num_terms=1, low_rank=32)


@pytest.mark.parametrize(
    "kwargs,exc,words",
    [
        (dict(num_terms=0), ValueError, "num_terms must be a positive int"),
        (dict(low_rank=-1), ValueError, "low_rank must be a positive int"),
        (dict(low_rank=2.5), TypeError, "low_rank must be a positive int"),
        (dict(in_features="8"), TypeError, "in_features"),
        (dict(W_init=torch.randn(8, 8)), ValueError, "W_init must be a tensor of shape"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, words):
    args = dict(in_features=16, out_features=8, num_terms=1, low_rank=2) | kwargs
    with pytest.raises(exc, match=words):
        pr.nn.SKLinear(**args)


def test_asvd_init_beats_svd_on_correlated_inputs():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48, dtype=torch.float64)
    mixing = torch.randn(6, 64, dtype=torch.float64)  # inputs: 6 latent factors, correlated features

    def inputs(n):
        return torch.randn(n, 6, dtype=torch.float64) @ mixing + 0.01 * torch.randn(n, 64, dtype=torch.float64)

    calib, fresh = inputs(512), inputs(256)
    second_moment = calib.T @ calib / calib.shape[0]
    want = lin(fresh)
    errs = {}
    for init, moment in (("svd", None), ("asvd", second_moment)):
        layer = pr.nn.SKLinear.from_linear(lin, 1, 4, init=init, second_moment=moment)  # rank 8 of 48
        errs[init] = ((layer(fresh) - want).norm() / (want - lin.bias).norm()).item()
    assert errs["asvd"] < 0.1 * errs["svd"] and errs["asvd"] < 0.02, errs


def test_from_linear_bad_arguments():
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        pr.nn.SKLinear.from_linear(nn.Conv2d(3, 3, 3), 1, 2)
    with pytest.raises(ValueError, match="init must be one of"):
        pr.nn.SKLinear.from_linear(nn.Linear(8, 8), 1, 2, init="qr")
    with pytest.raises(ValueError, match="init='asvd' needs second_moment"):
        pr.nn.SKLinear.from_linear(nn.Linear(8, 8), 1, 2, init="asvd")
    with pytest.raises(ValueError, match="second_moment is used by init='asvd' only"):
        pr.nn.SKLinear.from_linear(nn.Linear(8, 8), 1, 2, init="svd", second_moment=torch.eye(8))
    with pytest.raises(ValueError, match=r"second_moment must be a tensor \[in_features, in_features\]"):
        pr.nn.SKLinear.from_linear(nn.Linear(8, 8), 1, 2, init="asvd", second_moment=torch.eye(4))


def test_forward_bad_input_names_x():
    layer = pr.nn.SKLinear(16, 8, 1, 2)
    with pytest.raises(RuntimeError, match="x has shape .* expected last dim 16"):
        layer(torch.randn(4, 15))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_forward_backward_equals_eager(device, cls, dynamic):
    torch.manual_seed(0)
    eager = quiet(cls, 48, 40, 2, 6, device=device)
    compiled = quiet(cls, 48, 40, 2, 6, device=device)
    compiled.load_state_dict(eager.state_dict())
    fn = torch.compile(compiled, fullgraph=True, dynamic=dynamic)
    for rows in (5, 9):  # a second size exercises dynamic shapes / recompiles
        x = torch.randn(2, rows, 48, device=device)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = eager(x1), fn(x2)
        torch.testing.assert_close(y2, y1)
        y1.square().sum().backward()
        y2.square().sum().backward()
        torch.testing.assert_close(x2.grad, x1.grad)
        for p, q in zip(compiled.parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, q.grad)
        eager.zero_grad()
        compiled.zero_grad()


@pytest.mark.parametrize("cls", LAYERS)
def test_export_save_load_round_trip(cls, tmp_path):
    model = nn.Sequential(cls(32, 64, 1, 8), nn.GELU(), cls(64, 16, 1, 4, bias=False))
    x = torch.randn(3, 32)
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("panther.sketched_linear" in t for t in targets), targets
    path = tmp_path / "model.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path)
    x2 = torch.randn(7, 32)
    torch.testing.assert_close(loaded.module()(x2), model(x2))


def test_autocast_layer_trains_in_bfloat16():
    layer = pr.nn.SKLinear(32, 16, 1, 4)
    x = torch.randn(8, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.S1s.grad.dtype == torch.float32  # grads reach the float32 parameters


def test_meta_device_construction_and_to_empty():
    layer = pr.nn.SKLinear(4096, 4096, 1, 16, device="meta")
    assert layer.S1s.is_meta
    layer = layer.to_empty(device="cpu")
    layer.reset_parameters()
    assert torch.isfinite(layer.S1s).all()


def test_float64_reference_for_a_trained_step():
    """One SGD step through the layer equals the step computed from the reference formula."""
    torch.manual_seed(0)
    layer = pr.nn.SKLinear(24, 12, 2, 3, dtype=torch.float64)
    ref = {n: p.detach().clone().requires_grad_() for n, p in layer.named_parameters()}
    x, t = torch.randn(10, 24, dtype=torch.float64), torch.randn(10, 12, dtype=torch.float64)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    ((layer(x) - t) ** 2).mean().backward()
    opt.step()
    y = sketched_linear_reference(x, ref["S1s"], ref["S2s"], layer.U1s, layer.U2s, ref["bias"])
    ((y - t) ** 2).mean().backward()
    for n, p in layer.named_parameters():
        torch.testing.assert_close(p, ref[n] - 0.1 * ref[n].grad)


def _ddp_worker(rank, world, port, backend, results):
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    torch.manual_seed(rank)  # different seeds per rank: DDP must broadcast rank 0's state
    layer = pr.nn.SKLinear(16, 8, 1, 4, device=device)
    model = nn.parallel.DistributedDataParallel(layer, device_ids=[rank] if backend == "nccl" else None)
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(100 + rank))
    model(x.to(device)).square().sum().backward()
    state = {k: v.detach().cpu().clone() for k, v in layer.state_dict().items()}
    results[rank] = state | {"grad": layer.S1s.grad.cpu().clone(), "x": x}
    dist.destroy_process_group()


def _check_ddp(backend):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, port, backend, results), nprocs=2, join=True)
    r0, r1 = results[0], results[1]
    for key in ("U1s", "U2s", "S1s", "S2s", "bias"):
        assert torch.equal(r0[key], r1[key]), key
    single = pr.nn.SKLinear(16, 8, 1, 4)
    single.load_state_dict({k: r0[k] for k in ("S1s", "S2s", "U1s", "U2s", "bias")})
    single(torch.cat([r0["x"], r1["x"]])).square().sum().backward()
    torch.testing.assert_close(r0["grad"], single.S1s.grad / 2)  # DDP averages over 2 ranks
    torch.testing.assert_close(r1["grad"], r0["grad"])


def test_ddp_two_processes_share_sketches_and_average_gradients():
    _check_ddp("gloo")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_two_gpus_nccl():
    _check_ddp("nccl")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_layers_match_cpu_float64(dtype):
    torch.manual_seed(0)
    cpu = pr.nn.SKLinear(256, 128, 2, 16, dtype=torch.float64)
    x = torch.randn(4, 33, 256, dtype=torch.float64)
    ref = cpu(x)
    for cls in LAYERS:
        gpu = cls(256, 128, 2, 16, device="cuda", dtype=dtype)
        gpu.load_state_dict({k: v.to(dtype) for k, v in cpu.state_dict().items()})
        y = gpu(x.to("cuda", dtype))
        tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}[dtype]
        assert ((y.double().cpu() - ref).norm() / ref.norm()).item() < tol


@pytest.mark.gpu
def test_triton_path_compiles_and_matches_eager():
    """Large M and small rank take the Triton kernels (triton_kernels.preferred); compile them."""
    from panther.ops.linear import triton_kernels

    assert triton_kernels.preferred(8192, 16, torch.bfloat16, n_in=512, n_out=384, compiled=True)
    layer = pr.nn.SKLinear_triton(512, 384, 1, 16, device="cuda", dtype=torch.bfloat16)
    ref = pr.nn.SKLinear(512, 384, 1, 16, device="cuda", dtype=torch.bfloat16)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(8192, 512, device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(layer, fullgraph=True)
    for y in (layer(x), compiled(x)):
        assert ((y.float() - ref(x).float()).norm() / ref(x).float().norm()).item() < 2e-2


def test_triton_layer_calls_the_cpp_op_eagerly_and_keeps_the_triton_op_in_graphs():
    """Eagerly, where the Triton kernels would not run (here: on the CPU) and in training, the
    layer calls the C++ op itself, without the Triton op's Python wrapper; a traced graph
    (torch.export, torch.compile) holds the Triton op, which chooses per shape."""
    layer = pr.nn.SKLinear_triton(32, 16, 1, 4)
    x = torch.randn(5, 32)

    def ops_called(fn):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
        return {e.name for e in prof.events() if e.name.startswith("panther::")}

    training, inference = ops_called(lambda: layer(x).sum().backward()), ops_called(torch.no_grad()(lambda: layer(x)))
    assert "panther::sketched_linear" in training and "panther::sketched_linear_triton" not in training
    # inference: SKLinear's path, the stacked factors through lowrank_linear
    assert "panther::lowrank_linear" in inference and "panther::sketched_linear_triton" not in inference
    exported = torch.export.export(layer.eval().requires_grad_(False), (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "panther.sketched_linear_triton.default" in targets


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls", LAYERS)
def test_inference_reuses_stacked_factors_until_they_change(device, cls):
    """Eager inference runs lowrank_linear on A and B stacked once (the 1/(2L) folded into B);
    the stack follows every change of the factors: in-place updates, load_state_dict, .to()."""
    torch.manual_seed(0)
    layer = quiet(cls, 24, 20, 3, 4, device=device)  # L = 3: 1/(2L) is not a power of two
    x = torch.randn(7, 24, device=device)

    def check():
        factors = [t.double() for t in (layer.S1s, layer.S2s, layer.U1s, layer.U2s, layer.bias)]
        want = sketched_linear_reference(x.double(), *factors)
        torch.testing.assert_close(layer(x.to(layer.S1s.dtype)).double(), want, rtol=1e-5, atol=1e-5)

    with torch.no_grad():
        check()
        A, B = layer._stacked_factors()
        assert layer._stacked_factors()[0] is A  # kept between calls
        layer.S1s.mul_(-2.0)  # in place, as an optimizer step
        check()
        assert layer._stacked_factors()[0] is not A
        layer.load_state_dict(quiet(cls, 24, 20, 3, 4, device=device).state_dict())
        check()
        layer.to(torch.float64)
        check()
        layer.U2s.data = torch.randn_like(layer.U2s)  # new storage, same version counter
        check()
    y = layer(x.double())  # autograd records: the op with gradients for S1s and S2s
    y.square().sum().backward()
    assert layer.S1s.grad is not None and layer.S2s.grad is not None
    with torch.inference_mode():  # inference tensors have no version counter: the stack is never kept
        fresh = quiet(cls, 24, 20, 3, 4, device=device)
        fresh(x)
        fresh.S1s.mul_(2.0)
        torch.testing.assert_close(fresh(x), torch.ops.panther.sketched_linear(
            x, fresh.S1s, fresh.S2s, fresh.U1s, fresh.U2s, fresh.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_triton_layer_eager_rule_is_the_triton_ops():
    """The layer's shortcut decides like the Triton op: the kernels run eagerly only for problems
    moving EAGER_MIN_BYTES or more."""
    from panther.ops.linear import triton_kernels

    layer = pr.nn.SKLinear_triton(512, 384, 1, 16, device="cuda", dtype=torch.bfloat16)
    row = torch.empty(1, 512, device="cuda", dtype=torch.bfloat16)
    for rows in (8, 8192, 2 ** 21):  # expanded views: the rule reads shapes only
        want = triton_kernels.preferred(rows, 16, torch.bfloat16, n_in=512, n_out=384, compiled=False)
        assert layer._triton_runs_eagerly(row.expand(rows, 512)) == want
    assert layer._triton_runs_eagerly(row.expand(2 ** 21, 512))  # 3.8 GB moved: the kernels run


def test_svd_factors_follow_in_place_weight_changes():
    """svd_factors caches SVDs per weight; an in-place update must not reuse a stale one."""
    from panther.factors import svd_factors

    lin = nn.Linear(24, 16, dtype=torch.float64)
    x = torch.randn(5, 24, dtype=torch.float64)
    for _ in range(2):
        S1s, S2s, U1s, U2s = svd_factors(lin.weight, 1, 8)  # rank 16 = full: exact
        y = pr.ops.linear.sketched_linear_reference(x, S1s, S2s, U1s, U2s)
        torch.testing.assert_close(y, x @ lin.weight.detach().T, rtol=1e-10, atol=1e-10)
        with torch.no_grad():
            lin.weight.mul_(2.0).add_(0.1)
