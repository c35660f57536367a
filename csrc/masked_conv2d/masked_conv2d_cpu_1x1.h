// 1x1 masked convolutions on the CPU (a PixelCNN's reduce, expand and head layers, about half
// its FLOPs), float32 / float64 with channels-last activations (masked_conv2d_cpu.cpp).
//
// With x seen as the (P = N*H*W, Cin) matrix X a channels-last tensor already is, and u = relu(x)
// for a layer with a fused input ReLU (else u = x), Wc the (Cout, Cin) centre tap with the masked
// channel pairs zeroed, R the optional residual (P, Cout):
//   Y  = U Wc^T + b + R                     dU = dY Wc,  dX = where(X <= 0, 0, dU)  (dU with no ReLU)
//   dWc = dY^T U (masked pairs: exact 0)    db = column sums of dY                  (dR = dY: no work)
// Without the ReLU and the residual the forward is one whole-batch GEMM (linear_nt, threaded
// inside oneDNN). Otherwise, and for the whole backward, the pixels run in blocks of kPixelBlock
// rows on the chunk workers: each block's relu(X) rows, its output rows (started as b + R, the
// GEMM adding into them), the transposed operand of the weight gradient and its dX rows stay in
// cache between the GEMMs and the elementwise steps around them, instead of whole-batch passes of
// ReLU, residual add, threshold_backward, transposes and sums. The block buffers are allocated
// once per chunk. The weight gradient accumulates over the blocks into a per-chunk buffer, summed
// in chunk order (a long-K product at::mm otherwise runs on MKL's AVX2 code); the GEMM kernel
// takes row-major operands only, so one of dY, U is transposed per block: the narrower one
// (relu'd on the way when it is U), giving dWc or dWc^T.
// Per element the transposes cost more than the GEMM here, hence the choice.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "fastgen_cpu.h"
#include "fastgen_gemm.h"
#include "masked_conv2d/masked_conv2d_cpu_shift.h"
#include "masked_conv2d/masked_conv2d_host.h"

namespace fastgen {

constexpr int64_t kPixelBlock = 256;  // pixel rows per GEMM block: a block's rows of X, dY, dX stay in L2

inline bool use_1x1_gemm(const MaskedConvArgs& a, const at::Tensor& x, at::ScalarType dt) {
  return a.kh == 1 && a.kw == 1 && a.ncols == 1 && dt == x.scalar_type() && a.n * a.h * a.w > 0;
}

// (N, C, H, W) tensor -> its (N*H*W, C) matrix, contiguous (a view when t is channels-last dense)
inline at::Tensor pixel_matrix(const at::Tensor& t) {
  return t.contiguous(at::MemoryFormat::ChannelsLast).permute({0, 2, 3, 1}).reshape({-1, t.size(1)});
}

inline at::Tensor matrix_to_nhwc(const at::Tensor& m, const MaskedConvArgs& a, int64_t c) {
  return m.view({a.n, a.h, a.w, c}).permute({0, 3, 1, 2});
}

// Whether the centre tap connects every channel pair: type B with one channel group (a
// one-channel image's hidden layers). The mask is then all ones: nothing to apply, on every
// call of every 1x1 layer of a PixelCNN.
inline bool centre_full(const MaskedConvArgs& a) { return !a.type_a && a.groups == 1; }

// Wc (Cout, Cin), contiguous in dtype dt, masked channel pairs exactly 0 (a select).
inline at::Tensor centre_matrix(const at::Tensor& weight, const MaskedConvArgs& a, at::ScalarType dt) {
  auto wc = weight.reshape({a.cout, a.cin}).to(dt).contiguous();
  return centre_full(a) ? wc : wc.masked_fill(centre_mask(a, wc.options()) == 0, 0);
}

// parts (P, ...) -> their sum over P, added in order (deterministic), as a contiguous tensor
// of the trailing shape: a few thousand elements here, where at::sum's setup costs more than
// the additions.
inline at::Tensor sum_parts(const at::Tensor& parts) {
  auto out = parts[0].clone(at::MemoryFormat::Contiguous);
  const int64_t n = out.numel();
  AT_DISPATCH_FLOATING_TYPES(parts.scalar_type(), "sum_parts", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t* p = parts.const_data_ptr<scalar_t>();
    for (int64_t k = 1; k < parts.size(0); ++k)
      for (int64_t i = 0; i < n; ++i) o[i] += p[k * n + i];
  });
  return out;
}

// body(p0, m, part, scratch) for the pixel blocks [p0, p0 + m) of every chunk, on the chunk
// workers; part is the chunk's index: a chunk's sums go to its own slot, added up in chunk order
// afterwards, so a reduction does not depend on which worker took which chunk (deterministic for a
// thread count). scratch: `scratch_size` elements of T, allocated once per chunk, reused by its blocks.
template <typename T, typename F>
void for_each_pixel_block(const MaskedConvArgs& a, const std::vector<Chunk>& chunks, int64_t scratch_size,
                          const F& body) {
  for_each_chunk(chunks, [&](const Chunk& ch, int) {
    const int64_t part = &ch - chunks.data();
    const int64_t begin = (ch.n0 * a.h + ch.r0) * a.w, end = begin + ch.nb * ch.nr * a.w;
    std::vector<T> scratch(scratch_size);
    for (int64_t p0 = begin; p0 < end; p0 += kPixelBlock)
      body(p0, std::min(kPixelBlock, end - p0), part, scratch.data());
  });
}

// The weight gradient's transposed operand: U^T (dWc^T = U^T dY) when U is the narrower matrix,
// or, with a fused ReLU, as wide as dY (one relu'd transpose instead of a transpose and a ReLU
// pass); else dY^T (dWc = dY^T U).
inline bool weight_grad_transposes_x(const MaskedConvArgs& a, bool relu_input) {
  return a.cin < a.cout || (relu_input && a.cin == a.cout);
}

// r: the residual as a (P, Cout) contiguous matrix in x's dtype, or undefined.
inline at::Tensor conv1x1_forward(const at::Tensor& x, const at::Tensor& wc, const std::optional<at::Tensor>& b,
                                  const at::Tensor& r, const MaskedConvArgs& a, bool relu_input) {
  const auto xm = pixel_matrix(x);
  if (!relu_input && !r.defined()) return matrix_to_nhwc(linear_nt(xm, wc, b), a, a.cout);
  auto y = at::empty({a.n * a.h * a.w, a.cout}, xm.options());
  const auto wt = wc.t().contiguous();  // (Cin, Cout)
  AT_DISPATCH_FLOATING_TYPES(xm.scalar_type(), "masked_conv2d_1x1", [&] {
    const scalar_t* X = xm.const_data_ptr<scalar_t>();
    const scalar_t* W = wt.const_data_ptr<scalar_t>();
    const scalar_t* B = b.has_value() ? b->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* R = r.defined() ? r.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* Y = y.mutable_data_ptr<scalar_t>();
    const int64_t scratch = relu_input ? kPixelBlock * a.cin : 0;
    for_each_pixel_block<scalar_t>(a, make_chunks(a.n, a.h, a.w), scratch, [&](int64_t p0, int64_t m, int64_t,
                                                                               scalar_t* u) {
      const scalar_t* xs = X + p0 * a.cin;
      if (relu_input)
        for (int64_t i = 0; i < m * a.cin; ++i) u[i] = relu_value(xs[i]);
      scalar_t* ys = Y + p0 * a.cout;
      if (R) {  // the block's rows start as R + b, in cache for the GEMM to add into
        const scalar_t* rs = R + p0 * a.cout;
        if (B)
          for (int64_t i = 0; i < m; ++i)
            for (int64_t o = 0; o < a.cout; ++o) ys[i * a.cout + o] = rs[i * a.cout + o] + B[o];
        else
          std::copy(rs, rs + m * a.cout, ys);
      } else if (B) {
        for (int64_t i = 0; i < m; ++i) std::copy(B, B + a.cout, ys + i * a.cout);
      }
      gemm_rowmajor(m, a.cout, a.cin, relu_input ? u : xs, a.cin, W, a.cout, ys, a.cout, B != nullptr || R != nullptr);
    });
  });
  return matrix_to_nhwc(y, a, a.cout);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> conv1x1_backward(const at::Tensor& grad_y,
                                                                       const at::Tensor& x,
                                                                       const at::Tensor& weight,
                                                                       const MaskedConvArgs& a, bool relu_input,
                                                                       bool x_grad, bool weight_grad, bool bias_grad) {
  const auto gym = pixel_matrix(grad_y), xm = pixel_matrix(x);
  const auto dt = xm.scalar_type();
  const auto wc = centre_matrix(weight, a, dt);  // (Cout, Cin)
  const auto chunks = make_chunks(a.n, a.h, a.w);
  const int64_t parts = static_cast<int64_t>(chunks.size());
  at::Tensor gx = x.new_empty({0}), gw = weight.new_empty({0}), gb = weight.new_empty({0});
  at::Tensor gxm, gw_parts, gb_parts;
  if (x_grad) gxm = at::empty({a.n * a.h * a.w, a.cin}, xm.options());
  const bool tx = weight_grad_transposes_x(a, relu_input);
  if (weight_grad) gw_parts = at::zeros({parts, tx ? a.cin : a.cout, tx ? a.cout : a.cin}, xm.options());
  if (bias_grad) gb_parts = at::zeros({parts, a.cout}, xm.options().dtype(at::kDouble));
  // per-chunk scratch: the transposed operand (Cin or Cout rows of a block), then relu(X)'s
  // block when dY is the transposed one, then the bias sums
  const int64_t t_size = weight_grad ? (tx ? a.cin : a.cout) * kPixelBlock : 0;
  const int64_t u_size = weight_grad && !tx && relu_input ? kPixelBlock * a.cin : 0;
  AT_DISPATCH_FLOATING_TYPES(dt, "masked_conv2d_1x1_backward", [&] {
    const scalar_t* X = xm.const_data_ptr<scalar_t>();
    const scalar_t* GY = gym.const_data_ptr<scalar_t>();
    const scalar_t* W = wc.const_data_ptr<scalar_t>();
    scalar_t* GX = x_grad ? gxm.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* GW = weight_grad ? gw_parts.mutable_data_ptr<scalar_t>() : nullptr;
    double* GB = bias_grad ? gb_parts.mutable_data_ptr<double>() : nullptr;
    const int64_t scratch = t_size + u_size + (bias_grad ? a.cout : 0);
    for_each_pixel_block<scalar_t>(a, chunks, scratch, [&](int64_t p0, int64_t m, int64_t part, scalar_t* buf) {
      const scalar_t* gys = GY + p0 * a.cout;
      const scalar_t* xs = X + p0 * a.cin;
      if (GX) {
        scalar_t* gxs = GX + p0 * a.cin;
        gemm_rowmajor(m, a.cin, a.cout, gys, a.cout, W, a.cin, gxs, a.cin, false);
        if (relu_input)
          for (int64_t i = 0; i < m * a.cin; ++i) gxs[i] = xs[i] <= scalar_t(0) ? scalar_t(0) : gxs[i];
      }
      if (GW && tx) {  // dWc^T (Cin, Cout) += relu(X)^T dY
        scalar_t* ut = buf;
        transpose_tiles<scalar_t, scalar_t>(xs, a.cin, ut, m, m, a.cin);
        if (relu_input)
          for (int64_t i = 0; i < a.cin * m; ++i) ut[i] = relu_value(ut[i]);
        gemm_rowmajor(a.cin, a.cout, m, ut, m, gys, a.cout, GW + part * a.cout * a.cin, a.cout, true);
      } else if (GW) {  // dWc (Cout, Cin) += dY^T relu(X)
        scalar_t *gyt = buf, *u = buf + t_size;
        transpose_tiles<scalar_t, scalar_t>(gys, a.cout, gyt, m, m, a.cout);
        if (relu_input)
          for (int64_t i = 0; i < m * a.cin; ++i) u[i] = relu_value(xs[i]);
        gemm_rowmajor(a.cout, a.cin, m, gyt, m, relu_input ? u : xs, a.cin, GW + part * a.cout * a.cin, a.cin, true);
      }
      if (GB) {  // the block's sums in scalar_t (vectorised across channels), added up in double
        scalar_t* sums = buf + t_size + u_size;
        std::copy(gys, gys + a.cout, sums);
        for (int64_t i = 1; i < m; ++i)
          for (int64_t o = 0; o < a.cout; ++o) sums[o] += gys[i * a.cout + o];
        for (int64_t o = 0; o < a.cout; ++o) GB[part * a.cout + o] += static_cast<double>(sums[o]);
      }
    });
  });
  if (x_grad) gx = matrix_to_nhwc(gxm, a, a.cin);
  if (weight_grad) {
    auto g = tx ? sum_parts(gw_parts).t().contiguous() : sum_parts(gw_parts);  // (Cout, Cin)
    if (!centre_full(a)) g = g.masked_fill(centre_mask(a, g.options()) == 0, 0);
    gw = g.view({a.cout, a.cin, 1, 1}).to(weight.scalar_type());
  }
  if (bias_grad) gb = sum_parts(gb_parts).to(weight.scalar_type());
  return {gx, gw, gb};
}

}  // namespace fastgen
