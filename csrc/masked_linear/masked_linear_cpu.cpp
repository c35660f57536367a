// CPU kernels of masked_linear (math: masked_linear.h). Every pass is a list of GEMMs, one per
// piece of a block of the layout, through fastgen::linear_nt (oneDNN's brgemm for float32/bf16,
// about twice the at::mm that F.linear runs here; at::mm for float64) on contiguous operands:
//   forward   y[:, r0:r1]  = x[:, c0:c1] P^T + b[r0:r1]              P = Wm[r0:r1, c0:c1]
//   grad x    gx[:, c0:c1] = gy[:, r0:r1] Q                          Q = Wm[r0:r1, c0:c1]
//   grad W    gW[r0:r1, c0:c1] = where(M, gy^T[r0:r1] x^T[c0:c1]^T, 0), 0 outside [c0, c1)
//   grad b    gb = sum_n gy[n]
// Wm = where(M, W, 0) is packed block by block right before its GEMM (P, Q contiguous, while in
// cache) by a bitwise select equal to masked_weight; grad W's operands are row slices of x^T
// (transposed once) and of gy^T (transposed piece by piece).
// Threads: each pass (the forward; the whole backward) is one parallel region in which the
// threads take pieces largest first from a shared counter and run their GEMMs single-threaded;
// not one OpenMP team per GEMM, which costs a fork/join per call and splits a 128-row block
// too thinly for two cores, and not a static split, which waits for a thread that got its core
// late on a shared machine.
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "fastgen_cpu.h"
#include "fastgen_gemm.h"
#include "masked_linear/masked_linear_host.h"

namespace fastgen {
namespace {

// One GEMM's worth of a pass: rows [a0, a1) of the partitioned dimension of group g.
struct Piece {
  int64_t g, a0, a1;
  int64_t cost;  // its weight entries, rows x span (an empty span counted as 1)
  int kind;      // which product of the pass it belongs to
};

// Cuts the groups into pieces of about total / (4 nt) work (at multiples of 16 rows, never
// below 32): small enough for a thread that got the cores late to take a fair share, large
// enough that a GEMM's fixed cost (about 10 us) stays small against it.
void add_pieces(std::vector<Piece>& out, const std::vector<MaskBlock>& groups, int kind, int64_t nt) {
  auto cost = [](const MaskBlock& g) { return std::max<int64_t>(g.b1 - g.b0, 1); };
  int64_t total = 0;
  for (const auto& g : groups) total += (g.a1 - g.a0) * cost(g);
  const int64_t target = std::max<int64_t>(total / (4 * nt), 1);
  for (int64_t gi = 0; gi < (int64_t)groups.size(); ++gi) {
    const auto& g = groups[gi];
    const int64_t len = g.a1 - g.a0;
    const int64_t chunks = std::max<int64_t>(1, std::min(len / 32, len * cost(g) / target));
    const int64_t step = std::max<int64_t>(16, (len / chunks + 15) / 16 * 16);
    for (int64_t a = g.a0; a < g.a1; a += step) {
      const int64_t e = std::min(g.a1, a + step);
      out.push_back({gi, a, e, (e - a) * cost(g), kind});
    }
  }
}

// Runs fn(piece) for every piece in one parallel region, largest first, each taken by whichever
// thread is free (an atomic counter, not a static split): on a shared machine a thread that
// starts late does less instead of holding everyone up, and the pass costs one fork/join
// however many GEMMs it has. Small passes run on the calling thread (their pieces are mostly
// below kOneDnnMinMacs, i.e. at::mm, whose own size heuristics decide about threads).
template <typename F>
void run_pieces(std::vector<Piece> pieces, int64_t macs, F fn) {
  std::stable_sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) { return a.cost > b.cost; });
  const int64_t nt = macs >= (int64_t(1) << 22) ? at::get_num_threads() : 1;
  if (nt <= 1) {
    for (const auto& p : pieces) fn(p);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nt, 1, [&](int64_t, int64_t) {
    // worker threads do not inherit the caller's "below autograd" dispatch state
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t i = next++; i < (int64_t)pieces.size(); i = next++) fn(pieces[i]);
  });
}

// t (c1 - c0, n) = a[:, c0:c1]^T for a contiguous (n, cols)
at::Tensor transposed_columns(const at::Tensor& a, int64_t c0, int64_t c1) {
  const int64_t n = a.size(0);
  auto t = at::empty({c1 - c0, n}, a.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, a.scalar_type(), "masked_linear_transpose", [&] {
    transpose_tiles<scalar_t, scalar_t>(a.const_data_ptr<scalar_t>() + c0, a.size(1), t.mutable_data_ptr<scalar_t>(),
                                        n, n, c1 - c0);
  });
  return t;
}

// T's bits as an unsigned integer allowed to alias it: the select below is then a bitwise and,
// which the compiler vectorizes (a branch on every bool it does not).
template <typename T>
struct SelectBits;
template <>
struct SelectBits<float> {
  typedef uint32_t __attribute__((may_alias)) type;
};
template <>
struct SelectBits<double> {
  typedef uint64_t __attribute__((may_alias)) type;
};
template <>
struct SelectBits<at::BFloat16> {
  typedef uint16_t __attribute__((may_alias)) type;
};

// dst[c] = masked_weight(src[c], keep[c]) for c < len, bit for bit (+0 where masked, whatever
// src holds there: inf and NaN included).
template <typename T>
inline void select_row(T* __restrict dst, const T* __restrict src, const bool* __restrict keep, int64_t len) {
  using U = typename SelectBits<T>::type;
  auto* d = reinterpret_cast<U*>(dst);
  auto* s = reinterpret_cast<const U*>(src);
  auto* k = reinterpret_cast<const uint8_t*>(keep);
  for (int64_t c = 0; c < len; ++c) d[c] = s[c] & U(U(0) - U(k[c] != 0));
}

// dst (r1 - r0, c1 - c0) contiguous = where(M, W, 0)[r0:r1, c0:c1]; w, m row-major, `ld` columns.
template <typename T>
void pack_masked(T* dst, const T* w, const bool* m, int64_t ld, int64_t r0, int64_t r1, int64_t c0,
                 int64_t c1) {
  const int64_t cw = c1 - c0;
  for (int64_t r = r0; r < r1; ++r) select_row<T>(dst + (r - r0) * cw, w + r * ld + c0, m + r * ld + c0, cw);
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

// Products smaller than this many multiply-adds go to at::mm: oneDNN's fixed cost per call
// (~10 us, measured) exceeds what its faster kernel saves on them, and outside a parallel region
// it would also fork a thread team per call (batch-1 sampling through a MADE layer: ~16 calls).
constexpr int64_t kOneDnnMinMacs = int64_t(1) << 20;

inline bool use_onednn(const at::Tensor& a, const at::Tensor& b) {
  return a.size(0) * a.size(1) * b.size(0) >= kOneDnnMinMacs && onednn_gemm(a.scalar_type());
}

// a (m, k) b (n, k)^T (+ bias) as a new contiguous tensor
at::Tensor gemm_nt(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias = std::nullopt) {
  if (use_onednn(a, b)) return linear_nt(a, b, bias);
  return (bias.has_value() ? at::addmm(*bias, a, b.t()) : at::mm(a, b.t())).contiguous();
}

// out (m, n), a view of any strides, = a b^T (+ bias); at::mm writes it in place (float64
// always goes there)
void gemm_nt_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b,
                  const std::optional<at::Tensor>& bias = std::nullopt) {
  if (use_onednn(a, b)) {
    out.copy_(linear_nt(a, b, bias));
  } else if (bias.has_value()) {
    at::addmm_out(out, *bias, a, b.t());
  } else {
    at::mm_out(out, a, b.t());
  }
}

enum PieceKind { kForward, kGradX, kGradW, kGradB };

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
  const int64_t nt = at::get_num_threads();
  std::vector<Piece> pieces;
  add_pieces(pieces, rows, kForward, nt);
  run_pieces(std::move(pieces), layout_work(rows) * n, [&](const Piece& p) {
    const auto& g = rows[p.g];
    auto yv = y.narrow(1, p.a0, p.a1 - p.a0);
    std::optional<at::Tensor> bv;
    if (b.has_value()) bv = b->narrow(0, p.a0, p.a1 - p.a0);
    if (g.b1 > g.b0) {
      auto wp = packed_block(w, m, p.a0, p.a1, g.b0, g.b1);
      gemm_nt_into(yv, x.narrow(1, g.b0, g.b1 - g.b0), wp, bv);
    } else if (bv.has_value()) {
      yv.copy_(bv->unsqueeze(0).expand_as(yv));
    } else {
      yv.zero_();
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
  // All three products in one parallel region (pieces of grad x by column group, of grad W by
  // row group, grad b in column ranges): one fork/join for the whole backward.
  const int64_t nt = at::get_num_threads();
  std::vector<Piece> pieces;
  int64_t macs = 0;
  if (output_mask[0]) {
    gx = at::empty({n, in_f}, x.options());
    if (n > 0) add_pieces(pieces, cols, kGradX, nt);
    macs += layout_work(cols) * n;
  }
  at::Tensor xt;  // x^T (in_f, n): grad W's right operand, row slices of it contiguous
  if (output_mask[1]) {
    gw = at::empty({out_f, in_f}, w.options());
    add_pieces(pieces, rows, kGradW, nt);
    macs += layout_work(rows) * n;
    if (n > 0) xt = transposed_columns(x, 0, in_f);
  }
  if (output_mask[2]) {  // grad b: ranges of 256 columns of gy, each summed over the batch
    gb = at::empty({out_f}, gy.options());
    for (int64_t o = 0; o < out_f; o += 256) pieces.push_back({0, o, std::min(out_f, o + 256), 1, kGradB});
  }
  run_pieces(std::move(pieces), macs, [&](const Piece& p) {
    if (p.kind == kGradX) {
      // column group [c0, c1) with row span [r0, r1): gx[:, c0:c1] = gy[:, r0:r1] Q, Q packed
      // (r1 - r0, c1 - c0), i.e. linear_nt's b = Q^T, a transposed contiguous tensor
      const auto& g = cols[p.g];
      auto gxv = gx.narrow(1, p.a0, p.a1 - p.a0);
      if (g.b1 > g.b0) {
        auto q = packed_block(w, m, g.b0, g.b1, p.a0, p.a1);
        gemm_nt_into(gxv, gy.narrow(1, g.b0, g.b1 - g.b0), q.t());
      } else {
        gxv.zero_();
      }
      return;
    }
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gy.scalar_type(), "masked_linear_backward_cpu", [&] {
      if (p.kind == kGradB) {
        // gb[o0:o1] = sum_n gy[n, o0:o1], accumulated in opmath (float for bf16)
        using acc_t = at::opmath_type<scalar_t>;
        std::vector<acc_t> acc(p.a1 - p.a0, acc_t(0));
        const scalar_t* src = gy.const_data_ptr<scalar_t>();
        for (int64_t r = 0; r < n; ++r)
          for (int64_t o = p.a0; o < p.a1; ++o) acc[o - p.a0] += acc_t(src[r * out_f + o]);
        scalar_t* dst = gb.mutable_data_ptr<scalar_t>();
        for (int64_t o = p.a0; o < p.a1; ++o) dst[o] = scalar_t(acc[o - p.a0]);
        return;
      }
      // grad W, rows [a0, a1) of a row group with span [b0, b1): the GEMM
      // gy^T[a0:a1] x^T[b0:b1]^T, then the mask, zeros outside the span
      const auto& g = rows[p.g];
      const int64_t span = n > 0 ? g.b1 - g.b0 : 0;
      at::Tensor prod;
      if (span > 0) prod = gemm_nt(transposed_columns(gy, p.a0, p.a1), xt.narrow(0, g.b0, span));
      scalar_t* out = gw.mutable_data_ptr<scalar_t>();
      const bool* mp = m.const_data_ptr<bool>();
      const scalar_t* pp = span > 0 ? prod.const_data_ptr<scalar_t>() : nullptr;
      for (int64_t r = p.a0; r < p.a1; ++r) {
        scalar_t* row = out + r * in_f;
        std::fill(row, row + g.b0, scalar_t(0));
        std::fill(row + g.b0 + span, row + in_f, scalar_t(0));
        if (span > 0) select_row<scalar_t>(row + g.b0, pp + (r - p.a0) * span, mp + r * in_f + g.b0, span);
      }
    });
  });
  return {gx, gw, gb};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("masked_linear", &fastgen::masked_linear_cpu);
  m.impl("masked_linear_backward", &fastgen::masked_linear_backward_cpu);
}
