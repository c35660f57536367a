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
// Heads up to kFusedHeads logits (the Bernoulli head, L = 1) run fused: h = sigmoid(a) changes
// only at steps with v_t != 0 (about one in seven for binary digits), the only steps where a,
// R and the sigmoid are touched, in one vector pass over H per (example, step); in between, a
// step is the head's dot products (forward, four examples at a time) or dV_t = sum_n g h_n (a
// register-blocked GEMV over the examples, backward). With L = 1 every per-step product is of
// rank one: GEMMs would run them no faster than these loops. Threads split the examples in the forward
// and the hidden units in the backward, whose every gradient but grad_v is then a sum over
// examples: each thread writes its own columns straight into the outputs, nothing to sum after.
// W is read in transposed blocks of kSteps columns (and dW written back so): no temporary of
// W's size, whose fresh pages cost more than the transposition (the allocator hands blocks of
// megabytes back to the system when they are freed).
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

namespace fastgen {
namespace {

using at::Tensor;
using namespace nade_vec;
constexpr int64_t kFusedHeads = 4;  // heads up to this width run fused in the pass; wider ones on GEMMs
constexpr int64_t kSteps = 16;      // columns of W per transposed block
constexpr int64_t kUnitBlock = 16;  // the fused backward splits H among threads in blocks of whole vectors

template <typename C>
struct Args {
  int64_t N, D, H, L;
  const C* v;   // (N, D)
  const C* W;   // (H, D)
  const C* wt;  // (D, H): W transposed, row t = W[:, t] (GEMM head; the fused heads transpose blocks)
  const C* c;   // (H,)
  const C* V;   // (D, L, H)
  const C* VT;  // (D, H, L): the GEMM head's operand (wide heads only)
  const C* b;   // (D, L)
};

template <typename C>
at::TensorOptions options_of() {  // a buffer of C
  return at::TensorOptions().dtype(c10::CppTypeToScalarType<C>::value);
}

// Forward of examples [n0, n1): logits rows into out (N, D, L); the running sum lives in a_last's
// rows (N, H), which end holding a_{D-1}.
template <typename C, int LF>
void forward_chunk_fused(const Args<C>& A, int64_t n0, int64_t n1, C* out, double* a_last) {
  using Vec = at::vec::Vectorized<C>;
  const int64_t D = A.D, H = A.H, L = A.L, nb = n1 - n0;
  double* a = a_last + n0 * H;
  Tensor buf_t = at::empty({(nb + kSteps) * H}, options_of<C>());
  C *hc = buf_t.data_ptr<C>(), *wb = hc + nb * H;  // h of each example's current segment; W^T rows of the block
  for (int64_t n = 0; n < nb; ++n) {
    for (int64_t j = 0; j < H; ++j) a[n * H + j] = static_cast<double>(A.c[j]);
    for_vectors<C>(H, [&](int64_t j, auto k) { st(sigmoid_cpu(Acc<C>::load(a + n * H + j, k)), hc + n * H + j, k); });
  }
  // logits of examples n, ..., n + G - 1 at step t, each row of V_t loaded once for them; named
  // accumulators (an array of them went to memory on every iteration with GCC)
  const auto dots = [&](int64_t t, int64_t n, auto group) {
    constexpr bool G4 = decltype(group)::value == 4;
    const C *h0 = hc + n * H, *h1 = h0 + (G4 ? H : 0), *h2 = h1 + (G4 ? H : 0), *h3 = h2 + (G4 ? H : 0);
    for (int l = 0; l < LF; ++l) {
      const C* Vl = A.V + (t * L + l) * H;
      Vec a0(C(0)), a1(C(0)), a2(C(0)), a3(C(0));
      for_vectors<C>(H, [&](int64_t j, auto k) {  // a partial vector's zero lanes add nothing
        const Vec w = ld(Vl + j, k);
        a0 = at::vec::fmadd(ld(h0 + j, k), w, a0);
        if constexpr (G4) {
          a1 = at::vec::fmadd(ld(h1 + j, k), w, a1);
          a2 = at::vec::fmadd(ld(h2 + j, k), w, a2);
          a3 = at::vec::fmadd(ld(h3 + j, k), w, a3);
        }
      });
      const C bl = A.b[t * L + l];
      C* o = out + ((n0 + n) * D + t) * L + l;
      o[0] = reduce_sum(a0) + bl;
      if constexpr (G4) {
        o[D * L] = reduce_sum(a1) + bl;
        o[2 * D * L] = reduce_sum(a2) + bl;
        o[3 * D * L] = reduce_sum(a3) + bl;
      }
    }
  };
  for (int64_t t = 0; t < D; ++t) {
    if (t % kSteps == 0) transpose_block(A.W + t, D, wb, H, H, std::min(kSteps, D - t));
    if ((t + 1) % kSteps == 0 && t + 1 < D) prefetch_column(A.W, D, 0, H, t + 1, false);
    int64_t n = 0;
    for (; n + 4 <= nb; n += 4) dots(t, n, std::integral_constant<int, 4>());
    for (; n < nb; ++n) dots(t, n, std::integral_constant<int, 1>());
    if (t + 1 == D) break;
    const C* w_t = wb + (t % kSteps) * H;
    for (n = 0; n < nb; ++n) {  // the next step's a and h, where they change
      const C vs = A.v[(n0 + n) * D + t];
      if (vs == C(0)) continue;
      const Vec vn(vs);
      double* an = a + n * H;
      C* hn = hc + n * H;
      for_vectors<C>(H, [&](int64_t j, auto k) {  // the term rounded to C, then summed in double
        st(sigmoid_cpu(Acc<C>::add_get(an + j, vn * ld(w_t + j, k), k)), hn + j, k);
      });
    }
  }
}

// Backward of hidden units [j0, j1) for every example, into the columns [j0, j1) of gW (H, D),
// gV (D, L, H) and gc (H,); grad_v, a sum over units, gets this thread's share in gv (N, D).
// Within a segment (steps with the same a) s = h (1 - h) is constant, so R grows by s times the
// sum of dh = g V_t over the segment's steps. R is brought up to date only at a flush: at a step
// with v_t != 0, whose one pass does all that step's work on a (R complete for dW_t += v_t R;
// a_t = a_{t+1} - W_t v_t gives the h of this step and the segment's earlier ones), and every
// kFlushEvery steps (the sum of dh is in float). A flush sums the pending steps' dh in
// registers, their rows of V still in cache: an ordinary step is only its share of dV_t.
// grad_v reads R at every step: flushed at every step then.
template <typename C, int LF, bool kDv>
void backward_units_fused(const Args<C>& A, const C* g, const double* a_last, int64_t j0, int64_t j1, C* gv, C* gW,
                          C* gV, C* gc) {
  using Vec = at::vec::Vectorized<C>;
  constexpr int kFlushEvery = kDv ? 1 : 8;
  constexpr int64_t VS = Vec::size();
  constexpr int kGroup = LF <= 2 ? 4 : 2;  // vectors of dV_t in registers per GEMV pass
  const int64_t N = A.N, D = A.D, H = A.H, L = A.L, LH = L * H, hw = j1 - j0;
  Tensor state_t = at::zeros({2 * N * hw}, at::TensorOptions().dtype(at::kDouble));
  Tensor cache_t = at::empty({(kDv ? 2 : 1) * N * hw + 2 * kSteps * hw}, options_of<C>());
  double *a = state_t.data_ptr<double>(), *R = a + N * hw;
  C *hc = cache_t.data_ptr<C>(), *wb = hc + N * hw, *dwb = wb + kSteps * hw;  // the block's rows of W^T, dW^T
  C* rf = dwb + kSteps * hw;                                                   // R rounded (grad_v only)
  if constexpr (kDv) std::fill(rf, rf + N * hw, C(0));
  for (int64_t n = 0; n < N; ++n) {
    std::copy(a_last + n * H + j0, a_last + n * H + j1, a + n * hw);
    for_vectors<C>(hw, [&](int64_t j, auto k) { st(sigmoid_cpu(Acc<C>::load(a + n * hw + j, k)), hc + n * hw + j, k); });
  }
  // sum of dh over the np steps t, t + 1, ... (Vt = V + t L H + j0, gn = g's row n from step t);
  // np an int or, better, a constant (a loop of known length)
  const auto dh_sum = [&](auto np, const C* Vt, const C* gn, int64_t j, auto k) {
    Vec q(C(0));
    for (int i = 0; i < static_cast<int>(np); ++i)
      for (int l = 0; l < LF; ++l) q = at::vec::fmadd(Vec(gn[i * L + l]), ld(Vt + i * LH + l * H + j, k), q);
    return q;
  };
  std::vector<int> pending(N, 0);  // steps since the last flush (the steps after the current one)
  std::vector<C> gt(N * LF);       // g[:, t, :], by head row
  for (int64_t t1 = D; t1 > 0; t1 -= kSteps) {
    const int64_t t0 = std::max<int64_t>(t1 - kSteps, 0);
    transpose_block(A.W + j0 * D + t0, D, wb, hw, hw, t1 - t0);
    std::fill(dwb, dwb + (t1 - t0) * hw, C(0));
    for (int64_t t = t1 - 1; t >= t0; --t) {
      if (t == t0 && t0 > 0) {  // the next block's columns of W and dW
        prefetch_column(A.W, D, j0, j1, std::max<int64_t>(t0 - kSteps, 0), false);
        prefetch_column(gW, D, j0, j1, std::max<int64_t>(t0 - kSteps, 0), true);
      }
      const C* w_t = wb + (t - t0) * hw;
      const C* V_t = A.V + t * LH + j0;  // row l at l * H
      C* dw_t = dwb + (t - t0) * hw;
      for (int64_t n = 0; n < N; ++n) {  // the step's work on a and R (h is the step's from here on)
        const C* gn = g + (n * D + t) * L;
        for (int l = 0; l < LF; ++l) gt[l * N + n] = gn[l];
        const C vs = A.v[n * D + t];
        const bool has_v = vs != C(0), undo = has_v && t + 1 < D;  // a_{D-1} is where we start
        const int before = has_v ? pending[n] : 0, after = (has_v ? 0 : pending[n]) + 1;
        const bool flush = after >= kFlushEvery;
        pending[n] = flush ? 0 : after;
        if (!has_v && !flush) continue;  // most steps: nothing but dV_t below
        double *an = a + n * hw, *Rn = R + n * hw;
        C *hn = hc + n * hw, *rfn = rf + n * hw;
        const Vec vt(vs), vneg(-vs);  // (-v) W = -(v W) exactly: the forward's term undone
        Vec dv_acc(C(0));
        const auto pass = [&](auto na) {  // na: the steps flushed after this one's (0 or kFlushEvery)
          for_vectors<C>(hw, [&](int64_t j, auto k) {
            Vec h = ld(hn + j, k);
            if constexpr (kDv) dv_acc = at::vec::fmadd(ld(w_t + j, k), ld(rfn + j, k), dv_acc);
            if (has_v) {
              const Vec r = Acc<C>::add_get(Rn + j, h * (Vec(C(1)) - h) * dh_sum(before, V_t + LH, gn + L, j, k), k);
              st(at::vec::fmadd(vt, r, ld(dw_t + j, k)), dw_t + j, k);
              if (undo) {
                h = sigmoid_cpu(Acc<C>::add_get(an + j, vneg * ld(w_t + j, k), k));
                st(h, hn + j, k);
              }
            }
            if constexpr (decltype(na)::value > 0) {
              const Vec r = Acc<C>::add_get(Rn + j, h * (Vec(C(1)) - h) * dh_sum(na, V_t, gn, j, k), k);
              if constexpr (kDv) st(r, rfn + j, k);
            }
          });
        };
        if (flush)
          pass(std::integral_constant<int, kFlushEvery>());
        else
          pass(std::integral_constant<int, 0>());
        if constexpr (kDv) gv[n * D + t] = reduce_sum(dv_acc);
      }
      // dV_t = sum_n g[n, t] h_n: G vectors of accumulators per head row in registers while the
      // examples stream by (the h of all examples is L2's: each is loaded once per step)
      C* dV_t = gV + t * LH + j0;
      const auto gemv = [&](int64_t j, auto k, auto group) {  // G whole vectors, or one (count k)
        constexpr int G = decltype(group)::value;
        Vec acc[LF][G];
        for (auto& row : acc)
          for (auto& x : row) x = Vec(C(0));
        for (int64_t n = 0; n < N; ++n)
          for (int l = 0; l < LF; ++l) {
            const Vec gb(gt[l * N + n]);
            for (int i = 0; i < G; ++i) acc[l][i] = at::vec::fmadd(gb, ld(hc + n * hw + j + i * VS, k), acc[l][i]);
          }
        for (int l = 0; l < LF; ++l)
          for (int i = 0; i < G; ++i) st(acc[l][i], dV_t + l * H + j + i * VS, k);
      };
      int64_t j = 0;
      for (; j + kGroup * VS <= hw; j += kGroup * VS) gemv(j, Full(), std::integral_constant<int, kGroup>());
      for_vectors<C>(hw - j, [&](int64_t jj, auto k) { gemv(j + jj, k, std::integral_constant<int, 1>()); });
    }
    transpose_block(dwb, hw, gW + j0 * D + t0, D, t1 - t0, hw);
  }
  std::vector<double> dc(hw, 0.0);
  for (int64_t n = 0; n < N; ++n) {  // the last pending steps, 0 .. pending - 1
    for_vectors<C>(hw, [&](int64_t j, auto k) {
      const Vec h = ld(hc + n * hw + j, k);
      Acc<C>::add(R + n * hw + j, h * (Vec(C(1)) - h) * dh_sum(pending[n], A.V + j0, g + n * D * L, j, k), k);
    });
    for (int64_t j = 0; j < hw; ++j) dc[j] += R[n * hw + j];
  }
  for (int64_t j = 0; j < hw; ++j) gc[j0 + j] = static_cast<C>(dc[j]);
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
  // fused heads: threads split the hidden units, in whole vectors of kUnitBlock
  const int64_t blocks = (s.H + kUnitBlock - 1) / kUnitBlock;
  const int64_t chunks = std::min(num_chunks(s.N, s.D, s.H, s.L, /*max_chunks=*/blocks), blocks);
  auto gW = at::empty({s.H, s.D}, copts), gc = at::empty({s.H}, copts), gV = at::empty({s.D, s.L, s.H}, copts);
  auto gv = grad_v ? at::empty({chunks, s.N, s.D}, copts) : at::zeros({s.N, s.D}, copts);
  AT_DISPATCH_FLOATING_TYPES(ct, "nade_backward_cpu", [&] {
    const Args<scalar_t> A{s.N, s.D, s.H, s.L, v.const_data_ptr<scalar_t>(), W.const_data_ptr<scalar_t>(),
                           nullptr, nullptr, V.const_data_ptr<scalar_t>(), nullptr, nullptr};
    dispatch_head(s.L, [&](auto lf) {
      constexpr int LF = decltype(lf)::value;
      if constexpr (LF > 0) {
        at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
          for (int64_t ch = c0; ch < c1; ++ch) {
            const int64_t j0 = ch * blocks / chunks * kUnitBlock;
            const int64_t j1 = std::min((ch + 1) * blocks / chunks * kUnitBlock, s.H);
            const auto* gp = g.const_data_ptr<scalar_t>();
            const double* ap = a_last.const_data_ptr<double>();
            auto *gWp = gW.data_ptr<scalar_t>(), *gVp = gV.data_ptr<scalar_t>(), *gcp = gc.data_ptr<scalar_t>();
            if (grad_v)
              backward_units_fused<scalar_t, LF, true>(A, gp, ap, j0, j1, gv.data_ptr<scalar_t>() + ch * s.N * s.D,
                                                       gWp, gVp, gcp);
            else
              backward_units_fused<scalar_t, LF, false>(A, gp, ap, j0, j1, nullptr, gWp, gVp, gcp);
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
