"""Factors for a plan entry, computed once per (weight, spec, seed, layer name).

Every path that sketches a layer — the compile backend, ``sketch_model``, export — gets
its factors here, so the same plan and seed give the same numbers everywhere: each layer
draws from its own generator, seeded from (seed, layer name) by a stable hash, on the
weight's device. The compile backend runs again when Dynamo recompiles (new shapes,
``dynamic=True``); the cache, keyed weakly on the weight tensor and its version counter,
keeps those recompiles from recomputing (and from drawing different) factors.
"""

from __future__ import annotations

import hashlib

import torch
from torch.utils.weak import WeakIdKeyDictionary

from ..factors import asvd_factors, conv_asvd_factors, conv_sketch_factors, conv_svd_factors, sketch_factors, \
    svd_factors
from ..ops.attention import orthogonal_random_features
from ..plan import SketchSpec

_cache: WeakIdKeyDictionary = WeakIdKeyDictionary()
stats = {"computed": 0}  # factor computations (not cache hits); tests read it


def layer_seed(seed: int, name: str) -> int:
    """A 63-bit seed from (seed, layer name), stable across processes and Python versions."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def layer_generator(seed: int, name: str, device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(layer_seed(seed, name))
    return gen


def _cached(weight: torch.Tensor, key: tuple, compute):
    per_weight = _cache.setdefault(weight, {})
    key = (weight._version, *key)
    if key not in per_weight:
        per_weight.clear()  # an older version of the weight: its factors are stale
        per_weight[key] = compute()
        stats["computed"] += 1
    return per_weight[key]


def _values_key(tensor: torch.Tensor | None):
    """A digest of a tensor's values: factors calibrated on equal statistics are shared, and
    other statistics (new calibration data) never get stale factors."""
    if tensor is None:
        return None
    data = tensor.detach().to("cpu", torch.float64).contiguous()
    return tuple(tensor.shape), hashlib.sha1(data.numpy().tobytes()).hexdigest()


def linear_factors(weight: torch.Tensor, spec: SketchSpec, name: str, seed: int, second_moment=None, *,
                   owner: torch.Tensor | None = None):
    """SKLinear's (S1s, S2s, U1s, U2s) for ``weight`` [out, in] under ``spec``.

    ``second_moment``: E[x xᵀ] of the layer's inputs, used (and required) by ``init="asvd"``.
    ``owner``: the tensor the weight is a view of (a parameter stored [in, out] and passed
    here transposed); the cache keys on it, since a fresh view is a fresh object.
    """
    def compute():
        gen = layer_generator(seed, name, weight.device)
        L, k = spec.num_terms, spec.low_rank
        if spec.init == "asvd":
            if second_moment is None:
                raise ValueError(f"layer {name!r}: init='asvd' needs calibration inputs (their second moment)")
            return asvd_factors(weight, L, k, second_moment, generator=gen)
        make = sketch_factors if spec.init == "sketch" else svd_factors
        return make(weight, L, k, generator=gen)  # not detached: the SVD cache knows the weight itself

    moment_key = _values_key(second_moment) if spec.init == "asvd" else None
    return _cached(owner if owner is not None else weight, ("linear", spec, name, seed, moment_key), compute)


def conv_factors(weight: torch.Tensor, spec: SketchSpec, groups: int, name: str, seed: int, second_moment=None):
    """SKConv2d's (S1s, U1s) for a conv ``weight`` [C_out, C_in/G, kh, kw] under ``spec``.

    ``second_moment``: E[p pᵀ] of the conv's input patches (per group), used (and required)
    by ``init="asvd"``.
    """
    def compute():
        gen = layer_generator(seed, name, weight.device)
        L, k = spec.num_terms, spec.low_rank
        if spec.init == "asvd":
            if second_moment is None:
                raise ValueError(f"layer {name!r}: init='asvd' needs calibration inputs (their patches' second "
                                 "moment)")
            # not detached: the whitening cache knows the weight itself (the tuner asks at many ranks)
            return conv_asvd_factors(weight, L, k, second_moment, groups, generator=gen)
        make = conv_sketch_factors if spec.init == "sketch" else conv_svd_factors
        return make(weight, L, k, groups, generator=gen)

    moment_key = _values_key(second_moment) if spec.init == "asvd" else None
    return _cached(weight, ("conv2d", spec, groups, name, seed, moment_key), compute)


def attention_projection(spec: SketchSpec, head_dim: int, name: str, seed: int, *, device, dtype):
    """FAVOR+ random features [low_rank, head_dim] for the attention layer ``name``."""
    gen = layer_generator(seed, name, "cpu")  # drawn on CPU: the same features on every device
    return orthogonal_random_features(spec.low_rank, head_dim, generator=gen, device=device, dtype=dtype)
