"""FAVOR+ attention (panther) vs F.scaled_dot_product_attention vs plain-PyTorch FAVOR.

    python -m benchmarks.bench_attention --device cuda --out bench_out   # B=4, H=16, D=64, m=256, bf16
    python -m benchmarks.bench_attention --device cuda --max-n 16384     # skip the slow N=64k rows
    python -m benchmarks.bench_attention --device cpu [--quick]          # small CPU shapes, float32

Rows per (N, causal, pass): "sdpa" (flash / cuDNN on GPU), "plain favor" (vectorised
PyTorch FAVOR+, causal through an N×N masked product, skipped where that would not fit),
"panther" (torch.ops.panther.favor_attention: C++/ATen, chunked causal) and on CUDA
"panther triton" (torch.ops.panther.favor_attention_triton: fused Triton forward, and its
autograd runs the Triton backward, favor_attention_triton_backward). "fwd+bwd" backpropagates
a random output gradient into q, k, v.
Each row gives "vs sdpa" and "vs plain" (their time over this row's: > 1 = faster) and
"x floor" (this row's time over the floor).

Floor of the forward: max(bytes / bandwidth, FLOPs / GEMM rate), both measured in this run,
with bytes = q, k, v read and o written once, and FLOPs = the feature maps (2·N·D·m each
for q and k) + the two state products (2·2·N·m·Dv) + causal intra-chunk products
(2·N·C·(m + Dv), C = 64). fwd+bwd: 3× those FLOPs and twice the bytes (dO read, dq/dk/dv
written).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from panther.ops.attention import favor_attention_plain, orthogonal_random_features, triton_available

from .harness import floor_ms, parser, report, time_ms

CHUNK = 64


def floors(B, H, N, D, m, causal, dtype, device):
    e = torch.finfo(dtype).bits // 8
    tokens = B * H * N
    fwd_bytes = tokens * 4 * D * e
    fwd_flops = tokens * (2 * 2 * D * m + 2 * 2 * m * D + (2 * CHUNK * (m + D) if causal else 0))
    fwd = floor_ms(fwd_bytes, fwd_flops, device, dtype)
    return fwd, floor_ms(2 * fwd_bytes, 3 * fwd_flops, device, dtype)


def candidates(P, causal, cuda, plain_fits):
    ops = torch.ops.panther
    c = {"sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)}
    if plain_fits:
        c["plain favor"] = lambda q, k, v: favor_attention_plain(q, k, v, P, "softmax", causal)
    c["panther"] = lambda q, k, v: ops.favor_attention(q, k, v, P, "softmax", causal, None, 0)
    if cuda and triton_available:
        c["panther triton"] = lambda q, k, v: ops.favor_attention_triton(q, k, v, P, "softmax", causal, None, 0)
    return c


def run(device: str, quick: bool, max_n: int) -> list[dict]:
    cuda = torch.device(device).type == "cuda"
    if cuda:
        B, H, D, m, dtype = 4, 16, 64, 256, torch.bfloat16
        lengths = [1024, 4096] if quick else [1024, 4096, 16384, 65536]
    else:
        B, H, D, m, dtype = 1, 4, 64, 128, torch.float32
        lengths = [1024] if quick else [1024, 4096]
    lengths = [n for n in lengths if n <= max_n]
    P = orthogonal_random_features(m, D, generator=torch.Generator().manual_seed(0), device=device, dtype=dtype)
    rows = []
    for N in lengths:
        g = torch.Generator(device=device).manual_seed(N)
        q, k, v = (torch.randn(B, H, N, D, device=device, dtype=dtype, generator=g) * 0.5 for _ in range(3))
        dout = torch.randn(B, H, N, D, device=device, dtype=dtype, generator=g)
        for causal in (False, True):
            # the plain causal formula materialises B·H·N² float32 scores
            plain_fits = not causal or B * H * N * N * 4 < (8 << 30 if cuda else 1 << 30)
            f_fwd, f_fb = floors(B, H, N, D, m, causal, dtype, device)
            base = {}
            passes = ("fwd",) if (quick and not cuda) else ("fwd", "fwd+bwd")
            for name, fn in candidates(P, causal, cuda, plain_fits).items():
                for mode in passes:
                    if mode == "fwd":
                        def step(fn=fn):
                            with torch.no_grad():
                                fn(q, k, v)
                        floor = f_fwd
                    else:
                        leaves = [t.detach().requires_grad_() for t in (q, k, v)]

                        def step(fn=fn, leaves=leaves):
                            fn(*leaves).backward(dout)
                        floor = f_fb
                    ms = time_ms(step, device, min_run_time=0.2 if quick else 0.5)
                    base[name, mode] = ms
                    plain = base.get(("plain favor", mode))
                    rows.append({
                        "N": N, "causal": causal, "pass": mode, "impl": name, "ms": ms,
                        "floor_ms": floor, "x_floor": ms / floor, "vs_sdpa": base["sdpa", mode] / ms,
                        "vs_plain": plain / ms if plain else None,
                        "dtype": str(dtype).replace("torch.", ""), "B": B, "H": H, "D": D, "m": m,
                    })
    return rows


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--max-n", type=int, default=1 << 16, help="longest sequence to time (default 65536)")
    args = p.parse_args(argv)
    rows = run(args.device, args.quick, args.max_n)
    report("bench_attention", rows, args.device, args.out, "python -m benchmarks.bench_attention " + " ".join(
        sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
