"""pr.sketch apply benchmarks: CountSketch, SJLT (4 non-zeros), SRHT vs one read of the matrix.

    python -m benchmarks.bench_sketch --device cpu [--quick] [--out DIR]
    python -m benchmarks.bench_sketch --device cuda --out DIR

A is m x n float32 (1 GiB on GPU: m = 2^21, n = 128); the sketch maps m -> d = 512 rows.
The floor is one read of A at the copy bandwidth measured in the same run (the bytes of A
divided by the bytes read + written per second of a large copy_). On CUDA the
sparse sketches run the bucket-sorted segmented-sum kernel (the default) and the SRHT the
two-level sampled Hadamard kernels; the atomic scatter kernel and the full-FWHT composite
they replaced are timed beside them. The earlier Panther style (materialise a
dense [d, m] operator, then a GEMM) is timed beside them, construction excluded, at the same
m on a GPU (the operator is d x m float32: 4 GiB) and on m = 2^18 rows on CPU (its rows give m;
its floor is one read of that smaller A).
"""

from __future__ import annotations

import sys

import torch

import panther as pr
from panther.ops.sketch import triton_kernels as tk
from panther.ops.sketch.op import srht_composite

from .harness import bandwidth_bytes_per_s, parser, report, sync, time_ms


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    dev = args.device
    cmd = "python -m benchmarks.bench_sketch " + " ".join(sys.argv[1:] if argv is None else argv)
    gpu = torch.device(dev).type == "cuda"
    m = (1 << 21 if gpu else 1 << 18) if not args.quick else 1 << 16
    n, d = 128, 512
    mrt = 0.1 if args.quick else 0.5
    A = torch.randn(m, n, device=dev)
    read_ms = A.numel() * 4 / bandwidth_bytes_per_s(dev) * 1e3
    g = torch.Generator(device=dev).manual_seed(0)
    ops = {
        "CountSketch": pr.sketch.count_sketch(d, m, device=dev, generator=g),
        "SJLT nnz=4": pr.sketch.sparse_sign(d, m, nnz=4, device=dev, generator=g),
        "SRHT": pr.sketch.srht_operator(d, m, device=dev, generator=g),
    }
    rows = []
    for name, op in ops.items():
        ms = time_ms(lambda: (op.apply(A, 0), sync(dev)), dev, min_run_time=mrt)
        rows.append({"op": name + " apply", "m": m, "n": n, "d": d, "ms": ms, "x floor": ms / read_ms})
        if gpu and isinstance(op, pr.sketch.SparseSketch):
            scatter = torch.ops.panther.sparse_sketch_apply_triton
            ms = time_ms(lambda: (scatter(A, op.rows, op.vals, d, 0), sync(dev)), dev, min_run_time=mrt)
            rows.append({"op": name + " apply (atomic scatter)", "m": m, "n": n, "d": d, "ms": ms,
                         "x floor": ms / read_ms})
        if gpu and isinstance(op, pr.sketch.SRHT):
            signs = op.signs.to(A.dtype)
            ms = time_ms(lambda: (srht_composite(A, signs, op.index, 0, fwht=pr.sketch.fwht), sync(dev)), dev,
                         min_run_time=mrt)
            rows.append({"op": name + " apply (full FWHT + select)", "m": m, "n": n, "d": d, "ms": ms,
                         "x floor": ms / read_ms})
            # The first-level block trades register tile width against the intermediate's size.
            for block in (512, 2048):
                ms = time_ms(lambda: (tk.srht_sampled(A, signs, op.index, 0, block=block), sync(dev)), dev,
                             min_run_time=mrt)
                rows.append({"op": f"{name} apply (block {block})", "m": m, "n": n, "d": d, "ms": ms,
                             "x floor": ms / read_ms})
    # Earlier-Panther style: a dense operator, then S @ A (construction not timed).
    m_dense = m if gpu else min(m, 1 << 18)
    A_small = A[:m_dense]
    for name, make in (("CountSketch", pr.sketch.count_skop), ("SJLT nnz=4", lambda a, b, **kw: pr.sketch.sjlt_skop(a, b, 4, **kw))):
        S = make(d, m_dense, device=dev)
        ms = time_ms(lambda: (S @ A_small, sync(dev)), dev, min_run_time=mrt)
        floor = A_small.numel() * 4 / bandwidth_bytes_per_s(dev) * 1e3
        rows.append({"op": name + " dense materialised @ A", "m": m_dense, "n": n, "d": d, "ms": ms, "x floor": ms / floor})
    x = torch.randn(m // 1024 if not gpu else 1 << 15, 1 << 13, device=dev)
    ms = time_ms(lambda: (pr.sketch.fwht(x), sync(dev)), dev, min_run_time=mrt)
    floor = 2 * x.numel() * 4 / bandwidth_bytes_per_s(dev) * 1e3
    rows.append({"op": "fwht (n=8192, batched rows)", "m": x.shape[0], "n": x.shape[1], "d": x.shape[1], "ms": ms,
                 "x floor": ms / floor})
    report("sketch_apply", rows, dev, args.out, cmd)


if __name__ == "__main__":
    main()
