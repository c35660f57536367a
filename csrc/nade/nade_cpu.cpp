// CPU kernels of nade: the tied-weight NADE layer in O(N D H) time and O(N H) extra memory.
//
// Math (nade.h): a_0 = c, a_{t+1} = a_t + W[:, t] v_t, h_t = sigmoid(a_t),
// logits[n, t, l] = V[t, l] . h_t + b[t, l]. Nothing of size (N, D, H) is stored: the forward
// walks the steps t = 0..D-1 with the running pre-activations a (N, H) in float64; the backward
// walks t = D-1..0 from a_{D-1} (saved by the forward, (N, H) float64), recovering
// a_t = a_{t+1} - W[:, t] v_t by subtracting exactly what the forward added, and carries
// R = sum_{t' > t} da_{t'} (float64 too): dv_t = W_t . R, dW_t += v_t R, dV_t += g_t h_t,
// dc = R at the end.
//
// Heads up to kFusedHeads logits (the Bernoulli head, L = 1) run fused: nade_cpu_fused.h.
// Wider heads (K-level categorical NADE) have real GEMMs per step, logits_t = h V_t^T,
// dh = g_t V_t, dV_t = g_t^T h, run through gemm_rowmajor (oneDNN's brgemm for float32,
// fastgen_gemm.h) with the pass between them; threads split the examples, each with its own dW
// and dV, summed in chunk order.
// The sigmoid is most of the remaining cost: nade_vec.h has a fast float32 one. float32 and
// bfloat16 compute in float32 (bf16 converted on entry) with float64 running sums; float64 in
// float64. Partitions depend only on the sizes and the thread count, and partial sums are
// added in a fixed order: results are deterministic for a thread count.
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastgen_cpu.h"
#include "fastgen_gemm.h"
#include "nade/nade.h"
#include "nade/nade_host.h"
#include "nade/nade_vec.h"
#include "nade/nade_cpu_fused.h"

namespace fastgen {
namespace {

using namespace nade_fused;

// The GEMM head (L > kFusedHeads): per step and chunk, logits_t = h V_t^T on a GEMM after the
// pass that computes h and the next a.
template <typename C>
void forward_chunk_gemm(const Args<C>& A, int64_t n0, int64_t n1, C* out, double* a_last) {
  using Vec = at::vec::Vectorized<C>;
  const int64_t D = A.D, H = A.H, L = A.L, nb = n1 - n0;
  double* a = a_last + n0 * H;
  for (int64_t n = 0; n < nb; ++n)
    for (int64_t j = 0; j < H; ++j) a[n * H + j] = static_cast<double>(A.c[j]);
  Tensor hbuf_t = at::empty({nb * H}, options_of<C>());
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
  Tensor work_t = at::empty({2 * nb * H + L * nb}, options_of<C>());
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

// W (H, D) -> W^T (D, H), contiguous, in the compute dtype (the GEMM head's operand)
Tensor transposed(const Tensor& m_in, at::ScalarType ct) {
  auto m = m_in.to(ct).contiguous();
  auto out = at::empty({m.size(1), m.size(0)}, m.options());
  if (m.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(ct, "nade_transpose", [&] {
    transpose_block(m.const_data_ptr<scalar_t>(), m.size(1), out.data_ptr<scalar_t>(), m.size(0), m.size(0),
                    m.size(1));
  });
  return out;
}

// One chunk of examples per thread, never more chunks than examples, and one chunk for small
// problems: waking a second thread costs from microseconds on an idle machine to milliseconds on
// a loaded one, against about a nanosecond per (example, step, unit) of work.
inline int64_t num_chunks(int64_t N, int64_t D, int64_t H, int64_t L, int64_t max_chunks = -1) {
  constexpr int64_t kWorkPerChunk = int64_t(1) << 20;
  const int64_t work = N * D * std::max<int64_t>(H, 1) * (1 + L);
  const int64_t by_work = std::max<int64_t>(1, work / kWorkPerChunk);
  const int64_t most = max_chunks < 0 ? N : max_chunks;  // examples (or unit blocks) to share out
  return std::max<int64_t>(1, std::min({most, static_cast<int64_t>(at::get_num_threads()), by_work}));
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
  const bool fused = s.L <= kFusedHeads;
  auto v = v_in.to(ct).contiguous(), W = W_in.to(ct).contiguous(), c = c_in.to(ct).contiguous();
  auto V = V_in.to(ct).contiguous(), b = b_in.to(ct).contiguous();
  auto wt = fused ? Tensor() : transposed(W, ct);
  auto VT = fused ? Tensor() : V.transpose(1, 2).contiguous();
  const int64_t chunks = num_chunks(s.N, s.D, s.H, s.L);
  AT_DISPATCH_FLOATING_TYPES(ct, "nade_cpu", [&] {
    const Args<scalar_t> A{s.N, s.D, s.H, s.L, v.const_data_ptr<scalar_t>(), W.const_data_ptr<scalar_t>(),
                           wt.defined() ? wt.const_data_ptr<scalar_t>() : nullptr, c.const_data_ptr<scalar_t>(),
                           V.const_data_ptr<scalar_t>(), VT.defined() ? VT.const_data_ptr<scalar_t>() : nullptr,
                           b.const_data_ptr<scalar_t>()};
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

// The GEMM head's backward: threads split the examples, each with its own dW^T and dV, summed
// in chunk order.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backward_gemm_head(const NadeSizes& s, const Tensor& g,
                                                                      const Tensor& v, const Tensor& W,
                                                                      const Tensor& V, const Tensor& a_last,
                                                                      const Tensor& gb, bool grad_v,
                                                                      at::ScalarType dt) {
  const auto ct = v.scalar_type();
  const auto copts = v.options();
  auto wt = transposed(W, ct);
  const int64_t chunks = num_chunks(s.N, s.D, s.H, s.L);
  auto gv = at::empty({s.N, s.D}, copts);
  auto dwt = at::empty({chunks, s.D, s.H}, copts), dV = at::empty({chunks, s.D, s.L, s.H}, copts);
  auto dc = at::zeros({chunks, s.H}, copts.dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(ct, "nade_backward_cpu", [&] {
    const Args<scalar_t> A{s.N, s.D, s.H, s.L, v.const_data_ptr<scalar_t>(), W.const_data_ptr<scalar_t>(),
                           wt.const_data_ptr<scalar_t>(), nullptr, V.const_data_ptr<scalar_t>(), nullptr, nullptr};
    for_each_chunk(s.N, chunks, [&](int64_t n0, int64_t n1, int64_t ch) {
      backward_chunk_gemm<scalar_t>(A, g.const_data_ptr<scalar_t>(), a_last.const_data_ptr<double>(), n0, n1,
                                    gv.data_ptr<scalar_t>(), dwt.data_ptr<scalar_t>() + ch * s.D * s.H,
                                    dV.data_ptr<scalar_t>() + ch * s.D * s.L * s.H,
                                    dc.data_ptr<double>() + ch * s.H, grad_v);
    });
  });
  for (int64_t ch = 1; ch < chunks; ++ch) {  // the chunks' sums, in chunk order (deterministic)
    dwt[0].add_(dwt[ch]);
    dV[0].add_(dV[ch]);
  }
  return {gv.to(dt), transposed(dwt[0], ct).to(dt), dc.sum(0).to(ct).to(dt), dV[0].to(dt), gb.to(dt)};
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
  auto v = v_in.to(ct).contiguous(), W = W_in.to(ct).contiguous(), V = V_in.to(ct).contiguous();
  auto a_last = a_last_in.contiguous();
  if (s.L > kFusedHeads) return backward_gemm_head(s, g, v, W, V, a_last, gb, grad_v, dt);
  // fused heads: threads split the hidden units, in whole vectors of kUnitBlock (narrower blocks
  // per thread, for h to stay in L1, measured slower: every event's pass is then repeated per block)
  const int64_t blocks = (s.H + kUnitBlock - 1) / kUnitBlock;
  const int64_t chunks = std::min(num_chunks(s.N, s.D, s.H, s.L, /*max_chunks=*/blocks), blocks);
  auto gW = at::empty({s.H, s.D}, copts), gc = at::empty({s.H}, copts), gV = at::empty({s.D, s.L, s.H}, copts);
  auto gv = grad_v ? at::empty({chunks, s.N, s.D}, copts) : at::zeros({s.N, s.D}, copts);
  auto gT = g.permute({1, 2, 0}).contiguous();  // (D, L, N): each step's g for the GEMV
  AT_DISPATCH_FLOATING_TYPES(ct, "nade_backward_cpu", [&] {
    const Args<scalar_t> A{s.N, s.D, s.H, s.L, v.const_data_ptr<scalar_t>(), W.const_data_ptr<scalar_t>(),
                           nullptr, nullptr, V.const_data_ptr<scalar_t>(), nullptr, nullptr};
    const Schedule sched = make_schedule(A.v, s.N, s.D, flush_every(grad_v));
    dispatch_head(s.L, [&](auto lf) {
      constexpr int LF = decltype(lf)::value;
      if constexpr (LF > 0) {
        at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
          for (int64_t ch = c0; ch < c1; ++ch) {
            const int64_t j0 = ch * blocks / chunks * kUnitBlock;
            const int64_t j1 = std::min((ch + 1) * blocks / chunks * kUnitBlock, s.H);
            const auto *gp = g.const_data_ptr<scalar_t>(), *gTp = gT.const_data_ptr<scalar_t>();
            const double* ap = a_last.const_data_ptr<double>();
            auto *gWp = gW.data_ptr<scalar_t>(), *gVp = gV.data_ptr<scalar_t>(), *gcp = gc.data_ptr<scalar_t>();
            if (grad_v)
              backward_units_fused<scalar_t, LF, true>(A, gp, gTp, sched, ap, j0, j1,
                                                       gv.data_ptr<scalar_t>() + ch * s.N * s.D, gWp, gVp, gcp);
            else
              backward_units_fused<scalar_t, LF, false>(A, gp, gTp, sched, ap, j0, j1, nullptr, gWp, gVp, gcp);
          }
        });
      }
    });
  });
  if (grad_v) {  // the units' shares, in chunk order
    for (int64_t ch = 1; ch < chunks; ++ch) gv[0].add_(gv[ch]);
    gv = chunks > 0 ? gv[0] : at::zeros({s.N, s.D}, copts);
  }
  return {gv.to(dt), gW.to(dt), gc.to(dt), gV.to(dt), gb.to(dt)};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("nade", &fastgen::nade_cpu);
  m.impl("nade_backward", &fastgen::nade_backward_cpu);
}
