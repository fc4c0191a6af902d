"""Dense nn.Linear vs SKLinear vs SKLinear_triton vs the memory floor.

    python -m benchmarks.bench_linear --device cuda --out bench_out
    python -m benchmarks.bench_linear --device cpu            # CPU shapes
    python -m benchmarks.bench_linear --device cpu --quick    # one small row

Forward ("fwd") times y = layer(x); "fwd+bwd" times y = layer(x); y.backward(g) with
parameters that require grad. Floors: forward reads x and the factors and writes y;
backward reads g, x and the factors and writes dx (plus the small factor grads); the
FLOP term uses the measured dense GEMM rate. "4L products" is the per-term formula
(the earlier Panther's way) in plain PyTorch, forward only.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

import panther as pr
from panther.ops.linear import sketched_linear_reference

from .harness import floor_ms, run_main, time_ms

GPU_SHAPES = [(4096, 4096, 4096), (8192, 8192, 8192), (8192, 4096, 16384), (512, 8192, 8192)]
GPU_TERMS = [(1, 16), (1, 64), (2, 64), (4, 128)]
CPU_SHAPES = [(2048, 4096, 4096), (512, 4096, 4096), (2048, 1024, 4096)]
CPU_TERMS = [(1, 16), (1, 64), (2, 64)]


def layer_pair(d_in, d_out, L, k, dtype, device):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = pr.nn.SKLinear(d_in, d_out, L, k, dtype=dtype, device=device)
        tr = pr.nn.SKLinear_triton(d_in, d_out, L, k, dtype=dtype, device=device)
    tr.load_state_dict(sk.state_dict())
    return sk, tr


def fwd_bwd(module, x, g):
    """One training step's forward and backward; gradients are set to None first, as
    ``optimizer.zero_grad()`` does, so no step pays for accumulating into old gradients."""
    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).backward(g)
    return step


def floors(M, d_in, d_out, L, k, dtype, device):
    e = torch.finfo(dtype).bits // 8
    r = 2 * L * k
    factor_bytes = 2 * L * k * (d_in + d_out) * e  # S1s, U2s, U1s, S2s
    fwd_bytes = (M * d_in + M * d_out) * e + factor_bytes
    fwd_flops = 2 * M * r * (d_in + d_out)
    bwd_bytes = (M * d_out + 2 * M * d_in) * e + 2 * factor_bytes
    bwd_flops = 2 * fwd_flops
    fwd = floor_ms(fwd_bytes, fwd_flops, device, dtype)
    return fwd, fwd + floor_ms(bwd_bytes, bwd_flops, device, dtype)


def run(device: str, quick: bool) -> list[dict]:
    cuda = torch.device(device).type == "cuda"
    shapes, terms = (GPU_SHAPES, GPU_TERMS) if cuda else (CPU_SHAPES, CPU_TERMS)
    dtypes = [torch.bfloat16, torch.float32] if cuda else [torch.float32]
    if quick:
        shapes, terms, dtypes = [(256, 512, 512) if not cuda else (4096, 4096, 4096)], [(1, 16)], dtypes[:1]
    rows = []
    for dtype in dtypes:
        for M, d_in, d_out in shapes:
            if dtype == torch.float32 and cuda and (M, d_in, d_out) not in [(8192, 8192, 8192), (4096, 4096, 4096)]:
                continue  # fp32 on the GPU: the two headline shapes only
            dense = torch.nn.Linear(d_in, d_out, dtype=dtype, device=device)
            x = torch.randn(M, d_in, dtype=dtype, device=device)
            g = torch.randn(M, d_out, dtype=dtype, device=device)
            with torch.no_grad():
                dense_fwd = time_ms(lambda: dense(x), device)
            dense_fb = time_ms(fwd_bwd(dense, x.requires_grad_(), g), device)
            x.requires_grad_(False)
            for L, k in terms:
                sk, tr = layer_pair(d_in, d_out, L, k, dtype, device)
                f_fwd, f_fb = floors(M, d_in, d_out, L, k, dtype, device)
                with torch.no_grad():
                    sk_fwd = time_ms(lambda: sk(x), device)
                    tr_fwd = time_ms(lambda: tr(x), device)
                    per_term = time_ms(
                        lambda: sketched_linear_reference(x, sk.S1s, sk.S2s, sk.U1s, sk.U2s, sk.bias), device)
                xg = x.detach().requires_grad_()
                sk_fb = time_ms(fwd_bwd(sk, xg, g), device)
                tr_fb = time_ms(fwd_bwd(tr, xg, g), device)
                common = {"tokens": M, "in": d_in, "out": d_out, "L": L, "k": k, "dtype": str(dtype)[6:]}
                rows.append({**common, "mode": "fwd", "dense_ms": dense_fwd, "4L_products_ms": per_term,
                             "sk_ms": sk_fwd, "triton_ms": tr_fwd, "floor_ms": f_fwd,
                             "sk_x_floor": sk_fwd / f_fwd, "triton_x_floor": tr_fwd / f_fwd,
                             "sk_speedup": dense_fwd / sk_fwd, "triton_speedup": dense_fwd / tr_fwd})
                rows.append({**common, "mode": "fwd+bwd", "dense_ms": dense_fb, "4L_products_ms": None,
                             "sk_ms": sk_fb, "triton_ms": tr_fb, "floor_ms": f_fb,
                             "sk_x_floor": sk_fb / f_fb, "triton_x_floor": tr_fb / f_fb,
                             "sk_speedup": dense_fb / sk_fb, "triton_speedup": dense_fb / tr_fb})
                del sk, tr, xg
            del dense, x, g
            if cuda:
                torch.cuda.empty_cache()
    return rows


def main(argv=None) -> dict:
    return run_main("linear", "bench_linear", __doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()
