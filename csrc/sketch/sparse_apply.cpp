// Applying a sparse sign sketch (CountSketch, SJLT, SASO) without materialising it.
//
// The operator S is [d, m] with s non-zeros in every column i, stored column-wise:
//   rows [m, s] (int64, the row index of each non-zero, in [0, d))
//   vals [m, s] (the values, ±1/sqrt(s) for the sketches built by panther.sketch)
//
//   sparse_sketch_apply(A, rows, vals, d, dim):   sketches axis `dim` of A (size m -> d):
//       out[.., r, ..] = sum_{i, j : rows[i, j] = r} vals[i, j] * A[.., i, ..]      (S A along dim)
//   sparse_sketch_apply_t(G, rows, vals, dim):    the adjoint, axis `dim` of G goes d -> m:
//       out[.., i, ..] = sum_j vals[i, j] * G[.., rows[i, j], ..]                  (S^T G along dim)
//
// Both are linear in the tensor argument, so each is the other's backward. The tensor is
// viewed as [pre, m, post] (m = size of `dim`); the work is nnz(S) * pre * post multiply-adds
// and one read of A: memory-bound, as a sketch should be.
//
// CPU: OpenMP-parallel loops (at::parallel_for). The scatter splits work over (pre, post
// blocks) so no two threads write the same output; when that gives fewer tasks than
// threads (a tall matrix with few columns) it also splits the m axis into chunks with
// private partial outputs that are summed at the end (the output is only d x post).
// CUDA: the same math with ATen index_add_/index_select (the Triton kernels in
// panther/ops/sketch/triton_kernels.py are the fast GPU path; this keeps the op usable
// from C++/AOTInductor on CUDA).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "checks.h"

namespace panther {
namespace {

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* tensor_name) {
  TORCH_CHECK(ndim >= 1, tensor_name, " must have at least 1 dimension, got a scalar");
  TORCH_CHECK(dim >= -ndim && dim < ndim, "dim must be in [", -ndim, ", ", ndim - 1, "] for ", tensor_name,
              " of ", ndim, " dimensions, got ", dim);
  return dim < 0 ? dim + ndim : dim;
}

// Checks shared by both directions; returns the wrapped dim.
int64_t check_sketch_args(const at::Tensor& t, const char* tname, const at::Tensor& rows,
                          const at::Tensor& vals, int64_t dim) {
  check_floating(t, tname);
  const int64_t wd = wrap_dim(dim, t.dim(), tname);
  check_dim(rows, "rows", 2);
  TORCH_CHECK(rows.scalar_type() == at::kLong, "rows must be an int64 tensor, got ", rows.scalar_type());
  TORCH_CHECK(rows.device() == t.device(), "rows is on ", rows.device(), " but ", tname, " is on ", t.device(),
              ": expected the same device");
  check_dim(vals, "vals", 2);
  TORCH_CHECK(vals.sizes() == rows.sizes(), "vals has shape ", vals.sizes(), ": expected the shape of rows ",
              rows.sizes());
  check_like(vals, "vals", t, tname);
  return wd;
}

// Row indices are checked on the CPU (cheap next to the apply); on CUDA an index out of
// range is caught by index_add_/index_select's device-side checks.
void check_rows_range(const at::Tensor& rows, int64_t d) {
  if (rows.device().is_cpu() && rows.numel() > 0) {
    const auto mn = rows.min().item<int64_t>(), mx = rows.max().item<int64_t>();
    TORCH_CHECK(mn >= 0 && mx < d, "rows must hold indices in [0, ", d, ") (d), got values in [", mn, ", ", mx,
                "]");
  }
}

std::vector<int64_t> replaced(at::IntArrayRef sizes, int64_t dim, int64_t value) {
  auto v = sizes.vec();
  v[dim] = value;
  return v;
}

struct Layout {
  int64_t pre, mid, post;
};

Layout layout_of(const at::Tensor& t, int64_t dim) {
  int64_t pre = 1, post = 1;
  for (int64_t i = 0; i < dim; ++i) pre *= t.size(i);
  for (int64_t i = dim + 1; i < t.dim(); ++i) post *= t.size(i);
  return {pre, t.size(dim), post};
}

// Work in float32 for half/bfloat16 (accumulation precision), in the input type otherwise.
at::ScalarType compute_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

constexpr int64_t kBlock = 512;  // post-axis elements per task: a few KiB of contiguous output

template <typename T>
void scatter_cpu(const T* a, const int64_t* rows, const T* vals, T* out, Layout l, int64_t s, int64_t d) {
  const int64_t nblk = (l.post + kBlock - 1) / kBlock;
  const int64_t base_tasks = l.pre * nblk;
  const int64_t threads = at::get_num_threads();
  // Enough m-chunks to feed every thread, but each chunk at least 1024 input rows long.
  int64_t mchunks = 1;
  if (base_tasks < threads && l.mid >= 2048) {
    mchunks = std::min<int64_t>((threads + base_tasks - 1) / base_tasks, l.mid / 1024);
  }
  const int64_t out_elems = l.pre * d * l.post;
  std::vector<T> partial(mchunks > 1 ? static_cast<size_t>((mchunks - 1) * out_elems) : 0, T(0));
  const int64_t mlen = (l.mid + mchunks - 1) / mchunks;
  at::parallel_for(0, base_tasks * mchunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t mc = task / base_tasks, rest = task % base_tasks;
      const int64_t p = rest / nblk, q0 = (rest % nblk) * kBlock, q1 = std::min(l.post, q0 + kBlock);
      const int64_t i0 = mc * mlen, i1 = std::min(l.mid, i0 + mlen);
      T* o = (mc == 0 ? out : partial.data() + (mc - 1) * out_elems) + p * d * l.post;
      const T* ap = a + p * l.mid * l.post;
      for (int64_t i = i0; i < i1; ++i) {
        const T* arow = ap + i * l.post;
        for (int64_t j = 0; j < s; ++j) {
          const T v = vals[i * s + j];
          T* orow = o + rows[i * s + j] * l.post;
          for (int64_t q = q0; q < q1; ++q) orow[q] += v * arow[q];
        }
      }
    }
  });
  for (int64_t mc = 1; mc < mchunks; ++mc) {
    const T* src = partial.data() + (mc - 1) * out_elems;
    at::parallel_for(0, out_elems, 1 << 14, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) out[e] += src[e];
    });
  }
}

template <typename T>
void gather_cpu(const T* g, const int64_t* rows, const T* vals, T* out, Layout l, int64_t s, int64_t m) {
  // l describes g ([pre, d, post]); out is [pre, m, post]. Every output row is owned by one task.
  const int64_t d = l.mid;
  at::parallel_for(0, l.pre * m, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, l.post)),
                   [&](int64_t t0, int64_t t1) {
                     for (int64_t task = t0; task < t1; ++task) {
                       const int64_t p = task / m, i = task % m;
                       T* orow = out + (p * m + i) * l.post;
                       const T* gp = g + p * d * l.post;
                       for (int64_t q = 0; q < l.post; ++q) orow[q] = T(0);
                       for (int64_t j = 0; j < s; ++j) {
                         const T v = vals[i * s + j];
                         const T* grow = gp + rows[i * s + j] * l.post;
                         for (int64_t q = 0; q < l.post; ++q) orow[q] += v * grow[q];
                       }
                     }
                   });
}

at::Tensor sparse_sketch_apply_cpu(const at::Tensor& A, const at::Tensor& rows, const at::Tensor& vals, int64_t d,
                                   int64_t dim) {
  const int64_t wd = check_sketch_args(A, "A", rows, vals, dim);
  TORCH_CHECK(d >= 1, "d must be a positive int (the sketch size), got ", d);
  TORCH_CHECK(A.size(wd) == rows.size(0), "A has shape ", A.sizes(), ": expected size ", rows.size(0), " at dim ",
              dim, " (the operator's m, rows.shape[0])");
  check_rows_range(rows, d);
  const auto ct = compute_type(A.scalar_type());
  const auto a = A.to(ct).contiguous();
  const auto v = vals.to(ct).contiguous();
  const auto r = rows.contiguous();
  auto out = at::zeros(replaced(A.sizes(), wd, d), a.options());
  const Layout l = layout_of(a, wd);
  AT_DISPATCH_FLOATING_TYPES(ct, "sparse_sketch_apply", [&] {
    scatter_cpu<scalar_t>(a.const_data_ptr<scalar_t>(), r.const_data_ptr<int64_t>(), v.const_data_ptr<scalar_t>(),
                          out.mutable_data_ptr<scalar_t>(), l, rows.size(1), d);
  });
  return out.to(A.scalar_type());
}

at::Tensor sparse_sketch_apply_t_cpu(const at::Tensor& G, const at::Tensor& rows, const at::Tensor& vals,
                                     int64_t d, int64_t dim) {
  const int64_t wd = check_sketch_args(G, "G", rows, vals, dim);
  TORCH_CHECK(d >= 1, "d must be a positive int (the sketch size), got ", d);
  TORCH_CHECK(G.size(wd) == d, "G has shape ", G.sizes(), ": expected size ", d, " at dim ", dim,
              " (the sketch size d)");
  check_rows_range(rows, d);
  const int64_t m = rows.size(0);
  const auto ct = compute_type(G.scalar_type());
  const auto g = G.to(ct).contiguous();
  const auto v = vals.to(ct).contiguous();
  const auto r = rows.contiguous();
  auto out = at::empty(replaced(G.sizes(), wd, m), g.options());
  const Layout l = layout_of(g, wd);
  AT_DISPATCH_FLOATING_TYPES(ct, "sparse_sketch_apply_t", [&] {
    gather_cpu<scalar_t>(g.const_data_ptr<scalar_t>(), r.const_data_ptr<int64_t>(), v.const_data_ptr<scalar_t>(),
                         out.mutable_data_ptr<scalar_t>(), l, rows.size(1), m);
  });
  return out.to(G.scalar_type());
}

#ifdef PANTHER_WITH_CUDA
// ATen versions (any device); registered for CUDA.
at::Tensor sparse_sketch_apply_aten(const at::Tensor& A, const at::Tensor& rows, const at::Tensor& vals, int64_t d,
                                    int64_t dim) {
  const int64_t wd = check_sketch_args(A, "A", rows, vals, dim);
  TORCH_CHECK(d >= 1, "d must be a positive int (the sketch size), got ", d);
  TORCH_CHECK(A.size(wd) == rows.size(0), "A has shape ", A.sizes(), ": expected size ", rows.size(0), " at dim ",
              dim, " (the operator's m, rows.shape[0])");
  const auto ct = compute_type(A.scalar_type());
  const auto a = A.to(ct).movedim(wd, 0);
  auto out = at::zeros(replaced(a.sizes(), 0, d), a.options());
  std::vector<int64_t> bshape(a.dim(), 1);
  bshape[0] = a.size(0);
  for (int64_t j = 0; j < rows.size(1); ++j) {
    out.index_add_(0, rows.select(1, j), a * vals.select(1, j).to(ct).view(bshape));
  }
  return out.movedim(0, wd).contiguous().to(A.scalar_type());
}

at::Tensor sparse_sketch_apply_t_aten(const at::Tensor& G, const at::Tensor& rows, const at::Tensor& vals,
                                      int64_t d, int64_t dim) {
  const int64_t wd = check_sketch_args(G, "G", rows, vals, dim);
  TORCH_CHECK(G.size(wd) == d, "G has shape ", G.sizes(), ": expected size ", d, " at dim ", dim,
              " (the sketch size d)");
  const auto ct = compute_type(G.scalar_type());
  const auto g = G.to(ct).movedim(wd, 0);
  std::vector<int64_t> bshape(g.dim(), 1);
  bshape[0] = rows.size(0);
  at::Tensor out;
  for (int64_t j = 0; j < rows.size(1); ++j) {
    auto term = g.index_select(0, rows.select(1, j)) * vals.select(1, j).to(ct).view(bshape);
    out = out.defined() ? out.add_(term) : term;
  }
  return out.movedim(0, wd).contiguous().to(G.scalar_type());
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(panther, m) {
  m.def("sparse_sketch_apply(Tensor A, Tensor rows, Tensor vals, int d, int dim) -> Tensor");
  m.def("sparse_sketch_apply_t(Tensor G, Tensor rows, Tensor vals, int d, int dim) -> Tensor");
}

TORCH_LIBRARY_IMPL(panther, CPU, m) {
  m.impl("sparse_sketch_apply", &sparse_sketch_apply_cpu);
  m.impl("sparse_sketch_apply_t", &sparse_sketch_apply_t_cpu);
}

#ifdef PANTHER_WITH_CUDA
TORCH_LIBRARY_IMPL(panther, CUDA, m) {
  m.impl("sparse_sketch_apply", &sparse_sketch_apply_aten);
  m.impl("sparse_sketch_apply_t", &sparse_sketch_apply_t_aten);
}
#endif

}  // namespace panther
