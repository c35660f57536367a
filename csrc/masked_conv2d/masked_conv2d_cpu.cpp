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
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "masked_conv2d/masked_conv2d_host.h"

namespace fastgen {
namespace {

constexpr auto kNHWC = at::MemoryFormat::ChannelsLast;

at::ScalarType acc_type(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 ? at::kFloat : t.scalar_type(); }

// A shifted, zero-padded copy of t for a valid (kh, kw) convolution with outputs at t's H x W
// positions, its tap (i, j) reading t[r + oy + i, c + ox + j]: p (N, C, H + kh - 1, W + kw - 1)
// with p[r, c] = t[r + oy, c + ox] (zero outside t).
struct Shift {
  int64_t oy, ox, kh, kw;
};

// Source row t[n, :, r, :] as w pixels of c channels (NHWC) in dtype D, into buf; returns buf,
// or the row itself when t is channels-last in D already. NCHW rows are transposed in blocks
// of 16 channels: each source row is read once, sequentially, and the block stays in L1.
template <typename S, typename D>
const D* nhwc_row(const S* t, int64_t s_c, int64_t s_w, int64_t c, int64_t w, D* buf) {
  if (s_c == 1) {
    if constexpr (std::is_same_v<S, D>) {
      if (s_w == c) return t;
    }
    for (int64_t q = 0; q < w; ++q)
      for (int64_t k = 0; k < c; ++k) buf[q * c + k] = static_cast<D>(t[q * s_w + k]);
    return buf;
  }
  constexpr int64_t kBlock = 16;
  for (int64_t k0 = 0; k0 < c; k0 += kBlock) {
    const int64_t kn = std::min(kBlock, c - k0);
    for (int64_t q = 0; q < w; ++q) {
      const S* px = t + k0 * s_c + q * s_w;
      D* o = buf + q * c + k0;
      for (int64_t k = 0; k < kn; ++k) o[k] = static_cast<D>(px[k * s_c]);
    }
  }
  return buf;
}

// The shifted copies of t, channels-last in dtype dt, in one parallel pass over t's rows: each
// source row is transposed (NCHW -> NHWC) and cast once, then copied into every copy's row it
// lands in, that row's padding zeroed on the way. One parallel region, not one per copy (on a
// loaded machine every region waits for its slowest thread).
std::vector<at::Tensor> shifted_inputs(const at::Tensor& t, const std::vector<Shift>& shifts, at::ScalarType dt) {
  const int64_t n = t.size(0), c = t.size(1), h = t.size(2), w = t.size(3);
  std::vector<at::Tensor> out;
  for (const Shift& s : shifts)
    out.push_back(at::empty({n, c, h + s.kh - 1, w + s.kw - 1}, t.options().dtype(dt).memory_format(kNHWC)));
  const int64_t s_n = t.stride(0), s_c = t.stride(1), s_h = t.stride(2), s_w = t.stride(3);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(w * c, 1));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t.scalar_type(), "masked_conv2d_shift", [&] {
    using S = scalar_t;
    const S* src = t.const_data_ptr<S>();
    AT_DISPATCH_FLOATING_TYPES(dt, "masked_conv2d_shift_out", [&] {
      using D = scalar_t;
      at::parallel_for(0, n * h, grain, [&](int64_t b, int64_t e) {
        std::vector<D> buf(w * c);
        for (int64_t i = b; i < e; ++i) {
          const int64_t img = i / h, r = i % h;
          const D* row = nhwc_row(src + img * s_n + r * s_h, s_c, s_w, c, w, buf.data());
          for (size_t k = 0; k < shifts.size(); ++k) {
            const Shift& s = shifts[k];
            const int64_t hp = h + s.kh - 1, wp = w + s.kw - 1;
            const int64_t q0 = std::clamp<int64_t>(-s.ox, 0, wp), q1 = std::clamp<int64_t>(w - s.ox, q0, wp);
            D* base = out[k].mutable_data_ptr<D>() + img * hp * wp * c;
            auto zero_rows = [&](int64_t r0, int64_t r1) {
              if (r1 > r0) std::fill(base + r0 * wp * c, base + r1 * wp * c, D(0));
            };
            // the rows no source row lands in: zeroed by the first and the last source row
            if (r == 0) zero_rows(0, std::min(hp, -s.oy));
            if (r == h - 1) zero_rows(std::max<int64_t>(0, h - s.oy), hp);
            const int64_t rp = r - s.oy;
            if (rp < 0 || rp >= hp) continue;
            D* dst = base + rp * wp * c;
            std::fill(dst, dst + q0 * c, D(0));
            std::copy(row + (q0 + s.ox) * c, row + (q1 + s.ox) * c, dst + q0 * c);
            std::fill(dst + q1 * c, dst + wp * c, D(0));
          }
        }
      });
    });
  });
  return out;
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

Shift top_shift(const MaskedConvArgs& a) { return {-a.ch, -a.cw, a.ch, a.kw}; }
Shift centre_shift(const MaskedConvArgs& a) { return {0, -a.cw, 1, a.ncols}; }

// oneDNN's convolution with the sum fused (the inductor's in-place op; out += conv), when torch has it.
const c10::OperatorHandle* conv_add_op() {
  static const std::optional<c10::OperatorHandle> op = []() -> std::optional<c10::OperatorHandle> {
    if (!at::hasMKLDNN()) return std::nullopt;
    return c10::Dispatcher::singleton().findSchema({"mkldnn::_convolution_pointwise_", "binary"});
  }();
  return op.has_value() ? &*op : nullptr;
}

// out += valid (stride 1, unpadded) convolution of channels-last `input` with `kernel`; out is
// channels-last. float32 adds inside oneDNN's kernel (no second pass over out), else add_.
void conv_add_(at::Tensor& out, const at::Tensor& input, const at::Tensor& kernel) {
  if (input.scalar_type() != at::kFloat || conv_add_op() == nullptr) {
    out.add_(at::conv2d(input, kernel));
    return;
  }
  torch::jit::Stack stack{out, input, kernel.contiguous(), c10::IValue(), std::vector<int64_t>{0, 0},
                          std::vector<int64_t>{1, 1}, std::vector<int64_t>{1, 1}, int64_t{1}, std::string("add"),
                          at::Scalar(1.0), c10::IValue(), c10::List<std::optional<at::Scalar>>(), c10::IValue()};
  conv_add_op()->callBoxed(stack);
}

// y (N, Cout, H, W) channels-last = bias + conv(top part) + conv(centre part), from the copies.
at::Tensor two_part_conv(const at::Tensor* top_in, const at::Tensor& top_k, const at::Tensor* centre_in,
                         const at::Tensor& centre_k, const std::optional<at::Tensor>& bias,
                         const at::TensorOptions& opts, at::IntArrayRef shape) {
  at::Tensor y;
  if (top_in) y = at::conv2d(*top_in, top_k, bias).contiguous(kNHWC);
  if (!y.defined()) {
    y = at::empty(shape, opts.memory_format(kNHWC));
    if (bias.has_value()) y.copy_(bias->view({1, -1, 1, 1}).expand_as(y));
    else y.zero_();
  }
  if (centre_in) conv_add_(y, *centre_in, centre_k);
  return y;
}

// dL/dkernel of the valid convolution conv2d(input, kernel) given dL/doutput.
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
  const bool any = a.n * a.h * a.w > 0;
  auto w = weight_pieces(weight, a, centre_mask(a, opts), dt);
  std::vector<Shift> shifts;
  if (any && w.top.defined()) shifts.push_back(top_shift(a));
  if (any && w.centre.defined()) shifts.push_back(centre_shift(a));
  auto xs = shifted_inputs(x, shifts, dt);
  const bool top = any && w.top.defined(), centre = any && w.centre.defined();
  auto y = two_part_conv(top ? &xs[0] : nullptr, w.top, centre ? &xs.back() : nullptr, w.centre, b, opts,
                         {a.n, a.cout, a.h, a.w});
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
  const bool top = any && w.top.defined(), centre = any && w.centre.defined();
  // one pass over grad_y: its shifted copies for the input gradient, and itself channels-last
  std::vector<Shift> shifts;
  if (x_grad && top) shifts.push_back({1, -a.cw, a.ch, a.kw});
  if (x_grad && centre) shifts.push_back({0, a.cw - a.ncols + 1, 1, a.ncols});
  const bool plain = (weight_grad && any) || bias_grad;
  if (plain) shifts.push_back({0, 0, 1, 1});
  auto gys = shifted_inputs(grad_y, shifts, dt);
  at::Tensor gx = x.new_empty({0}), gw = weight.new_empty({0}), gb = weight.new_empty({0});
  if (x_grad) {
    auto g = two_part_conv(top ? &gys[0] : nullptr, top ? w.top.flip({2, 3}).transpose(0, 1) : at::Tensor(),
                           centre ? &gys[top ? 1 : 0] : nullptr,
                           centre ? w.centre.flip({3}).transpose(0, 1) : at::Tensor(), std::nullopt, opts,
                           {a.n, a.cin, a.h, a.w});
    gx = g.scalar_type() == x.scalar_type() ? g : g.to(x.scalar_type());
  }
  if (weight_grad) {
    auto g = at::zeros({a.cout, a.cin, a.kh, a.kw}, opts);
    std::vector<Shift> xshifts;
    if (top) xshifts.push_back(top_shift(a));
    if (centre) xshifts.push_back(centre_shift(a));
    auto xs = shifted_inputs(x, xshifts, dt);
    if (top) g.narrow(2, 0, a.ch).copy_(valid_conv_weight_grad(gys.back(), xs[0], w.top));
    if (centre) {
      auto gc = valid_conv_weight_grad(gys.back(), xs.back(), w.centre).select(2, 0);
      auto row = g.select(2, a.ch);
      if (a.cw > 0) row.narrow(2, 0, a.cw).copy_(gc.narrow(2, 0, a.cw));
      if (a.centre) row.select(2, a.cw).copy_(gc.select(2, a.cw) * cmask);
    }
    gw = g.to(weight.scalar_type());
  }
  if (bias_grad) gb = gys.back().sum({0, 2, 3}).to(weight.scalar_type());
  return {gx, gw, gb};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("masked_conv2d", &fastgen::masked_conv2d_cpu);
  m.impl("masked_conv2d_backward", &fastgen::masked_conv2d_backward_cpu);
}
