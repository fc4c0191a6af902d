"""Each Triton FAVOR+ config alone at the benchmark's shape: time and error, one process each.

    python -m benchmarks.attention_configs                    # every config, N=1024, both modes
    python -m benchmarks.attention_configs --n 16384 --causal # one length, causal only
    python -m benchmarks.attention_configs --one 2 0 --n 1024 # state config 2 with output config 0

The state configs run with the first output config and the output configs with the first
state config. Every pair runs in its own process with CUDA_LAUNCH_BLOCKING=1, so a config
that faults (illegal memory access) is named and does not poison the others; the
autotuned path (what the op runs) is checked last, in its own process too.
B=4, H=16, D=64, m=256, bf16; the error is against torch.ops.panther.favor_attention.
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
        configs = (tk.GPU_STATE_CONFIGS[state], tk.GPU_OUTPUT_CONFIGS[output])
        name = f"state {state} {configs[0]} / output {output} {configs[1]}"
        fn = lambda: tk.favor_forward(q, k, v, P, "softmax", causal, configs=configs)  # noqa: E731
    got = fn()
    torch.cuda.synchronize()
    want = torch.ops.panther.favor_attention(q.float(), k.float(), v.float(), P.float(), "softmax", causal, None, 0)
    err = (got.float() - want).abs().max().item()
    ms = triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
    print(f"N={n} causal={causal} {name}: {ms:.3f} ms, max error {err:.2e}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--causal", action="store_true", help="causal only (default: both)")
    p.add_argument("--one", type=int, nargs=2, metavar=("STATE", "OUTPUT"), help="run one pair in this process "
                   "(-1 -1: the autotuned op)")
    args = p.parse_args()
    if args.one is not None:
        one(*args.one, args.n, args.causal)
        return
    from panther.ops.attention.triton_kernels import GPU_OUTPUT_CONFIGS, GPU_STATE_CONFIGS

    pairs = [(i, 0) for i in range(len(GPU_STATE_CONFIGS))] + [(0, j) for j in range(1, len(GPU_OUTPUT_CONFIGS))]
    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}
    failed = []
    for causal in ([True] if args.causal else [False, True]):
        for s, o in pairs + [(-1, -1)]:
            cmd = [sys.executable, "-m", "benchmarks.attention_configs", "--n", str(args.n), "--one", str(s), str(o)]
            cmd += ["--causal"] if causal else []
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode:
                failed.append((causal, s, o))
                tail = "\n    ".join((r.stdout + r.stderr).strip().splitlines()[-6:])
                print(f"N={args.n} causal={causal} state {s} / output {o}: FAILED (rc {r.returncode})\n    {tail}",
                      flush=True)
            else:
                print(r.stdout.strip(), flush=True)
    print("failed:", failed if failed else "none")


if __name__ == "__main__":
    main()
