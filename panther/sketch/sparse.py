"""Sparse sign sketches: CountSketch, SJLT / SASO, LASO.

A ``SparseSketch`` S is a [d, m] operator with ``nnz`` non-zeros ±1/√nnz in every column, at
distinct rows drawn uniformly (1 non-zero: CountSketch; several: SJLT / OSNAP, "short-axis
sparse"). Scaling: every column has unit norm and the signs are independent, so
E[SᵀS] = I_m: ‖Sx‖² = ‖x‖² in expectation for every x ∈ R^m.

The operator is stored column-wise, ``rows`` [m, nnz] (int64) and ``vals`` [m, nnz], and is
applied without being materialised (``apply``: the panther sparse_sketch_apply op, C++ on
CPU, Triton on CUDA; cost nnz·(size of A), one read of A). On CUDA the non-zeros are also
sorted by (chunk of input rows, output row) when the operator is created there
(``bucket_order``), so an apply to a tensor on the operator's device is a deterministic
segmented sum without atomics, chunk by chunk so that the nnz gathers of an input row can hit L2
(for rows along the sketched axis at least 16 elements wide; narrower ones, such as a vector,
take an atomic scatter whose float sums may differ in the last bits from run to run).
``to_dense`` / ``to_sparse`` give the matrix of the exact shape [d, m].
"""

from __future__ import annotations

import math

import torch

from .. import ops as _ops_pkg  # noqa: F401  (loads the op library)
from .._validation import positive_int
from ..ops import sketch as _sk
from ._args import check_dim, check_tensor, random_signs, resolve
from .enums import Axis


def distinct_rows(m: int, d: int, nnz: int, device, generator) -> torch.Tensor:
    """[m, nnz] int64: for each of m columns, nnz distinct rows of [0, d), a uniform random subset.

    Floyd's sampling, vectorised over the columns: for j = d-nnz .. d-1 draw t in [0, j]; keep
    t unless this column already holds it, else keep j. nnz passes over m indices.
    """
    if nnz == 1:
        return torch.randint(0, d, (m, 1), generator=generator, device=device)
    out = torch.empty((m, nnz), dtype=torch.int64, device=device)
    for t, j in enumerate(range(d - nnz, d)):
        r = torch.randint(0, j + 1, (m,), generator=generator, device=device)
        if t:
            taken = (out[:, :t] == r[:, None]).any(dim=1)
            r = torch.where(taken, torch.full_like(r, j), r)
        out[:, t] = r
    return out


class SparseSketch:
    """A sparse sign sketch S [d, m], ``nnz`` non-zeros ±1/√nnz per column; E[SᵀS] = I_m."""

    def __init__(self, rows: torch.Tensor, vals: torch.Tensor, d: int):
        if rows.dim() != 2 or rows.dtype != torch.int64:
            raise ValueError(f"rows must be a 2-D int64 tensor [m, nnz], got {rows.dtype} {list(rows.shape)}")
        if vals.shape != rows.shape:
            raise ValueError(f"vals must have the shape of rows {list(rows.shape)}, got {list(vals.shape)}")
        self.rows, self.vals, self.d = rows, vals, positive_int(d, "d")
        # Built eagerly (not on first apply) so that apply traces cleanly under torch.compile.
        self._sorted = _sk.bucket_order(rows, self.d) if rows.is_cuda else None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.d, self.rows.shape[0])

    @property
    def nnz(self) -> int:
        return self.rows.shape[1]

    def _vals_for(self, A: torch.Tensor):
        return self.rows.to(A.device), self.vals.to(device=A.device, dtype=A.dtype)

    def apply(self, A: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """S applied along axis ``dim`` of A (size m → d): ``S @ A`` for dim=0 of a matrix,
        ``A @ Sᵀ`` for dim=-1. Differentiable in A (the backward is ``apply_t``)."""
        check_tensor(A, "A")
        wd = check_dim(dim, A.dim())
        if A.shape[wd] != self.shape[1]:
            raise ValueError(f"A has shape {list(A.shape)}: expected size {self.shape[1]} (the sketch's m) at dim {dim}")
        rows, vals = self._vals_for(A)
        sorted_index = self._sorted if A.device == self.rows.device else None
        return _sk.sparse_apply(A, rows, vals, self.d, wd, sorted_index)

    def apply_t(self, G: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Sᵀ applied along axis ``dim`` of G (size d → m): the adjoint of ``apply``."""
        check_tensor(G, "G")
        wd = check_dim(dim, G.dim())
        if G.shape[wd] != self.d:
            raise ValueError(f"G has shape {list(G.shape)}: expected size {self.d} (the sketch's d) at dim {dim}")
        rows, vals = self._vals_for(G)
        return _sk.sparse_apply_t(G, rows, vals, self.d, wd)

    def to_sparse(self) -> torch.Tensor:
        """The operator as a coalesced torch sparse COO tensor of shape exactly [d, m]."""
        m, nnz = self.rows.shape
        cols = torch.arange(m, device=self.rows.device).repeat_interleave(nnz)
        idx = torch.stack([self.rows.reshape(-1), cols])
        return torch.sparse_coo_tensor(idx, self.vals.reshape(-1), self.shape, check_invariants=True).coalesce()

    def to_dense(self) -> torch.Tensor:
        """The operator as a dense [d, m] tensor."""
        m, nnz = self.rows.shape
        dense = torch.zeros(self.shape, dtype=self.vals.dtype, device=self.vals.device)
        cols = torch.arange(m, device=self.rows.device)[:, None].expand(m, nnz)
        return dense.index_put_((self.rows, cols), self.vals, accumulate=True)

    def to(self, device=None, dtype=None) -> "SparseSketch":
        return SparseSketch(self.rows.to(device), self.vals.to(device=device, dtype=dtype), self.d)

    def __repr__(self) -> str:
        return f"SparseSketch(shape={self.shape}, nnz={self.nnz}, dtype={self.vals.dtype}, device={self.vals.device})"


def sparse_sign(d, m, nnz=None, device=None, dtype=None, generator=None) -> SparseSketch:
    """A [d, m] sparse sign sketch with ``nnz`` non-zeros ±1/√nnz per column (distinct rows).

    ``nnz`` defaults to min(8, d).
    nnz=1 is CountSketch; nnz of a few (4–8) gives an OSNAP/SJLT subspace embedding with
    d = O(n log n) rows for an n-dimensional subspace. E[SᵀS] = I_m.
    """
    d, m = positive_int(d, "d"), positive_int(m, "m")
    nnz = min(8, d) if nnz is None else positive_int(nnz, "nnz")
    if nnz > d:
        raise ValueError(f"nnz must be <= d (distinct rows per column), got nnz={nnz} > d={d}")
    device, dtype = resolve(device, dtype, generator)
    rows = distinct_rows(m, d, nnz, device, generator)
    vals = random_signs((m, nnz), device, dtype, generator).mul_(1.0 / math.sqrt(nnz))
    return SparseSketch(rows, vals, d)


def count_sketch(d, m, device=None, dtype=None, generator=None) -> SparseSketch:
    """CountSketch S [d, m]: one ±1 per column at a uniform row. E[SᵀS] = I_m."""
    return sparse_sign(d, m, nnz=1, device=device, dtype=dtype, generator=generator)


def count_skop(m, d, device=None, dtype=None, generator=None) -> torch.Tensor:
    """Dense CountSketch matrix [m, d] (earlier API): one ±1 per column. E[SᵀS] = I_d."""
    m, d = positive_int(m, "m"), positive_int(d, "d")
    return count_sketch(m, d, device=device, dtype=dtype, generator=generator).to_dense()


def sjlt_skop(m, d, sparsity=2, device=None, dtype=None, generator=None) -> torch.Tensor:
    """Dense SJLT matrix [m, d] (earlier API): ``sparsity`` distinct rows per column, ±1/√sparsity.
    E[SᵀS] = I_d. ``sparsity`` must be <= m."""
    m, d, sparsity = positive_int(m, "m"), positive_int(d, "d"), positive_int(sparsity, "sparsity")
    if sparsity > m:
        raise ValueError(f"sparsity must be <= m (distinct rows per column), got sparsity={sparsity} > m={m}")
    return sparse_sign(m, d, nnz=sparsity, device=device, dtype=dtype, generator=generator).to_dense()


def _laso(short: int, long: int, vec_nnz: int, device, dtype, generator) -> torch.Tensor:
    """COO [short, long]: each row gets vec_nnz iid column draws with replacement, each ±c;
    duplicates are summed. c = √(long / (short·vec_nnz)) so that every column has expected
    squared norm 1 and E[SᵀS] = I_long (independent signs keep off-diagonals at zero mean)."""
    cols = torch.randint(0, long, (short, vec_nnz), generator=generator, device=device)
    rows = torch.arange(short, device=device)[:, None].expand(short, vec_nnz)
    scale = math.sqrt(long / (short * vec_nnz))
    vals = random_signs((short, vec_nnz), device, dtype, generator).mul_(scale)
    idx = torch.stack([rows.reshape(-1), cols.reshape(-1)])
    return torch.sparse_coo_tensor(idx, vals.reshape(-1), (short, long), check_invariants=True).coalesce()


def sparse_sketch_operator(m, n, vec_nnz, axis, device=None, dtype=None, generator=None) -> torch.Tensor:
    """A sparse sign operator as a torch sparse COO tensor of shape exactly [m, n] (earlier API).

    ``axis=Axis.Short`` (SASO): every vector along the short axis (a column when m <= n, a row
    when m > n) has ``vec_nnz`` non-zeros ±1/√vec_nnz at distinct positions.
    ``axis=Axis.Long`` (LASO): every vector along the long axis gets ``vec_nnz`` positions drawn
    with replacement, values ±√(long/(short·vec_nnz)), duplicates summed.
    Scaling, both kinds: E[SᵀS] = I_n when m <= n (the operator sketches R^n to R^m as S @ x);
    E[SSᵀ] = I_m when m > n (it sketches as x @ S).
    """
    m, n, vec_nnz = positive_int(m, "m"), positive_int(n, "n"), positive_int(vec_nnz, "vec_nnz")
    axis = Axis.parse(axis, "axis")
    device, dtype = resolve(device, dtype, generator)
    short, long = min(m, n), max(m, n)
    if axis is Axis.Short:
        if vec_nnz > short:
            raise ValueError(
                f"vec_nnz must be <= min(m, n) = {short} for Axis.Short (distinct positions), got {vec_nnz}"
            )
        op = sparse_sign(short, long, nnz=vec_nnz, device=device, dtype=dtype, generator=generator).to_sparse()
    else:
        op = _laso(short, long, vec_nnz, device, dtype, generator)
    return op if m <= n else op.t().coalesce()
