"""Compile the FAVOR+ Triton kernels for sm_90 (Hopper) without a GPU.

    TRITON_INTERPRET=0 python -m tests.compile_hopper            # one config per kernel (the CI check)
    TRITON_INTERPRET=0 python -m tests.compile_hopper --all      # every GPU config, dtype and flag
    TRITON_INTERPRET=0 python -m tests.compile_hopper _walk_kernel _chunk_output_kernel  # these only

Triton's interpreter runs code that the compiler refuses (a non-constexpr global inside a
kernel, say): this compiles the kernels through Triton's CUDA backend (ptxas included) for
an H100/H200 target and prints each kernel's shared memory, and its registers and stack
(spills) per thread from the cubin. Exits non-zero if any kernel fails to compile. The
arguments are specialised as Triton's launcher specialises contiguous inputs of the
benchmark's sizes (unit last-dim strides, other integers and pointers multiples of 16), so
the counts are those of the code that runs there.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget

TARGET = GPUTarget("cuda", 90, 32)
FLOATS = {"logit_scale", "norm_scale", "inv_sqrt_m", "eps"}
INPUTS = {"q_ptr", "k_ptr", "v_ptr", "p_ptr", "g_ptr", "o_ptr", "dq_ptr", "dk_ptr", "dv_ptr"}
# the stored causal states and the forward's entering states: bf16 for bf16 inputs
STATES = {"st_ptr", "e_ptr"}
# (pointer type, DERIVED_BF16, DERIVED_PRECISION / STATE_PRECISION, DOT_PRECISION, element size)
DTYPES = {"bf16": ("bf16", True, "ieee", "ieee", 2), "fp16": ("fp16", False, "tf32", "ieee", 2),
          "fp32": ("fp32", False, "ieee", "ieee", 4)}


# How Triton's launcher specialises the arguments of contiguous inputs at the benchmark's sizes
# (B=4, H=16, N=16384, D=Dv=64, m=256): the last-dim strides are 1 (a constexpr), every other
# integer argument and every pointer is a multiple of 16 (tt.divisibility). Without this the
# compiled code indexes with generic strides and overstates the registers of every tile load.
UNIT_STRIDES = {"sqd", "skd", "svd", "sod", "spd", "sgd", "sdd", "sdkd", "sdvd"}
NOT_MULTIPLE = {"NSEG", "NSTATE", "G", "STATE_LEN"}  # counts that are often not multiples of 16


def _signature(fn, dtype: str, consts: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs with the unit strides added, divisibility attributes)."""
    sig, attrs, consts = {}, {}, dict(consts)
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in UNIT_STRIDES:
            sig[name] = "constexpr"
            consts[name] = 1
        elif name.endswith("_ptr"):
            state = "*bf16" if dtype == "bf16" else "*fp32"
            sig[name] = ("*" + dtype if name in INPUTS else "*i8" if name == "keep_ptr" else
                         state if name in STATES else "*fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"  # sizes and strides (a long tensor's strides would be i64: same code here)
            if name not in NOT_MULTIPLE:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


def _resources(cubin: bytes) -> str:
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(cuobjdump):
        return ""
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        r = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True)
    found = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", r.stdout))
    return " ".join(f"{k.lower()}={v}" for k, v in found.items())


def _jit(kernel):
    """The JITFunction of a kernel, under its autotuner if it has one."""
    return kernel.fn if hasattr(kernel, "configs") else kernel


def compile_kernel(kernel, config, dtype: str, consts: dict) -> str:
    fn = _jit(kernel)
    consts = {**consts, **config.kwargs}
    sig, consts, attrs = _signature(fn, dtype, consts)
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    compiled = triton.compile(src, target=TARGET,
                              options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    return f"shared={compiled.metadata.shared} {_resources(compiled.asm['cubin'])}"


def jobs(every: bool):
    from panther.ops.attention import triton_backward as tb
    from panther.ops.attention import triton_kernels as tk

    def pick(configs):
        return configs if every else configs[:1]

    dtypes = list(DTYPES) if every else ["bf16"]
    flags = itertools.product((False, True), (True, False), (False, True)) if every else [
        (False, True, True), (True, True, True), (True, False, False)]
    for dtype, (causal, softmax, keep) in itertools.product(dtypes, list(flags)):
        _, derived_bf16, derived_precision, precision, size = DTYPES[dtype]
        base = dict(SOFTMAX=softmax, M_PAD=256, D_PAD=64, ELEMENT_SIZE=size, DOT_PRECISION=precision)
        derived = dict(DERIVED_BF16=derived_bf16, DERIVED_PRECISION=derived_precision)
        what = f"{dtype} causal={causal:d} softmax={softmax:d} keep={keep:d}"
        for c in pick(tb.GPU_DQ_CONFIGS):
            yield what, tb._dq_kernel, c, dtype, dict(base, HAS_KEEP=keep, CAUSAL=causal, BDV=64, **derived)
        for c in pick(tb.GPU_QUERY_STATE_CONFIGS):
            yield what, tb._query_state_kernel, c, dtype, dict(base, CAUSAL=causal, DV_PAD=64, **derived)
        for c in pick(tb.GPU_DKV_CONFIGS):
            yield what, tb._dkv_kernel, c, dtype, dict(base, HAS_KEEP=keep, CAUSAL=causal, BDV=64, **derived)
        if causal:
            for c in pick(tk.GPU_WALK_CONFIGS):
                yield what, tk._walk_kernel, c, dtype, dict(base, HAS_KEEP=keep, MASK_F=False,
                                                            STATE_LEN=tk.GPU_STATE_LEN, TOTALS=True)
        else:
            for c in pick(tk.GPU_STATE_CONFIGS):
                yield what, tk._segment_state_kernel, c, dtype, dict(base, HAS_KEEP=keep, DV_PAD=64)
        for c in pick(tk.GPU_OUTPUT_CONFIGS):
            yield what, tk._chunk_output_kernel, c, dtype, dict(
                base, HAS_KEEP=keep, CAUSAL=causal, STATE_BF16=derived_bf16,
                STATE_PRECISION=precision if dtype == "bf16" else derived_precision, MASK_F=False,
                STATE_LEN=tk.GPU_STATE_LEN if causal else 1, HAS_ENTRY=causal)
    combine = triton.Config({}, num_warps=4, num_stages=1)
    for causal, reverse in ((True, False), (True, True), (False, False)):
        yield (f"fp32 causal={causal:d} reverse={reverse:d}", tk._combine_kernel, combine, "fp32",
               dict(CAUSAL=causal, REVERSE=reverse, M_PAD=256, BF=64, DV_PAD=64))


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET (or set it to 0): the interpreter compiles nothing", file=sys.stderr)
        return 2
    argv = sys.argv[1:] if argv is None else argv
    failed = 0
    only = [a for a in argv if not a.startswith("--")]  # kernel names to compile (default: all)
    for what, kernel, config, dtype, consts in jobs("--all" in argv):
        if only and _jit(kernel).__name__ not in only:
            continue
        name = f"{what} {_jit(kernel).__name__} {config.kwargs} warps={config.num_warps} stages={config.num_stages}"
        try:
            print(f"{name}: ok {compile_kernel(kernel, config, dtype, consts)}", flush=True)
        except Exception as e:  # noqa: BLE001  (report every kernel, then fail)
            failed += 1
            print(f"{name}: FAILED {str(e)[-2000:]}", flush=True)
    print(f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
