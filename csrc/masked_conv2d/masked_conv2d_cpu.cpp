// CPU kernels of masked_conv2d: the mask's non-zero taps as two dense convolutions.
//
// The kept taps of a PixelCNN mask form two rectangles (masked_conv2d.h): the ch full rows
// above the centre (T, ch x kw taps) and the centre row's first ncols taps (C, 1 x ncols, the
// centre column times the channel mask when it is used). With x zero outside the image,
//   y[r, c]  = b + sum_{i<ch, j<kw} T[i, j] x[r - ch + i, c - cw + j] + sum_{j<ncols} C[j] x[r, c - cw + j]
//   dx[r, c] = sum_{i<ch, j<kw} T[ch-1-i, kw-1-j]^T dy[r + 1 + i, c - cw + j]
//            + sum_{j<ncols} C[ncols-1-j]^T dy[r, c + cw - ncols + 1 + j]
//   dT[i, j] = sum_{n, r, c} dy[r, c] x[r - ch + i, c - cw + j]^T   (dC likewise; its centre
//              column times the channel mask, so masked weights get exactly zero)
// Each sum is one *valid* (unpadded) convolution of a shifted, zero-padded copy of x or dy
// (shifted_input) with the rectangle: H x W outputs exactly, nothing computed for a masked tap
// and no masked input ever read. The convolutions run on ATen's CPU convolution, which is
// oneDNN's AVX-512 jit kernel for float32 (about twice the AVX2 sgemm an im2col GEMM gets
// here); the weight gradients on its convolution_backward. A 7x7 type-A mask keeps 24 of 49
// taps, so forward and backward do half of the dense convolution's work on the same engine.
// Activations are channels-last (NHWC) throughout: oneDNN's native layout, no reorders, and
// the layout the op's outputs promise. bf16 runs in float and rounds once at the end; float64
// takes ATen's own (exact, slower) convolution.
#include <torch/library.h>

#include <algorithm>

#include "masked_conv2d/masked_conv2d_host.h"

namespace fastgen {
namespace {

constexpr auto kNHWC = at::MemoryFormat::ChannelsLast;

at::ScalarType acc_type(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 ? at::kFloat : t.scalar_type(); }

// p (N, C, H + kh - 1, W + kw - 1) channels-last in dtype dt with p[r, c] = t[r + oy, c + ox]
// (zero outside t): a valid (kh, kw) convolution of p gives outputs at t's H x W positions, its
// tap (i, j) reading t[r + oy + i, c + ox + j]. One strided copy (also the NCHW -> NHWC
// transpose and the dtype cast), zeros written on the border only.
at::Tensor shifted_input(const at::Tensor& t, int64_t oy, int64_t ox, int64_t kh, int64_t kw, at::ScalarType dt) {
  const int64_t h = t.size(2), w = t.size(3), hp = h + kh - 1, wp = w + kw - 1;
  auto p = at::empty({t.size(0), t.size(1), hp, wp}, t.options().dtype(dt).memory_format(kNHWC));
  const int64_t r0 = std::clamp<int64_t>(-oy, 0, hp), r1 = std::clamp<int64_t>(h - oy, r0, hp);
  const int64_t c0 = std::clamp<int64_t>(-ox, 0, wp), c1 = std::clamp<int64_t>(w - ox, c0, wp);
  if (r0 > 0) p.narrow(2, 0, r0).zero_();
  if (r1 < hp) p.narrow(2, r1, hp - r1).zero_();
  if (r1 > r0) {
    auto rows = p.narrow(2, r0, r1 - r0);
    if (c0 > 0) rows.narrow(3, 0, c0).zero_();
    if (c1 < wp) rows.narrow(3, c1, wp - c1).zero_();
    if (c1 > c0) rows.narrow(3, c0, c1 - c0).copy_(t.narrow(2, r0 + oy, r1 - r0).narrow(3, c0 + ox, c1 - c0));
  }
  return p;
}

// The two kept rectangles of the weight (in dtype dt): T (Cout, Cin, ch, kw) and C (Cout, Cin,
// 1, ncols) with the centre column masked; undefined when empty.
struct Pieces {
  at::Tensor top, centre;
};

Pieces weight_pieces(const at::Tensor& weight, const MaskedConvArgs& a, const at::Tensor& cmask, at::ScalarType dt) {
  auto w = weight.to(dt);
  Pieces p;
  if (a.ch > 0) p.top = w.narrow(2, 0, a.ch);
  if (a.ncols > 0) p.centre = centre_row(w, a, cmask).unsqueeze(2);
  return p;
}

// Valid convolution (stride 1, no padding) of channels-last `input` with `kernel`.
at::Tensor valid_conv(const at::Tensor& input, const at::Tensor& kernel, const std::optional<at::Tensor>& bias) {
  return at::conv2d(input, kernel, bias);
}

// dL/dkernel of valid_conv(input, kernel) given dL/doutput.
at::Tensor valid_conv_weight_grad(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& kernel) {
  return std::get<1>(at::convolution_backward(grad_out, input, kernel, std::nullopt, {1, 1}, {0, 0}, {1, 1}, false,
                                              {0, 0}, 1, {false, true, false}));
}

at::Tensor masked_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             c10::string_view mask_type, int64_t data_channels) {
  auto a = check_masked_conv("masked_conv2d", x, weight, std::string(mask_type), data_channels);
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // the inner convolutions record no graph
  if (bias.has_value()) {
    check_like(x, "x", *bias, "masked_conv2d", "bias", false);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == a.cout, "fastgen::masked_conv2d: bias must have shape (",
                a.cout, ",); got ", bias->sizes());
  }
  const auto dt = acc_type(x);
  const auto opts = x.options().dtype(dt);
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->to(dt);
  at::Tensor y;
  if (a.n * a.h * a.w > 0) {
    auto w = weight_pieces(weight, a, centre_mask(a, opts), dt);
    if (w.top.defined()) y = valid_conv(shifted_input(x, -a.ch, -a.cw, a.ch, a.kw, dt), w.top, b);
    if (w.centre.defined()) {
      auto yc = valid_conv(shifted_input(x, 0, -a.cw, 1, a.ncols, dt), w.centre, y.defined() ? std::nullopt : b);
      y = y.defined() ? y.add_(yc) : yc;
    }
  }
  if (!y.defined()) {  // no pixels, or every tap masked: y = bias
    y = at::empty({a.n, a.cout, a.h, a.w}, opts.memory_format(kNHWC));
    if (b.has_value()) y.copy_(b->view({1, a.cout, 1, 1}).expand_as(y));
    else y.zero_();
  }
  y = y.contiguous(kNHWC);  // (a no-op: oneDNN writes channels-last outputs for channels-last inputs)
  return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, c10::string_view mask_type,
    int64_t data_channels, bool x_grad, bool weight_grad, bool bias_grad) {
  auto a = check_masked_conv_backward(grad_y, x, weight, std::string(mask_type), data_channels);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto dt = acc_type(x);
  const auto opts = x.options().dtype(dt);
  const bool any = a.n * a.h * a.w > 0;
  auto cmask = centre_mask(a, opts);
  auto w = weight_pieces(weight, a, cmask, dt);
  at::Tensor gx = x.new_empty({0}), gw = weight.new_empty({0}), gb = weight.new_empty({0});
  if (x_grad) {
    at::Tensor g;
    if (any && w.top.defined())
      g = valid_conv(shifted_input(grad_y, 1, -a.cw, a.ch, a.kw, dt), w.top.flip({2, 3}).transpose(0, 1), std::nullopt);
    if (any && w.centre.defined()) {
      auto gc = valid_conv(shifted_input(grad_y, 0, a.cw - a.ncols + 1, 1, a.ncols, dt),
                           w.centre.flip({3}).transpose(0, 1), std::nullopt);
      g = g.defined() ? g.add_(gc) : gc;
    }
    if (!g.defined()) g = at::zeros({a.n, a.cin, a.h, a.w}, opts.memory_format(kNHWC));
    gx = g.contiguous(kNHWC).to(x.scalar_type());
  }
  at::Tensor gy;  // channels-last, in dt: the layout of the inputs it meets
  if ((weight_grad && any) || bias_grad) gy = grad_y.to(dt).contiguous(kNHWC);
  if (weight_grad) {
    auto g = at::zeros({a.cout, a.cin, a.kh, a.kw}, opts);
    if (any && w.top.defined())
      g.narrow(2, 0, a.ch).copy_(valid_conv_weight_grad(gy, shifted_input(x, -a.ch, -a.cw, a.ch, a.kw, dt), w.top));
    if (any && w.centre.defined()) {
      auto gc = valid_conv_weight_grad(gy, shifted_input(x, 0, -a.cw, 1, a.ncols, dt), w.centre).select(2, 0);
      auto row = g.select(2, a.ch);
      if (a.cw > 0) row.narrow(2, 0, a.cw).copy_(gc.narrow(2, 0, a.cw));
      if (a.centre) row.select(2, a.cw).copy_(gc.select(2, a.cw) * cmask);
    }
    gw = g.to(weight.scalar_type());
  }
  if (bias_grad) gb = gy.sum({0, 2, 3}).to(weight.scalar_type());
  return {gx, gw, gb};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("masked_conv2d", &fastgen::masked_conv2d_cpu);
  m.impl("masked_conv2d_backward", &fastgen::masked_conv2d_backward_cpu);
}
