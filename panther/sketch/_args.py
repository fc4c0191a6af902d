"""Argument handling shared by the sketch constructors (device, dtype, generator)."""

from __future__ import annotations

import torch


def resolve(device, dtype, generator):
    """(device, dtype) with torch's defaults, the device following ``generator`` when not given."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if device is None:
        device = generator.device if generator is not None else torch.get_default_device()
    device = torch.device(device)
    if dtype is None:
        dtype = torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but device is {device}: expected the same device type")
    return device, dtype


def random_signs(shape, device, dtype, generator) -> torch.Tensor:
    """Independent ±1 entries."""
    bits = torch.randint(0, 2, shape, generator=generator, device=device, dtype=torch.int8)
    return bits.to(dtype).mul_(2).sub_(1)


def check_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def check_dim(dim, ndim: int, name: str = "dim") -> int:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name} must be an int, got {dim!r} ({type(dim).__name__})")
    if ndim < 1:
        raise ValueError("the input must have at least 1 dimension, got a scalar")
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name} must be in [{-ndim}, {ndim - 1}] for a {ndim}-D input, got {dim}")
    return dim % ndim
