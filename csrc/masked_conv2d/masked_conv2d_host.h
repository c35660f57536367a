// Host-side pieces of masked_conv2d shared by the CPU and CUDA entry points: argument checks,
// the centre channel mask, the weight laid out as GEMM matrices in the order of the tap
// segments (masked_conv2d.h), and the scatter of a GEMM-shaped weight gradient back into
// (Cout, Cin, kh, kw) with exact zeros on the masked taps.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "fastgen_host.h"
#include "masked_conv2d/masked_conv2d.h"

namespace fastgen {

struct MaskedConvArgs {
  int64_t n, cin, h, w, cout;
  int kh, kw, ch, cw;
  int64_t groups;
  bool type_a, centre;
  int ncols;  // taps used in the centre row: cw (+1 with the centre)
};

inline MaskedConvArgs check_masked_conv(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                        const std::string& mask_type, int64_t data_channels) {
  check_floating(x, op, "x");
  check_like(x, "x", weight, op, "weight", false);
  TORCH_CHECK(x.dim() == 4, "fastgen::", op, ": x must be (N, C, H, W); got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4, "fastgen::", op, ": weight must be (Cout, Cin, kh, kw); got ", weight.sizes());
  TORCH_CHECK(weight.size(1) == x.size(1), "fastgen::", op, ": weight has ", weight.size(1),
              " input channels but x has ", x.size(1));
  TORCH_CHECK(weight.size(2) % 2 == 1 && weight.size(3) % 2 == 1, "fastgen::", op,
              ": weight's kernel size must be odd; got ", weight.sizes());
  TORCH_CHECK(weight.size(2) <= 2 * kMaxSegments - 1, "fastgen::", op, ": kernel height too large");
  TORCH_CHECK(mask_type == "A" || mask_type == "B", "fastgen::", op, ": mask_type must be 'A' or 'B'; got ",
              mask_type);
  TORCH_CHECK(data_channels >= 1 && data_channels <= std::min(x.size(1), weight.size(0)), "fastgen::", op,
              ": data_channels must be in [1, min(Cin, Cout)]; got ", data_channels);
  MaskedConvArgs a;
  a.n = x.size(0), a.cin = x.size(1), a.h = x.size(2), a.w = x.size(3), a.cout = weight.size(0);
  a.kh = static_cast<int>(weight.size(2)), a.kw = static_cast<int>(weight.size(3));
  a.ch = a.kh / 2, a.cw = a.kw / 2;
  a.groups = data_channels;
  a.type_a = mask_type == "A";
  a.centre = centre_used(a.groups, a.type_a);
  a.ncols = a.cw + (a.centre ? 1 : 0);
  return a;
}

// The forward's checks: the geometry, then bias (Cout,) and residual (y's shape), both like x.
inline MaskedConvArgs check_masked_conv_forward(const at::Tensor& x, const at::Tensor& weight,
                                                const std::optional<at::Tensor>& bias, const std::string& mask_type,
                                                int64_t data_channels, const std::optional<at::Tensor>& residual) {
  auto a = check_masked_conv("masked_conv2d", x, weight, mask_type, data_channels);
  if (bias.has_value()) {
    check_like(x, "x", *bias, "masked_conv2d", "bias", false);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == a.cout, "fastgen::masked_conv2d: bias must have shape (",
                a.cout, ",); got ", bias->sizes());
  }
  if (residual.has_value()) {
    check_like(x, "x", *residual, "masked_conv2d", "residual", false);
    TORCH_CHECK(residual->dim() == 4 && residual->size(0) == a.n && residual->size(1) == a.cout &&
                    residual->size(2) == a.h && residual->size(3) == a.w,
                "fastgen::masked_conv2d: residual must have y's shape (", a.n, ", ", a.cout, ", ", a.h, ", ", a.w,
                "); got ", residual->sizes());
  }
  return a;
}

inline MaskedConvArgs check_masked_conv_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                 const at::Tensor& weight, const std::string& mask_type,
                                                 int64_t data_channels) {
  auto a = check_masked_conv("masked_conv2d_backward", x, weight, mask_type, data_channels);
  check_like(x, "x", grad_y, "masked_conv2d_backward", "grad_y", false);
  TORCH_CHECK(grad_y.dim() == 4 && grad_y.size(0) == a.n && grad_y.size(1) == a.cout && grad_y.size(2) == a.h &&
                  grad_y.size(3) == a.w,
              "fastgen::masked_conv2d_backward: grad_y has shape ", grad_y.sizes(), " but y has (", a.n, ", ",
              a.cout, ", ", a.h, ", ", a.w, ")");
  return a;
}

// (Cout, Cin) 0/1 centre mask in `options`.
inline at::Tensor centre_mask(const MaskedConvArgs& a, const at::TensorOptions& options) {
  auto m = at::empty({a.cout, a.cin}, at::kFloat);
  auto* p = m.data_ptr<float>();
  for (int64_t o = 0; o < a.cout; ++o)
    for (int64_t c = 0; c < a.cin; ++c) p[o * a.cin + c] = centre_allowed(o, c, a.cout, a.cin, a.groups, a.type_a);
  return m.to(options);
}

// The centre row's used taps (Cout, Cin, ncols), the centre column masked.
inline at::Tensor centre_row(const at::Tensor& weight, const MaskedConvArgs& a, const at::Tensor& cmask) {
  auto row = weight.select(2, a.ch).narrow(2, 0, a.ncols);
  if (!a.centre) return row;
  auto cols = row.narrow(2, 0, a.cw);
  auto centre = (row.select(2, a.cw) * cmask).unsqueeze(2);
  return at::cat({cols, centre}, 2);
}

// (K, Cout): rows in the order of forward_segments' patch (segment, tap, ci).
inline at::Tensor forward_matrix(const at::Tensor& weight, const MaskedConvArgs& a, const at::Tensor& cmask) {
  std::vector<at::Tensor> parts;
  if (a.ch > 0) parts.push_back(weight.narrow(2, 0, a.ch).permute({2, 3, 1, 0}).reshape({-1, a.cout}));
  if (a.ncols > 0) parts.push_back(centre_row(weight, a, cmask).permute({2, 1, 0}).reshape({-1, a.cout}));
  if (parts.empty()) return weight.new_zeros({0, a.cout});
  return at::cat(parts, 0).contiguous();
}

// (K', Cin): rows in the order of backward_input_segments' patch of grad_y (segment, tap, o).
inline at::Tensor backward_input_matrix(const at::Tensor& weight, const MaskedConvArgs& a, const at::Tensor& cmask) {
  std::vector<at::Tensor> parts;
  if (a.ch > 0) parts.push_back(weight.narrow(2, 0, a.ch).flip({3}).permute({2, 3, 0, 1}).reshape({-1, a.cin}));
  if (a.ncols > 0) parts.push_back(centre_row(weight, a, cmask).flip({2}).permute({2, 0, 1}).reshape({-1, a.cin}));
  if (parts.empty()) return weight.new_zeros({0, a.cin});
  return at::cat(parts, 0).contiguous();
}

// (K, Cout) gradient of forward_matrix -> (Cout, Cin, kh, kw), zero on every masked tap.
inline at::Tensor scatter_weight_grad(const at::Tensor& gmat, const MaskedConvArgs& a, const at::Tensor& cmask,
                                      const at::TensorOptions& options) {
  auto gw = at::zeros({a.cout, a.cin, a.kh, a.kw}, options);
  int64_t rows = static_cast<int64_t>(a.ch) * a.kw * a.cin;
  if (a.ch > 0)
    gw.narrow(2, 0, a.ch).copy_(gmat.narrow(0, 0, rows).view({a.ch, a.kw, a.cin, a.cout}).permute({3, 2, 0, 1}));
  if (a.ncols > 0) {
    auto g = gmat.narrow(0, rows, a.ncols * a.cin).view({a.ncols, a.cin, a.cout}).permute({2, 1, 0});
    auto dst = gw.select(2, a.ch);
    if (a.cw > 0) dst.narrow(2, 0, a.cw).copy_(g.narrow(2, 0, a.cw));
    if (a.centre) dst.select(2, a.cw).copy_(g.select(2, a.cw) * cmask);
  }
  return gw;
}

// NHWC contiguous copy of x (N, C, H, W) in dtype `dt` (free if x is channels-last already).
inline at::Tensor to_nhwc(const at::Tensor& x, at::ScalarType dt) {
  return x.permute({0, 2, 3, 1}).to(dt).contiguous();
}

// A (N, H, W, C) contiguous tensor seen as the (N, C, H, W) channels-last result, in dtype `dt`.
inline at::Tensor from_nhwc(const at::Tensor& t, at::ScalarType dt) {
  auto out = t.permute({0, 3, 1, 2});
  return out.scalar_type() == dt ? out : out.to(dt);
}

}  // namespace fastgen
