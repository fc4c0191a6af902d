"""Compile the FAVOR+, sketch, linear and fused-MLP Triton kernels for sm_90 (Hopper) without a GPU.

    TRITON_INTERPRET=0 python -m tests.compile_hopper            # one config per kernel (the CI check)
    TRITON_INTERPRET=0 python -m tests.compile_hopper --all      # every GPU config, dtype and flag
    TRITON_INTERPRET=0 python -m tests.compile_hopper _walk_kernel _expand_project_kernel  # these only
    TRITON_INTERPRET=0 python -m tests.compile_hopper --sketch   # the sketch kernels only

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


def _compile(fn, signature: dict, consts: dict, num_warps: int, num_stages: int, attrs=None) -> str:
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
    compiled = triton.compile(src, target=TARGET, options={"num_warps": num_warps, "num_stages": num_stages})
    return f"shared={compiled.metadata.shared} {_resources(compiled.asm['cubin'])}"


def compile_kernel(kernel, config, dtype: str, consts: dict) -> str:
    fn = _jit(kernel)
    sig, consts, attrs = _signature(fn, dtype, {**consts, **config.kwargs})
    return _compile(fn, sig, consts, config.num_warps, config.num_stages, attrs)


# Sizes of the benchmark shape (m = 2^21 rows of 128 float32 columns sketched to d = 512) that are
# multiples of 16: the launcher specialises them so at run time (as it does every tensor's address).
SKETCH_DIV16 = {"M", "N_IN", "POST", "D", "C", "NBLK", "STRIP", "STRIPS", "CHUNKS", "INNER", "TILES", "TILES_Q"}


def sketch_jobs():
    """(name, JITFunction, signature, constexprs, num_warps, num_stages, attrs) of the sketch kernels at the
    tiles their launchers pick for float32 on a GPU at the benchmark shape
    (panther/ops/sketch/triton_kernels.py)."""
    from panther.ops.sketch import triton_kernels as sk

    def sig(fn, consts, **ptrs):
        return {name: "constexpr" if name in consts else ptrs.get(name, "*fp32") if name.endswith("_ptr") else "i32"
                for name in fn.arg_names}

    def job(name, fn, warps, ptrs, **consts):
        attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
                 if name not in consts and (name.endswith("_ptr") or name in SKETCH_DIV16)}
        return name, fn, sig(fn, consts, **ptrs), consts, warps, 3, attrs

    yield job("segment sum (128 columns)", sk._segment_sum_kernel, 4,
              {"order_ptr": "*i32", "offsets_ptr": "*i64"}, BLOCK_T=sk.SEGMENT_TILE // 128, BLOCK_Q=128)
    yield job("chunk sum", sk._chunk_sum_kernel, 4, {}, BLOCK_C=8, BLOCK=256)
    for block_s, prefetch in ((512, True), (512, False), (1024, True)):
        yield job(f"srht strip (d <= {block_s}, prefetch={prefetch})", sk._srht_strip_kernel, sk.SRHT_STRIP_WARPS,
                  {"dest_ptr": "*i32", "slot_ptr": "*i32", "ka_ptr": "*i32"}, B=1024, LOG_B=10, BLOCK_S=block_s,
                  BLOCK_Q=8, PREFETCH=prefetch)
    yield job("srht level 1", sk._srht_level1_kernel, 8, {"dest_ptr": "*i32"}, B=1024, LOG_B=10, BLOCK_Q=8)
    yield job("srht level 2", sk._srht_level2_kernel, 4, {"ka_ptr": "*i32", "slot_ptr": "*i32"},
              BLOCK_A=32, BLOCK_Q=128)


def mlp_jobs(every: bool):
    """(name, JITFunction, signature, constexprs, num_warps, num_stages, attrs) of the fused MLP
    kernel (panther/ops/linear/mlp_kernels.py) for bf16 GELU and gated SiLU at ranks 64 and 128,
    every config that fits (without ``every``: ``config_for``'s): contiguous operands (unit inner strides),
    other sizes multiples of 16."""
    from panther.ops.linear import mlp_kernels as mk

    fn = mk._expand_project_kernel
    units = ("stride_hr", "stride_bn", "stride_ur", "stride_bun", "stride_cr", "stride_or")
    for config, rank, gated in itertools.product(mk.CONFIGS if every else [None], (64, 128), (False, True)):
        config = config or mk.config_for(rank, 2, gated)
        if mk.smem(config, 2, rank, gated) > mk._SHARED_MEMORY_BUDGET:
            continue
        consts = dict(HAS_BIAS=True, ACTIVATION=4 if gated else 2, GATED=gated, HAS_BIAS_U=gated, BLOCK_R1=rank,
                      BLOCK_RU=rank if gated else 16, BLOCK_R2=rank, ELEMENT_SIZE=2, DOT_PRECISION="ieee",
                      **config.kwargs, **{u: 1 for u in units})
        sig = {n: "constexpr" if n in consts else "*bf16" if n.endswith("_ptr") else "i32" for n in fn.arg_names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
                 if n not in consts and n not in ("R1", "RU", "R2")}
        yield (f"{'gated silu' if gated else 'gelu'} {config.kwargs} warps={config.num_warps} "
               f"stages={config.num_stages} rank={rank}", fn, sig, consts, config.num_warps, config.num_stages, attrs)


def linear_jobs(every: bool):
    """(name, JITFunction, signature, constexprs, num_warps, num_stages, attrs) of the two-GEMM
    linear kernels (panther/ops/linear/triton_kernels.py) for bf16 at L*k = 16 and 64 (BLOCK_R
    16 and 64), every config that fits; the expansion with GELU. Contiguous x and y, the factors
    read through (term, row, column) strides. Without ``every``: the first config that fits per kernel."""
    from panther.ops.linear import triton_kernels as lk

    def one(name, fn, config, smem_of, br, units, not_multiple, **consts):
        if smem_of(config, 2, br) > lk._SHARED_MEMORY_BUDGET:
            return None
        consts = dict(consts, BLOCK_R=br, ELEMENT_SIZE=2, DOT_PRECISION="ieee", **config.kwargs, **{u: 1 for u in units})
        sig = {n: "constexpr" if n in consts else "*bf16" if n.endswith("_ptr") else "fp32" if n == "alpha" else "i32"
               for n in fn.arg_names}
        if "part_ptr" in sig:
            sig["part_ptr"] = "*fp32"
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
                 if n not in consts and n != "alpha" and n not in not_multiple}
        return (f"{name} {config.kwargs} warps={config.num_warps} stages={config.num_stages} BLOCK_R={br}", fn, sig,
                consts, config.num_warps, config.num_stages, attrs)

    for br in (16, 64):
        project = [one("project", lk._project_kernel.fn, c, lk.project_smem, br, ("stride_xk",),
                       ("RANK", "RANK_Q", "k"), SPLIT=4) for c in lk.PROJECT_CONFIGS]
        expand = [one("expand gelu", lk._expand_kernel.fn, c, lk.expand_smem, br, ("stride_yn",),
                      ("RANK", "RANK_Q", "k", "h_q_offset"), SPLIT=4, HAS_BIAS=True, ACTIVATION=2)
                  for c in lk.EXPAND_CONFIGS]
        for fitting in ([j for j in project if j], [j for j in expand if j]):
            yield from fitting if every else fitting[:1]


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
        for c in pick(tk.output_configs(causal, gpu=True)):
            yield what, tk._chunk_output_kernel, c, dtype, dict(
                base, HAS_KEEP=keep, CAUSAL=causal, STATE_BF16=derived_bf16,
                STATE_PRECISION=precision if dtype == "bf16" else derived_precision, MASK_F=False,
                STATE_LEN=tk.GPU_STATE_LEN if causal else 1, HAS_ENTRY=causal)
    combine = triton.Config({}, num_warps=4, num_stages=1)
    for causal, reverse in ((True, False), (True, True), (False, False)):
        yield (f"fp32 causal={causal:d} reverse={reverse:d}", tk._combine_kernel, combine, "fp32",
               dict(CAUSAL=causal, REVERSE=reverse, M_PAD=256, BF=64, DV_PAD=64))


def _report(name: str, compile_job) -> int:
    """Prints the kernel's resources or its error (every kernel is reported, then main fails); 1 if it failed."""
    try:
        print(f"{name}: ok {compile_job()}", flush=True)
        return 0
    except Exception as e:  # noqa: BLE001
        print(f"{name}: FAILED {str(e)[-2000:]}", flush=True)
        return 1


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET (or set it to 0): the interpreter compiles nothing", file=sys.stderr)
        return 2
    argv = sys.argv[1:] if argv is None else argv
    failed = 0
    only = [a for a in argv if not a.startswith("--")]  # kernel names to compile (default: all)
    sketch_only = "--sketch" in argv
    every = "--all" in argv
    for prefix, generated in [("sketch", sketch_jobs())] + ([] if sketch_only else [("mlp", mlp_jobs(every)),
                                                                                      ("linear", linear_jobs(every))]):
        for name, fn, signature, consts, warps, stages, attrs in generated:
            if not only or fn.__name__ in only:
                failed += _report(f"{prefix} {name}", lambda: _compile(fn, signature, consts, warps, stages, attrs))
    for what, kernel, config, dtype, consts in ([] if sketch_only else jobs(every)):
        if not only or _jit(kernel).__name__ in only:
            name = f"{what} {_jit(kernel).__name__} {config.kwargs} warps={config.num_warps} stages={config.num_stages}"
            failed += _report(name, lambda: compile_kernel(kernel, config, dtype, consts))
    print(f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
