// CPU kernels of nade: the tied-weight NADE layer in O(N D H) time and O(N H) extra memory.
//
// Math (nade.h): a_0 = c, a_{t+1} = a_t + W[:, t] v_t, h_t = sigmoid(a_t),
// logits[n, t, l] = V[t, l] . h_t + b[t, l]. Nothing of size (N, D, H) is stored: threads split
// the examples into one chunk each, and a chunk walks the steps t = 0..D-1 with its running
// pre-activations a (nb, H) in float64 (L2-resident: 32 x 500 doubles = 128 KB). Per (example,
// step) one vector pass over H computes h_t, the head's dot products and the next a.
// The backward walks t = D-1..0 from a_{D-1} (saved by the forward, (N, H) float64), recovering
// a_{t-1} = a_t - W[:, t-1] v_{t-1} by subtracting exactly what the forward added, and carries
// R = sum_{t' > t} da_{t'} (float64 too); again one pass over H per (example, step) gives dh, da,
// dv_t = W_t . R, and adds into the chunk's own dW (D, H) and dV (D, L, H); dc = R at the end.
//
// Where GEMMs fit: with L = 1 (the Bernoulli head) every per-step product is rank one (h_t . V_t,
// g_t V_t, g_t h_t, v_t R, W_t . R): GEMMs of inner or outer dimension 1 run at the speed of the
// fused pass at best, and the pass reads a, R, W_t and V_t once for all five. For wide heads
// (L > kFusedHeads, a K-level categorical NADE) the head's products are real GEMMs per step and
// chunk, logits_t (nb, L) = h (nb, H) V_t^T, dh (nb, H) = g_t V_t, dV_t += g_t^T h, run through
// gemm_rowmajor (oneDNN's brgemm for float32, fastgen_gemm.h); the pass keeps the rest.
// Zero inputs (most pixels of binary images) skip their terms: a + 0 W, dW_t += 0 R.
// The cost is the sigmoid, twice per (example, step, unit): nade_vec.h has a fast float32 one.
// float32 and bfloat16 compute in float32 (bf16 converted on entry) with float64 running sums;
// float64 in float64. The chunk partition depends only on the sizes and the thread count, and
// per-chunk gradient buffers are summed in chunk order: results are deterministic for a thread
// count.
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastgen_cpu.h"
#include "fastgen_gemm.h"
#include "nade/nade.h"
#include "nade/nade_host.h"
#include "nade/nade_vec.h"

namespace fastgen {
namespace {

using at::Tensor;
using namespace nade_vec;
constexpr int64_t kFusedHeads = 4;  // heads up to this width run fused in the pass; wider ones on GEMMs

template <typename C>
struct Args {
  int64_t N, D, H, L;
  const C* v;   // (N, D)
  const C* wt;  // (D, H): W transposed, row t = W[:, t]
  const C* c;   // (H,)
  const C* V;   // (D, L, H)
  const C* VT;  // (D, H, L): the GEMM head's operand (wide heads only)
  const C* b;   // (D, L)
};

template <typename C>
inline C reduce_sum(const at::vec::Vectorized<C>& x) {
  using Vec = at::vec::Vectorized<C>;
  return at::vec::vec_reduce_all<C>([](Vec& p, Vec& q) { return p + q; }, x);
}

// Fused heads (L <= kFusedHeads) keep h = sigmoid(a) of each example in a cache: a changes only
// at steps with v_t != 0 (about one in seven for binary digits), and only there is the sigmoid
// evaluated; every other step is a dot product with V_t (forward) or a few fused multiply-adds
// (backward). The results are those of evaluating it at every step, bit for bit.

// Forward of examples [n0, n1): logits rows into out (N, D, L); the running sum lives in a_last's
// rows (N, H), which end holding a_{D-1}.
template <typename C, int LF>
void forward_chunk_fused(const Args<C>& A, int64_t n0, int64_t n1, C* out, double* a_last) {
  using Vec = at::vec::Vectorized<C>;
  const int64_t D = A.D, H = A.H, L = A.L, nb = n1 - n0;
  double* a = a_last + n0 * H;
  Tensor hc_t = at::empty({nb * H}, at::TensorOptions().dtype(c10::CppTypeToScalarType<C>::value));
  C* hc = hc_t.data_ptr<C>();  // h of the current segment (a unchanged)
  for (int64_t n = 0; n < nb; ++n) {
    for (int64_t j = 0; j < H; ++j) a[n * H + j] = static_cast<double>(A.c[j]);
    for_vectors<C>(H, [&](int64_t j, auto k) { st(sigmoid_cpu(Acc<C>::load(a + n * H + j, k)), hc + n * H + j, k); });
  }
  for (int64_t t = 0; t < D; ++t) {
    const C* w_t = A.wt + t * H;
    const C* V_t = A.V + t * L * H;
    for (int64_t n = 0; n < nb; ++n) {
      double* an = a + n * H;
      C* hn = hc + n * H;
      const C vs = A.v[(n0 + n) * D + t];
      const bool add = t + 1 < D && vs != C(0);  // binary data: most steps leave a (and h) as it is
      const Vec vn(vs);
      Vec acc[LF];
      for (auto& x : acc) x = Vec(C(0));
      for_vectors<C>(H, [&](int64_t j, auto k) {  // a partial vector's zero lanes add nothing
        const Vec h = ld(hn + j, k);
        for (int l = 0; l < LF; ++l) acc[l] = at::vec::fmadd(h, ld(V_t + l * H + j, k), acc[l]);
        if (add)  // the term rounded to C, then summed in double; the next step's h
          st(sigmoid_cpu(Acc<C>::add_get(an + j, vn * ld(w_t + j, k), k)), hn + j, k);
      });
      C* o = out + ((n0 + n) * D + t) * L;
      for (int l = 0; l < LF; ++l) o[l] = reduce_sum(acc[l]) + A.b[t * L + l];
    }
  }
}

// Backward of examples [n0, n1): grad_v rows into gv (N, D); this chunk's dW^T (D, H), dV
// (D, L, H) and dc (H,, float64) go to its own buffers dwt, dV (each row written, no need to
// zero them first) and dc (added to). Within a segment s = h (1 - h) is constant, so
// R = sum_{t' > t} da_t' is kept as R64 (float64) + s Q, with Q (float) the sum of dh over the
// segment's pending steps: flushed into R64 when a changes, when dW_t needs R (v_t != 0), and
// every kFlushEvery steps (Q sums only a few terms in float). rf = R64 rounded, for dv.
template <typename C, int LF, bool kDv>
void backward_chunk_fused(const Args<C>& A, const C* g, const double* a_last, int64_t n0, int64_t n1, C* gv,
                          C* dwt, C* dV, double* dc) {
  using Vec = at::vec::Vectorized<C>;
  constexpr int kFlushEvery = 8;
  const int64_t D = A.D, H = A.H, L = A.L, nb = n1 - n0;
  Tensor state_t = at::zeros({2 * nb * H}, at::TensorOptions().dtype(at::kDouble));
  Tensor cache_t = at::zeros({3 * nb * H}, at::TensorOptions().dtype(c10::CppTypeToScalarType<C>::value));
  double *a = state_t.data_ptr<double>(), *R = a + nb * H;
  C *hc = cache_t.data_ptr<C>(), *Q = hc + nb * H, *rf = Q + nb * H;
  std::copy(a_last + n0 * H, a_last + n1 * H, a);
  for (int64_t n = 0; n < nb; ++n)
    for_vectors<C>(H, [&](int64_t j, auto k) { st(sigmoid_cpu(Acc<C>::load(a + n * H + j, k)), hc + n * H + j, k); });
  std::vector<int> pending(nb, 0);  // steps summed in Q since its last flush
  for (int64_t t = D - 1; t >= 0; --t) {
    const C* w_t = A.wt + t * H;
    const C* w_p = A.wt + (t > 0 ? t - 1 : 0) * H;
    const C* V_t = A.V + t * L * H;
    C* dV_t = dV + t * L * H;
    C* dw_t = dwt + t * H;
    std::fill(dV_t, dV_t + L * H, C(0));  // this chunk's rows of step t, zeroed here while in cache
    std::fill(dw_t, dw_t + H, C(0));
    for (int64_t n = 0; n < nb; ++n) {
      double *an = a + n * H, *Rn = R + n * H;
      C *hn = hc + n * H, *Qn = Q + n * H, *rfn = rf + n * H;
      const C* gn = g + ((n0 + n) * D + t) * L;
      Vec gl[LF];
      for (int l = 0; l < LF; ++l) gl[l] = Vec(gn[l]);
      const C* vrow = A.v + (n0 + n) * D;
      const C vps = t > 0 ? -vrow[t - 1] : C(0);  // (-v) W = -(v W) exactly: the forward's term undone
      const bool has_v = vrow[t] != C(0), change = vps != C(0);
      const int p = (has_v ? 0 : pending[n]) + 1;
      const bool flush = change || p >= kFlushEvery;
      pending[n] = flush ? 0 : p;
      const Vec vt(vrow[t]), vp(vps);
      Vec dv_acc(C(0));
      for_vectors<C>(H, [&](int64_t j, auto k) {
        const Vec h = ld(hn + j, k);
        const auto s = [&] { return h * (Vec(C(1)) - h); };  // only where Q is flushed or read
        Vec q = ld(Qn + j, k), r;
        (void)r;
        if (has_v) {  // R complete for dW_t: flush Q first
          r = Acc<C>::add_get(Rn + j, s() * q, k);
          st(r, rfn + j, k);
          q = Vec(C(0));
          st(at::vec::fmadd(vt, r, ld(dw_t + j, k)), dw_t + j, k);
          if constexpr (kDv) dv_acc = at::vec::fmadd(ld(w_t + j, k), r, dv_acc);
        } else if constexpr (kDv) {
          r = at::vec::fmadd(s(), q, ld(rfn + j, k));
          dv_acc = at::vec::fmadd(ld(w_t + j, k), r, dv_acc);
        }
        Vec dh = gl[0] * ld(V_t + j, k);
        for (int l = 1; l < LF; ++l) dh = at::vec::fmadd(gl[l], ld(V_t + l * H + j, k), dh);
        for (int l = 0; l < LF; ++l) st(at::vec::fmadd(gl[l], h, ld(dV_t + l * H + j, k)), dV_t + l * H + j, k);
        q = q + dh;
        if (flush) {
          st(Acc<C>::add_get(Rn + j, s() * q, k), rfn + j, k);
          q = Vec(C(0));
          if (change) st(sigmoid_cpu(Acc<C>::add_get(an + j, vp * ld(w_p + j, k), k)), hn + j, k);
        }
        st(q, Qn + j, k);
      });
      gv[(n0 + n) * D + t] = kDv ? reduce_sum(dv_acc) : C(0);
    }
  }
  for (int64_t n = 0; n < nb; ++n) {
    for_vectors<C>(H, [&](int64_t j, auto k) {  // the last pending steps
      const Vec h = ld(hc + n * H + j, k);
      Acc<C>::add(R + n * H + j, h * (Vec(C(1)) - h) * ld(Q + n * H + j, k), k);
    });
    for (int64_t j = 0; j < H; ++j) dc[j] += R[n * H + j];
  }
}

// The GEMM head (L > kFusedHeads): per step and chunk, logits_t = h V_t^T on a GEMM after the
// pass that computes h and the next a.
template <typename C>
void forward_chunk_gemm(const Args<C>& A, int64_t n0, int64_t n1, C* out, double* a_last) {
  using Vec = at::vec::Vectorized<C>;
  const int64_t D = A.D, H = A.H, L = A.L, nb = n1 - n0;
  double* a = a_last + n0 * H;
  for (int64_t n = 0; n < nb; ++n)
    for (int64_t j = 0; j < H; ++j) a[n * H + j] = static_cast<double>(A.c[j]);
  Tensor hbuf_t = at::empty({nb * H}, at::TensorOptions().dtype(c10::CppTypeToScalarType<C>::value));
  C* hbuf = hbuf_t.data_ptr<C>();
  for (int64_t t = 0; t < D; ++t) {
    const C* w_t = A.wt + t * H;
    for (int64_t n = 0; n < nb; ++n) {
      double* an = a + n * H;
      const C vs = A.v[(n0 + n) * D + t];
      const bool add = t + 1 < D && vs != C(0);
      const Vec vn(vs);
      for_vectors<C>(H, [&](int64_t j, auto k) {
        st(sigmoid_cpu(Acc<C>::load(an + j, k)), hbuf + n * H + j, k);
        if (add) Acc<C>::add(an + j, vn * ld(w_t + j, k), k);
      });
    }
    C* o = out + (n0 * D + t) * L;
    gemm_rowmajor(nb, L, H, hbuf, H, A.VT + t * H * L, L, o, D * L, /*accumulate=*/false);
    for (int64_t n = 0; n < nb; ++n)
      for (int64_t l = 0; l < L; ++l) o[n * D * L + l] += A.b[t * L + l];
  }
}

// Backward for the GEMM head: dh = g_t V_t and dV_t += g_t^T h per step on GEMMs, the pass
// between them as in the fused backward but evaluating the sigmoid at every step.
template <typename C>
void backward_chunk_gemm(const Args<C>& A, const C* g, const double* a_last, int64_t n0, int64_t n1, C* gv, C* dwt,
                         C* dV, double* dc, bool want_dv) {
  using Vec = at::vec::Vectorized<C>;
  const int64_t D = A.D, H = A.H, L = A.L, nb = n1 - n0;
  Tensor state_t = at::zeros({2 * nb * H}, at::TensorOptions().dtype(at::kDouble));
  double *a = state_t.data_ptr<double>(), *R = a + nb * H;
  std::copy(a_last + n0 * H, a_last + n1 * H, a);
  Tensor work_t = at::empty({2 * nb * H + L * nb}, at::TensorOptions().dtype(c10::CppTypeToScalarType<C>::value));
  C *hbuf = work_t.data_ptr<C>(), *dhbuf = hbuf + nb * H, *gT = dhbuf + nb * H;
  for (int64_t t = D - 1; t >= 0; --t) {
    const C* w_t = A.wt + t * H;
    const C* w_p = A.wt + (t > 0 ? t - 1 : 0) * H;
    C* dw_t = dwt + t * H;
    const C* g_t = g + (n0 * D + t) * L;  // row n at n * D * L
    std::fill(dw_t, dw_t + H, C(0));
    gemm_rowmajor(nb, H, L, g_t, D * L, A.V + t * L * H, H, dhbuf, H, /*accumulate=*/false);
    for (int64_t n = 0; n < nb; ++n) {
      double *an = a + n * H, *Rn = R + n * H;
      const C* vrow = A.v + (n0 + n) * D;
      const C vps = t > 0 ? -vrow[t - 1] : C(0);
      const bool has_v = vrow[t] != C(0), undo = vps != C(0);
      const Vec vt(vrow[t]), vp(vps);
      Vec dv_acc(C(0));
      for_vectors<C>(H, [&](int64_t j, auto k) {
        const Vec h = sigmoid_cpu(Acc<C>::load(an + j, k));
        st(h, hbuf + n * H + j, k);
        const Vec r = Acc<C>::load(Rn + j, k);  // sum of da over the later steps
        if (want_dv) dv_acc = at::vec::fmadd(ld(w_t + j, k), r, dv_acc);
        if (has_v) st(at::vec::fmadd(vt, r, ld(dw_t + j, k)), dw_t + j, k);
        Acc<C>::add(Rn + j, nade_preact_grad(ld(dhbuf + n * H + j, k), h), k);
        if (undo) Acc<C>::add(an + j, vp * ld(w_p + j, k), k);
      });
      gv[(n0 + n) * D + t] = want_dv ? reduce_sum(dv_acc) : C(0);
    }
    for (int64_t n = 0; n < nb; ++n)  // dV_t = g_t^T h
      for (int64_t l = 0; l < L; ++l) gT[l * nb + n] = g_t[n * D * L + l];
    gemm_rowmajor(L, H, nb, gT, nb, hbuf, H, dV + t * L * H, H, /*accumulate=*/false);
  }
  for (int64_t n = 0; n < nb; ++n)
    for (int64_t j = 0; j < H; ++j) dc[j] += R[n * H + j];
}

// W (H, D) -> W^T (D, H), contiguous, in the compute dtype: ATen's copy of a transposed view walks
// one side with a large stride; the tiled transpose of fastgen_cpu.h is several times faster.
Tensor transposed(const Tensor& m_in, at::ScalarType ct) {
  auto m = m_in.to(ct).contiguous();
  auto out = at::empty({m.size(1), m.size(0)}, m.options());
  if (m.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(ct, "nade_transpose", [&] {
    transpose_tiles<scalar_t, scalar_t>(m.const_data_ptr<scalar_t>(), m.size(1), out.data_ptr<scalar_t>(), m.size(0),
                                        m.size(0), m.size(1));
  });
  return out;
}

// One chunk of examples per thread, never more chunks than examples, and one chunk for small
// problems: waking a second thread costs from microseconds on an idle machine to milliseconds on
// a loaded one, against about a nanosecond per (example, step, unit) of work.
inline int64_t num_chunks(int64_t N, int64_t D, int64_t H, int64_t L) {
  constexpr int64_t kWorkPerChunk = int64_t(1) << 20;
  const int64_t work = N * D * std::max<int64_t>(H, 1) * (1 + L);
  const int64_t by_work = std::max<int64_t>(1, work / kWorkPerChunk);
  return std::max<int64_t>(1, std::min({N, static_cast<int64_t>(at::get_num_threads()), by_work}));
}

template <typename F>
void for_each_chunk(int64_t N, int64_t chunks, const F& f) {
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) f(ch * N / chunks, (ch + 1) * N / chunks, ch);
  });
}

// Calls f with std::integral_constant<int, LF>: L for fused heads, 0 for the GEMM head.
template <typename F>
void dispatch_head(int64_t L, const F& f) {
  switch (L) {
    case 1: return f(std::integral_constant<int, 1>());
    case 2: return f(std::integral_constant<int, 2>());
    case 3: return f(std::integral_constant<int, 3>());
    case 4: return f(std::integral_constant<int, 4>());
    default: return f(std::integral_constant<int, 0>());
  }
}
static_assert(kFusedHeads == 4, "dispatch_head instantiates the fused heads 1..4");

std::tuple<Tensor, Tensor> nade_cpu(const Tensor& v_in, const Tensor& W_in, const Tensor& c_in, const Tensor& V_in,
                                    const Tensor& b_in) {
  const auto s = check_nade(v_in, W_in, c_in, V_in, b_in);
  const auto dt = v_in.scalar_type(), ct = nade_compute_type(dt);
  auto out = at::empty({s.N, s.D, s.L}, v_in.options().dtype(ct));
  auto a_last = at::empty({s.N, s.H}, v_in.options().dtype(at::kDouble));
  if (s.N == 0) return {out.to(dt), a_last};
  if (s.L == 0 || s.D == 0) {  // no logits to compute: a_{D-1} alone (the backward's start)
    const int64_t m = std::max<int64_t>(s.D - 1, 0);
    auto vd = v_in.narrow(1, 0, m).to(ct).to(at::kDouble), wd = W_in.narrow(1, 0, m).to(ct).to(at::kDouble);
    a_last.copy_(c_in.to(ct).to(at::kDouble).expand({s.N, s.H}) + at::mm(vd, wd.t()));
    return {out.to(dt), a_last};
  }
  auto v = v_in.to(ct).contiguous(), wt = transposed(W_in, ct), c = c_in.to(ct).contiguous();
  auto V = V_in.to(ct).contiguous(), b = b_in.to(ct).contiguous();
  auto VT = s.L > kFusedHeads ? V.transpose(1, 2).contiguous() : Tensor();
  const int64_t chunks = num_chunks(s.N, s.D, s.H, s.L);
  AT_DISPATCH_FLOATING_TYPES(ct, "nade_cpu", [&] {
    const Args<scalar_t> A{s.N, s.D, s.H, s.L, v.const_data_ptr<scalar_t>(), wt.const_data_ptr<scalar_t>(),
                           c.const_data_ptr<scalar_t>(), V.const_data_ptr<scalar_t>(),
                           VT.defined() ? VT.const_data_ptr<scalar_t>() : nullptr, b.const_data_ptr<scalar_t>()};
    dispatch_head(s.L, [&](auto lf) {
      for_each_chunk(s.N, chunks, [&](int64_t n0, int64_t n1, int64_t) {
        constexpr int LF = decltype(lf)::value;
        if constexpr (LF > 0)
          forward_chunk_fused<scalar_t, LF>(A, n0, n1, out.data_ptr<scalar_t>(), a_last.data_ptr<double>());
        else
          forward_chunk_gemm<scalar_t>(A, n0, n1, out.data_ptr<scalar_t>(), a_last.data_ptr<double>());
      });
    });
  });
  return {out.to(dt), a_last};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> nade_backward_cpu(const Tensor& g_in, const Tensor& v_in,
                                                                     const Tensor& W_in, const Tensor& V_in,
                                                                     const Tensor& a_last_in, bool grad_v) {
  const auto s = check_nade_backward(g_in, v_in, W_in, V_in, a_last_in);
  const auto dt = v_in.scalar_type(), ct = nade_compute_type(dt);
  const auto copts = v_in.options().dtype(ct);
  auto g = g_in.to(ct).contiguous();
  auto gb = g.sum(0);
  if (s.N == 0 || s.D == 0 || s.L == 0) {  // no logits: every gradient is zero
    return {at::zeros({s.N, s.D}, v_in.options()), at::zeros({s.H, s.D}, v_in.options()),
            at::zeros({s.H}, v_in.options()), at::zeros({s.D, s.L, s.H}, v_in.options()), gb.to(dt)};
  }
  auto v = v_in.to(ct).contiguous(), wt = transposed(W_in, ct), V = V_in.to(ct).contiguous();
  auto a_last = a_last_in.contiguous();
  const int64_t chunks = num_chunks(s.N, s.D, s.H, s.L);
  auto gv = at::empty({s.N, s.D}, copts);
  auto dwt = at::empty({chunks, s.D, s.H}, copts), dV = at::empty({chunks, s.D, s.L, s.H}, copts);
  auto dc = at::zeros({chunks, s.H}, copts.dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(ct, "nade_backward_cpu", [&] {
    const Args<scalar_t> A{s.N, s.D, s.H, s.L, v.const_data_ptr<scalar_t>(), wt.const_data_ptr<scalar_t>(),
                           nullptr, V.const_data_ptr<scalar_t>(), nullptr, nullptr};
    dispatch_head(s.L, [&](auto lf) {
      for_each_chunk(s.N, chunks, [&](int64_t n0, int64_t n1, int64_t ch) {
        constexpr int LF = decltype(lf)::value;
        const auto* gp = g.const_data_ptr<scalar_t>();
        const double* ap = a_last.const_data_ptr<double>();
        scalar_t *gvp = gv.data_ptr<scalar_t>(), *dwp = dwt.data_ptr<scalar_t>() + ch * s.D * s.H;
        scalar_t* dVp = dV.data_ptr<scalar_t>() + ch * s.D * s.L * s.H;
        double* dcp = dc.data_ptr<double>() + ch * s.H;
        if constexpr (LF > 0) {
          if (grad_v)
            backward_chunk_fused<scalar_t, LF, true>(A, gp, ap, n0, n1, gvp, dwp, dVp, dcp);
          else
            backward_chunk_fused<scalar_t, LF, false>(A, gp, ap, n0, n1, gvp, dwp, dVp, dcp);
        } else {
          backward_chunk_gemm<scalar_t>(A, gp, ap, n0, n1, gvp, dwp, dVp, dcp, grad_v);
        }
      });
    });
  });
  for (int64_t ch = 1; ch < chunks; ++ch) {  // the chunks' sums, in chunk order (deterministic)
    dwt[0].add_(dwt[ch]);
    dV[0].add_(dV[ch]);
  }
  auto gW = transposed(dwt[0], ct);
  auto gV = dV[0];
  auto gc = dc.sum(0).to(ct);
  return {gv.to(dt), gW.to(dt), gc.to(dt), gV.to(dt), gb.to(dt)};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("nade", &fastgen::nade_cpu);
  m.impl("nade_backward", &fastgen::nade_backward_cpu);
}
