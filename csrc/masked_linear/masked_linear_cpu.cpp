// CPU kernels of masked_linear (math: masked_linear.h). Every pass is a list of GEMMs, one per
// piece of a block of the layout, each on the calling thread through gemm_rowmajor (oneDNN's
// brgemm ukernel for float32: no dispatcher call, no output tensor; addmm on views for float64
// and bfloat16), reading and writing the operands in place through leading dimensions:
//   forward   y[:, r0:r1]^T = Wm[r0:r1, c0:c1] x^T[c0:c1] + b[r0:r1]   (into a piece buffer,
//                                                                      then transposed into y)
//   grad x    gx[:, c0:c1] = gy[:, r0:r1] Wm[r0:r1, c0:c1]
//   grad W    gW[r0:r1, c0:c1] = where(M, gy^T[r0:r1] x[:, c0:c1], 0), 0 outside [c0, c1)
//   grad b    gb = sum_n gy[n]
// Wm = where(M, W, 0). On a group's all-ones range [d0, d1) (the layout's; most of a staircase
// mask) the GEMM reads W itself; only the ragged rest of the span is packed through the mask
// (a bitwise select equal to masked_weight) into a small contiguous buffer, and only there is
// grad W masked after its GEMM. bfloat16 packs the whole span, so that every output is one GEMM
// accumulated in float and rounded once. x^T is made once per forward, gy^T per grad-W piece.
// Threads: each pass (the forward; the whole backward) is one parallel region in which the
// threads take pieces largest first from a shared counter and run their GEMMs single-threaded;
// not one OpenMP team per GEMM, which costs a fork/join per call and splits a 128-row block
// too thinly for two cores, and not a static split, which waits for a thread that got its core
// late on a shared machine.
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
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
// enough that a GEMM's fixed cost stays small against it.
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
// however many GEMMs it has. Small passes (under 4M multiply-adds) run on the calling thread:
// a fork/join would cost more than the second thread saves.
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

// d[c] = masked_weight(s[c], keep[c]) for c < len, bit for bit (+0 where masked, whatever s
// holds there: inf and NaN included); d may be s (an in-place mask).
template <typename T>
inline void select_row(T* dst, const T* src, const bool* __restrict keep, int64_t len) {
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

// c (m, n) = a (m, k) b (k, n) (+ c), row-major with leading dimensions, on the calling thread,
// in tiles of at most kTile rows and columns of c (the brgemm kernels are built per shape and
// sized for blocks; a batch of thousands is several of them).
constexpr int64_t kTile = 256;

inline void gemm(int64_t m, int64_t n, int64_t k, const at::BFloat16* a, int64_t lda, const at::BFloat16* b,
                 int64_t ldb, at::BFloat16* c, int64_t ldc, bool accumulate) {
  // one GEMM accumulated in float, rounded once (the callers give bfloat16 whole spans)
  auto opts = at::TensorOptions().dtype(at::kBFloat16);
  auto c_t = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  c_t.addmm_(at::from_blob(const_cast<at::BFloat16*>(a), {m, k}, {lda, 1}, opts),
             at::from_blob(const_cast<at::BFloat16*>(b), {k, n}, {ldb, 1}, opts), accumulate ? 1.0 : 0.0, 1.0);
}

template <typename T>
inline void gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c,
                 int64_t ldc, bool accumulate) {
  for (int64_t i = 0; i < m; i += kTile)
    for (int64_t j = 0; j < n; j += kTile)
      gemm_rowmajor(std::min(kTile, m - i), std::min(kTile, n - j), k, a + i * lda, lda, b + j, ldb,
                    c + i * ldc + j, ldc, accumulate);
}

// Whether a GEMM reads W in place on the all-ones range (float32, float64), or bfloat16's one
// GEMM over the packed span.
template <typename T>
constexpr bool kInPlace = !std::is_same_v<T, at::BFloat16>;

// The parts of a span [b0, b1) in GEMM order: the ragged ones, packed through the mask, and the
// all-ones range [d0, d1) read in place. Each part is (start, end, in_place).
struct Part {
  int64_t s0, s1;
  bool in_place;
};
template <typename T>
std::vector<Part> span_parts(const MaskBlock& g) {
  std::vector<Part> parts;
  if (!kInPlace<T> || g.d1 == g.d0) {
    if (g.b1 > g.b0) parts.push_back({g.b0, g.b1, false});
    return parts;
  }
  if (g.d0 > g.b0) parts.push_back({g.b0, g.d0, false});
  parts.push_back({g.d0, g.d1, true});
  if (g.b1 > g.d1) parts.push_back({g.d1, g.b1, false});
  return parts;
}

enum PieceKind { kForward, kGradX, kGradW, kGradB };

int64_t layout_work(const std::vector<MaskBlock>& blocks) {
  int64_t w = 0;
  for (const auto& g : blocks) w += (g.a1 - g.a0) * (g.b1 - g.b0);
  return w;
}

template <typename T>
void forward_piece(const Piece& p, const MaskBlock& g, int64_t n, int64_t out_f, int64_t in_f, const T* X_t,
                   const T* W, const bool* M, const T* B, T* Y) {
  // yt (rows, n) = b + Wm[a0:a1, span] x^T[span], then y[:, a0:a1] = yt^T
  const int64_t rows = p.a1 - p.a0;
  std::vector<T> yt(rows * n), packed;
  bool acc = B != nullptr;
  if (B)
    for (int64_t r = 0; r < rows; ++r) std::fill(yt.data() + r * n, yt.data() + (r + 1) * n, B[p.a0 + r]);
  for (const Part& q : span_parts<T>(g)) {
    const int64_t k = q.s1 - q.s0;
    if (q.in_place) {
      gemm(rows, n, k, W + p.a0 * in_f + q.s0, in_f, X_t + q.s0 * n, n, yt.data(), n, acc);
    } else {
      packed.resize(rows * k);
      pack_masked<T>(packed.data(), W, M, in_f, p.a0, p.a1, q.s0, q.s1);
      gemm(rows, n, k, packed.data(), k, X_t + q.s0 * n, n, yt.data(), n, acc);
    }
    acc = true;
  }
  if (!acc) std::fill(yt.begin(), yt.end(), T(0));
  transpose_tiles<T, T>(yt.data(), n, Y + p.a0, out_f, rows, n);
}

template <typename T>
void grad_x_piece(const Piece& p, const MaskBlock& g, int64_t n, int64_t out_f, int64_t in_f, const T* GY,
                  const T* W, const bool* M, T* GX) {
  // gx[:, a0:a1] = sum over the row span's parts of gy[:, part] Wm[part, a0:a1]
  const int64_t cols = p.a1 - p.a0;
  std::vector<T> packed;
  bool acc = false;
  for (const Part& q : span_parts<T>(g)) {
    const int64_t k = q.s1 - q.s0;
    if (q.in_place) {
      gemm(n, cols, k, GY + q.s0, out_f, W + q.s0 * in_f + p.a0, in_f, GX + p.a0, in_f, acc);
    } else {
      packed.resize(k * cols);
      pack_masked<T>(packed.data(), W, M, in_f, q.s0, q.s1, p.a0, p.a1);
      gemm(n, cols, k, GY + q.s0, out_f, packed.data(), cols, GX + p.a0, in_f, acc);
    }
    acc = true;
  }
  if (!acc)
    for (int64_t i = 0; i < n; ++i) std::fill(GX + i * in_f + p.a0, GX + i * in_f + p.a1, T(0));
}

template <typename T>
void grad_w_piece(const Piece& p, const MaskBlock& g, int64_t n, int64_t out_f, int64_t in_f, const T* GY,
                  const T* X, const bool* M, T* GW) {
  // gW[a0:a1, span] = gy^T[a0:a1] x[:, span], masked on the ragged parts; 0 outside the span
  const int64_t rows = p.a1 - p.a0, span = n > 0 ? g.b1 - g.b0 : 0;
  if (span > 0) {
    std::vector<T> gyt(rows * n);
    transpose_tiles<T, T>(GY + p.a0, out_f, gyt.data(), n, n, rows);
    gemm(rows, span, n, gyt.data(), n, X + g.b0, in_f, GW + p.a0 * in_f + g.b0, in_f, false);
  }
  const auto parts = span_parts<T>(g);
  for (int64_t r = p.a0; r < p.a1; ++r) {
    T* row = GW + r * in_f;
    std::fill(row, row + g.b0, T(0));
    std::fill(row + g.b0 + span, row + in_f, T(0));
    if (span > 0)
      for (const Part& q : parts)
        if (!q.in_place) select_row<T>(row + q.s0, row + q.s0, M + r * in_f + q.s0, q.s1 - q.s0);
  }
}

template <typename T>
void grad_b_piece(const Piece& p, int64_t n, int64_t out_f, const T* GY, T* GB) {
  // gb[o0:o1] = sum_n gy[n, o0:o1], accumulated in opmath (float for bf16)
  using acc_t = at::opmath_type<T>;
  std::vector<acc_t> acc(p.a1 - p.a0, acc_t(0));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t o = p.a0; o < p.a1; ++o) acc[o - p.a0] += acc_t(GY[r * out_f + o]);
  for (int64_t o = p.a0; o < p.a1; ++o) GB[o] = T(acc[o - p.a0]);
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
  auto xt = transposed_columns(x_in.contiguous(), 0, in_f), w = weight_in.contiguous(), m = mask_in.contiguous();
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->contiguous();
  std::vector<Piece> pieces;
  add_pieces(pieces, rows, kForward, at::get_num_threads());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, w.scalar_type(), "masked_linear_cpu", [&] {
    const scalar_t* B = b.has_value() ? b->const_data_ptr<scalar_t>() : nullptr;
    run_pieces(std::move(pieces), layout_work(rows) * n, [&](const Piece& p) {
      forward_piece<scalar_t>(p, rows[p.g], n, out_f, in_f, xt.const_data_ptr<scalar_t>(),
                              w.const_data_ptr<scalar_t>(), m.const_data_ptr<bool>(), B,
                              y.mutable_data_ptr<scalar_t>());
    });
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
  if (output_mask[1]) {
    gw = at::empty({out_f, in_f}, w.options());
    add_pieces(pieces, rows, kGradW, nt);
    macs += layout_work(rows) * n;
  }
  if (output_mask[2]) {  // grad b: ranges of 256 columns of gy, each summed over the batch
    gb = at::empty({out_f}, gy.options());
    for (int64_t o = 0; o < out_f; o += 256) pieces.push_back({0, o, std::min(out_f, o + 256), 1, kGradB});
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gy.scalar_type(), "masked_linear_backward_cpu", [&] {
    const scalar_t *GY = gy.const_data_ptr<scalar_t>(), *X = x.const_data_ptr<scalar_t>(),
                   *W = w.const_data_ptr<scalar_t>();
    const bool* M = m.const_data_ptr<bool>();
    run_pieces(std::move(pieces), macs, [&](const Piece& p) {
      if (p.kind == kGradX)
        grad_x_piece<scalar_t>(p, cols[p.g], n, out_f, in_f, GY, W, M, gx.mutable_data_ptr<scalar_t>());
      else if (p.kind == kGradW)
        grad_w_piece<scalar_t>(p, rows[p.g], n, out_f, in_f, GY, X, M, gw.mutable_data_ptr<scalar_t>());
      else
        grad_b_piece<scalar_t>(p, n, out_f, GY, gb.mutable_data_ptr<scalar_t>());
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
