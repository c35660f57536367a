// CPU kernels of masked_linear: one GEMM (at::mm / at::addmm, i.e. the BLAS this torch ships)
// per block of the layout and thread, on contiguous spans, writing straight into strided views
// of the output; nothing outside a block is computed. The masked weight Wm = where(M, W, 0) is formed
// with masked_weight from masked_linear.h (the CUDA kernel's element math) only where read.
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "fastgen_cpu.h"
#include "masked_linear/masked_linear_common.h"

namespace fastgen {
namespace {

// One parallel region per pass: thread t of nt runs fn(t, nt), issuing single-threaded GEMMs
// on its own slice (BLAS calls inside an ATen parallel region run on the calling thread). One
// region instead of one per block matters: with busy cores every region start costs a wait for
// all threads, and a layout has tens of blocks. Small problems run on the calling thread.
template <typename F>
void on_threads(int64_t work, F fn) {
  const int64_t nt = work >= (int64_t(1) << 20) ? at::get_num_threads() : 1;
  if (nt <= 1) {
    fn(0, 1);
    return;
  }
  at::parallel_for(0, nt, 1, [&](int64_t b, int64_t e) {
    // worker threads do not inherit the caller's "below autograd" dispatch state
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t t = b; t < e; ++t) fn(t, nt);
  });
}

// [lo, hi) of thread t's share of [a, b).
inline std::array<int64_t, 2> share(int64_t a, int64_t b, int64_t t, int64_t nt) {
  const int64_t len = b - a;
  return {a + len * t / nt, a + len * (t + 1) / nt};
}

// Wm = where(M, W, 0) on the rows [r0, r1) x columns [c0, c1) of each rectangle (disjoint: the
// blocks of one layout), all that a pass of GEMMs over that layout reads. Rows split by thread.
template <typename scalar_t>
void fill_masked_weight(scalar_t* dst, const scalar_t* src, const bool* mask, int64_t cols,
                        const std::vector<std::array<int64_t, 4>>& rects, int64_t t, int64_t nt) {
  for (const auto& rc : rects) {
    auto [r0, r1] = share(rc[0], rc[1], t, nt);
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = rc[2]; c < rc[3]; ++c)
        dst[r * cols + c] = masked_weight<scalar_t>(src[r * cols + c], mask[r * cols + c]);
  }
}

int64_t layout_work(const std::vector<MaskBlock>& blocks) {
  int64_t w = 0;
  for (const auto& g : blocks) w += (g.a1 - g.a0) * (g.b1 - g.b0);
  return w;
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
  auto wm = at::empty_like(w);
  std::vector<std::array<int64_t, 4>> rects;
  for (const auto& g : rows) rects.push_back({g.a0, g.a1, g.b0, g.b1});
  const int64_t work = layout_work(rows);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, w.scalar_type(), "masked_linear_cpu", [&] {
    on_threads(work, [&](int64_t t, int64_t nt) {
      fill_masked_weight<scalar_t>(wm.mutable_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                   m.const_data_ptr<bool>(), in_f, rects, t, nt);
    });
  });
  // y[n0:n1, r0:r1] = x[n0:n1, c0:c1] Wm[r0:r1, c0:c1]^T + b[r0:r1], batch rows split by thread
  on_threads(work * n, [&](int64_t t, int64_t nt) {
    auto [n0, n1] = share(0, n, t, nt);
    if (n1 <= n0) return;
    for (const auto& g : rows) {
      auto yv = y.narrow(0, n0, n1 - n0).narrow(1, g.a0, g.a1 - g.a0);
      if (g.b1 > g.b0) {
        auto xs = x.narrow(0, n0, n1 - n0).narrow(1, g.b0, g.b1 - g.b0);
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
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward_cpu(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& weight_in,
    const at::Tensor& mask_in, const at::Tensor& row_blocks, const at::Tensor& col_blocks,
    std::array<bool, 3> output_mask) {
  check_masked_linear_backward_args(grad_y_in, x_in, weight_in, mask_in);
  const int64_t n = x_in.size(0), out_f = weight_in.size(0), in_f = weight_in.size(1);
  auto rows = read_mask_blocks(row_blocks, out_f, in_f, "row_blocks");
  auto cols = read_mask_blocks(col_blocks, in_f, out_f, "col_blocks");
  auto gy = grad_y_in.contiguous(), x = x_in.contiguous(), w = weight_in.contiguous(), m = mask_in.contiguous();
  auto none = x.new_empty({0});
  at::Tensor gx = none, gw = none, gb = none;
  if (output_mask[0]) {
    gx = at::empty({n, in_f}, x.options());
    if (n > 0 && in_f > 0) {
      // column group [c0, c1) reads Wm[r0:r1, c0:c1]: fill exactly those rectangles
      std::vector<std::array<int64_t, 4>> rects;
      for (const auto& g : cols) rects.push_back({g.b0, g.b1, g.a0, g.a1});
      auto wm = at::empty_like(w);
      const int64_t work = layout_work(cols);
      AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, w.scalar_type(), "masked_linear_grad_x_cpu", [&] {
        on_threads(work, [&](int64_t t, int64_t nt) {
          fill_masked_weight<scalar_t>(wm.mutable_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                       m.const_data_ptr<bool>(), in_f, rects, t, nt);
        });
      });
      // gx[n0:n1, c0:c1] = gy[n0:n1, r0:r1] Wm[r0:r1, c0:c1], batch rows split by thread
      on_threads(work * n, [&](int64_t t, int64_t nt) {
        auto [n0, n1] = share(0, n, t, nt);
        if (n1 <= n0) return;
        for (const auto& g : cols) {
          auto gxv = gx.narrow(0, n0, n1 - n0).narrow(1, g.a0, g.a1 - g.a0);
          if (g.b1 > g.b0)
            at::mm_out(gxv, gy.narrow(0, n0, n1 - n0).narrow(1, g.b0, g.b1 - g.b0),
                       wm.narrow(0, g.b0, g.b1 - g.b0).narrow(1, g.a0, g.a1 - g.a0));
          else
            gxv.zero_();
        }
      });
    }
  }
  if (output_mask[1]) {
    gw = at::empty({out_f, in_f}, w.options());
    if (gw.numel() > 0) {
      // gW[rows, c0:c1] = M ⊙ gy[:, rows]^T x[:, c0:c1] and 0 elsewhere, each thread owning a
      // share of every row group's rows (GEMM, then the mask on the rows it just wrote)
      AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gw.scalar_type(), "masked_linear_grad_w_cpu", [&] {
        scalar_t* p = gw.mutable_data_ptr<scalar_t>();
        const bool* mp = m.const_data_ptr<bool>();
        on_threads(layout_work(rows) * std::max<int64_t>(n, 1), [&](int64_t t, int64_t nt) {
          for (const auto& g : rows) {
            auto [r0, r1] = share(g.a0, g.a1, t, nt);
            if (r1 <= r0) continue;
            if (g.b1 > g.b0 && n > 0) {
              auto gwv = gw.narrow(0, r0, r1 - r0).narrow(1, g.b0, g.b1 - g.b0);
              at::mm_out(gwv, gy.narrow(1, r0, r1 - r0).t(), x.narrow(1, g.b0, g.b1 - g.b0));
            }
            for (int64_t r = r0; r < r1; ++r) {
              scalar_t* row = p + r * in_f;
              const bool* keep = mp + r * in_f;
              for (int64_t c = 0; c < g.b0; ++c) row[c] = scalar_t(0);
              for (int64_t c = g.b1; c < in_f; ++c) row[c] = scalar_t(0);
              if (n > 0)
                for (int64_t c = g.b0; c < g.b1; ++c) row[c] = masked_weight<scalar_t>(row[c], keep[c]);
              else
                for (int64_t c = g.b0; c < g.b1; ++c) row[c] = scalar_t(0);
            }
          }
        });
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
