"""panther's op layer: every computation is a torch.ops.panther.* op.

Importing this package loads the native library (schemas and CPU/CUDA kernels from
csrc/) and registers the Python parts: fake kernels, autograd and Triton ops.
"""

from .. import _native

_native.load()

from . import linear  # noqa: E402,F401
from . import conv, attention  # noqa: E402,F401
from . import sketch  # noqa: E402,F401

__all__ = ["attention", "conv", "linear"]
