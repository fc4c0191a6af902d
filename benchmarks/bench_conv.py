"""Dense nn.Conv2d (cuDNN / oneDNN) vs SKConv2d vs the floor, on ResNet-like shapes.

    python -m benchmarks.bench_conv --device cuda --out bench_out   # batch 64, bf16, channels_last
    python -m benchmarks.bench_conv --device cpu [--quick]          # small batch, float32

Forward ("fwd") times y = layer(x); "fwd+bwd" adds y.backward(g) with parameters that
require grad. SKConv2d runs a convolution with 2Lk output channels then a 1×1 channel mix
(or the dense effective kernel where that is cheaper). Floors: forward reads x and writes
y plus the 2Lk-channel intermediate (written and read back), FLOPs 2·B·Ho·Wo·2Lk·(C_in·9
+ C_out); backward twice the FLOPs and bytes plus dx. Dense rows carry their own floor
(bytes of x and y, 2·B·Ho·Wo·C_out·C_in·9 FLOPs).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

import panther as pr

from .harness import floor_ms, run_main, time_ms

# (batch, C_in, C_out, H=W)
GPU_SHAPES = [(64, 256, 256, 56), (64, 512, 512, 28), (64, 1024, 1024, 14), (32, 2048, 2048, 14)]
GPU_TERMS = [(1, 16), (1, 32), (2, 32)]
CPU_SHAPES = [(4, 256, 256, 28), (4, 512, 512, 14)]
CPU_TERMS = [(1, 16), (1, 32)]


def floors(B, C_in, C_out, HW, r, dtype, device):
    """(fwd, fwd+bwd) floors for a layer with intermediate rank r (None = dense)."""
    e = torch.finfo(dtype).bits // 8
    pix = B * HW * HW
    io = pix * (C_in + C_out) * e
    if r is None:
        flops = 2 * pix * C_out * C_in * 9
        mid = 0
    else:
        flops = 2 * pix * r * (C_in * 9 + C_out)
        mid = 2 * pix * r * e
    fwd = floor_ms(io + mid, flops, device, dtype)
    return fwd, fwd + floor_ms(io + pix * C_in * e + 2 * mid, 2 * flops, device, dtype)


def run(device: str, quick: bool) -> list[dict]:
    cuda = torch.device(device).type == "cuda"
    shapes, terms = (GPU_SHAPES, GPU_TERMS) if cuda else (CPU_SHAPES, CPU_TERMS)
    dtype = torch.bfloat16 if cuda else torch.float32
    fmt = torch.channels_last if cuda else torch.contiguous_format
    if quick:
        shapes, terms = shapes[:1], terms[:1]
    if cuda:
        torch.backends.cudnn.benchmark = True
    rows = []
    for B, C_in, C_out, HW in shapes:
        x = torch.randn(B, C_in, HW, HW, device=device, dtype=dtype).to(memory_format=fmt)
        g = torch.randn(B, C_out, HW, HW, device=device, dtype=dtype).to(memory_format=fmt)
        dense = nn.Conv2d(C_in, C_out, 3, padding=1, device=device, dtype=dtype).to(memory_format=fmt)
        layers = {"nn.Conv2d": (dense, None)}
        for L, k in terms:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                layers[f"SKConv2d L={L} k={k}"] = (pr.nn.SKConv2d.from_conv(dense, L, k), 2 * L * k)
        base = {}
        for name, (layer, r) in layers.items():
            f_fwd, f_fb = floors(B, C_in, C_out, HW, r, dtype, device)
            for mode in ("fwd", "fwd+bwd"):
                if mode == "fwd":
                    def step(layer=layer):
                        with torch.no_grad():
                            layer(x)
                    floor = f_fwd
                else:
                    xg = x.detach().requires_grad_()

                    def step(layer=layer, xg=xg):
                        layer(xg).backward(g)
                    floor = f_fb
                ms = time_ms(step, device, min_run_time=0.2 if quick else 0.5)
                if r is None:
                    base[mode] = ms
                rows.append({
                    "shape": f"{B}x{C_in}->{C_out} {HW}x{HW}", "impl": name, "pass": mode, "ms": ms,
                    "floor_ms": floor, "x_floor": ms / floor, "speedup_vs_dense": base[mode] / ms,
                    "dtype": str(dtype).replace("torch.", ""),
                })
    return rows


def main(argv=None) -> dict:
    return run_main("bench_conv", "bench_conv", __doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()
