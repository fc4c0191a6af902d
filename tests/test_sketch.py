"""pr.sketch: shapes, scaling, distributions, seeding, apply kernels (C++, Triton), errors."""

import math

import pytest
import scipy.linalg
import torch

import panther as pr
from panther.ops import sketch as _sk
from panther.ops.sketch import triton_kernels as tk
from panther.sketch import Axis, DistributionFamily

F64 = torch.float64


def _orth(m, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(m, n, dtype=F64, generator=g)).Q


def _reference_sparse(S):
    """The dense [d, m] matrix of a SparseSketch built by a plain loop (independent of to_dense)."""
    d, m = S.shape
    dense = torch.zeros(d, m, dtype=F64)
    for i in range(m):
        for j in range(S.nnz):
            dense[S.rows[i, j], i] += S.vals[i, j].double()
    return dense


# ----------------------------------------------------------------------------- shapes and dtypes
@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda **kw: pr.sketch.scaled_sign_sketch(7, 30, **kw), (7, 30)),
        (lambda **kw: pr.sketch.gaussian_skop(7, 30, **kw), (7, 30)),
        (lambda **kw: pr.sketch.count_skop(7, 30, **kw), (7, 30)),
        (lambda **kw: pr.sketch.sjlt_skop(7, 30, sparsity=3, **kw), (7, 30)),
        (lambda **kw: pr.sketch.dense_sketch_operator(7, 30, DistributionFamily.Uniform, **kw), (7, 30)),
        (lambda **kw: pr.sketch.dense_sketch_operator(30, 7, DistributionFamily.Gaussian, **kw), (30, 7)),
        (lambda **kw: pr.sketch.sparse_sign(7, 30, nnz=2, **kw).to_dense(), (7, 30)),
        (lambda **kw: pr.sketch.srht_operator(7, 30, **kw).to_dense(), (7, 30)),
    ],
)
def test_constructor_shape_and_dtype(make, shape):
    for dtype in (torch.float32, F64):
        S = make(dtype=dtype)
        assert tuple(S.shape) == shape and S.dtype == dtype and S.device.type == "cpu"


@pytest.mark.parametrize("axis", [Axis.Short, Axis.Long, "short", Axis.LONG])
@pytest.mark.parametrize("m, n", [(50, 1000), (20, 7), (7, 20), (5, 5)])
def test_sparse_operator_exact_shape(axis, m, n):
    # The earlier Panther inferred the shape from the largest index (e.g. (50, 984)).
    for seed in range(3):
        S = pr.sketch.sparse_sketch_operator(m, n, 2, axis, generator=torch.Generator().manual_seed(seed))
        assert S.is_sparse and tuple(S.shape) == (m, n)


def test_saso_column_sparsity_and_values():
    m, n, k = 16, 500, 4
    S = pr.sketch.sparse_sketch_operator(m, n, k, Axis.Short, dtype=F64).to_dense()
    assert ((S != 0).sum(0) == k).all()  # exactly k distinct rows in every column
    assert torch.allclose(S[S != 0].abs(), torch.full(((S != 0).sum().item(),), k**-0.5, dtype=F64))
    assert torch.allclose((S**2).sum(0), torch.ones(n, dtype=F64))  # unit columns: E[SᵀS] = I
    T = pr.sketch.sparse_sketch_operator(n, m, k, Axis.Short, dtype=F64).to_dense()  # tall: rows sparse
    assert ((T != 0).sum(1) == k).all()


def test_laso_scaling():
    # Each column's expected squared norm is 1: total Frobenius² ≈ n (n = long side).
    m, n, k = 40, 4000, 8
    S = pr.sketch.sparse_sketch_operator(m, n, k, Axis.Long, dtype=F64, generator=torch.Generator().manual_seed(1))
    fro2 = (S.to_dense() ** 2).sum().item()
    assert abs(fro2 / n - 1) < 0.1
    assert ((S.to_dense() != 0).sum(1) <= k).all()


def test_count_and_sjlt_structure():
    C = pr.sketch.count_skop(10, 400, dtype=F64)
    assert ((C != 0).sum(0) == 1).all() and set(C[C != 0].tolist()) <= {-1.0, 1.0}
    J = pr.sketch.sjlt_skop(10, 400, sparsity=3, dtype=F64)
    assert ((J != 0).sum(0) == 3).all()
    assert torch.allclose(J[J != 0].abs(), torch.tensor(3**-0.5, dtype=F64).expand((J != 0).sum()))
    # Rows are uniform: each of 10 rows receives ≈ 400*3/10 = 120 non-zeros.
    counts = (J != 0).sum(1).double()
    assert (counts - 120).abs().max() < 45


def test_dense_moments():
    g = torch.Generator().manual_seed(3)
    m, n = 64, 4000
    G = pr.sketch.gaussian_skop(m, n, dtype=F64, generator=g)
    assert abs(G.mean().item()) < 4 / math.sqrt(m * n) / math.sqrt(m)
    assert abs((G**2).mean().item() * m - 1) < 0.02
    U = pr.sketch.dense_sketch_operator(m, n, DistributionFamily.Uniform, dtype=F64, generator=g)
    assert abs((U**2).mean().item() * m - 1) < 0.02
    assert U.abs().max().item() <= math.sqrt(3 / m) + 1e-12
    B = pr.sketch.scaled_sign_sketch(m, n, dtype=F64, generator=g)
    assert torch.allclose(B.abs(), torch.full_like(B, m**-0.5))


# ----------------------------------------------------------------------------- embedding quality
@pytest.mark.parametrize(
    "make",
    [
        lambda d, m, g: pr.sketch.gaussian_skop(d, m, dtype=F64, generator=g),
        lambda d, m, g: pr.sketch.sparse_sign(d, m, nnz=4, dtype=F64, generator=g).to_dense(),
        lambda d, m, g: pr.sketch.srht_operator(d, m, dtype=F64, generator=g).to_dense(),
        lambda d, m, g: pr.sketch.count_skop(d, m, dtype=F64, generator=g),
    ],
    ids=["gaussian", "sparse4", "srht", "count"],
)
def test_subspace_embedding(make):
    # For a d x m sketch of an n-dim subspace, d = 40 n (CountSketch's n²/ε² bound at ε ≈ 0.5),
    # every singular value of S Q lies in 1 ± ε. A √2 scaling bug puts them near 1.41 or 0.71.
    m, n, d = 3000, 8, 320
    Q = _orth(m, n)
    sv = torch.linalg.svdvals(make(d, m, torch.Generator().manual_seed(7)) @ Q)
    assert sv.max() < 1.5 and sv.min() > 0.5, sv
    # and ‖S A x‖ ≈ ‖A x‖ for a random A and x
    A = torch.randn(m, n, dtype=F64)
    x = torch.randn(n, dtype=F64)
    S = make(d, m, torch.Generator().manual_seed(8))
    assert 0.5 < (S @ (A @ x)).norm() / (A @ x).norm() < 1.5


def test_srht_norm_preserving_on_average():
    # The earlier srht returned ‖y‖²/‖x‖² ≈ m/n (no √(n/m) rescale).
    x = torch.randn(1000, dtype=F64)  # not a power of two: zero-padded to 1024
    ratios = [pr.sketch.srht(x, 128, generator=torch.Generator().manual_seed(s)).norm() ** 2 / x.norm() ** 2
              for s in range(40)]
    assert abs(float(torch.stack(ratios).mean()) - 1) < 0.1
    assert pr.sketch.srht(torch.randn(3, 5, 100), 17).shape == (3, 5, 17)


# ----------------------------------------------------------------------------- seeding
@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: pr.sketch.gaussian_skop(9, 50, **kw),
        lambda **kw: pr.sketch.count_skop(9, 50, **kw),
        lambda **kw: pr.sketch.sjlt_skop(9, 50, 3, **kw),
        lambda **kw: pr.sketch.sparse_sketch_operator(9, 50, 3, Axis.Short, **kw).to_dense(),
        lambda **kw: pr.sketch.sparse_sketch_operator(9, 50, 3, Axis.Long, **kw).to_dense(),
        lambda **kw: pr.sketch.srht_operator(9, 50, **kw).to_dense(),
        lambda **kw: pr.sketch.dense_sketch_operator(9, 50, "uniform", **kw),
    ],
)
def test_seeding(make):
    torch.manual_seed(11)
    a = make()
    torch.manual_seed(11)
    assert torch.equal(a, make())
    b = make()
    assert not torch.equal(a, b)  # the global generator advanced, it was not reset
    state = torch.get_rng_state()
    c = make(generator=torch.Generator().manual_seed(5))
    assert torch.equal(state, torch.get_rng_state())  # generator= leaves the global RNG alone
    assert torch.equal(c, make(generator=torch.Generator().manual_seed(5)))


# ----------------------------------------------------------------------------- apply == materialise
@pytest.mark.parametrize("nnz", [1, 3])
@pytest.mark.parametrize("shape, dim", [((300, 6), 0), ((6, 300), 1), ((6, 300), -1), ((3, 300, 5), 1), ((300,), 0)])
def test_sparse_apply_matches_dense(nnz, shape, dim):
    g = torch.Generator().manual_seed(2)
    S = pr.sketch.sparse_sign(40, 300, nnz=nnz, dtype=F64, generator=g)
    D = _reference_sparse(S)
    assert torch.equal(D, S.to_dense()) and torch.equal(D, S.to_sparse().to_dense())
    A = torch.randn(shape, dtype=F64)
    expected = torch.movedim(torch.tensordot(D, A, dims=([1], [dim])), 0, dim)
    torch.testing.assert_close(S.apply(A, dim), expected, rtol=1e-12, atol=1e-12)
    G = torch.randn(expected.shape, dtype=F64)
    back = torch.movedim(torch.tensordot(D.T, G, dims=([1], [dim])), 0, dim)
    torch.testing.assert_close(S.apply_t(G, dim), back, rtol=1e-12, atol=1e-12)


def test_sparse_apply_tall_parallel_chunks():
    # m large and few columns: the CPU kernel splits m into chunks with private outputs.
    S = pr.sketch.sparse_sign(64, 20000, nnz=4, dtype=F64, generator=torch.Generator().manual_seed(0))
    A = torch.randn(20000, 3, dtype=F64)
    torch.testing.assert_close(S.apply(A), S.to_sparse() @ A, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sparse_apply_low_precision(dtype):
    S = pr.sketch.sparse_sign(32, 200, nnz=4, generator=torch.Generator().manual_seed(0))
    A = torch.randn(200, 16)
    out = S.apply(A.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), S.to_dense().double() @ A.to(dtype).double(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("n, dim", [(300, 0), (256, 0), (300, 1)])
def test_srht_apply_matches_dense(n, dim):
    op = pr.sketch.srht_operator(50, n, dtype=F64, generator=torch.Generator().manual_seed(4))
    N = 1 << (n - 1).bit_length()
    H = torch.tensor(scipy.linalg.hadamard(N), dtype=F64) / math.sqrt(N)
    dense = math.sqrt(N / 50) * (H[op.index.cpu()][:, :n] * op.signs[None, :])
    torch.testing.assert_close(op.to_dense(), dense, rtol=1e-12, atol=1e-12)
    A = torch.randn((n, 4) if dim == 0 else (4, n), dtype=F64)
    expected = dense @ A if dim == 0 else A @ dense.T
    torch.testing.assert_close(op.apply(A, dim), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 16, 512, 4096])
def test_fwht_matches_hadamard(n):
    x = torch.randn(3, 2, n, dtype=F64)
    H = torch.tensor(scipy.linalg.hadamard(n), dtype=F64) / math.sqrt(n)
    torch.testing.assert_close(pr.sketch.fwht(x), x @ H, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pr.sketch.fwht(pr.sketch.fwht(x)), x, rtol=1e-12, atol=1e-12)
    y = pr.sketch.fwht(x.half())
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.double(), x.half().double() @ H, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------- Triton kernels (interpreter on CPU)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape, dim", [((300, 40), 0), ((7, 300), 1), ((3, 300, 5), 1)])
def test_triton_sparse_kernels(dtype, shape, dim):
    """The Triton kernels themselves: compiled on the GPU, interpreted on CPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    S = pr.sketch.sparse_sign(24, 300, nnz=3, generator=torch.Generator().manual_seed(1)).to(device)
    D = S.to_dense().double()
    A = torch.randn(shape, device=device).to(dtype)
    rows, vals = S.rows, S.vals.to(dtype)
    out = tk.sparse_scatter(A, rows, vals, 24, dim)
    expected = torch.movedim(torch.tensordot(D, A.double(), dims=([1], [dim])), 0, dim)
    assert out.dtype == dtype and out.shape == expected.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    G = torch.randn(expected.shape, device=device).to(dtype)
    back = torch.movedim(torch.tensordot(D.T, G.double(), dims=([1], [dim])), 0, dim)
    torch.testing.assert_close(tk.sparse_gather(G, rows, vals, 24, dim).double(), back, rtol=tol, atol=tol)


@pytest.mark.parametrize("d, m, chunk_rows", [
    (24, 300, None),  # one chunk (m <= SEGMENT_CHUNK_ROWS): the plain bucket sort
    (40000, 300, None),  # keys past int16's range with the shift; mostly empty buckets
    (24, 300, 64),  # 5 chunks, the last one short (300 = 4 * 64 + 44)
    (24, 300, 1),  # a chunk per input row: almost every segment empty
    (7, 1, 16),  # one input row
    (4000, 300, 16),  # 19 * 4000 keys: int32
])
def test_bucket_order(d, m, chunk_rows):
    S = pr.sketch.sparse_sign(d, m, nnz=3 if d >= 3 else 1, generator=torch.Generator().manual_seed(1))
    order, offsets = _sk.bucket_order(S.rows, d, chunk_rows)
    R = m if chunk_rows is None else min(chunk_rows, m)
    chunks = -(-m // R)
    assert order.dtype == torch.int32 and offsets.dtype == torch.int64 and offsets.shape == (chunks * d + 1,)
    flat = S.rows.reshape(-1)
    assert offsets[0] == 0 and offsets[-1] == flat.numel()
    sizes = offsets[1:] - offsets[:-1]
    entry_row = torch.arange(m).repeat_interleave(S.nnz)  # the input row of each flat non-zero
    key = entry_row // R * d + flat
    assert torch.equal(sizes, torch.bincount(key, minlength=chunks * d))
    # segment c * d + r holds exactly the non-zeros of output row r from chunk c, in ascending input rows
    seg = torch.repeat_interleave(torch.arange(chunks * d), sizes)
    e = order.long()
    assert torch.equal(flat[e], seg % d) and torch.equal(entry_row[e] // R, seg // d)
    same = seg[1:] == seg[:-1]
    assert (e[1:][same] > e[:-1][same]).all()


def test_segment_chunk_rows():
    R = _sk.SEGMENT_CHUNK_ROWS
    assert _sk.segment_chunk_rows(R, 512) == R  # one chunk of R rows
    assert _sk.segment_chunk_rows(1 << 21, 512) == R
    assert _sk.segment_chunk_rows(1 << 21, R) == 1 << 21  # d partial rows per chunk would cost too much


def _sparse_reference(S, A, dim):
    return torch.movedim(torch.tensordot(S.to_dense().double().cpu(), A.double().cpu(), dims=([1], [dim])), 0, dim)


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.float16])
@pytest.mark.parametrize("shape, dim", [((300, 40), 0), ((2, 300, 20), 1), ((300, 200), 0), ((7, 300), 1)])
@pytest.mark.parametrize("chunk_rows", [None, 64])
def test_triton_segment_sum(dtype, shape, dim, chunk_rows):
    """The (chunk, output row)-sorted segmented-sum kernel, one chunk and several (then the
    per-chunk partials and their sum), and its scatter fallback for narrow rows."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    S = pr.sketch.sparse_sign(24, 300, nnz=3, generator=torch.Generator().manual_seed(1)).to(device)
    A = torch.randn(shape, device=device).to(dtype)
    order, offsets = _sk.bucket_order(S.rows, 24, chunk_rows)
    out = tk.sparse_segment_sum(A, S.rows, S.vals.to(dtype), order, offsets, 24, dim)
    expected = _sparse_reference(S, A, dim)
    assert out.dtype == dtype and out.shape == expected.shape
    tol = {torch.float32: 1e-5, F64: 1e-12, torch.float16: 1e-2}[dtype]
    torch.testing.assert_close(out.double().cpu(), expected, rtol=tol, atol=tol)
    again = tk.sparse_segment_sum(A, S.rows, S.vals.to(dtype), order, offsets, 24, dim)
    post = math.prod(shape[dim + 1:])
    if post >= tk.SEGMENT_MIN_POST:  # the segmented sum has no atomics: bitwise deterministic
        assert torch.equal(out, again)
    else:  # narrow rows take the atomic scatter: equal up to the order of the float additions
        torch.testing.assert_close(out, again, rtol=tol, atol=tol)


@pytest.mark.parametrize("nnz", [1, 4])
@pytest.mark.parametrize("m", [1, 33, 150])
def test_triton_segment_sum_chunks_strided(nnz, m):
    """Chunked sums against float64 on fresh inputs: non-contiguous A along both dims, m below,
    at and off a multiple of the chunk, and more buckets than non-zeros (empty segments)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    d = 16
    S = pr.sketch.sparse_sign(d, m, nnz=nnz).to(device)
    for A, dim in ((torch.randn(24, m, device=device).T, 0),  # [m, 24], column-major
                   (torch.randn(3, 48, m, device=device)[:, ::2].transpose(1, 2), 1)):  # [3, m, 24], strided
        assert m == 1 or not A.is_contiguous()
        expected = _sparse_reference(S, A, dim)
        for chunk_rows in (None, 32, 7):
            order, offsets = _sk.bucket_order(S.rows, d, chunk_rows)
            out = tk.sparse_segment_sum(A, S.rows, S.vals, order, offsets, d, dim)
            torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("shape, dim, block", [((300, 5), 0, 16), ((2, 256, 8), 1, 256), ((1000, 3), 0, 64),
                                               ((64, 4), 0, 1024), ((3, 100, 2, 6), 1, 8)])
@pytest.mark.parametrize("strip_rows", [tk.SRHT_STRIP_ROWS, 64, None])
def test_triton_srht_sampled(dtype, shape, dim, block, strip_rows):
    """The sampled Hadamard kernels: one block (block >= N) and many (block < N); strips (one
    strip, several with partial sums, the last one short) and the two-level path (None)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = shape[dim]
    op = pr.sketch.srht_operator(min(50, n), n, dtype=F64, generator=torch.Generator().manual_seed(4))
    A = torch.randn(shape, dtype=F64)
    expected = torch.movedim(torch.tensordot(op.to_dense(), A, dims=([1], [dim])), 0, dim)
    out = tk.srht_sampled(A.to(device, dtype), op.signs.to(device, dtype), op.index.to(device), dim, block=block,
                          strip_rows=strip_rows)
    assert out.dtype == dtype and out.shape == expected.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double().cpu(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("d, max_acc, prefetch", [(1, tk.SRHT_MAX_ACC, True), (128, tk.SRHT_MAX_ACC, True),
                                                   (128, tk.SRHT_MAX_ACC, False), (128, 64, True)])
def test_triton_srht_strips_fresh(d, max_acc, prefetch, monkeypatch):
    """Strip path, with and without the prefetch of the next block (and the two-level fallback
    when d x the column tile exceeds max_acc) on a fresh non-contiguous input, against float64:
    n not a power of two, several strips, the last one short."""
    monkeypatch.setattr(tk, "SRHT_PREFETCH", prefetch)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 1500  # N = 2048: 16 blocks of 128, strips of 5 blocks (the last one holds 1)
    op = pr.sketch.srht_operator(d, n, dtype=F64)
    A = torch.randn(12, n, dtype=F64).T  # [n, 12], non-contiguous
    expected = op.to_dense() @ A
    out = tk.srht_sampled(A.to(device, torch.float32), op.signs.to(device, torch.float32), op.index.to(device), 0,
                          block=128, strip_rows=640, max_acc=max_acc)
    torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(out, tk.srht_sampled(A.to(device, torch.float32), op.signs.to(device, torch.float32),
                                            op.index.to(device), 0, block=128, strip_rows=640, max_acc=max_acc))


def test_opcheck_srht():
    op = pr.sketch.srht_operator(9, 30, dtype=F64, generator=torch.Generator().manual_seed(0))
    fn = torch.ops.panther.srht_apply_triton
    torch.library.opcheck(fn, (torch.randn(30, 4, dtype=F64, requires_grad=True), op.signs, op.index, 0))
    torch.library.opcheck(fn, (torch.randn(2, 30, dtype=F64, requires_grad=True), op.signs, op.index, -1))
    with pytest.raises(RuntimeError, match="signs must be a 1-D tensor of A.shape"):
        fn(torch.randn(31, 4, dtype=F64), op.signs, op.index, 0)
    with pytest.raises(RuntimeError, match="index must be a 1-D int64"):
        fn(torch.randn(30, 4, dtype=F64), op.signs, op.index.int(), 0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("n, max_n", [(1, 8192), (64, 8192), (1024, 8192), (256, 16)])
def test_triton_fwht(n, max_n, dtype):
    """float64 rows are transformed (and scaled by 1/sqrt(n)) in float64: 1e-12, not float32's 1e-5."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(5, n, device=device, dtype=dtype)
    H = torch.tensor(scipy.linalg.hadamard(n), dtype=F64, device=device) / math.sqrt(n)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    out = tk.fwht(x, max_n=max_n)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), x.double() @ H, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- op layer
def _op_args():
    S = pr.sketch.sparse_sign(12, 50, nnz=3, dtype=F64, generator=torch.Generator().manual_seed(0))
    return S.rows, S.vals


@pytest.mark.parametrize("op", ["sparse_sketch_apply", "sparse_sketch_apply_triton"])
def test_opcheck_apply(op):
    rows, vals = _op_args()
    fn = getattr(torch.ops.panther, op)
    torch.library.opcheck(fn, (torch.randn(50, 4, dtype=F64, requires_grad=True), rows, vals, 12, 0))
    torch.library.opcheck(fn, (torch.randn(3, 50, dtype=F64, requires_grad=True), rows, vals, 12, -1))


def test_opcheck_apply_sorted():
    rows, vals = _op_args()
    order, offsets = _sk.bucket_order(rows, 12)
    fn = torch.ops.panther.sparse_sketch_apply_sorted_triton
    torch.library.opcheck(fn, (torch.randn(50, 4, dtype=F64, requires_grad=True), rows, vals, order, offsets, 12, 0))
    torch.library.opcheck(fn, (torch.randn(3, 50, dtype=F64, requires_grad=True), rows, vals, order, offsets, 12, -1))
    A = torch.randn(50, 4, dtype=F64)
    torch.testing.assert_close(fn(A, rows, vals, order, offsets, 12, 0),
                               torch.ops.panther.sparse_sketch_apply(A, rows, vals, 12, 0))
    with pytest.raises(RuntimeError, match="offsets must be a 1-D int64 tensor of d"):
        fn(A, rows, vals, order, offsets[:-1], 12, 0)
    order, offsets = _sk.bucket_order(rows, 12, 16)  # 4 chunks: offsets of 4 * 12 + 1 entries
    torch.library.opcheck(fn, (torch.randn(50, 4, dtype=F64, requires_grad=True), rows, vals, order, offsets, 12, 0))
    torch.testing.assert_close(fn(A, rows, vals, order, offsets, 12, 0),
                               torch.ops.panther.sparse_sketch_apply(A, rows, vals, 12, 0))
    with pytest.raises(RuntimeError, match="offsets must be a 1-D int64 tensor of d"):
        fn(A, rows, vals, order, offsets[:-1], 12, 0)
    with pytest.raises(RuntimeError, match="order must be a 1-D"):
        fn(A, rows, vals, order[:-1], offsets, 12, 0)


@pytest.mark.parametrize("op", ["sparse_sketch_apply_t", "sparse_sketch_apply_t_triton"])
def test_opcheck_apply_t(op):
    rows, vals = _op_args()
    fn = getattr(torch.ops.panther, op)
    torch.library.opcheck(fn, (torch.randn(12, 4, dtype=F64, requires_grad=True), rows, vals, 12, 0))


@pytest.mark.parametrize("op", ["fwht", "fwht_triton"])
def test_opcheck_fwht(op):
    fn = getattr(torch.ops.panther, op)
    torch.library.opcheck(fn, (torch.randn(3, 64, dtype=F64, requires_grad=True),))


def test_gradients():
    S = pr.sketch.sparse_sign(10, 30, nnz=2, dtype=F64)
    A = torch.randn(30, 3, dtype=F64, requires_grad=True)
    torch.autograd.gradcheck(lambda a: S.apply(a, 0), (A,))
    torch.autograd.gradcheck(lambda g: S.apply_t(g, 0), (torch.randn(10, 3, dtype=F64, requires_grad=True),))
    R = pr.sketch.srht_operator(9, 30, dtype=F64)
    torch.autograd.gradcheck(lambda a: R.apply(a, 0), (A,))


def test_torch_compile_fullgraph():
    S = pr.sketch.sparse_sign(16, 128, nnz=4)
    R = pr.sketch.srht_operator(16, 100)

    def f(a, b):
        return S.apply(a, 0).sum(0) + R.apply(b, -1).sum(0)

    a, b = torch.randn(128, 16), torch.randn(7, 100)
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(a, b), f(a, b))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: pr.sketch.gaussian_skop(2.5, 10), TypeError, "m must be a positive int"),
        (lambda: pr.sketch.count_skop(0, 10), ValueError, "m must be a positive int"),
        (lambda: pr.sketch.sjlt_skop(3, 10, sparsity=4), ValueError, "sparsity must be <= m"),
        (lambda: pr.sketch.sparse_sketch_operator(5, 10, 6, Axis.Short), ValueError, "vec_nnz must be <="),
        (lambda: pr.sketch.sparse_sketch_operator(5, 10, 2, "diagonal"), TypeError, "axis must be one of"),
        (lambda: pr.sketch.dense_sketch_operator(5, 10, "cauchy"), TypeError, "distribution must be one of"),
        (lambda: pr.sketch.srht(torch.randn(10), 11), ValueError, "m must be <="),
        (lambda: pr.sketch.srht_operator(11, 10), ValueError, "d must be <= n"),
        (lambda: pr.sketch.sketch_tensor(torch.randn(4, 5), 2, 3, "gaussian"), ValueError, "axis must be in [-2, 1]"),
        (lambda: pr.sketch.sketch_tensor(torch.randn(4, 5), 0, 5, "gaussian"), ValueError, "new_size must be <="),
        (lambda: pr.sketch.sketch_tensor(torch.randn(4, 5), 0, 2), ValueError, "exactly one of"),
        (lambda: pr.sketch.sketch_tensor(torch.randn(4, 5), 0, 2, sketch_matrix=torch.randn(2, 3)),
         ValueError, "sketch_matrix must be a [new_size, n]"),
        (lambda: pr.sketch.sparse_sign(4, 10).apply(torch.randn(9, 2)), ValueError, "expected size 10"),
        (lambda: pr.sketch.sparse_sign(4, 10).apply(torch.randn(10, 2), dim=2), ValueError, "dim must be in"),
        (lambda: pr.sketch.sparse_sign(4, 10).apply(torch.ones(10, dtype=torch.int64)), TypeError, "floating-point"),
        (lambda: pr.sketch.fwht(torch.randn(3, 12)), RuntimeError, "power of two"),
        (lambda: pr.sketch.gaussian_skop(3, 4, dtype=torch.int32), TypeError, "dtype must be a floating-point"),
    ],
)
def test_bad_inputs(call, exc, words):
    with pytest.raises(exc, match=words.replace("[", r"\[").replace("]", r"\]")):
        call()


def test_op_level_errors_match_fake():
    rows, vals = _op_args()
    for fn in (torch.ops.panther.sparse_sketch_apply, torch.ops.panther.sparse_sketch_apply_triton):
        with pytest.raises(RuntimeError, match="expected size 50"):
            fn(torch.randn(49, 2, dtype=F64), rows, vals, 12, 0)
        with pytest.raises(RuntimeError, match="vals has dtype"):
            fn(torch.randn(50, 2), rows, vals, 12, 0)
        with pytest.raises(RuntimeError, match=r"rows must hold indices in \[0, 5\)|d must"):
            torch.ops.panther.sparse_sketch_apply(torch.randn(50, 2, dtype=F64), rows, vals, 5, 0)


def test_sketch_tensor():
    x = torch.randn(3, 40, 5, dtype=F64)
    out, S = pr.sketch.sketch_tensor(x, -2, 10, DistributionFamily.GAUSSIAN, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 10, 5) and S.shape == (10, 40) and S.dtype == F64
    torch.testing.assert_close(out, torch.einsum("kn,bnc->bkc", S, x))
    assert torch.equal(pr.sketch.sketch_tensor(x, 1, 10, sketch_matrix=S), out)


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_matches_cpu(dtype):
    S = pr.sketch.sparse_sign(64, 5000, nnz=4, generator=torch.Generator().manual_seed(0))
    A = torch.randn(5000, 96)
    ref = S.apply(A)  # CPU C++ kernel, fp32
    Sg = S.to("cuda")
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for dim, a in ((0, A), (1, A.T.contiguous())):
        out = Sg.apply(a.to("cuda", dtype), dim)
        expected = ref if dim == 0 else ref.T
        torch.testing.assert_close(out.float().cpu(), expected, rtol=tol, atol=tol * 10)
        G = torch.randn(out.shape)
        torch.testing.assert_close(Sg.apply_t(G.to("cuda", dtype), dim).float().cpu(),
                                   S.apply_t(G.to(dtype).float(), dim), rtol=tol, atol=tol * 10)
    x = torch.randn(33, 1 << 15)
    torch.testing.assert_close(pr.sketch.fwht(x.to("cuda", dtype)).float().cpu(), pr.sketch.fwht(x.to(dtype).float()),
                               rtol=tol, atol=tol * 10)
    op = pr.sketch.srht_operator(100, 3000, generator=torch.Generator().manual_seed(0))
    y = torch.randn(3000, 8)
    cuda_op = pr.sketch.SRHT(op.signs.cuda(), op.index.cuda(), op.n)
    torch.testing.assert_close(cuda_op.apply(y.cuda()).cpu(), op.apply(y), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_gpu_compile_and_opcheck():
    S = pr.sketch.sparse_sign(32, 1000, nnz=4, device="cuda")
    a = torch.randn(1000, 64, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.panther.sparse_sketch_apply_triton, (a, S.rows, S.vals, 32, 0))
    torch.library.opcheck(torch.ops.panther.fwht_triton, (torch.randn(4, 2048, device="cuda"),))
    R = pr.sketch.srht_operator(16, 3000, device="cuda")
    torch.library.opcheck(torch.ops.panther.srht_apply_triton,
                          (torch.randn(3000, 8, device="cuda", requires_grad=True), R.signs, R.index, 0))
    order, offsets = _sk.bucket_order(S.rows, 32)
    torch.library.opcheck(torch.ops.panther.sparse_sketch_apply_sorted_triton,
                          (a, S.rows, S.vals, order, offsets, 32, 0))
    chunked = _sk.bucket_order(S.rows, 32, 128)  # 8 chunks: partial sums, then their sum
    torch.library.opcheck(torch.ops.panther.sparse_sketch_apply_sorted_triton, (a, S.rows, S.vals, *chunked, 32, 0))
    g = torch.compile(lambda x: _sk.sparse_apply(x, S.rows, S.vals, 32, 0, chunked), fullgraph=True)
    torch.testing.assert_close(g(a), S.apply(a, 0))
    assert torch.equal(g(a), g(a))
    assert torch.equal(S.apply(a, 0), S.apply(a, 0))  # the sorted segmented sum is deterministic
    f = torch.compile(lambda x: S.apply(x, 0), fullgraph=True)
    torch.testing.assert_close(f(a), S.apply(a, 0))
    g = torch.Generator(device="cuda").manual_seed(0)
    assert pr.sketch.gaussian_skop(4, 5, generator=g).device.type == "cuda"
