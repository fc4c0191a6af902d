"""Each Triton FAVOR+ config alone at the benchmark's shape: time and error, one process each.

    python -m benchmarks.attention_configs                    # every config, N=1024, both modes
    python -m benchmarks.attention_configs --n 16384 --causal # one length, causal only
    python -m benchmarks.attention_configs --one 2 0 --n 1024 # state (causal: walk) config 2, output 0
    python -m benchmarks.attention_configs --backward         # every backward config
    python -m benchmarks.attention_configs --backward --one 2 1  # dkv (kernel 2) config 1

Every key-pass config (the walk kernel's when causal, the state kernel's when not: STATE in
--one) runs with every output config that runs in that mode (OUTPUT in --one indexes
GPU_OUTPUT_CONFIGS; Triton 3.6 miscompiled some pairs only). Every pair runs in its own
process with CUDA_LAUNCH_BLOCKING=1, so a config that faults (illegal memory access) is
named and does not poison the others; the autotuned path (what the op runs) is checked
last, in its own process too.
B=4, H=16, D=64, m=256, bf16; the error is against torch.ops.panther.favor_attention.
--backward times triton_backward.favor_backward instead: each config of its dq (0), query
state (1) and dkv (2) kernels, the others at their first config, the error the largest of
dq, dk, dv against torch.ops.panther.favor_attention_backward (float32), over that gradient's
largest entry.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch


def one(state: int, output: int, n: int, causal: bool) -> None:
    import triton.testing

    import panther  # noqa: F401  (registers the ops)
    from panther.ops.attention import orthogonal_random_features
    from panther.ops.attention import triton_kernels as tk

    B, H, D, m, dtype = 4, 16, 64, 256, torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k, v = (torch.randn(B, H, n, D, device="cuda", dtype=dtype, generator=g) * 0.5 for _ in range(3))
    P = orthogonal_random_features(m, D, generator=torch.Generator().manual_seed(0), device="cuda", dtype=dtype)
    if state < 0:
        configs, name = None, "autotuned"
        fn = lambda: tk.favor_forward(q, k, v, P, "softmax", causal)  # noqa: E731
    else:
        keys = tk.GPU_WALK_CONFIGS if causal else tk.GPU_STATE_CONFIGS
        configs = (keys[state], tk.GPU_OUTPUT_CONFIGS[output])
        name = f"{'walk' if causal else 'state'} {state} {configs[0]} / output {output} {configs[1]}"
        fn = lambda: tk.favor_forward(q, k, v, P, "softmax", causal, configs=configs)  # noqa: E731
    got = fn()
    torch.cuda.synchronize()
    want = torch.ops.panther.favor_attention(q.float(), k.float(), v.float(), P.float(), "softmax", causal, None, 0)
    err = (got.float() - want).abs().max().item()
    ms = triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
    print(f"N={n} causal={causal} {name}: {ms:.3f} ms, max error {err:.2e}", flush=True)


def _backward_configs():
    from panther.ops.attention import triton_backward as tb
    from panther.ops.attention.triton_kernels import GPU_STATE_CONFIGS

    return GPU_STATE_CONFIGS[0], [tb.GPU_DQ_CONFIGS, tb.GPU_QUERY_STATE_CONFIGS, tb.GPU_DKV_CONFIGS]


def one_backward(kernel: int, config: int, n: int, causal: bool) -> None:
    import triton.testing

    import panther  # noqa: F401  (registers the ops)
    from panther.ops.attention import orthogonal_random_features
    from panther.ops.attention import triton_backward as tb
    from panther.ops.attention import triton_kernels as tk

    B, H, D, m, dtype = 4, 16, 64, 256, torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k, v, dout = (torch.randn(B, H, n, D, device="cuda", dtype=dtype, generator=g) * 0.5 for _ in range(4))
    P = orthogonal_random_features(m, D, generator=torch.Generator().manual_seed(0), device="cuda", dtype=dtype)
    out = tk.favor_forward(q, k, v, P, "softmax", causal)
    if kernel < 0:
        configs, name = None, "autotuned"
    else:
        state, lists = _backward_configs()
        picked = [c[config if i == kernel else 0] for i, c in enumerate(lists)]
        configs = (state, *picked)
        name = f"{('dq', 'query state', 'dkv')[kernel]} config {config} {picked[kernel]}"
    fn = lambda: tb.favor_backward(dout, q, k, v, P, out, "softmax", causal, configs=configs)  # noqa: E731
    got = fn()
    torch.cuda.synchronize()
    f32 = [t.float() for t in (dout, q, k, v, P)]
    want = torch.ops.panther.favor_attention_backward(*f32, "softmax", causal, None, 0, [True, True, True])
    err = max(((a.float() - b).abs().max() / b.abs().max()).item() for a, b in zip(got, want))
    ms = triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
    print(f"N={n} causal={causal} backward {name}: {ms:.3f} ms, max error {err:.2e}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--causal", action="store_true", help="causal only (default: both)")
    p.add_argument("--one", type=int, nargs=2, metavar=("STATE", "OUTPUT"), help="run one pair in this process "
                   "(-1 -1: the autotuned op; with --backward: KERNEL CONFIG)")
    p.add_argument("--backward", action="store_true", help="the backward kernels' configs")
    args = p.parse_args()
    if args.one is not None:
        (one_backward if args.backward else one)(*args.one, args.n, args.causal)
        return
    from panther.ops.attention.triton_kernels import (
        GPU_OUTPUT_CONFIGS,
        GPU_STATE_CONFIGS,
        GPU_WALK_CONFIGS,
        output_configs,
    )

    def pairs(causal):
        """Every key config with every output config that runs in this mode (Triton miscompiles
        some pairs only: one process each, so a fault names its pair)."""
        if args.backward:
            return [(kernel, j) for kernel, configs in enumerate(_backward_configs()[1]) for j in range(len(configs))]
        keys = GPU_WALK_CONFIGS if causal else GPU_STATE_CONFIGS
        outputs = [j for j, c in enumerate(GPU_OUTPUT_CONFIGS) if c in output_configs(causal, gpu=True)]
        return [(i, j) for i in range(len(keys)) for j in outputs]

    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}
    failed = []
    for causal in ([True] if args.causal else [False, True]):
        for s, o in pairs(causal) + [(-1, -1)]:
            cmd = [sys.executable, "-m", "benchmarks.attention_configs", "--n", str(args.n), "--one", str(s), str(o)]
            cmd += ["--causal"] if causal else []
            cmd += ["--backward"] if args.backward else []
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode:
                failed.append((causal, s, o))
                tail = "\n    ".join((r.stdout + r.stderr).strip().splitlines()[-6:])
                what = (f"backward kernel {s} config {o}" if args.backward else
                        f"{'walk' if causal else 'state'} {s} / output {o}")
                print(f"N={args.n} causal={causal} {what}: FAILED (rc {r.returncode})\n    {tail}", flush=True)
            else:
                print(r.stdout.strip(), flush=True)
    print("failed:", failed if failed else "none")


if __name__ == "__main__":
    main()
