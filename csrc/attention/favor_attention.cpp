// FAVOR+ random-feature attention (Performer), non-causal and chunked causal.
//
//   q [B, H, N, D], k [B, H, S, D], v [B, H, S, Dv], projection P [m, D]
//   softmax kernel: phi(x) = m^-1/2 exp(x' P^T - |x'|^2/2 - c),  x' = x D^-1/4
//   relu kernel:    phi(x) = m^-1/2 relu(x P^T) + eps
//   out_l = phi(q_l) . sum_s phi(k_s) v_s^T / phi(q_l) . sum_s phi(k_s)   (s <= l when causal)
//
// The stabiliser c is the row max for a query and, non-causal, the max over all keys and
// features of a (batch, head) for keys: constants that cancel exactly between numerator and
// denominator, which is why the softmax features carry no additive epsilon (an epsilon would
// make the result depend on c). Keys marked in key_padding_mask (True = masked out, as in
// nn.MultiheadAttention) get phi = 0.
//
// Causal, one constant over all keys fails: an early query whose keys all have large norms
// (logits far below a later key's) sees only underflowed features, 0/0. There each key is
// exponentiated against its own row max c_s (phi(k_s) = exp(t_s - c_s), largest entry 1) and
// query l weighs key s by exp(c_s - M_l) <= 1 with M_l = max_{s' <= l} c_s': its own
// constant, which cancels for that query. The chunked product carries this weight (below).
//
// The numerator and denominator are one product with V' = [V, 1]. The causal product
//   R_l = sum_{s<=l} (A_l . B_s) C_s
// runs by chunks of C tokens: an intra-chunk masked product tril(A B^T) C plus A times the
// running state sum_{s in earlier chunks} B_s C_s^T, with the states of a group of chunks
// formed at once by a cumulative sum (vectorised; never a per-token loop). The backward
// is three more causal products (two of them anti-causal, run on flipped sequences).
//
// All arithmetic is float32 (float64 for float64 inputs) whatever the input dtype. ATen
// only: the same code serves CPU and CUDA (the Triton op is the fast CUDA forward).

#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>

#include "checks.h"

namespace panther {
namespace {

constexpr double kReluEps = 1e-6;
constexpr int64_t kDefaultChunk = 64;
// Elements of chunk states held at once by the causal product (bounds its memory).
constexpr int64_t kStateBudget = int64_t(1) << 24;

struct FavorShape {
  int64_t B, H, N, S, D, Dv, m;
};

FavorShape check_favor(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& P,
                       const std::string& kernel_fn, bool causal, const std::optional<at::Tensor>& mask,
                       int64_t chunk_size) {
  check_floating(q, "q");
  check_dim(q, "q", 4);
  check_dim(k, "k", 4);
  check_dim(v, "v", 4);
  check_dim(P, "projection", 2);
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
  check_size(k, "k", 0, B, "batch, from q [B, H, N, D]");
  check_size(k, "k", 1, H, "heads, from q [B, H, N, D]");
  check_size(k, "k", 3, D, "head dim, from q [B, H, N, D]");
  const int64_t S = k.size(2);
  check_size(v, "v", 0, B, "batch, from q [B, H, N, D]");
  check_size(v, "v", 1, H, "heads, from q [B, H, N, D]");
  check_size(v, "v", 2, S, "key length, from k [B, H, S, D]");
  check_size(P, "projection", 1, D, "head dim, from q [B, H, N, D]");
  TORCH_CHECK(P.size(0) >= 1, "projection has shape ", P.sizes(), ": expected at least 1 random feature (dim 0)");
  check_like(k, "k", q, "q");
  check_like(v, "v", q, "q");
  check_like(P, "projection", q, "q");
  TORCH_CHECK(kernel_fn == "softmax" || kernel_fn == "relu", "kernel_fn must be one of ['relu', 'softmax'], got '",
              kernel_fn, "'");
  TORCH_CHECK(!causal || N == S, "causal attention needs as many queries as keys: q has ", N, " and k has ", S);
  TORCH_CHECK(chunk_size >= 0, "chunk_size must be >= 0 (0 = default), got ", chunk_size);
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool, "key_padding_mask must be a bool tensor (True = masked out), got ",
                mask->scalar_type());
    check_dim(*mask, "key_padding_mask", 2);
    check_size(*mask, "key_padding_mask", 0, B, "batch");
    check_size(*mask, "key_padding_mask", 1, S, "key length");
    TORCH_CHECK(mask->device() == q.device(), "key_padding_mask is on ", mask->device(), " but q is on ", q.device(),
                ": expected the same device");
  }
  return {B, H, N, S, D, v.size(3), P.size(0)};
}

at::ScalarType work_type(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// [B, H, L, X] -> [B*H, L, X] in the working dtype.
at::Tensor flat(const at::Tensor& t, at::ScalarType wt) {
  return t.to(wt).reshape({t.size(0) * t.size(1), t.size(2), t.size(3)});
}

// keep [B*H, S, 1] (1 = attend) from key_padding_mask [B, S], or undefined.
at::Tensor keep_mask(const std::optional<at::Tensor>& mask, const FavorShape& s) {
  if (!mask.has_value()) return at::Tensor();
  return mask->logical_not().unsqueeze(1).expand({s.B, s.H, s.S}).reshape({s.B * s.H, s.S, 1});
}

struct Features {
  at::Tensor phi;  // [BH, L, m]
  at::Tensor aux;  // softmax: scaled input x'; relu: pre-activation u
  at::Tensor lw;   // causal softmax keys: each key's stabiliser c_s [BH, L] (-inf where masked)
};

at::Tensor finite_or_zero(const at::Tensor& t) { return at::where(at::isfinite(t), t, at::zeros_like(t)); }

// per_key: keys of the causal product, each against its own row max (returned as lw).
Features features(const at::Tensor& x, const at::Tensor& P, bool softmax, bool is_query, const at::Tensor& keep,
                  bool per_key = false) {
  const int64_t m = P.size(0), D = P.size(1);
  const double inv_sqrt_m = 1.0 / std::sqrt(static_cast<double>(m));
  if (softmax) {
    const auto xs = x.mul(std::pow(static_cast<double>(D), -0.25));
    auto t = at::matmul(xs, P.t()).sub_(xs.square().sum(-1, true).mul_(0.5));
    if (keep.defined()) t.masked_fill_(keep.logical_not(), -std::numeric_limits<double>::infinity());
    auto c = is_query || per_key ? t.amax({-1}, true) : t.amax({-2, -1}, true);
    const auto lw = per_key ? c.squeeze(-1) : at::Tensor();
    c = finite_or_zero(c);  // every key masked: phi = 0, not NaN
    return {t.sub_(c).exp_().mul_(inv_sqrt_m), xs, lw};
  }
  const auto u = at::matmul(x, P.t());
  auto phi = u.relu().mul_(inv_sqrt_m).add_(kReluEps);
  if (keep.defined()) phi.mul_(keep);
  return {phi, u};
}

// Gradient of the input x from the gradient of its features.
at::Tensor features_backward(const at::Tensor& dphi, const Features& f, const at::Tensor& P, bool softmax) {
  const int64_t m = P.size(0), D = P.size(1);
  if (softmax) {
    const auto du = dphi * f.phi;  // d phi / d u = phi (no epsilon; c is a cancelling constant)
    const auto dxs = at::matmul(du, P).sub_(du.sum(-1, true) * f.aux);
    return dxs.mul_(std::pow(static_cast<double>(D), -0.25));
  }
  const auto du = dphi * (f.aux > 0).to(dphi.scalar_type()) * (1.0 / std::sqrt(static_cast<double>(m)));
  return at::matmul(du, P);
}

// R_l = sum_{s <= l} (A_l . B_s) w_ls C_s for A, B [BH, N, m], C [BH, N, X]: chunked, vectorised.
// Without lw, w_ls = 1. With per-key log-weights lw [BH, N] (-inf: weight 0),
// w_ls = exp(lw_s - M_l), M_l = max_{s' <= l} lw_s': every exponent is <= 0, so no weight
// overflows and the largest one a query sees is 1. The chunk states are then kept relative
// to the max of their own chunk, the carried state relative to the running max, and each
// group of chunks combines its states with pairwise weights exp(cmax_g' - M_g) (g' < g).
at::Tensor causal_product(const at::Tensor& A, const at::Tensor& Bk, const at::Tensor& Cv, int64_t chunk,
                          const at::Tensor& lw = at::Tensor()) {
  const int64_t BH = A.size(0), N = A.size(1), m = A.size(2), X = Cv.size(2);
  const int64_t C = std::min<int64_t>(chunk, std::max<int64_t>(N, 1));
  const int64_t n_chunks = (N + C - 1) / C, pad = n_chunks * C - N;
  auto padded = [&](const at::Tensor& t) { return pad ? at::constant_pad_nd(t, {0, 0, 0, pad}, 0) : t; };
  const auto a = padded(A).view({BH, n_chunks, C, m});
  const auto b = padded(Bk).view({BH, n_chunks, C, m});
  const auto c = padded(Cv).view({BH, n_chunks, C, X});
  const auto causal_mask = at::ones({C, C}, A.options().dtype(at::kBool)).tril();
  const int64_t group = std::max<int64_t>(1, kStateBudget / std::max<int64_t>(1, BH * m * X));
  const bool weighted = lw.defined();
  const double inf = std::numeric_limits<double>::infinity();
  at::Tensor lwc, run_max, chunk_max, state_max;
  if (weighted) {
    lwc = (pad ? at::constant_pad_nd(lw, {0, pad}, -inf) : lw).view({BH, n_chunks, C});
    run_max = std::get<0>(lwc.view({BH, n_chunks * C}).cummax(1)).view({BH, n_chunks, C});  // M_l
    chunk_max = lwc.amax(-1);                                                            // [BH, n_chunks]
    state_max = at::full({BH, 1}, -inf, A.options());  // the carried state's reference
  }
  auto state = at::zeros({BH, 1, m, X}, A.options());
  auto out = at::empty({BH, n_chunks, C, X}, A.options());
  for (int64_t g0 = 0; g0 < n_chunks; g0 += group) {
    const int64_t g = std::min(group, n_chunks - g0);
    const auto ag = a.narrow(1, g0, g), cg = c.narrow(1, g0, g);
    auto bg = b.narrow(1, g0, g);
    auto scores = at::matmul(ag, bg.transpose(-1, -2));  // [BH, g, C, C]
    if (!weighted) {
      const auto kv = at::matmul(bg.transpose(-1, -2), cg);  // [BH, g, m, X] per-chunk states
      const auto inclusive = kv.cumsum(1);
      const auto before = (inclusive - kv).add_(state);  // state entering each chunk
      scores.mul_(causal_mask);
      auto o = at::matmul(ag, before);
      o.add_(at::matmul(scores, cg));
      out.narrow(1, g0, g).copy_(o);
      state = state + inclusive.narrow(1, g - 1, 1);
      continue;
    }
    const auto lg = lwc.narrow(1, g0, g);                            // [BH, g, C]
    const auto mq = finite_or_zero(run_max.narrow(1, g0, g));        // M_l
    const auto cm = chunk_max.narrow(1, g0, g);                      // [BH, g]
    // per-chunk states relative to their chunk's max
    const auto kw = (lg - finite_or_zero(cm).unsqueeze(-1)).exp_();  // [BH, g, C]
    const auto kv = at::matmul(bg.mul(kw.unsqueeze(-1)).transpose(-1, -2), cg);
    // the reference of the state entering chunk g: max(carried, chunks g0 .. g-1)
    const auto seen = std::get<0>(cm.cummax(1));
    const auto enter = at::maximum(at::cat({state_max, seen.narrow(1, 0, g - 1)}, 1), state_max);  // [BH, g]
    const auto enter0 = finite_or_zero(enter);
    const auto earlier = at::ones({g, g}, A.options().dtype(at::kBool)).tril(-1);  // [g, g']: g' < g
    const auto pair = at::where(earlier, cm.unsqueeze(1) - enter0.unsqueeze(2), -inf).exp_();  // [BH, g, g']
    auto before = at::matmul(pair, kv.view({BH, g, m * X})).view({BH, g, m, X});
    before.add_(state * (state_max - enter0).exp().view({BH, g, 1, 1}));
    // query l: the inter-chunk term scaled by exp(enter - M_l), the intra-chunk one by exp(lw_s - M_l)
    const auto inter = at::where(at::isfinite(enter).unsqueeze(-1), (enter0.unsqueeze(-1) - mq).exp(),
                                 at::zeros_like(mq));
    scores.mul_(at::where(causal_mask, lg.unsqueeze(2) - mq.unsqueeze(3), -inf).exp_());
    auto o = at::matmul(ag, before).mul_(inter.unsqueeze(-1));
    o.add_(at::matmul(scores, cg));
    out.narrow(1, g0, g).copy_(o);
    // carry the group's total relative to the new running max
    const auto new_max = at::maximum(state_max, cm.amax(1, true));
    const auto new0 = finite_or_zero(new_max);
    const auto w = (cm - new0).exp();  // [BH, g]
    state = state * (state_max - new0).exp().view({BH, 1, 1, 1}) +
            at::matmul(w.unsqueeze(1), kv.view({BH, g, m * X})).view({BH, 1, m, X});
    state_max = new_max;
  }
  return out.view({BH, n_chunks * C, X}).narrow(1, 0, N);
}

// The same sum over s >= l (anti-causal), through flipped sequences.
at::Tensor anticausal_product(const at::Tensor& A, const at::Tensor& Bk, const at::Tensor& Cv, int64_t chunk,
                              const at::Tensor& lw = at::Tensor()) {
  return causal_product(A.flip({1}), Bk.flip({1}), Cv.flip({1}), chunk, lw.defined() ? lw.flip({1}) : lw).flip({1});
}

struct Forward {
  Features fq, fk;
  at::Tensor v1;  // [BH, S, Dv + 1] = [v, 1]
  at::Tensor R;   // [BH, N, Dv + 1]: numerator and denominator
};

Forward forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& P,
                     const std::string& kernel_fn, bool causal, const std::optional<at::Tensor>& mask,
                     int64_t chunk, const FavorShape& s) {
  const auto wt = work_type(q);
  const bool softmax = kernel_fn == "softmax";
  const auto Pw = P.to(wt);
  const auto keep = keep_mask(mask, s);
  Forward f;
  f.fq = features(flat(q, wt), Pw, softmax, true, at::Tensor());
  f.fk = features(flat(k, wt), Pw, softmax, false, keep, causal && softmax);
  const auto vw = flat(v, wt);
  f.v1 = at::cat({vw, at::ones({vw.size(0), vw.size(1), 1}, vw.options())}, -1);
  if (causal) {
    f.R = causal_product(f.fq.phi, f.fk.phi, f.v1, chunk, f.fk.lw);
  } else {
    f.R = at::matmul(f.fq.phi, at::matmul(f.fk.phi.transpose(-1, -2), f.v1));
  }
  return f;
}

int64_t resolve_chunk(int64_t chunk_size) { return chunk_size > 0 ? chunk_size : kDefaultChunk; }

at::Tensor favor_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& projection, c10::string_view kernel_fn_sv, bool causal,
                           const std::optional<at::Tensor>& key_padding_mask, int64_t chunk_size) {
  const std::string kernel_fn(kernel_fn_sv);
  const auto s = check_favor(q, k, v, projection, kernel_fn, causal, key_padding_mask, chunk_size);
  const auto f = forward_impl(q, k, v, projection, kernel_fn, causal, key_padding_mask, resolve_chunk(chunk_size), s);
  const auto out = f.R.narrow(-1, 0, s.Dv) / f.R.narrow(-1, s.Dv, 1);
  return out.view({s.B, s.H, s.N, s.Dv}).to(q.scalar_type());
}

using OptTensor = std::optional<at::Tensor>;
OptTensor defined_or_none(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// Gradients for (q, k, v); the projection is a fixed random matrix.
std::tuple<OptTensor, OptTensor, OptTensor> favor_attention_backward(
    const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& projection, c10::string_view kernel_fn_sv, bool causal,
    const std::optional<at::Tensor>& key_padding_mask, int64_t chunk_size, std::array<bool, 3> mask) {
  const std::string kernel_fn(kernel_fn_sv);
  const auto s = check_favor(q, k, v, projection, kernel_fn, causal, key_padding_mask, chunk_size);
  check_like(grad, "grad", q, "q");
  const std::array<int64_t, 4> expected = {s.B, s.H, s.N, s.Dv};
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(expected), "grad has shape ", grad.sizes(),
              ": expected the output shape ", at::IntArrayRef(expected));
  at::Tensor dq, dk, dv;
  if (!mask[0] && !mask[1] && !mask[2]) return {std::nullopt, std::nullopt, std::nullopt};
  const int64_t chunk = resolve_chunk(chunk_size);
  const auto wt = work_type(q);
  const bool softmax = kernel_fn == "softmax";
  const auto Pw = projection.to(wt);
  const auto f = forward_impl(q, k, v, projection, kernel_fn, causal, key_padding_mask, chunk, s);
  const auto den = f.R.narrow(-1, s.Dv, 1);
  const auto out = f.R.narrow(-1, 0, s.Dv) / den;
  const auto g = flat(grad, wt);
  // out = num / den  =>  dnum = g / den,  dden = -(g . out) / den
  const auto dR = at::cat({g / den, -(g * out).sum(-1, true) / den}, -1);
  at::Tensor da, db, dv1;
  if (causal) {
    // Weighted (causal softmax): key s reaches query l with weight exp(lw_s - M_l). The
    // products over queries l >= s weigh query l by exp(-M_l) (their running max from the
    // right is -M_s: M is non-decreasing) and the rows by exp(lw_s - M_s) <= 1.
    const auto& lw = f.fk.lw;
    at::Tensor neg_m, rows;
    if (lw.defined()) {
      const auto M = finite_or_zero(std::get<0>(lw.cummax(1)));
      neg_m = M.neg();
      rows = (lw - M).exp_().unsqueeze(-1);
    }
    auto weigh = [&](at::Tensor t) { return rows.defined() ? t.mul_(rows) : t; };
    if (mask[0]) da = causal_product(dR, f.v1, f.fk.phi, chunk, lw);
    if (mask[1]) db = weigh(anticausal_product(f.v1, dR, f.fq.phi, chunk, neg_m));
    if (mask[2]) dv1 = weigh(anticausal_product(f.fk.phi, f.fq.phi, dR, chunk, neg_m));
  } else {
    const auto kv = at::matmul(f.fk.phi.transpose(-1, -2), f.v1);  // [BH, m, Dv+1]
    if (mask[0]) da = at::matmul(dR, kv.transpose(-1, -2));
    if (mask[1] || mask[2]) {
      const auto dkv = at::matmul(f.fq.phi.transpose(-1, -2), dR);  // [BH, m, Dv+1]
      if (mask[1]) db = at::matmul(f.v1, dkv.transpose(-1, -2));
      if (mask[2]) dv1 = at::matmul(f.fk.phi, dkv);
    }
  }
  const auto dt = q.scalar_type();
  if (mask[0]) dq = features_backward(da, f.fq, Pw, softmax).view(q.sizes()).to(dt);
  if (mask[1]) {
    if (key_padding_mask.has_value()) db = db * keep_mask(key_padding_mask, s);  // masked phi are constants
    dk = features_backward(db, f.fk, Pw, softmax).view(k.sizes()).to(dt);
  }
  if (mask[2]) dv = dv1.narrow(-1, 0, s.Dv).contiguous().view(v.sizes()).to(dt);
  return {defined_or_none(dq), defined_or_none(dk), defined_or_none(dv)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(panther, m) {
  m.def(
      "favor_attention(Tensor q, Tensor k, Tensor v, Tensor projection, str kernel_fn=\"softmax\","
      " bool causal=False, Tensor? key_padding_mask=None, int chunk_size=0) -> Tensor");
  m.def(
      "favor_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor projection, str kernel_fn,"
      " bool causal, Tensor? key_padding_mask, int chunk_size, bool[3] output_mask)"
      " -> (Tensor?, Tensor?, Tensor?)");
}

TORCH_LIBRARY_IMPL(panther, CPU, m) {
  m.impl("favor_attention", &favor_attention);
  m.impl("favor_attention_backward", &favor_attention_backward);
}

#ifdef PANTHER_WITH_CUDA
TORCH_LIBRARY_IMPL(panther, CUDA, m) {
  m.impl("favor_attention", &favor_attention);
  m.impl("favor_attention_backward", &favor_attention_backward);
}
#endif

}  // namespace panther
