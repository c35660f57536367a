// CPU kernels of row_lstm_scan: the whole recurrence in one call.
//
// Layout: every row keeps its state as (channels, B*W) matrices, so the state-to-state
// convolution of a batch chunk is one GEMM per row,
//   z_r (4h, B*W) = x_r + bias + Wcat (4h, 3h) @ hcat_{r-1} (3h, B*W),
// where Wcat[j, k*h + c] = weight_ss[j, c, k] and hcat stacks the previous row's hidden state
// shifted by -1, 0, +1 along W (zero at the borders). The gates and cells of all rows are saved
// in that layout, (H, 4h, B, W) and (H, h, B, W); the backward runs the rows in reverse:
//   dz_r from the cell math (row_lstm_scan.h), written out as d input_gates,
//   dh_{r-1} = shift^T(Wcat^T @ dz_r) + dL/dh_{r-1},
// dbias = sum dz along the way, and afterwards dWcat = sum_r dz_r hcat_{r-1}^T as one GEMM per
// batch element. The GEMMs run on raw matrices through oneDNN's brgemm (gemm_rowmajor in
// fastgen_gemm.h: no dispatcher call or allocation per row; about twice MKL's rate here) and set
// the pace: the rest is kept to cache-resident element math (row_lstm_scan_vec.h) and as little
// memory traffic as the saved state allows.
// Threads split the batch: one parallel region per call, each thread scanning its batch chunk
// with single-threaded GEMMs and at::vec element math, so no barrier per row (robust on a
// loaded machine). bfloat16 runs in float32.
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <type_traits>

#include "fastgen_cpu.h"
#include "fastgen_gemm.h"
#include "row_lstm_scan/row_lstm_scan.h"
#include "row_lstm_scan/row_lstm_scan_host.h"
#include "row_lstm_scan/row_lstm_scan_vec.h"

namespace fastgen {
namespace {

using at::Tensor;

// Rows of a (b, channel) plane are W apart: the row loops touch thousands of short segments
// far apart; ask for the coming rows' segments explicitly (a prefetch never faults, so the
// plane's end needs no check).
template <typename T>
inline void prefetch_segment(const T* p, int64_t W, int write) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t w = 0; w < W; w += kLine) {
    if (write) __builtin_prefetch(p + w, 1); else __builtin_prefetch(p + w, 0);
  }
  if (write) __builtin_prefetch(p + W - 1, 1); else __builtin_prefetch(p + W - 1, 0);
}

// dst[0, n) = src[0, n) for short n (row segments): inline vectors, no memmove call each.
template <typename T>
inline void copy_short(const T* src, T* dst, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  int64_t w = 0;
  for (; w + Vec::size() <= n; w += Vec::size()) Vec::loadu(src + w).store(dst + w);
  for (; w < n; ++w) dst[w] = src[w];
}

// d[w] = m[w] + l[w + 1] + rt[w - 1] + g[w] over a row segment of W (terms outside it are 0):
// the transposed 3-tap shift of the backward, plus the output's gradient.
template <typename T>
inline void shift_add(T* d, const T* m, const T* l, const T* rt, const T* g, int64_t W) {
  using Vec = at::vec::Vectorized<T>;
  if (W == 1) {
    d[0] = m[0] + g[0];
    return;
  }
  d[0] = m[0] + l[1] + g[0];
  int64_t w = 1;
  for (; w + Vec::size() <= W - 1; w += Vec::size())
    (Vec::loadu(m + w) + Vec::loadu(l + w + 1) + Vec::loadu(rt + w - 1) + Vec::loadu(g + w)).store(d + w);
  for (; w < W - 1; ++w) d[w] = m[w] + l[w + 1] + rt[w - 1] + g[w];
  d[W - 1] = m[W - 1] + rt[W - 2] + g[W - 1];
}

// v -> p (aligned to the vector size) with a non-temporal store where the ISA has one: the
// saved gates are not read again until the backward, so writing them around the cache saves
// the read-for-ownership of each line (the forward is bound by memory traffic beside its GEMMs).
template <typename T>
inline void store_stream(const at::vec::Vectorized<T>& v, T* p) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) return _mm512_stream_ps(p, v);
  if constexpr (std::is_same_v<T, double>) return _mm512_stream_pd(p, v);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) return _mm256_stream_ps(p, v);
  if constexpr (std::is_same_v<T, double>) return _mm256_stream_pd(p, v);
#endif
  v.store(p);
}

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();  // non-temporal stores are weakly ordered: make them visible before returning
#endif
}

// Element math over n contiguous cells: pre-activations x + bias;
// the activated gates go to z (streamed if kStream: the z rows are then vector-aligned), the
// cell and hidden states to cr and hr.
template <bool kStream, typename T>
inline void cell_forward_span(const T* xi, const T* xf, const T* xg, const T* xo, T* zi, T* zf, T* zg, T* zo,
                              const T* bias4, const T* cp, T* cr, T* hr, int64_t n_total) {
  using Vec = at::vec::Vectorized<T>;
  const Vec bi(bias4[0]), bf(bias4[1]), bg(bias4[2]), bo(bias4[3]);
  auto step = [&](int64_t n, int64_t k) {  // k < Vec::size(): a partial vector (the same math)
    Vec vi = Vec::loadu(xi + n, k) + bi, vf = Vec::loadu(xf + n, k) + bf, vg = Vec::loadu(xg + n, k) + bg,
        vo = Vec::loadu(xo + n, k) + bo;
    Vec i, f, g, o, c, hv;
    lstm_cell_forward<Vec, LstmFastActivations>(vi, vf, vg, vo, cp ? Vec::loadu(cp + n, k) : Vec(T(0)), i, f, g,
                                                o, c, hv);
    if (kStream && k == Vec::size()) {
      store_stream(i, zi + n); store_stream(f, zf + n); store_stream(g, zg + n); store_stream(o, zo + n);
    } else {
      i.store(zi + n, k); f.store(zf + n, k); g.store(zg + n, k); o.store(zo + n, k);
    }
    c.store(cr + n, k);
    hv.store(hr + n, k);
  };
  int64_t n = 0;
  for (; n + Vec::size() <= n_total; n += Vec::size()) step(n, Vec::size());
  if (n < n_total) step(n, n_total - n);
}

// The forward scan of batch elements [b0, b1) on one thread, which owns the columns
// [b0 * W, b1 * W) of each row of the (H, channels, B, W) gates and cells workspaces. Per row:
// gather x_r into a (4h, nb*W) buffer that stays in cache, add Wcat @ hcat to it (one GEMM),
// then the element math adds the bias and writes gates, cells and the next row's hcat, whose
// tap 1 is then copied out as the hidden state. x (and the hidden state) are touched as
// (b, channel) segments of W: walked plane after plane for each b, a constant stride, which
// the core's stride prefetcher follows; row r + 1's segments are also prefetched before row r's
// GEMM.
template <typename T>
void forward_scan(const T* x, const T* bias, const Tensor& wcat, T* hidden, T* cell, T* gates,
                  int64_t B, int64_t h, int64_t H, int64_t W, int64_t b0, int64_t b1) {
  const int64_t BW = B * W, G = 4 * h, nb = b1 - b0, nW = nb * W;
  Tensor hcat_t = at::empty({3 * h, nW}, wcat.options()), xr_t = at::empty({G, nW}, wcat.options());
  T *hcat = hcat_t.data_ptr<T>(), *xr = xr_t.data_ptr<T>();
  const T* wc = wcat.const_data_ptr<T>();
  auto x_seg = [&](int64_t b, int64_t j, int64_t r) { return x + (((b0 + b) * G + j) * H + r) * W; };
  for (int64_t r = 0; r < H; ++r) {
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t j = 0; j < G; ++j) copy_short(x_seg(b, j, r), xr + j * nW + b * W, W);
    if (r + 1 < H)
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t j = 0; j < G; ++j) prefetch_segment(x_seg(b, j, r + 1), W, 0);
    if (r > 0) gemm_rowmajor(G, nW, 3 * h, wc, 3 * h, hcat, nW, xr, nW, /*accumulate=*/true);
    T* gt = gates + r * G * BW + b0 * W;
    for (int64_t u = 0; u < h; ++u) {
      const int64_t ju[4] = {u, h + u, 2 * h + u, 3 * h + u};
      const T bias4[4] = {bias ? bias[ju[0]] : T(0), bias ? bias[ju[1]] : T(0), bias ? bias[ju[2]] : T(0),
                          bias ? bias[ju[3]] : T(0)};
      T* hm = hcat + (h + u) * nW;  // tap 1 of the next row's hcat: this row's hidden state
      T* z4[4] = {gt + ju[0] * BW, gt + ju[1] * BW, gt + ju[2] * BW, gt + ju[3] * BW};
      const bool aligned = std::all_of(z4, z4 + 4, [](T* p) { return reinterpret_cast<uintptr_t>(p) % sizeof(at::vec::Vectorized<T>) == 0; });
      auto span = aligned ? cell_forward_span<true, T> : cell_forward_span<false, T>;
      span(xr + ju[0] * nW, xr + ju[1] * nW, xr + ju[2] * nW, xr + ju[3] * nW, z4[0], z4[1], z4[2], z4[3],
           bias4, r > 0 ? cell + ((r - 1) * h + u) * BW + b0 * W : nullptr,
           cell + (r * h + u) * BW + b0 * W, hm, nW);
      if (r + 1 < H) {  // taps 0 and 2: this row's hidden shifted right and left, 0 at each w border
        T *l = hcat + u * nW, *rt = hcat + (2 * h + u) * nW;
        copy_short(hm, l + 1, nW - 1);
        copy_short(hm + 1, rt, nW - 1);
        for (int64_t b = 0; b < nb; ++b) l[b * W] = rt[b * W + W - 1] = T(0);
      }
    }
    for (int64_t b = 0; b < nb; ++b)  // the hidden state out, plane by plane (a constant stride)
      for (int64_t u = 0; u < h; ++u) copy_short(hcat + (h + u) * nW + b * W, hidden + (((b0 + b) * h + u) * H + r) * W, W);
  }
  stream_fence();
}

// Weight gradient of batch element b, added into gw (G, 3h; row stride ldw):
//   gw += gx_b (G, H*W) @ hcat_b^T (H*W, 3h),
// the per-row sums dWcat = sum_r dz_r hcat_{r-1}^T as one GEMM with k = (H - 1) * W (row 0's
// hcat is zero), off the sequential path. Row r*W + w of hcat_b^T holds the previous row's
// hidden state at w - 1, w, w + 1 (taps 0, 1, 2; zero outside the row); it is built in buf
// ((H*W, 3h) scratch, rows from W on) by one tiled transpose of hidden_b into tap 1 and row
// copies of that for taps 0 and 2. The product runs on the raw matrices (gemm_rowmajor: for
// float32 oneDNN's brgemm, whose n = 3h has no ragged tail).
template <typename T>
void weight_grad(const T* gx_b, const T* hidden_b, T* gw, int64_t ldw, T* buf, int64_t h, int64_t H, int64_t W) {
  const int64_t HW = H * W, G = 4 * h, K3 = 3 * h;
  if (H < 2) return;
  transpose_tiles(hidden_b, HW, buf + W * K3 + h, K3, h, HW - W);
  for (int64_t n = W; n < HW; ++n) {
    T* row = buf + n * K3;
    const int64_t w = n % W;
    if (w > 0) copy_short(row - K3 + h, row, h); else std::fill(row, row + h, T(0));
    if (w < W - 1) copy_short(row + K3 + h, row + 2 * h, h); else std::fill(row + 2 * h, row + K3, T(0));
  }
  gemm_rowmajor(G, K3, HW - W, gx_b + W, HW, buf + W * K3, K3, gw, ldw, /*accumulate=*/true);
}

// The reverse scan of batch elements [b0, b1) on one thread. dh_rec carries dL/dh_r (the
// output's gradient plus the next row's recurrent term), dc dL/dc_r; per row the cell math
// gives dz_r (4h, nb*W) in cache, written out as gx's row r, then one GEMM
// Wcat^T (3h, 4h) @ dz_r and its shift^T give the previous row's recurrent term. wcat_t is
// Wcat^T, contiguous (the row GEMM's a operand, (3h, 4h) row-major). The weight
// gradient follows from gx and hidden afterwards (weight_grad), the bias gradient from sums of
// dz in the cell math, into gwx (G, 3h + 1) = [dWcat | dbias].
template <typename T>
void backward_scan(const T* gh, const Tensor& wcat_t, const T* hidden, const T* cell, const T* gates,
                   T* gx, T* gwx, int64_t B, int64_t h, int64_t H, int64_t W, int64_t b0, int64_t b1) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t BW = B * W, G = 4 * h, nb = b1 - b0, nW = nb * W, HW = H * W, ldw = 3 * h + 1;
  auto opts = wcat_t.options();
  Tensor dz_t = at::empty({G, nW}, opts), dh_rec_t = at::empty({h, nW}, opts), dc_t = at::zeros({h, nW}, opts);
  Tensor dhcat_t = at::empty({3 * h, nW}, opts);
  T *dz = dz_t.data_ptr<T>(), *dh_rec = dh_rec_t.data_ptr<T>(), *dcn = dc_t.data_ptr<T>(), *dhcat = dhcat_t.data_ptr<T>();
  auto seg = [&](int64_t b, int64_t ch, int64_t r) { return ((b0 + b) * ch * H + r) * W; };  // + c * HW
  for (int64_t u = 0; u < h; ++u)
    for (int64_t b = 0; b < nb; ++b) copy_short(gh + seg(b, h, H - 1) + u * HW, dh_rec + u * nW + b * W, W);
  for (int64_t r = H - 1; r >= 0; --r) {
    const T* gt = gates + r * G * BW + b0 * W;
    for (int64_t u = 0; u < h; ++u) {
      const T *pi = gt + u * BW, *pf = gt + (h + u) * BW, *pg = gt + (2 * h + u) * BW, *po = gt + (3 * h + u) * BW;
      const T* cr = cell + (r * h + u) * BW + b0 * W;
      const T* cp = r > 0 ? cell + ((r - 1) * h + u) * BW + b0 * W : nullptr;
      T *dhr = dh_rec + u * nW, *dc = dcn + u * nW;
      T *di = dz + u * nW, *df = dz + (h + u) * nW, *dg = dz + (2 * h + u) * nW, *dout = dz + (3 * h + u) * nW;
      Vec sum[4] = {Vec(T(0)), Vec(T(0)), Vec(T(0)), Vec(T(0))};  // the bias gradient: sums of dz
      auto step = [&](int64_t n, int64_t k) {  // k < Vec::size(): a partial vector (the same math;
        Vec a, b_, c_, d_, e;                  // its zero-filled lanes give dz = 0)
        lstm_cell_backward<Vec, LstmFastActivations>(
            Vec::loadu(dhr + n, k), Vec::loadu(dc + n, k), Vec::loadu(pi + n, k), Vec::loadu(pf + n, k),
            Vec::loadu(pg + n, k), Vec::loadu(po + n, k), Vec::loadu(cr + n, k),
            cp ? Vec::loadu(cp + n, k) : Vec(T(0)), a, b_, c_, d_, e);
        a.store(di + n, k); b_.store(df + n, k); c_.store(dg + n, k); d_.store(dout + n, k); e.store(dc + n, k);
        sum[0] = sum[0] + a; sum[1] = sum[1] + b_; sum[2] = sum[2] + c_; sum[3] = sum[3] + d_;
      };
      int64_t n = 0;
      for (; n + Vec::size() <= nW; n += Vec::size()) step(n, Vec::size());
      if (n < nW) step(n, nW - n);
      for (int64_t q = 0; q < 4; ++q)
        gwx[(q * h + u) * ldw + 3 * h] += at::vec::vec_reduce_all<T>([](Vec& x, Vec& y) { return x + y; }, sum[q]);
    }
    for (int64_t b = 0; b < nb; ++b)  // gx row r = dz_r
      for (int64_t j = 0; j < G; ++j) {
        T* xs = gx + seg(b, G, r) + j * HW;
        if (r >= 2) prefetch_segment(xs - 2 * W, W, 1);
        copy_short(dz + j * nW + b * W, xs, W);
      }
    if (r == 0) break;
    gemm_rowmajor(3 * h, nW, G, wcat_t.const_data_ptr<T>(), G, dz, nW, dhcat, nW, /*accumulate=*/false);
    for (int64_t b = 0; b < nb; ++b)  // dh_{r-1} = shift^T(Wcat^T dz_r) + the output's gradient
      for (int64_t u = 0; u < h; ++u) {
        const int64_t o = u * nW + b * W;
        const T* g = gh + seg(b, h, r - 1) + u * HW;
        if (r >= 3) prefetch_segment(g - 2 * W, W, 0);
        shift_add(dh_rec + o, dhcat + h * nW + o, dhcat + o, dhcat + 2 * h * nW + o, g, W);
      }
  }
  Tensor buf_t = at::empty({HW * 3 * h}, opts);
  for (int64_t b = b0; b < b1; ++b)
    weight_grad(gx + b * G * HW, hidden + b * h * HW, gwx, ldw, buf_t.data_ptr<T>(), h, H, W);
}

// Batch chunks per thread: one parallel region per call (no per-row barriers), each chunk's
// GEMMs single-threaded inside it.
inline int64_t batch_grain(int64_t B) {
  const int64_t t = std::max<int64_t>(1, at::get_num_threads());
  return std::max<int64_t>(1, (B + t - 1) / t);
}

std::tuple<Tensor, Tensor, Tensor> row_lstm_scan_cpu(const Tensor& x_in, const Tensor& w_in,
                                                     const std::optional<Tensor>& bias_in) {
  const int64_t h = check_row_lstm_scan(x_in, w_in, bias_in);
  const int64_t B = x_in.size(0), H = x_in.size(2), W = x_in.size(3), G = 4 * h;
  const auto acc = row_lstm_acc_type(x_in.scalar_type());
  const bool has_bias = bias_in.has_value() && bias_in->defined();
  auto x = x_in.to(acc).contiguous();
  auto opts = x.options();
  auto hidden = at::empty({B, h, H, W}, opts);
  auto cell = at::empty({H, h, B, W}, opts), gates = at::empty({H, G, B, W}, opts);
  if (hidden.numel() == 0) return {hidden.zero_().to(x_in.scalar_type()), cell, gates};
  auto wcat = w_in.to(acc).permute({0, 2, 1}).reshape({G, 3 * h}).contiguous();
  auto bias = has_bias ? bias_in->to(acc).contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(acc, "row_lstm_scan_cpu", [&] {
    at::parallel_for(0, B, batch_grain(B), [&](int64_t b0, int64_t b1) {
      forward_scan<scalar_t>(x.const_data_ptr<scalar_t>(), has_bias ? bias.const_data_ptr<scalar_t>() : nullptr,
                             wcat, hidden.data_ptr<scalar_t>(), cell.data_ptr<scalar_t>(),
                             gates.data_ptr<scalar_t>(), B, h, H, W, b0, b1);
    });
  });
  return {hidden.to(x_in.scalar_type()), cell, gates};
}

std::tuple<Tensor, Tensor, Tensor> row_lstm_scan_backward_cpu(const Tensor& grad_hidden, const Tensor& w_in,
                                                              const Tensor& hidden_in, const Tensor& cell_in,
                                                              const Tensor& gates_in, bool bias_requires_grad) {
  check_row_lstm_scan_backward(grad_hidden, w_in, hidden_in, cell_in, gates_in);
  const int64_t B = hidden_in.size(0), h = hidden_in.size(1), H = hidden_in.size(2), W = hidden_in.size(3);
  const int64_t G = 4 * h;
  const auto dt = hidden_in.scalar_type();
  const auto acc = row_lstm_acc_type(dt);
  auto opts = cell_in.options();
  auto gx = at::empty({B, G, H, W}, opts);
  auto gwx = at::zeros({G, 3 * h + 1}, opts);  // [dWcat | dbias]
  if (hidden_in.numel() > 0) {
    auto gh = grad_hidden.to(acc).contiguous(), hidden = hidden_in.to(acc).contiguous();
    auto cell = cell_in.contiguous(), gates = gates_in.contiguous();
    // Wcat^T (3h, G): wcat_t[k * h + c, j] = weight_ss[j, c, k]
    auto wcat_t = w_in.to(acc).permute({2, 1, 0}).reshape({3 * h, G}).contiguous();
    std::mutex mu;
    AT_DISPATCH_FLOATING_TYPES(acc, "row_lstm_scan_backward_cpu", [&] {
      at::parallel_for(0, B, batch_grain(B), [&](int64_t b0, int64_t b1) {
        auto gwx_local = at::zeros({G, 3 * h + 1}, opts);
        backward_scan<scalar_t>(gh.const_data_ptr<scalar_t>(), wcat_t, hidden.const_data_ptr<scalar_t>(),
                                cell.const_data_ptr<scalar_t>(), gates.const_data_ptr<scalar_t>(),
                                gx.data_ptr<scalar_t>(), gwx_local.data_ptr<scalar_t>(), B, h, H, W, b0, b1);
        std::lock_guard<std::mutex> lock(mu);
        gwx.add_(gwx_local);
      });
    });
  }
  auto gw = gwx.narrow(1, 0, 3 * h).reshape({G, 3, h}).permute({0, 2, 1}).contiguous();
  auto gb = bias_requires_grad ? gwx.select(1, 3 * h).contiguous() : at::empty({0}, opts);
  return {gx.to(dt), gw.to(dt), gb.to(dt)};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("row_lstm_scan", &fastgen::row_lstm_scan_cpu);
  m.impl("row_lstm_scan_backward", &fastgen::row_lstm_scan_backward_cpu);
}
