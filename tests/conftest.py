"""Test configuration shared by every test file.

Without a GPU, Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, set before
any kernel is defined), so CPU CI exercises the same kernels eagerly on CPU tensors.
"""

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

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _fresh_compile_state():
    yield
    torch.compiler.reset()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
