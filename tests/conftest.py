"""Test configuration shared by every test file.

Without a GPU, Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, set before
any kernel is defined), so CPU CI exercises the same kernels eagerly on CPU tensors.
"""

import importlib.metadata
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:  # one config per kernel; tests that cover every config pass them explicitly
    os.environ.setdefault("PANTHER_TRITON_AUTOTUNE", "0")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: more threads per worker only oversubscribe.
    torch.set_num_threads(1)

import pytest  # noqa: E402

import panther  # noqa: E402,F401  (registers torch.ops.panther.*)
from panther.backend import panther_backend  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Where the Triton kernels themselves run: the GPU, else Triton's interpreter on the CPU.
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The epilogue activations of the linear Triton kernels, by name, as PyTorch functions (references).
ACTS = {"none": lambda z: z, "relu": torch.nn.functional.relu, "gelu": torch.nn.functional.gelu,
        "gelu_tanh": lambda z: torch.nn.functional.gelu(z, approximate="tanh"), "silu": torch.nn.functional.silu}


def call_in_mode(op, args, mode: str):
    """op(*args) eagerly (``mode="eager"``: the real kernel), or on fake copies of the tensors under
    a FakeTensorMode (``"fake"``: the op's fake kernel, as torch.compile and torch.export run it)."""
    if mode == "eager":
        return op(*args)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as fake:
        return op(*[fake.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check_against_float64(fn, ref_fn, inputs, tol: float, grad_tol: float = 1e-4):
    """fn(*inputs) against ref_fn on float64 copies: the output within ``tol`` (relative), then
    every input's gradient for one random output gradient within ``grad_tol``; returns the output."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = ref_fn(*ref_leaves)
    assert out.shape == ref.shape and rel_err(out, ref) < tol
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g.double())
    for t, r in zip(leaves, ref_leaves):
        assert rel_err(t.grad, r.grad) < grad_tol
    return out

# `make test` pip-installs panther, which registers backend="panther" through the
# torch_dynamo_backends entry point; an in-place build (benchmarks/gpu_all.sh) does not, so
# there the tests pass the backend function itself.
ENTRY_POINT = any(ep.name == "panther"
                  for ep in importlib.metadata.entry_points(group="torch_dynamo_backends"))
BACKEND = "panther" if ENTRY_POINT else panther_backend


@pytest.fixture(autouse=True)
def _fresh_compile_state():
    yield
    torch.compiler.reset()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
