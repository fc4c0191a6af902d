"""``sketch_tensor``: a dense sketch applied along one axis of a tensor (earlier API)."""

from __future__ import annotations

import torch

from .._validation import positive_int
from ._args import check_dim, check_tensor
from .dense import dense_sketch_operator


def sketch_tensor(input, axis, new_size, distribution=None, sketch_matrix=None, device=None, dtype=None,
                  generator=None):
    """Sketches axis ``axis`` of ``input`` from its size n down to ``new_size``.

    Exactly one of ``distribution`` (a ``DistributionFamily``: a fresh [new_size, n] operator
    from ``dense_sketch_operator``, scaled so E[SᵀS] = I_n, created on ``device`` / in ``dtype``,
    which default to the input's) and ``sketch_matrix`` (a given [new_size, n] matrix) must be
    given. Returns ``(sketched, S)`` with a distribution, ``sketched`` with a matrix; ``sketched``
    has input's shape with size ``new_size`` at ``axis``. Negative axes count from the end.
    """
    check_tensor(input, "input")
    if (distribution is None) == (sketch_matrix is None):
        raise ValueError("exactly one of distribution and sketch_matrix must be given")
    ax = check_dim(axis, input.dim(), "axis")
    new_size = positive_int(new_size, "new_size")
    n = input.shape[ax]
    if new_size > n:
        raise ValueError(f"new_size must be <= input.shape[{axis}] = {n}, got {new_size}")
    if sketch_matrix is None:
        S = dense_sketch_operator(
            new_size, n, distribution, device=input.device if device is None else device,
            dtype=input.dtype if dtype is None else dtype, generator=generator,
        )
    else:
        S = sketch_matrix
        if not isinstance(S, torch.Tensor) or S.dim() != 2 or tuple(S.shape) != (new_size, n):
            shape = list(S.shape) if isinstance(S, torch.Tensor) else type(S).__name__
            raise ValueError(f"sketch_matrix must be a [new_size, n] = [{new_size}, {n}] tensor, got {shape}")
    if S.device != input.device:
        raise ValueError(f"the sketch is on {S.device} but input is on {input.device}: expected the same device")
    moved = input.movedim(ax, 0)
    out = (S.to(input.dtype) @ moved.reshape(n, -1)).reshape(new_size, *moved.shape[1:]).movedim(0, ax)
    return out if sketch_matrix is not None else (out, S)
