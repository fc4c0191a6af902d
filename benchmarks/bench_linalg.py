"""pr.linalg benchmarks: CQRRPT vs pivoted/unpivoted QR, randomized SVD vs torch.svd_lowrank.

    python -m benchmarks.bench_linalg --device cpu [--quick] [--out DIR]
    python -m benchmarks.bench_linalg --device cuda --out DIR

CPU: CQRRPT vs scipy GEQP3 (LAPACK pivoted QR) and GEQRF (scipy economic QR), float64.
GPU: CQRRPT vs torch.linalg.qr (cuSOLVER geqrf+orgqr). Every row gives the relative
reconstruction error ‖M[:,J] − QR‖/‖M‖ and ‖QᵀQ − I‖_F, so speed is compared at measured
accuracy; ``cqrrpt speedup`` is the row's time over CQRRPT's in the same run. The floor is the
least work of a Cholesky-QR-type method at the rates measured in the run: 2 GEMMs of 2mn² flops
(the Gram, Q = M·X) or, where larger, reading M twice and writing Q once. CQRRPT reaches it
only on its direct path (a well-conditioned M, the Gaussian rows); ill-conditioned M takes 3
GEMMs. GPU rows cover both kinds of matrix.
RSVD rows compare with torch.svd_lowrank at equal (k, oversampling p, power iterations q),
with both errors against the optimal rank-k error; the floor is 2q+3 GEMMs of 2mnl flops.
"""

from __future__ import annotations

import itertools
import sys

import torch

import panther as pr

from .harness import floor_ms, parser, report, sync, time_ms


def _errors(M, Q, R, J):
    Md = M.double()
    rec = ((Md[:, J] - Q.double() @ R.double()).norm() / Md.norm()).item()
    orth = (Q.double().T @ Q.double() - torch.eye(Q.shape[1], dtype=torch.float64, device=Q.device)).norm().item()
    return rec, orth


def _test_matrix(m, n, kind, device, dtype):
    """Gaussian (well conditioned: CQRRPT's direct path), or singular values log-spaced from 1 to
    1e-10 with random singular vectors (the sketch-preconditioned path)."""
    if kind == "gaussian":
        return torch.randn(m, n, device=device, dtype=dtype)
    U = torch.linalg.qr(torch.randn(m, n, device=device, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, n, device=device, dtype=torch.float64)).Q
    return ((U * torch.logspace(0, -10, n, device=device, dtype=torch.float64)) @ V.T).to(dtype)


def bench_qr(device, shapes, dtypes, kinds, min_run_time):
    import scipy.linalg

    rows = []
    for dtype, kind, (m, n) in itertools.product(dtypes, kinds, shapes):
        M = _test_matrix(m, n, kind, device, dtype)
        runs = {"cqrrpt": lambda: pr.linalg.cqrrpt(M)}
        if device == "cpu":
            Mn = M.numpy()
            runs["scipy geqp3 (pivoted)"] = lambda: scipy.linalg.qr(Mn, mode="economic", pivoting=True)
            runs["scipy geqrf (unpivoted)"] = lambda: scipy.linalg.qr(Mn, mode="economic")
        runs["torch.linalg.qr"] = lambda: torch.linalg.qr(M)
        base = None
        floor = floor_ms(3 * M.numel() * M.element_size(), 4 * m * n * n, device, dtype)
        for name, fn in runs.items():
            ms = time_ms(lambda: (fn(), sync(device)), device, min_run_time=min_run_time)
            out = fn()
            if name == "cqrrpt":
                rec, orth = _errors(M, *out)
            elif name.startswith("scipy geqp3"):
                Q, R, P = out
                rec, orth = _errors(M, torch.from_numpy(Q), torch.from_numpy(R), torch.from_numpy(P))
            elif name.startswith("scipy"):
                Q, R = out
                rec, orth = _errors(M, torch.from_numpy(Q), torch.from_numpy(R), torch.arange(n))
            else:
                rec, orth = _errors(M, out.Q, out.R, torch.arange(n, device=device))
            base = base or ms
            rows.append({"op": name, "matrix": kind, "dtype": str(dtype).split(".")[-1], "m": m, "n": n, "ms": ms,
                         "cqrrpt speedup": None if name == "cqrrpt" else ms / base,
                         "x floor": ms / floor if name == "cqrrpt" else None, "floor ms": floor,
                         "rel recon err": rec, "orth err": orth})
    return rows


def bench_rsvd(device, shapes, dtypes, k, p, q, min_run_time):
    rows = []
    for dtype in dtypes:
        for m, n in shapes:
            g = torch.Generator(device=device).manual_seed(0)
            U0 = torch.linalg.qr(torch.randn(m, n, device=device, dtype=dtype, generator=g)).Q
            V0 = torch.linalg.qr(torch.randn(n, n, device=device, dtype=dtype, generator=g)).Q
            s = 0.95 ** torch.arange(n, device=device, dtype=dtype)
            A = (U0 * s) @ V0.T
            optimal = s[k:].double().norm().item()
            l = k + p
            floor = floor_ms((2 * q + 3) * A.numel() * A.element_size(), (2 * q + 3) * 2 * m * n * l, device, dtype)
            base = None
            runs = {
                "panther randomized_svd": lambda: pr.linalg.randomized_svd(A, k, oversampling=p, power_iters=q),
                "torch.svd_lowrank": lambda: torch.svd_lowrank(A, q=k + p, niter=q),
            }
            for name, fn in runs.items():
                ms = time_ms(lambda: (fn(), sync(device)), device, min_run_time=min_run_time)
                U, S, V = fn()
                U, S, V = U[:, :k], S[:k], V[:, :k]
                err = (A.double() - (U.double() * S.double()) @ V.double().T).norm().item()
                base = base or ms
                rows.append({"op": name, "dtype": str(dtype).split(".")[-1], "m": m, "n": n, "k": k, "p": p,
                             "iters": q, "ms": ms, "panther speedup": None if name.startswith("panther") else ms / base,
                             "x floor": ms / floor, "floor ms": floor, "err / optimal": err / optimal})
    return rows


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    dev = args.device
    cmd = "python -m benchmarks.bench_linalg " + " ".join(sys.argv[1:] if argv is None else argv)
    torch.manual_seed(0)
    if torch.device(dev).type == "cuda":
        shapes = [(1 << 17, 128)] if args.quick else [(1_000_000, 256)]
        dtypes = [torch.float32, torch.float64]
        rshapes = [(8192, 2048)] if args.quick else [(8192, 8192), (65536, 2048)]
    else:
        shapes = [(20000, 100)] if args.quick else [(100_000, 500), (200_000, 200)]
        dtypes = [torch.float64]
        rshapes = [(1000, 500)] if args.quick else [(4000, 2000)]
    mrt = 0.1 if args.quick else 0.5
    kinds = ["gaussian", "sigma 1..1e-10"] if torch.device(dev).type == "cuda" else ["gaussian"]
    report("cqrrpt", bench_qr(dev, shapes, dtypes, kinds, mrt), dev, args.out, cmd)
    report("rsvd", bench_rsvd(dev, rshapes, dtypes, 32, 10, 2, mrt), dev, args.out, cmd)


if __name__ == "__main__":
    main()
