"""pr.linalg: CQRRPT and randomized SVD against the papers' claims, float32 and float64."""

import sys

import pytest
import torch

import panther as pr

F64 = torch.float64


def _matrix(m, n, kind, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "full":
        return torch.randn(m, n, dtype=F64, generator=g).to(dtype)
    if kind == "ill":  # singular values log-spaced from 1 to 1e-10
        U = torch.linalg.qr(torch.randn(m, n, dtype=F64, generator=g)).Q
        V = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=g)).Q
        return ((U * torch.logspace(0, -10, n, dtype=F64)) @ V.T).to(dtype)
    r = n // 2  # rank-deficient: exact rank n/2
    return (torch.randn(m, r, dtype=F64, generator=g) @ torch.randn(r, n, dtype=F64, generator=g)).to(dtype)


TOL = {F64: 1e-13, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("kind", ["full", "ill", "deficient"])
@pytest.mark.parametrize("m, n", [(2000, 100), (200, 200)])
def test_cqrrpt_accuracy(dtype, kind, m, n):
    M = _matrix(m, n, kind, dtype)
    Q, R, J = pr.linalg.cqrrpt(M, generator=torch.Generator().manual_seed(1))
    r = Q.shape[1]
    assert Q.dtype == R.dtype == dtype and J.dtype == torch.int64
    assert R.shape == (r, n) and J.shape == (n,) and torch.equal(J.sort().values, torch.arange(n))
    if kind == "full" or (kind == "ill" and dtype == F64):
        assert r == n  # full rank kept (the earlier float32 CQRRPT truncated to ~95 of 100)
    if kind == "deficient":
        assert r == n // 2
    Md = M.double()
    err = (Md[:, J] - Q.double() @ R.double()).norm() / Md.norm()
    orth = (Q.double().T @ Q.double() - torch.eye(r, dtype=F64)).norm()
    assert err <= TOL[dtype], err
    assert orth <= 10 * TOL[dtype], orth
    assert torch.allclose(R.tril(-1), torch.zeros_like(R))  # upper trapezoidal


@pytest.fixture
def direct_results(monkeypatch):
    """What each call of cqrrpt's direct path returned (None: refused)."""
    module = sys.modules["panther.linalg.cqrrpt"]
    taken = []
    direct = module._direct
    monkeypatch.setattr(module, "_direct", lambda *a, **k: taken.append(direct(*a, **k)) or taken[-1])
    return taken


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("kind", ["gaussian", "column-scaled"])
def test_cqrrpt_direct_path(dtype, kind, direct_results):
    # Tall and well conditioned up to column scaling: the Gershgorin certificate lets CQRRPT skip
    # the preconditioning GEMM. Column scales 1..1e6 make κ(M) = 1e6, but Cholesky QR's rounding
    # is blind to column scaling, so the contract must hold all the same.
    g = torch.Generator().manual_seed(0)
    M = torch.randn(30000, 24, dtype=F64, generator=g)
    if kind == "column-scaled":
        M = torch.linalg.qr(M).Q * torch.logspace(0, -6 if dtype == F64 else -3, 24, dtype=F64)
    M = M.to(dtype)
    Q, R, J = pr.linalg.cqrrpt(M, generator=g)
    assert direct_results and direct_results[-1] is not None and Q.shape == (30000, 24)
    Md = M.double()
    assert (Md[:, J] - Q.double() @ R.double()).norm() / Md.norm() <= TOL[dtype]
    assert (Q.double().T @ Q.double() - torch.eye(24, dtype=F64)).norm() <= 10 * TOL[dtype]
    assert torch.equal(R.tril(-1), torch.zeros_like(R))


def test_cqrrpt_direct_path_on_cpu_takes_wide_well_conditioned_matrices(direct_results):
    # 20000 x 400 Gaussian: Gershgorin's radius (~2) refuses it, the eigenvalues of the
    # column-normalised Gram (kappa ~1.8 <= 3) accept it on a CPU; the contract holds either way.
    g = torch.Generator().manual_seed(1)
    M = torch.randn(20000, 400, dtype=F64, generator=g)
    Q, R, J = pr.linalg.cqrrpt(M, generator=g)
    assert direct_results and direct_results[-1] is not None
    assert (M[:, J] - Q @ R).norm() / M.norm() <= TOL[F64]
    assert (Q.T @ Q - torch.eye(400, dtype=F64)).norm() <= 10 * TOL[F64]
    refused = sys.modules["panther.linalg.cqrrpt"]._direct(M, M.T @ M, J, exact=False)
    assert refused is None  # the bound alone refuses it


def test_cqrrpt_float32_full_rank_gaussian_regression():
    # Exactly the configuration where the earlier threshold (≈2.9 on diag(L) ratios) cut the rank.
    for seed in range(3):
        M = torch.randn(4000, 128, generator=torch.Generator().manual_seed(seed))
        Q, R, J = pr.linalg.cqrrpt(M)
        assert Q.shape[1] == 128
        assert (M[:, J] - Q @ R).norm() / M.norm() < 1e-5


def test_cqrrpt_pivots_reveal_rank():
    # Columns 0..4 independent, the rest copies: the pivots must pick independent columns first.
    g = torch.Generator().manual_seed(0)
    base = torch.randn(500, 5, dtype=F64, generator=g)
    M = torch.cat([base, base @ torch.randn(5, 15, dtype=F64, generator=g)], 1)
    Q, R, J = pr.linalg.cqrrpt(M)
    assert Q.shape[1] == 5
    assert torch.linalg.matrix_rank(M[:, J[:5]]) == 5


def test_cqrrpt_leaves_its_input_unchanged():
    # Too few rows to sketch (d = ceil(1.25 n) >= m): M itself is factored on the host, and a
    # column-major M is what LAPACK would factor in place.
    M = torch.randn(4, 5, dtype=F64).mT
    before = M.clone()
    Q, R, J = pr.linalg.cqrrpt(M)
    assert torch.equal(M, before)
    torch.testing.assert_close(Q @ R, M[:, J], rtol=0, atol=1e-12)


def test_cqrrpt_seeding_and_zero():
    M = torch.randn(300, 20, dtype=F64)
    a = pr.linalg.cqrrpt(M, generator=torch.Generator().manual_seed(3))
    b = pr.linalg.cqrrpt(M, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    Q, R, J = pr.linalg.cqrrpt(torch.zeros(50, 4, dtype=F64))
    assert Q.shape == (50, 0) and R.shape == (0, 4) and J.shape == (4,)


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: pr.linalg.cqrrpt(torch.randn(10, 20)), ValueError, "m >= n"),
        (lambda: pr.linalg.cqrrpt(torch.randn(10)), ValueError, "at least 2 dimensions"),
        (lambda: pr.linalg.cqrrpt(torch.randn(10, 2), passes=0), ValueError, "passes must be"),
        (lambda: pr.linalg.cqrrpt(torch.randn(10, 2).half()), TypeError, "float32 or float64"),
        (lambda: pr.linalg.cqrrpt(torch.randn(10, 2), gamma=0.5), ValueError, "gamma must be"),
        (lambda: pr.linalg.randomized_svd(torch.randn(10, 5), 6), ValueError, "k must be <= min"),
        (lambda: pr.linalg.randomized_svd(torch.randn(10, 5), 2.0), TypeError, "k must be a positive int"),
        (lambda: pr.linalg.randomized_svd(torch.randn(10, 5), 2, tol=2.0), ValueError, "tol must be"),
        (lambda: pr.linalg.randomized_svd(torch.randn(10, 5), 2, oversampling=-1), ValueError, "oversampling"),
        (lambda: pr.linalg.randomized_svd(torch.randn(10, 5).int(), 2), TypeError, "float32 or float64"),
    ],
)
def test_bad_inputs(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


def _decaying(m, n, dtype, rate=0.85, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    U = torch.linalg.qr(torch.randn(m, r, dtype=F64, generator=g)).Q
    V = torch.linalg.qr(torch.randn(n, r, dtype=F64, generator=g)).Q
    s = rate ** torch.arange(r, dtype=F64)
    return ((U * s) @ V.T).to(dtype), s


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("m, n", [(500, 300), (300, 500)])
def test_rsvd_near_optimal(dtype, m, n):
    A, s = _decaying(m, n, dtype)
    k = 20
    U, S, V = pr.linalg.randomized_svd(A, k, generator=torch.Generator().manual_seed(0))
    assert U.shape == (m, k) and S.shape == (k,) and V.shape == (n, k)  # V is n x k
    optimal = s[k:].norm()  # Eckart–Young: best rank-k Frobenius error
    err = (A.double() - (U.double() * S.double()) @ V.double().T).norm()
    assert err <= 1.1 * optimal, (err, optimal)
    torch.testing.assert_close(S.double(), s[:k], rtol=1e-3 if dtype == torch.float32 else 1e-8, atol=1e-6)
    eye = torch.eye(k, dtype=F64)
    orth = 1e-5 if dtype == torch.float32 else 1e-12
    assert (U.double().T @ U.double() - eye).norm() < orth and (V.double().T @ V.double() - eye).norm() < orth


def test_rsvd_oversampling_and_power_iterations_help():
    A, s = _decaying(600, 400, F64, rate=0.97)
    k = 15
    errs = {}
    for p, q in ((0, 0), (10, 2)):
        U, S, V = pr.linalg.randomized_svd(A, k, oversampling=p, power_iters=q, generator=torch.Generator().manual_seed(0))
        errs[(p, q)] = ((A - (U * S) @ V.T).norm() / s[k:].norm()).item()
    assert errs[(10, 2)] < 1.02 < errs[(0, 0)]


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("tol", [1e-1, 1e-2])
def test_rsvd_adaptive(dtype, tol):
    A, s = _decaying(400, 300, dtype)
    U, S, V = pr.linalg.randomized_svd(A, 100, tol=tol, generator=torch.Generator().manual_seed(0))
    r = S.shape[0]
    rel = ((A.double() - (U.double() * S.double()) @ V.double().T).norm() / A.double().norm()).item()
    assert rel <= tol * 1.01
    # It stops near the smallest sufficient rank (from the exact spectrum), not at k.
    tails = torch.stack([s[i:].norm() for i in range(len(s))]) / s.norm()
    r_opt = int((tails <= tol).nonzero()[0])
    assert r_opt <= r <= r_opt + 3, (r, r_opt)


def test_rsvd_exact_low_rank():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(200, 8, dtype=F64, generator=g) @ torch.randn(8, 150, dtype=F64, generator=g)
    U, S, V = pr.linalg.randomized_svd(A, 8)
    assert ((A - (U * S) @ V.T).norm() / A.norm()) < 1e-12
    U, S, V = pr.linalg.randomized_svd(A, 20, tol=1e-6)
    assert S.shape[0] == 8


def test_orthonormalize():
    Y = torch.randn(3000, 40, dtype=F64) @ torch.diag(torch.logspace(0, -8, 40, dtype=F64))
    Q = pr.linalg.orthonormalize(Y)
    assert (Q.T @ Q - torch.eye(40, dtype=F64)).norm() < 1e-12
    assert ((Y - Q @ (Q.T @ Y)).norm() / Y.norm()) < 1e-12
    D = torch.cat([Y[:, :10], Y[:, :10]], 1)  # rank-deficient: Householder fallback, still 20 columns
    Q = pr.linalg.orthonormalize(D)
    assert Q.shape == (3000, 20) and (Q.T @ Q - torch.eye(20, dtype=F64)).norm() < 1e-12


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_cqrrpt_batched_matches_unbatched(dtype):
    # Per-matrix pivots and ranks (full rank, rank n/2, ill-conditioned), padded to the largest rank.
    mats = [_matrix(300, 24, kind, dtype, seed=i) for i, kind in enumerate(["full", "deficient", "ill", "full"])]
    M = torch.stack(mats).reshape(2, 2, 300, 24)
    Q, R, J, ranks = pr.linalg.cqrrpt(M, generator=torch.Generator().manual_seed(5), return_rank=True)
    g = torch.Generator().manual_seed(5)
    singles = [pr.linalg.cqrrpt(Mb, generator=g) for Mb in mats]  # same draws, in batch order
    r = max(q.shape[1] for q, _, _ in singles)
    assert Q.shape == (2, 2, 300, r) and R.shape == (2, 2, r, 24) and J.shape == (2, 2, 24) and ranks.shape == (2, 2)
    for b, (Qb, Rb, Jb) in enumerate(singles):
        i, j = divmod(b, 2)
        rb = Qb.shape[1]
        assert ranks[i, j] == rb
        assert torch.equal(J[i, j], Jb) and torch.equal(Q[i, j, :, :rb], Qb) and torch.equal(R[i, j, :rb], Rb)
        assert not Q[i, j, :, rb:].any() and not R[i, j, rb:].any()
    gathered = M.gather(-1, J[..., None, :].expand_as(M))
    err = (gathered.double() - Q.double() @ R.double()).norm() / M.double().norm()
    assert err <= TOL[dtype]
    rank0 = pr.linalg.cqrrpt(mats[1], return_rank=True)[3]
    assert rank0.dim() == 0 and int(rank0) == 12


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_rsvd_batched(dtype):
    pairs = [_decaying(200, 120, dtype, seed=s) for s in range(3)]
    A = torch.stack([a for a, _ in pairs])
    k = 10
    U, S, V, ranks = pr.linalg.randomized_svd(A, k, generator=torch.Generator().manual_seed(0), return_rank=True)
    assert U.shape == (3, 200, k) and S.shape == (3, k) and V.shape == (3, 120, k) and ranks.tolist() == [k] * 3
    rtol = 1e-3 if dtype == torch.float32 else 1e-8
    for b, (Ab, s) in enumerate(pairs):
        Ub, Sb, Vb = pr.linalg.randomized_svd(Ab, k, generator=torch.Generator().manual_seed(b))
        torch.testing.assert_close(S[b].double(), Sb.double(), rtol=rtol, atol=1e-6)  # both ≈ the true σ
        torch.testing.assert_close(S[b].double(), s[:k], rtol=rtol, atol=1e-6)
        err = (Ab.double() - (U[b].double() * S[b].double()) @ V[b].double().T).norm()
        assert err <= 1.1 * s[k:].norm()
    # Adaptive mode: each matrix gets its own rank; zero padding past it.
    B = torch.stack([_decaying(150, 100, F64, rate=rate)[0] for rate in (0.5, 0.85)])
    U, S, V, ranks = pr.linalg.randomized_svd(B, 60, tol=1e-3, generator=torch.Generator().manual_seed(0),
                                              return_rank=True)
    g = torch.Generator().manual_seed(0)
    for b in range(2):
        Ub, Sb, Vb = pr.linalg.randomized_svd(B[b], 60, tol=1e-3, generator=g)
        rb = Sb.shape[0]
        assert int(ranks[b]) == rb and torch.equal(S[b, :rb], Sb) and torch.equal(U[b, :, :rb], Ub)
        assert not S[b, rb:].any() and not V[b, :, rb:].any()
    assert ranks[0] < ranks[1] == S.shape[1]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_gpu_linalg(dtype):
    M = _matrix(20000, 128, "ill", dtype).cuda()
    Q, R, J = pr.linalg.cqrrpt(M)
    assert Q.is_cuda and R.is_cuda and J.is_cuda
    assert ((M[:, J] - Q @ R).norm() / M.norm()).item() <= TOL[dtype]
    A, s = _decaying(2000, 1000, dtype)
    U, S, V = pr.linalg.randomized_svd(A.cuda(), 20)
    err = (A.double() - (U.double().cpu() * S.double().cpu()) @ V.double().cpu().T).norm()
    assert err <= 1.1 * s[20:].norm()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("kind", ["full", "ill", "deficient"])
def test_gpu_cqrrpt_contract(dtype, kind):
    # The accuracy contract on the GPU path (sorted sparse apply, float64 Gram, GEMM inverses).
    M = _matrix(100_000, 256, kind, dtype).cuda()
    Q, R, J, rank = pr.linalg.cqrrpt(M, return_rank=True)
    if kind == "deficient":
        assert int(rank) == 128
    elif kind == "full" or dtype == F64:
        assert int(rank) == 256
    Md = M.double()
    err = (Md[:, J] - Q.double() @ R.double()).norm() / Md.norm()
    orth = (Q.double().T @ Q.double() - torch.eye(Q.shape[1], dtype=F64, device="cuda")).norm()
    assert err <= TOL[dtype] and orth <= 10 * TOL[dtype], (err, orth)
    Qb, Rb, Jb = pr.linalg.cqrrpt(torch.stack([M[:5000], M[5000:10000]]))
    assert Qb.is_cuda and Qb.shape[0] == 2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_gpu_cqrrpt_direct_path(dtype, direct_results):
    M = torch.randn(400_000, 64, device="cuda", dtype=dtype)
    Q, R, J = pr.linalg.cqrrpt(M)
    assert direct_results[-1] is not None and Q.shape == (400_000, 64)
    Md = M.double()
    assert ((Md[:, J] - Q.double() @ R.double()).norm() / Md.norm()).item() <= TOL[dtype]
    orth = (Q.double().T @ Q.double() - torch.eye(64, dtype=F64, device="cuda")).norm().item()
    assert orth <= 10 * TOL[dtype]

