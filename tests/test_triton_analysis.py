"""panther.triton_analysis: torch's write analysis of user Triton kernels, once per kernel."""

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from panther.triton_analysis import memoize, memoized_kernel_analysis  # noqa: E402

from .conftest import BACKEND  # noqa: E402


# JITFunction directly: under TRITON_INTERPRET=1 (the CPU test run) triton.jit would return the
# interpreter's wrapper, which torch never analyses
def _scale(x_ptr, out_ptr, n, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * scale, mask=offs < n)


def _other(x_ptr, out_ptr, n, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(out_ptr + offs, mask=offs < n) * scale, mask=offs < n)


_scale_kernel, _other_kernel = JITFunction(_scale), JITFunction(_other)


def counting():
    calls = []

    def analyse(kernel, kwargs, tma):
        calls.append(kernel)
        return ["out_ptr"]

    return memoize(analyse), calls


def args(dtype=torch.float32, n=8, scale=2.0, block=16):
    return {"x_ptr": torch.empty(4, dtype=dtype), "out_ptr": torch.empty(4, dtype=dtype), "n": n, "scale": scale,
            "BLOCK": block}


def test_repeats_are_answered_from_memory_as_copies():
    analyse, calls = counting()
    first = analyse(_scale_kernel, args(), {})
    first.append("edited by a caller")
    assert analyse(_scale_kernel, args(), {}) == ["out_ptr"]  # a copy: the edit did not reach the memo
    assert len(calls) == 1


def test_symbolic_sizes_share_a_key_and_autotuned_wrappers_key_on_the_function():
    analyse, calls = counting()
    shape_env = torch.fx.experimental.symbolic_shapes.ShapeEnv()
    analyse(_scale_kernel, args(n=shape_env.create_unbacked_symint()), {})
    analyse(_scale_kernel, args(n=shape_env.create_unbacked_symint()), {})
    assert len(calls) == 1
    config = [triton.Config({"BLOCK": 16}, num_warps=4, num_stages=2)]
    kwargs = {k: v for k, v in args().items() if k != "BLOCK"}
    for _ in range(3):  # torch wraps a kernel in a new Autotuner at each call site
        analyse(triton.autotune(config, key=[])(_scale_kernel), kwargs, {})
    assert len(calls) == 2


@pytest.mark.parametrize("change", [{"dtype": torch.float16}, {"n": 9}, {"scale": 3.0}, {"block": 32}, {"n": 1}])
def test_anything_the_ir_depends_on_makes_a_new_key(change):
    analyse, calls = counting()
    analyse(_scale_kernel, args(), {})
    analyse(_scale_kernel, args(**change), {})
    analyse(_other_kernel, args(), {})
    assert len(calls) == 3


def test_unkeyable_calls_go_to_torch_every_time():
    analyse, calls = counting()
    for _ in range(2):
        analyse(_scale_kernel, {**args(), "n": object()}, {})  # an argument type it cannot describe
        analyse(_scale_kernel, args(), {"x_ptr": ("stable", ([16],))})  # TMA descriptors
    assert len(calls) == 4


def test_the_block_patches_torch_and_restores_it():
    from torch._higher_order_ops import triton_kernel_wrap as module

    name = next(n for n in ("identify_accessed_tensors", "identify_mutated_tensors") if hasattr(module, n))
    original = getattr(module, name)
    with memoized_kernel_analysis():
        assert getattr(module, name) is not original and getattr(module, name).__wrapped__ is original
    assert getattr(module, name) is original


@pytest.mark.gpu
def test_a_panther_compile_generates_each_kernels_ir_once(monkeypatch):
    """backend="panther" on a stack of sketched MLPs (one fused-MLP kernel call per block): torch
    alone generates the kernel's IR four times per call site; through the memo about once per
    kernel (H200, torch 2.11: the bench_compile model went from 96 to 2). Same output."""
    import contextlib

    import panther.backend as backend
    from torch._higher_order_ops import triton_kernel_wrap as module

    generate, count = module.generate_ttir, []

    def counted(*a, **k):
        count.append(1)
        return generate(*a, **k)

    monkeypatch.setattr(module, "generate_ttir", counted)
    blocks = [[torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024)] for _ in range(4)]
    model = torch.nn.Sequential(*sum(blocks, [])).cuda().to(torch.bfloat16).eval()
    x = torch.randn(4096, 1024, device="cuda", dtype=torch.bfloat16)

    def compile_and_run():
        torch._dynamo.reset()
        count.clear()
        with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False):
            y = torch.compile(model, backend=BACKEND, options={"num_terms": 1, "low_rank": 64})(x)
        return y, len(count)

    memoized, with_memo = compile_and_run()
    monkeypatch.setattr(backend, "memoized_kernel_analysis", contextlib.nullcontext)
    plain, without = compile_and_run()
    assert without >= 2 * len(blocks) and 1 <= with_memo <= 2, (without, with_memo)
    torch.testing.assert_close(memoized, plain, rtol=0, atol=0)
