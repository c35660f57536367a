// The fused heads of nade's CPU kernel (heads up to kFusedHeads logits; nade_cpu.cpp has the
// math, the GEMM head and the host functions).
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
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "fastgen_cpu.h"
#include "nade/nade.h"
#include "nade/nade_vec.h"

namespace fastgen {
namespace nade_fused {

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

// How many steps' dh the backward sums into R at once (flush): grad_v reads R at every step.
constexpr int flush_every(bool dv) { return dv ? 1 : 8; }

// The backward's work list, the same for every thread and every block of units (it depends on v
// alone), made once: per step, the examples whose step needs a pass over the units (its input
// is lit, or its pending dh are due), with what the pass does. Most (example, step) pairs need
// none; the threads then skip them without looking at them.
struct Event {
  int32_t n;       // the example
  uint8_t before;  // lit: the pending steps after this one, summed into R with it
  bool lit;        // v_t != 0: dW_t += v_t R, and a_t = a_{t+1} - W_t v_t gives the step's h
  bool flush;      // the flush_every pending steps from this one on are summed into R
};
struct Schedule {
  std::vector<int64_t> lo, hi;  // step t's events: [lo[t], hi[t])
  std::vector<Event> ev;
  std::vector<int> pending_end;  // per example: steps 0 .. p-1 still pending after step 0
};

template <typename C>
Schedule make_schedule(const C* v, int64_t N, int64_t D, int every) {
  Schedule s;
  s.lo.resize(D);
  s.hi.resize(D);
  s.pending_end.assign(N, 0);
  std::vector<int>& pending = s.pending_end;  // steps since the last flush
  for (int64_t t = D - 1; t >= 0; --t) {
    s.lo[t] = static_cast<int64_t>(s.ev.size());
    for (int64_t n = 0; n < N; ++n) {
      const bool lit = v[n * D + t] != C(0);
      const int before = lit ? pending[n] : 0, after = (lit ? 0 : pending[n]) + 1;
      const bool flush = after >= every;
      pending[n] = flush ? 0 : after;
      if (lit || flush) s.ev.push_back({static_cast<int32_t>(n), static_cast<uint8_t>(before), lit, flush});
    }
    s.hi[t] = static_cast<int64_t>(s.ev.size());
  }
  return s;
}

// Backward of hidden units [j0, j1) for every example, into the columns [j0, j1) of gW (H, D),
// gV (D, L, H) and gc (H,); grad_v, a sum over units, gets this call's share in gv (N, D).
// Within a segment (steps with the same a) s = h (1 - h) is constant, so R grows by s times the
// sum of dh = g V_t over the segment's steps. R is brought up to date only at the schedule's
// events: at a step with v_t != 0, whose one pass does all that step's work on a (R complete
// for dW_t += v_t R; a_t = a_{t+1} - W_t v_t gives the h of this step and the segment's earlier
// ones), and every flush_every steps (the sum of dh is in float), summed in registers from the
// pending steps' rows of V, still in cache. An ordinary step is only its share of dV_t, a GEMV
// over the examples with the step's g from gT (D, L, N).
template <typename C, int LF, bool kDv>
void backward_units_fused(const Args<C>& A, const C* g, const C* gT, const Schedule& S, const double* a_last,
                          int64_t j0, int64_t j1, C* gv, C* gW, C* gV, C* gc) {
  using Vec = at::vec::Vectorized<C>;
  constexpr int kFlushEvery = flush_every(kDv);
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
  // sum of dh over the np steps t, t + 1, ... (Vt = V + t L H + j0, gn = g's row n from step t)
  const auto dh_sum = [&](int np, const C* Vt, const C* gn, int64_t j, auto k) {
    Vec q(C(0));
    for (int i = 0; i < np; ++i)
      for (int l = 0; l < LF; ++l) q = at::vec::fmadd(Vec(gn[i * L + l]), ld(Vt + i * LH + l * H + j, k), q);
    return q;
  };
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
      const bool undo = t + 1 < D;  // a_{D-1} is where we start
      for (int64_t e = S.lo[t]; e < S.hi[t]; ++e) {  // the step's work on a and R (h is the step's from here on)
        const Event ev = S.ev[e];
        const int64_t n = ev.n;
        const C* gn = g + (n * D + t) * L;
        double *an = a + n * hw, *Rn = R + n * hw;
        C *hn = hc + n * hw, *rfn = rf + n * hw;
        const C vs = A.v[n * D + t];
        const Vec vt(vs), vneg(-vs);  // (-v) W = -(v W) exactly: the forward's term undone
        Vec dv_acc(C(0));
        const auto pass = [&](auto lit_c, auto flush_c) {
          constexpr bool kLit = decltype(lit_c)::value, kFlush = decltype(flush_c)::value;
          Vec gf[kFlushEvery * LF];  // the flushed steps' g, broadcast once
          if constexpr (kFlush)
            for (int i = 0; i < kFlushEvery; ++i)
              for (int l = 0; l < LF; ++l) gf[i * LF + l] = Vec(gn[i * L + l]);
          for_vectors<C>(hw, [&](int64_t j, auto k) {
            Vec h = ld(hn + j, k);
            if constexpr (kDv) dv_acc = at::vec::fmadd(ld(w_t + j, k), ld(rfn + j, k), dv_acc);
            if constexpr (kLit) {
              const Vec r = Acc<C>::add_get(Rn + j, h * (Vec(C(1)) - h) * dh_sum(ev.before, V_t + LH, gn + L, j, k), k);
              st(at::vec::fmadd(vt, r, ld(dw_t + j, k)), dw_t + j, k);
              if (undo) {
                h = sigmoid_cpu(Acc<C>::add_get(an + j, vneg * ld(w_t + j, k), k));
                st(h, hn + j, k);
              }
            }
            if constexpr (kFlush) {
              Vec q(C(0));
              for (int i = 0; i < kFlushEvery; ++i)
                for (int l = 0; l < LF; ++l) q = at::vec::fmadd(gf[i * LF + l], ld(V_t + i * LH + l * H + j, k), q);
              const Vec r = Acc<C>::add_get(Rn + j, h * (Vec(C(1)) - h) * q, k);
              if constexpr (kDv) st(r, rfn + j, k);
            }
          });
        };
        using T = std::true_type;
        using F = std::false_type;
        if (ev.lit) {
          if (ev.flush)
            pass(T(), T());
          else
            pass(T(), F());
        } else {
          pass(F(), T());
        }
        if constexpr (kDv) gv[n * D + t] = reduce_sum(dv_acc);
      }
      // dV_t = sum_n g[n, t] h_n: G vectors of accumulators per head row in registers while the
      // examples stream by (the h of all examples is L1's: each is loaded once per step)
      C* dV_t = gV + t * LH + j0;
      const C* g_t = gT + t * L * N;  // row l at l * N
      const auto gemv = [&](int64_t j, auto k, auto group) {  // G whole vectors, or one (count k)
        constexpr int G = decltype(group)::value;
        Vec acc[LF][G];
        for (auto& row : acc)
          for (auto& x : row) x = Vec(C(0));
        for (int64_t n = 0; n < N; ++n)
          for (int l = 0; l < LF; ++l) {
            const Vec gb(g_t[l * N + n]);
            for (int i = 0; i < G; ++i) acc[l][i] = at::vec::fmadd(gb, ld(hc + n * hw + j + i * VS, k), acc[l][i]);
          }
        for (int l = 0; l < LF; ++l)
          for (int i = 0; i < G; ++i) st(acc[l][i], dV_t + l * H + j + i * VS, k);
      };
      int64_t j = 0;
      for (; j + kGroup * VS <= hw; j += kGroup * VS) gemv(j, Full(), std::integral_constant<int, kGroup>());
      if (j + 2 * VS <= hw) {
        gemv(j, Full(), std::integral_constant<int, 2>());
        j += 2 * VS;
      }
      for_vectors<C>(hw - j, [&](int64_t jj, auto k) { gemv(j + jj, k, std::integral_constant<int, 1>()); });
    }
    transpose_block(dwb, hw, gW + j0 * D + t0, D, t1 - t0, hw);
  }
  std::vector<double> dc(hw, 0.0);
  for (int64_t n = 0; n < N; ++n) {  // the last pending steps, 0 .. pending - 1
    for_vectors<C>(hw, [&](int64_t j, auto k) {
      const Vec h = ld(hc + n * hw + j, k);
      Acc<C>::add(R + n * hw + j, h * (Vec(C(1)) - h) * dh_sum(S.pending_end[n], A.V + j0, g + n * D * L, j, k), k);
    });
    for (int64_t j = 0; j < hw; ++j) dc[j] += R[n * hw + j];
  }
  for (int64_t j = 0; j < hw; ++j) gc[j0 + j] = static_cast<C>(dc[j]);
}

}  // namespace nade_fused
}  // namespace fastgen
