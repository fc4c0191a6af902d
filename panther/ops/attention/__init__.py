"""FAVOR+ random-feature attention ops: C++ kernels (csrc/attention/), Triton kernels for
CUDA, plain-PyTorch references and the random feature matrices, side by side."""

from . import op  # noqa: F401  (registers fakes and autograd)
from .projection import orthogonal_random_features
from .reference import favor_attention_plain, favor_attention_reference
from .triton_op import favor_attention_triton, triton_available

__all__ = [
    "favor_attention_plain",
    "favor_attention_reference",
    "favor_attention_triton",
    "orthogonal_random_features",
    "triton_available",
]
