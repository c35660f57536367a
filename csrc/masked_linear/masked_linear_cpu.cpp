// CPU kernels of masked_linear: one GEMM (at::mm / at::addmm, i.e. the BLAS this torch ships)
// per block of the layout, on contiguous spans, writing straight into strided views of the
// output; nothing outside a block is computed. The masked weight Wm = where(M, W, 0) is formed
// with masked_weight from masked_linear.h (the CUDA kernel's element math) only where read.
#include <torch/library.h>

#include <array>
#include <vector>

#include "fastgen_cpu.h"
#include "masked_linear/masked_linear_common.h"

namespace fastgen {
namespace {

// Per-row span [lo, hi) of a row layout.
std::vector<std::array<int64_t, 2>> row_spans(const std::vector<MaskBlock>& rows, int64_t n_rows) {
  std::vector<std::array<int64_t, 2>> span(n_rows);
  for (const auto& g : rows)
    for (int64_t r = g.a0; r < g.a1; ++r) span[r] = {g.b0, g.b1};
  return span;
}

// dst[r, c] = masked_weight(src[r, c], mask[r, c]) inside each row's span; outside it 0 when
// `zero_outside` (else untouched: those entries are never read). In place is fine.
template <typename scalar_t>
void apply_mask_rows(scalar_t* dst, const scalar_t* src, const bool* mask,
                     const std::vector<std::array<int64_t, 2>>& span, int64_t cols, bool zero_outside) {
  const int64_t n_rows = static_cast<int64_t>(span.size());
  at::parallel_for(0, n_rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = r * cols, lo = span[r][0], hi = span[r][1];
      if (zero_outside) {
        for (int64_t c = 0; c < lo; ++c) dst[base + c] = scalar_t(0);
        for (int64_t c = hi; c < cols; ++c) dst[base + c] = scalar_t(0);
      }
      for (int64_t c = lo; c < hi; ++c) dst[base + c] = masked_weight<scalar_t>(src[base + c], mask[base + c]);
    }
  });
}

// Wm = where(M, W, 0) on the rectangles [r0, r1) x [c0, c1) only (disjoint: the blocks of one
// layout), which are all a set of GEMMs over that layout reads.
at::Tensor masked_weight_cpu(const at::Tensor& w, const at::Tensor& m,
                             const std::vector<std::array<int64_t, 4>>& rects) {
  auto wm = at::empty_like(w);
  const int64_t cols = w.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, w.scalar_type(), "masked_weight_cpu", [&] {
    scalar_t* dst = wm.mutable_data_ptr<scalar_t>();
    const scalar_t* src = w.const_data_ptr<scalar_t>();
    const bool* mask = m.const_data_ptr<bool>();
    for (const auto& rc : rects) {
      const int64_t c0 = rc[2], c1 = rc[3];
      if (c1 <= c0) continue;
      at::parallel_for(rc[0], rc[1], row_grain(c1 - c0), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c)
            dst[r * cols + c] = masked_weight<scalar_t>(src[r * cols + c], mask[r * cols + c]);
      });
    }
  });
  return wm;
}

at::Tensor masked_linear_cpu(const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& mask_in,
                             const std::optional<at::Tensor>& bias, const at::Tensor& row_blocks,
                             const at::Tensor& col_blocks) {
  check_masked_linear_args(x_in, weight_in, mask_in, "masked_linear");
  const int64_t n = x_in.size(0), out_f = weight_in.size(0), in_f = weight_in.size(1);
  if (bias.has_value()) {
    check_like(weight_in, "weight", *bias, "masked_linear", "bias", false);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_f, "fastgen::masked_linear: bias must have shape (",
                out_f, ",); got ", bias->sizes());
  }
  auto rows = read_mask_blocks(row_blocks, out_f, in_f, "row_blocks");
  read_mask_blocks(col_blocks, in_f, out_f, "col_blocks");
  auto y = at::empty({n, out_f}, x_in.options());
  if (n == 0 || out_f == 0) return y;
  auto x = x_in.contiguous(), w = weight_in.contiguous(), m = mask_in.contiguous();
  std::vector<std::array<int64_t, 4>> rects;
  for (const auto& g : rows) rects.push_back({g.a0, g.a1, g.b0, g.b1});
  auto wm = masked_weight_cpu(w, m, rects);
  for (const auto& g : rows) {
    auto yv = y.narrow(1, g.a0, g.a1 - g.a0);
    if (g.b1 > g.b0) {
      auto xs = x.narrow(1, g.b0, g.b1 - g.b0);
      auto ws = wm.narrow(0, g.a0, g.a1 - g.a0).narrow(1, g.b0, g.b1 - g.b0).t();
      if (bias.has_value())
        at::addmm_out(yv, bias->narrow(0, g.a0, g.a1 - g.a0), xs, ws);
      else
        at::mm_out(yv, xs, ws);
    } else if (bias.has_value()) {
      yv.copy_(bias->narrow(0, g.a0, g.a1 - g.a0).unsqueeze(0).expand_as(yv));
    } else {
      yv.zero_();
    }
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward_cpu(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& weight_in,
    const at::Tensor& mask_in, const at::Tensor& row_blocks, const at::Tensor& col_blocks,
    std::array<bool, 3> output_mask) {
  check_masked_linear_args(x_in, weight_in, mask_in, "masked_linear_backward");
  const int64_t n = x_in.size(0), out_f = weight_in.size(0), in_f = weight_in.size(1);
  check_like(weight_in, "weight", grad_y_in, "masked_linear_backward", "grad_y", false);
  TORCH_CHECK(grad_y_in.dim() == 2 && grad_y_in.size(0) == n && grad_y_in.size(1) == out_f,
              "fastgen::masked_linear_backward: grad_y must have shape (", n, ", ", out_f, "); got ",
              grad_y_in.sizes());
  auto rows = read_mask_blocks(row_blocks, out_f, in_f, "row_blocks");
  auto cols = read_mask_blocks(col_blocks, in_f, out_f, "col_blocks");
  auto gy = grad_y_in.contiguous(), x = x_in.contiguous(), w = weight_in.contiguous(), m = mask_in.contiguous();
  auto none = x.new_empty({0});
  at::Tensor gx = none, gw = none, gb = none;
  auto spans = row_spans(rows, out_f);
  if (output_mask[0]) {
    gx = at::empty({n, in_f}, x.options());
    if (n > 0 && in_f > 0) {
      // column group [c0, c1) reads Wm[r0:r1, c0:c1]: fill exactly those rectangles
      std::vector<std::array<int64_t, 4>> rects;
      for (const auto& g : cols) rects.push_back({g.b0, g.b1, g.a0, g.a1});
      auto wm = masked_weight_cpu(w, m, rects);
      for (const auto& g : cols) {
        auto gxv = gx.narrow(1, g.a0, g.a1 - g.a0);
        if (g.b1 > g.b0)
          at::mm_out(gxv, gy.narrow(1, g.b0, g.b1 - g.b0), wm.narrow(0, g.b0, g.b1 - g.b0).narrow(1, g.a0, g.a1 - g.a0));
        else
          gxv.zero_();
      }
    }
  }
  if (output_mask[1]) {
    gw = at::empty({out_f, in_f}, w.options());
    for (const auto& g : rows) {
      if (g.b1 > g.b0) {
        auto gwv = gw.narrow(0, g.a0, g.a1 - g.a0).narrow(1, g.b0, g.b1 - g.b0);
        if (n > 0)
          at::mm_out(gwv, gy.narrow(1, g.a0, g.a1 - g.a0).t(), x.narrow(1, g.b0, g.b1 - g.b0));
        else
          gwv.zero_();
      }
    }
    if (gw.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gw.scalar_type(), "masked_linear_grad_w_cpu", [&] {
        scalar_t* p = gw.mutable_data_ptr<scalar_t>();
        apply_mask_rows<scalar_t>(p, p, m.const_data_ptr<bool>(), spans, in_f, true);
      });
    }
  }
  if (output_mask[2]) gb = n > 0 ? gy.sum(0) : at::zeros({out_f}, gy.options());
  return {gx, gw, gb};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("masked_linear", &fastgen::masked_linear_cpu);
  m.impl("masked_linear_backward", &fastgen::masked_linear_backward_cpu);
}
