"""One analysis per kernel: memoizing Inductor's scan of user Triton kernels during a compile.

When a graph calls a user Triton kernel (panther's ``triton_op`` ops launch theirs through
``wrap_triton``), torch finds the tensors the kernel writes by generating the kernel's Triton
IR and walking it (``torch._higher_order_ops.triton_kernel_wrap.identify_mutated_tensors``,
``identify_accessed_tensors`` from torch 2.13). It does so four times per call site
(functionalization, twice; Inductor's layout pass; the kernel's IR node) and keeps nothing, so a
24-layer model whose every MLP calls the same kernel paid 96 IR generations, ~2.5 s of its
compile time on an H200 host, for one answer. (An open torch pull request, pytorch/pytorch#193227,
computes it once per node; until it lands this module does the same.)

:func:`memoized_kernel_analysis` replaces that function, for the duration of a ``with`` block,
by one that remembers each answer under everything the generated IR depends on: the kernel's
function (and the first config's constants, for an autotuned kernel), each argument's kind, its
dtype for tensors, its value for Python scalars (Triton specializes on them; symbolic sizes
become one placeholder value in the analysis, so they share a key). Calls whose arguments it
cannot key (TMA descriptors, other types) go to torch's function unchanged. Torch versions with
neither function name get no memo (the block does nothing).
"""

from __future__ import annotations

import contextlib
import copy
import functools

import torch

_NAMES = ("identify_accessed_tensors", "identify_mutated_tensors")


class _Unkeyable(Exception):
    """An argument the memo cannot describe exactly: the call is not memoized."""


def _arg_key(value):
    from torch._inductor.ir import TensorBox

    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype)
    if isinstance(value, TensorBox):
        return ("tensor", value.get_dtype())
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return ("symbolic",)  # the analysis substitutes one value for every symbolic size
    if value is None or isinstance(value, (bool, int, float, str)):
        return ("value", type(value), value)
    raise _Unkeyable(type(value).__name__)


def _args_key(arguments: dict) -> tuple:
    return tuple(sorted((name, _arg_key(value)) for name, value in arguments.items()))


def _kernel_key(kernel):
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    if isinstance(kernel, JITFunction):
        return id(kernel), None
    if isinstance(kernel, Autotuner) and isinstance(kernel.fn, JITFunction):
        # torch generates the IR of the first config (its constants join the arguments); torch
        # wraps a kernel launched with num_warps/num_stages in a new Autotuner at every call site,
        # so the key is the function, not the wrapper
        first = kernel.configs[0].kwargs if kernel.configs else {}
        return id(kernel.fn), _args_key(first)
    raise _Unkeyable(type(kernel).__name__)


def memoize(analyse):
    """``analyse(kernel, kwargs, tma_descriptor_metadata)`` remembering its answers (returned as
    copies, so a caller that edits one does not edit the memo)."""
    memo: dict = {}
    kernels: list = []  # keeps each keyed kernel alive, so its id is not reused while memoized

    @functools.wraps(analyse)
    def memoized(kernel, kwargs, tma_descriptor_metadata, *args, **kw):
        try:
            if tma_descriptor_metadata or args or kw:
                raise _Unkeyable("TMA descriptors or extra arguments")
            key = (_kernel_key(kernel), _args_key(kwargs))
        except _Unkeyable:
            return analyse(kernel, kwargs, tma_descriptor_metadata, *args, **kw)
        if key not in memo:
            memo[key] = analyse(kernel, kwargs, tma_descriptor_metadata)
            kernels.append(kernel)
        return copy.deepcopy(memo[key])

    return memoized


@contextlib.contextmanager
def memoized_kernel_analysis():
    """Within the block, torch's kernel-write analysis runs once per distinct (kernel, argument
    kinds) and answers repeats from memory; the original function is restored on exit."""
    from torch._higher_order_ops import triton_kernel_wrap as module

    name = next((n for n in _NAMES if hasattr(module, n)), None)
    if name is None:
        yield
        return
    original = getattr(module, name)
    setattr(module, name, memoize(original))
    try:
        yield
    finally:
        setattr(module, name, original)
