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
// and afterwards dWcat = sum_r dz_r hcat_{r-1}^T, dbias = sum dz as one GEMM per batch element.
// The GEMMs go through oneDNN (fastgen_gemm.h; about twice MKL's rate here) and set the pace:
// the rest is kept to cache-resident element math (row_lstm_scan_vec.h) and as little memory
// traffic as the saved state allows.
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
#include "row_lstm_scan/row_lstm_scan_check.h"
#include "row_lstm_scan/row_lstm_scan_vec.h"

namespace fastgen {
namespace {

using at::Tensor;

// Rows of a (b, channel) plane are W apart: the row loops touch thousands of short segments
// with a large stride, which the hardware prefetcher does not follow; ask for the coming
// rows' segments explicitly (a prefetch never faults, so the plane's end needs no check).
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

// Element math over n contiguous cells: pre-activations x (+ s, the row's GEMM output) + bias;
// the activated gates go to z (streamed if kStream: the z rows are then vector-aligned), the
// cell and hidden states to cr and hr.
template <bool kStream, typename T>
inline void cell_forward_span(const T* xi, const T* xf, const T* xg, const T* xo, T* zi, T* zf, T* zg, T* zo,
                              const T* si, const T* sf, const T* sg, const T* so,
                              const T* bias4, const T* cp, T* cr, T* hr, int64_t n_total) {
  using Vec = at::vec::Vectorized<T>;
  const Vec bi(bias4[0]), bf(bias4[1]), bg(bias4[2]), bo(bias4[3]);
  auto step = [&](int64_t n, int64_t k) {  // k < Vec::size(): a partial vector (the same math)
    Vec vi = Vec::loadu(xi + n, k) + bi, vf = Vec::loadu(xf + n, k) + bf, vg = Vec::loadu(xg + n, k) + bg,
        vo = Vec::loadu(xo + n, k) + bo;
    if (si) {
      vi = vi + Vec::loadu(si + n, k); vf = vf + Vec::loadu(sf + n, k);
      vg = vg + Vec::loadu(sg + n, k); vo = vo + Vec::loadu(so + n, k);
    }
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
// gather x_r into a (4h, nb*W) buffer that stays in cache, one GEMM Wcat @ hcat (oneDNN for
// float32; hcat_t.t() is a transposed contiguous view, which it takes as is), then the element
// math adds x_r, the GEMM output and the bias and writes gates, cells, hidden state and the next
// row's hcat. x is read as (b, channel) segments of W a plane apart, which the hardware
// prefetcher does not follow: the element math of row r prefetches row r + 1's segments.
template <typename T>
void forward_scan(const T* x, const T* bias, const Tensor& wcat, T* hidden, T* cell, T* gates,
                  int64_t B, int64_t h, int64_t H, int64_t W, int64_t b0, int64_t b1) {
  const int64_t BW = B * W, G = 4 * h, nb = b1 - b0, nW = nb * W;
  Tensor hcat_t = at::empty({3 * h, nW}, wcat.options()), xr_t = at::empty({G, nW}, wcat.options());
  T *hcat = hcat_t.data_ptr<T>(), *xr = xr_t.data_ptr<T>();
  const T* wc = wcat.const_data_ptr<T>();
  auto x_seg = [&](int64_t b, int64_t j, int64_t r) { return x + (((b0 + b) * G + j) * H + r) * W; };
  for (int64_t r = 0; r < H; ++r) {
    for (int64_t j = 0; j < G; ++j)
      for (int64_t b = 0; b < nb; ++b) copy_short(x_seg(b, j, r), xr + j * nW + b * W, W);
    if (r > 0) gemm_rowmajor(G, nW, 3 * h, wc, 3 * h, hcat, nW, xr, nW, /*accumulate=*/true);
    T* gt = gates + r * G * BW + b0 * W;
    for (int64_t u = 0; u < h; ++u) {
      if (r + 1 < H)
        for (int64_t k = 0; k < 4; ++k)
          for (int64_t b = 0; b < nb; ++b) prefetch_segment(x_seg(b, k * h + u, r + 1), W, 0);
      const int64_t ju[4] = {u, h + u, 2 * h + u, 3 * h + u};
      const T bias4[4] = {bias ? bias[ju[0]] : T(0), bias ? bias[ju[1]] : T(0), bias ? bias[ju[2]] : T(0),
                          bias ? bias[ju[3]] : T(0)};
      T* hm = hcat + (h + u) * nW;  // tap 1 of the next row's hcat: this row's hidden state
      T* z4[4] = {gt + ju[0] * BW, gt + ju[1] * BW, gt + ju[2] * BW, gt + ju[3] * BW};
      const bool aligned = std::all_of(z4, z4 + 4, [](T* p) { return reinterpret_cast<uintptr_t>(p) % sizeof(at::vec::Vectorized<T>) == 0; });
      auto span = aligned ? cell_forward_span<true, T> : cell_forward_span<false, T>;
      span(xr + ju[0] * nW, xr + ju[1] * nW, xr + ju[2] * nW, xr + ju[3] * nW, z4[0], z4[1], z4[2], z4[3],
           nullptr, nullptr, nullptr, nullptr, bias4, r > 0 ? cell + ((r - 1) * h + u) * BW + b0 * W : nullptr,
           cell + (r * h + u) * BW + b0 * W, hm, nW);
      for (int64_t b = 0; b < nb; ++b) copy_short(hm + b * W, hidden + (((b0 + b) * h + u) * H + r) * W, W);
      if (r + 1 < H) {  // taps 0 and 2: this row's hidden shifted right and left, 0 at each w border
        T *l = hcat + u * nW, *rt = hcat + (2 * h + u) * nW;
        copy_short(hm, l + 1, nW - 1);
        copy_short(hm + 1, rt, nW - 1);
        for (int64_t b = 0; b < nb; ++b) l[b * W] = rt[b * W + W - 1] = T(0);
      }
    }
  }
  stream_fence();
}

// Weight and bias gradient of batch element b, added into gwx (G, 3h + 1):
//   gwx[:, :3h] += gx_b (G, H*W) @ hcat_b^T,  gwx[:, 3h] += gx_b @ 1  (the bias gradient),
// where hcat_b (3h, H*W) holds, at row r, the previous row's hidden state shifted by the three
// taps (zero in row 0): the per-row sums of dWcat = sum_r dz_r hcat_{r-1}^T as one GEMM with
// k = H*W, off the sequential path. buf: (3h + 1) * H * W scratch.
template <typename T>
void weight_grad(const T* gx_b, const T* hidden_b, Tensor& gwx, T* buf, int64_t h, int64_t H, int64_t W) {
  const int64_t HW = H * W, G = 4 * h;
  for (int64_t c = 0; c < h; ++c) {
    const T* src = hidden_b + c * HW;
    T *l = buf + c * HW, *m = buf + (h + c) * HW, *rt = buf + (2 * h + c) * HW;
    std::fill(l, l + W, T(0));
    std::fill(m, m + W, T(0));
    std::fill(rt, rt + W, T(0));
    copy_short(src, m + W, HW - W);
    for (int64_t r = 1; r < H; ++r) {
      const T* s = src + (r - 1) * W;
      l[r * W] = T(0);
      copy_short(s, l + r * W + 1, W - 1);
      copy_short(s + 1, rt + r * W, W - 1);
      rt[r * W + W - 1] = T(0);
    }
  }
  std::fill(buf + 3 * h * HW, buf + (3 * h + 1) * HW, T(1));
  auto opts = gwx.options();
  addmm_nt_(gwx, at::from_blob(const_cast<T*>(gx_b), {G, HW}, opts), at::from_blob(buf, {3 * h + 1, HW}, opts));
}

// The reverse scan of batch elements [b0, b1) on one thread. dh_rec carries dL/dh_r (the
// output's gradient plus the next row's recurrent term), dc dL/dc_r; per row the cell math
// gives dz_r (4h, nb*W) in cache, written out as gx's row r, then one GEMM
// Wcat^T (3h, 4h) @ dz_r and its shift^T give the previous row's recurrent term. wcat_t is
// Wcat^T, contiguous (oneDNN would copy a strided a operand every row). The weight and bias
// gradients follow from gx and hidden afterwards (weight_grad), into gwx (G, 3h + 1).
template <typename T>
void backward_scan(const T* gh, const Tensor& wcat_t, const T* hidden, const T* cell, const T* gates,
                   T* gx, Tensor& gwx, int64_t B, int64_t h, int64_t H, int64_t W, int64_t b0, int64_t b1) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t BW = B * W, G = 4 * h, nb = b1 - b0, nW = nb * W, HW = H * W;
  auto opts = gwx.options();
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
      auto step = [&](int64_t n, int64_t k) {  // k < Vec::size(): a partial vector (the same math)
        Vec a, b_, c_, d_, e;
        lstm_cell_backward<Vec, LstmFastActivations>(
            Vec::loadu(dhr + n, k), Vec::loadu(dc + n, k), Vec::loadu(pi + n, k), Vec::loadu(pf + n, k),
            Vec::loadu(pg + n, k), Vec::loadu(po + n, k), Vec::loadu(cr + n, k),
            cp ? Vec::loadu(cp + n, k) : Vec(T(0)), a, b_, c_, d_, e);
        a.store(di + n, k); b_.store(df + n, k); c_.store(dg + n, k); d_.store(dout + n, k); e.store(dc + n, k);
      };
      int64_t n = 0;
      for (; n + Vec::size() <= nW; n += Vec::size()) step(n, Vec::size());
      if (n < nW) step(n, nW - n);
    }
    for (int64_t j = 0; j < G; ++j)  // gx row r = dz_r
      for (int64_t b = 0; b < nb; ++b) {
        T* xs = gx + seg(b, G, r) + j * HW;
        if (r >= 2) prefetch_segment(xs - 2 * W, W, 1);
        copy_short(dz + j * nW + b * W, xs, W);
      }
    if (r == 0) break;
    gemm_rowmajor(3 * h, nW, G, wcat_t.const_data_ptr<T>(), G, dz, nW, dhcat, nW, /*accumulate=*/false);
    for (int64_t u = 0; u < h; ++u) {  // dh_{r-1} = shift^T(Wcat^T dz_r) + the output's gradient
      T* d = dh_rec + u * nW;
      const T *l = dhcat + u * nW, *m = dhcat + (h + u) * nW, *rt = dhcat + (2 * h + u) * nW;
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t o = b * W;
        const T* g = gh + seg(b, h, r - 1) + u * HW;
        if (r >= 3) prefetch_segment(g - 2 * W, W, 0);
        shift_add(d + o, m + o, l + o, rt + o, g, W);
      }
    }
  }
  Tensor buf_t = at::empty({(3 * h + 1) * HW}, opts);
  for (int64_t b = b0; b < b1; ++b)
    weight_grad(gx + b * G * HW, hidden + b * h * HW, gwx, buf_t.data_ptr<T>(), h, H, W);
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
                                gx.data_ptr<scalar_t>(), gwx_local, B, h, H, W, b0, b1);
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
