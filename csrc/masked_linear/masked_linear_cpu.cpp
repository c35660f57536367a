// CPU kernels of masked_linear (math: masked_linear.h). Every pass is a list of GEMMs, one per
// block of the layout, through fastgen::linear_nt (oneDNN's AVX-512 brgemm for float32/bf16,
// about twice the at::mm that F.linear runs here; at::mm for float64) on contiguous operands:
//   forward   y[:, r0:r1]  = x[:, c0:c1] P^T + b[r0:r1]     P = Wm[r0:r1, c0:c1] packed
//   grad x    gx[:, c0:c1] = gy[:, r0:r1] Q                 Q = Wm[r0:r1, c0:c1] packed
//   grad W    gW[r0:r1, :] = where(M, gy^T[r0:r1] x^T[c0:c1]^T, 0) on [c0, c1), 0 elsewhere
// with Wm = where(M, W, 0) packed per block right before its GEMM (while it is in cache), and
// gy^T, x^T transposed once so that grad W's operands are row slices (contiguous).
// Threads: the blocks' work (rows x span) is cut into one contiguous share per thread, so every
// GEMM is as large as the layout allows and runs single-threaded inside one parallel region:
// one region per pass, not one OpenMP team per GEMM, which costs a barrier per call and splits
// 128-row blocks too thinly for two cores.
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "fastgen_cpu.h"
#include "fastgen_gemm.h"
#include "masked_linear/masked_linear_common.h"

namespace fastgen {
namespace {

// A thread's piece of a layout: rows [a0, a1) (of the partitioned dimension) of group g.
struct Piece {
  int64_t g, a0, a1;
};

// Cuts the groups into nt shares of about equal work (a-extent x b-span; an empty span counts
// as 1 so its fill still lands somewhere), at multiples of `quant` rows inside a group.
std::vector<std::vector<Piece>> split_work(const std::vector<MaskBlock>& groups, int64_t nt,
                                           int64_t quant) {
  std::vector<std::vector<Piece>> shares(nt);
  auto weight = [](const MaskBlock& g) { return std::max<int64_t>(g.b1 - g.b0, 1); };
  int64_t total = 0;
  for (const auto& g : groups) total += (g.a1 - g.a0) * weight(g);
  int64_t t = 0, done = 0;  // done: work handed out so far
  for (int64_t gi = 0; gi < (int64_t)groups.size(); ++gi) {
    const auto& g = groups[gi];
    int64_t a = g.a0;
    while (a < g.a1) {
      // the end of thread t's share, in rows of this group
      const int64_t target = total * (t + 1) / nt;
      int64_t cut = g.a1;
      if (t < nt - 1 && done + (g.a1 - a) * weight(g) > target) {
        int64_t rows = (target - done + weight(g) - 1) / weight(g);
        rows = (rows + quant / 2) / quant * quant;
        cut = std::min(g.a1, a + rows);
      }
      if (cut > a) shares[t].push_back({gi, a, cut});
      done += (cut - a) * weight(g);
      a = cut;
      if (a < g.a1 || done >= target) t = std::min(t + 1, nt - 1);
    }
  }
  return shares;
}

// Runs fn(share) for every thread's share in one parallel region (on the calling thread when
// the whole pass is small: then oneDNN may thread the GEMMs itself).
template <typename F>
void run_shares(const std::vector<MaskBlock>& groups, int64_t flops, F fn) {
  const int64_t nt = flops >= (int64_t(1) << 22) ? at::get_num_threads() : 1;
  auto shares = split_work(groups, nt, 16);
  if (nt <= 1) {
    fn(shares[0]);
    return;
  }
  at::parallel_for(0, nt, 1, [&](int64_t b, int64_t e) {
    // worker threads do not inherit the caller's "below autograd" dispatch state
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t t = b; t < e; ++t) fn(shares[t]);
  });
}

// dst (r1 - r0, c1 - c0) contiguous = where(M, W, 0)[r0:r1, c0:c1]; w, m row-major, `ld` columns.
template <typename T>
void pack_masked(T* dst, const T* w, const bool* m, int64_t ld, int64_t r0, int64_t r1, int64_t c0,
                 int64_t c1) {
  const int64_t cw = c1 - c0;
  for (int64_t r = r0; r < r1; ++r) {
    const T* wr = w + r * ld + c0;
    const bool* mr = m + r * ld + c0;
    T* d = dst + (r - r0) * cw;
    for (int64_t c = 0; c < cw; ++c) d[c] = masked_weight<T>(wr[c], mr[c]);
  }
}

at::Tensor packed_block(const at::Tensor& w, const at::Tensor& m, int64_t r0, int64_t r1, int64_t c0,
                        int64_t c1) {
  auto p = at::empty({r1 - r0, c1 - c0}, w.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, w.scalar_type(), "masked_linear_pack", [&] {
    pack_masked<scalar_t>(p.mutable_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                          m.const_data_ptr<bool>(), w.size(1), r0, r1, c0, c1);
  });
  return p;
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
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->contiguous();
  run_shares(rows, layout_work(rows) * n, [&](const std::vector<Piece>& share) {
    for (const auto& p : share) {
      const auto& g = rows[p.g];
      auto yv = y.narrow(1, p.a0, p.a1 - p.a0);
      std::optional<at::Tensor> bv;
      if (b.has_value()) bv = b->narrow(0, p.a0, p.a1 - p.a0);
      if (g.b1 > g.b0) {
        auto wp = packed_block(w, m, p.a0, p.a1, g.b0, g.b1);
        yv.copy_(linear_nt(x.narrow(1, g.b0, g.b1 - g.b0), wp, bv));
      } else if (bv.has_value()) {
        yv.copy_(bv->unsqueeze(0).expand_as(yv));
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
      // column group [c0, c1) with row span [r0, r1): gx[:, c0:c1] = gy[:, r0:r1] Q, Q packed
      // (r1 - r0, c1 - c0), i.e. linear_nt's b = Q^T, a transposed contiguous tensor
      run_shares(cols, layout_work(cols) * n, [&](const std::vector<Piece>& share) {
        for (const auto& p : share) {
          const auto& g = cols[p.g];
          auto gxv = gx.narrow(1, p.a0, p.a1 - p.a0);
          if (g.b1 > g.b0) {
            auto q = packed_block(w, m, g.b0, g.b1, p.a0, p.a1);
            gxv.copy_(linear_nt(gy.narrow(1, g.b0, g.b1 - g.b0), q.t()));
          } else {
            gxv.zero_();
          }
        }
      });
    }
  }
  if (output_mask[1]) {
    gw = at::empty({out_f, in_f}, w.options());
    if (gw.numel() > 0) {
      // gy^T and x^T once: grad W's GEMM operands become row slices, (rows, n) and (span, n)
      auto gyt = gy.t().contiguous(), xt = x.t().contiguous();
      run_shares(rows, layout_work(rows) * std::max<int64_t>(n, 1), [&](const std::vector<Piece>& share) {
        for (const auto& p : share) {
          const auto& g = rows[p.g];
          const int64_t span = g.b1 - g.b0;
          at::Tensor prod;
          if (span > 0) prod = linear_nt(gyt.narrow(0, p.a0, p.a1 - p.a0), xt.narrow(0, g.b0, span));
          AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gw.scalar_type(), "masked_linear_grad_w_cpu", [&] {
            scalar_t* out = gw.mutable_data_ptr<scalar_t>();
            const bool* mp = m.const_data_ptr<bool>();
            const scalar_t* pp = span > 0 ? prod.const_data_ptr<scalar_t>() : nullptr;
            for (int64_t r = p.a0; r < p.a1; ++r) {
              scalar_t* row = out + r * in_f;
              std::fill(row, row + g.b0, scalar_t(0));
              std::fill(row + g.b1, row + in_f, scalar_t(0));
              const bool* keep = mp + r * in_f + g.b0;
              const scalar_t* src = pp + (r - p.a0) * span;
              scalar_t* dst = row + g.b0;
              for (int64_t c = 0; c < span; ++c) dst[c] = masked_weight<scalar_t>(src[c], keep[c]);
            }
          });
        }
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
