// CPU kernels of masked_conv2d: the mask's non-zero taps as two dense convolutions.
//
// The kept taps of a PixelCNN mask form two rectangles (masked_conv2d.h): the ch full rows
// above the centre (T, ch x kw taps) and the centre row's first ncols taps (C, 1 x ncols, its
// centre column only between the allowed channel pairs). With x zero outside the image,
//   y[r, c]  = b + sum_{i<ch, j<kw} T[i, j] x[r - ch + i, c - cw + j] + sum_{j<ncols} C[j] x[r, c - cw + j]
//   dx[r, c] = sum_{i<ch, j<kw} T[ch-1-i, kw-1-j]^T dy[r + 1 + i, c - cw + j]
//            + sum_{j<ncols} C[ncols-1-j]^T dy[r, c + cw - ncols + 1 + j]
//   dT[i, j] = sum_{n, r, c} dy[r, c] x[r - ch + i, c - cw + j]^T   (dC likewise, its centre
//              column kept only between allowed pairs: every masked weight gets an exact zero)
// Each sum is one *valid* (unpadded) convolution of a shifted, zero-padded copy of x or dy
// (Shift): H x W outputs exactly, nothing computed for a masked tap, no masked input ever read.
// The convolutions run on ATen's CPU convolution, for float32 oneDNN's AVX-512 jit kernel
// (about twice the AVX2 sgemm an im2col GEMM gets here), the centre part adding into the top
// part's output inside oneDNN; the weight gradients on its convolution_backward. A 7x7 type-A
// mask keeps 24 of 49 taps: half of the dense convolution's work, on the same engine.
// Activations are channels-last (NHWC) throughout: oneDNN's native layout, no reorders, and the
// layout the op's outputs promise. bf16 runs in float and rounds once at the end; float64 takes
// ATen's own (exact, slower) convolution.
//
// Parallel regions are few on purpose: on a shared machine each one waits for its slowest
// thread, about a scheduler time slice when a neighbour holds a core. So all copies of a call
// are one region, the bias gradient is summed inside it, and the weight-sized work (kernel
// rearrangement, gradient scatter) runs in plain serial loops, not in parallel ATen ops.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/record_function.h>
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
// with p[r, c] = t[r + oy, c + ox] (zero outside t). kh = kw = 1 at no offset: t channels-last.
struct Shift {
  int64_t oy, ox, kh, kw;
};

// One source tensor (N, C, H, W), its copies, and optionally its per-channel sum (double, C).
struct CopyJob {
  const at::Tensor* src;
  std::vector<Shift> shifts;
  std::vector<at::Tensor> out;
  std::vector<double>* sums = nullptr;
};

// Source row t[n, :, r, :] as w pixels of c channels (NHWC) in dtype D, into buf; returns buf,
// or the row itself when t is channels-last in D already. NCHW rows are transposed in blocks
// of channels: each source row is read once, sequentially, and the block stays in L1.
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
  int64_t k_done = 0;
  if constexpr (std::is_same_v<S, float> && std::is_same_v<D, float>) {
    if (s_w == 1) {  // NCHW float: 8 x 8 register transposes (at::vec), the ragged edges below
      const int64_t q8 = w / 8 * 8;
      for (; k_done + 8 <= c; k_done += 8) {
        for (int64_t q = 0; q < q8; q += 8)
          at::vec::transpose_mxn<float, 8, 8>(t + k_done * s_c + q, s_c, buf + q * c + k_done, c);
        for (int64_t q = q8; q < w; ++q)
          for (int64_t k = k_done; k < k_done + 8; ++k) buf[q * c + k] = t[k * s_c + q];
      }
    }
  }
  constexpr int64_t kBlock = 16;
  for (int64_t k0 = k_done; k0 < c; k0 += kBlock) {
    const int64_t kn = std::min(kBlock, c - k0);
    for (int64_t q = 0; q < w; ++q) {
      const S* px = t + k0 * s_c + q * s_w;
      D* o = buf + q * c + k0;
      for (int64_t k = 0; k < kn; ++k) o[k] = static_cast<D>(px[k * s_c]);
    }
  }
  return buf;
}

// Writes the copies of source row (img, r) of one job from its NHWC row: each copy's row it
// lands in, with that row's padding, and the copy's rows no source row lands in (by the first
// and the last source row).
template <typename D>
void scatter_row(const D* row, int64_t img, int64_t r, int64_t h, int64_t w, int64_t c, CopyJob& job) {
  for (size_t k = 0; k < job.shifts.size(); ++k) {
    const Shift& s = job.shifts[k];
    const int64_t hp = h + s.kh - 1, wp = w + s.kw - 1;
    const int64_t q0 = std::clamp<int64_t>(-s.ox, 0, wp), q1 = std::clamp<int64_t>(w - s.ox, q0, wp);
    D* base = job.out[k].mutable_data_ptr<D>() + img * hp * wp * c;
    auto zero_rows = [&](int64_t r0, int64_t r1) {
      if (r1 > r0) std::fill(base + r0 * wp * c, base + r1 * wp * c, D(0));
    };
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

// All jobs' copies (channels-last, dtype dt) in one parallel pass over the sources' rows, each
// source row transposed and cast once. The sources share N, H and W.
void make_copies(std::vector<CopyJob>& jobs, at::ScalarType dt) {
  if (std::all_of(jobs.begin(), jobs.end(), [](const CopyJob& j) { return j.shifts.empty() && !j.sums; })) return;
  RECORD_FUNCTION("fastgen::masked_conv2d_copies", std::vector<c10::IValue>());  // (a profiler row)
  const at::Tensor& t0 = *jobs[0].src;
  const int64_t n = t0.size(0), h = t0.size(2), w = t0.size(3), rows = n * h;
  int64_t width = 1;
  for (auto& job : jobs) {
    const int64_t c = job.src->size(1);
    width = std::max(width, w * c);
    for (const Shift& s : job.shifts)
      job.out.push_back(at::empty({n, c, h + s.kh - 1, w + s.kw - 1}, t0.options().dtype(dt).memory_format(kNHWC)));
    if (job.sums) job.sums->assign(c, 0.0);
  }
  const int threads = at::get_num_threads();
  std::vector<std::vector<double>> partial(jobs.size() * threads);
  AT_DISPATCH_FLOATING_TYPES(dt, "masked_conv2d_copies", [&] {
    using D = scalar_t;
    at::parallel_for(0, rows * static_cast<int64_t>(jobs.size()), std::max<int64_t>(1, 32768 / width),
                     [&](int64_t b, int64_t e) {
      std::vector<D> buf(width);
      for (int64_t i = b; i < e; ++i) {
        CopyJob& job = jobs[i / rows];
        if (job.shifts.empty() && !job.sums) continue;
        const at::Tensor& t = *job.src;
        const int64_t img = (i % rows) / h, r = i % h, c = t.size(1);
        const D* row = nullptr;
        AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t.scalar_type(), "masked_conv2d_row", [&] {
          row = nhwc_row(t.const_data_ptr<scalar_t>() + img * t.stride(0) + r * t.stride(2), t.stride(1), t.stride(3),
                         c, w, buf.data());
        });
        scatter_row(row, img, r, h, w, c, job);
        if (job.sums) {
          auto& acc = partial[(i / rows) * threads + at::get_thread_num()];
          if (acc.empty()) acc.assign(c, 0.0);
          for (int64_t q = 0; q < w; ++q)
            for (int64_t k = 0; k < c; ++k) acc[k] += static_cast<double>(row[q * c + k]);
        }
      }
    });
  });
  for (size_t j = 0; j < jobs.size(); ++j)
    for (int tid = 0; tid < threads; ++tid)
      for (size_t k = 0; k < partial[j * threads + tid].size(); ++k) (*jobs[j].sums)[k] += partial[j * threads + tid][k];
}

// The two kept rectangles of the weight in dtype dt: T (Cout, Cin, ch, kw) and C (Cout, Cin,
// 1, ncols), the centre column zero between masked pairs (a select, not a multiply); `flipped`:
// the input-gradient kernels T[ch-1-i, kw-1-j]^T (Cin, Cout, ch, kw) and C[ncols-1-j]^T.
// Channels-last like the activations (ATen's oneDNN path would copy them to it in a parallel
// region of its own). Undefined when empty. Serial loops: a few hundred kB.
struct Kernels {
  at::Tensor top, centre;
};

// Element (o, i, y, x) of a 4-d tensor's data through its strides.
template <typename T>
T& at4(T* p, const at::Tensor& t, int64_t o, int64_t i, int64_t y, int64_t x) {
  return p[o * t.stride(0) + i * t.stride(1) + y * t.stride(2) + x * t.stride(3)];
}

Kernels kept_kernels(const at::Tensor& weight, const MaskedConvArgs& a, at::ScalarType dt, bool flipped) {
  auto w = weight.to(dt);
  Kernels k;
  const auto opts = w.options().memory_format(kNHWC);
  const int64_t o_n = flipped ? a.cin : a.cout, i_n = flipped ? a.cout : a.cin;
  if (a.ch > 0) k.top = at::empty({o_n, i_n, a.ch, a.kw}, opts);
  if (a.ncols > 0) k.centre = at::empty({o_n, i_n, 1, a.ncols}, opts);
  AT_DISPATCH_FLOATING_TYPES(dt, "masked_conv2d_kernels", [&] {
    const scalar_t* src = w.const_data_ptr<scalar_t>();
    scalar_t* top = k.top.defined() ? k.top.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* centre = k.centre.defined() ? k.centre.mutable_data_ptr<scalar_t>() : nullptr;
    for (int64_t o = 0; o < a.cout; ++o)
      for (int64_t ci = 0; ci < a.cin; ++ci) {
        const int64_t p = flipped ? ci : o, q = flipped ? o : ci;
        for (int i = 0; i < a.ch; ++i)
          for (int j = 0; j < a.kw; ++j)
            at4(top, k.top, p, q, flipped ? a.ch - 1 - i : i, flipped ? a.kw - 1 - j : j) = at4(src, w, o, ci, i, j);
        for (int j = 0; j < a.ncols; ++j) {
          const bool kept = j < a.cw || centre_allowed(o, ci, a.cout, a.cin, a.groups, a.type_a);
          at4(centre, k.centre, p, q, 0, flipped ? a.ncols - 1 - j : j) = kept ? at4(src, w, o, ci, a.ch, j) : scalar_t(0);
        }
      }
  });
  return k;
}

// The weight gradient (Cout, Cin, kh, kw), contiguous in dtype dt, from the rectangles'
// gradients (any strides): zero on every masked tap (and the centre between masked pairs).
// Serial, like kept_kernels.
at::Tensor scatter_weight_grad(const at::Tensor& gt, const at::Tensor& gc, const MaskedConvArgs& a,
                               const at::TensorOptions& opts) {
  auto gw = at::empty({a.cout, a.cin, a.kh, a.kw}, opts);
  AT_DISPATCH_FLOATING_TYPES(opts.dtype().toScalarType(), "masked_conv2d_scatter", [&] {
    scalar_t* dst = gw.mutable_data_ptr<scalar_t>();
    const scalar_t* top = gt.defined() ? gt.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* centre = gc.defined() ? gc.const_data_ptr<scalar_t>() : nullptr;
    for (int64_t o = 0; o < a.cout; ++o)
      for (int64_t ci = 0; ci < a.cin; ++ci) {
        scalar_t* g = dst + (o * a.cin + ci) * a.kh * a.kw;
        std::fill(g, g + a.kh * a.kw, scalar_t(0));
        for (int i = 0; top && i < a.ch; ++i)
          for (int j = 0; j < a.kw; ++j) g[i * a.kw + j] = at4(top, gt, o, ci, i, j);
        for (int j = 0; centre && j < a.ncols; ++j)
          if (j < a.cw || centre_allowed(o, ci, a.cout, a.cin, a.groups, a.type_a))
            g[a.ch * a.kw + j] = at4(centre, gc, o, ci, 0, j);
      }
  });
  return gw;
}

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
  torch::jit::Stack stack{out, input, kernel, c10::IValue(), std::vector<int64_t>{0, 0},
                          std::vector<int64_t>{1, 1}, std::vector<int64_t>{1, 1}, int64_t{1}, std::string("add"),
                          at::Scalar(1.0), c10::IValue(), c10::List<std::optional<at::Scalar>>(), c10::IValue()};
  conv_add_op()->callBoxed(stack);
}

// (N, Cout, H, W) channels-last: bias + conv(top copy, k.top) + conv(centre copy, k.centre),
// the parts that exist (copies undefined otherwise).
at::Tensor two_part_conv(const at::Tensor& top_in, const at::Tensor& centre_in, const Kernels& k,
                         const std::optional<at::Tensor>& bias, const at::TensorOptions& opts,
                         at::IntArrayRef shape) {
  at::Tensor y;
  if (top_in.defined()) y = at::conv2d(top_in, k.top, bias).contiguous(kNHWC);
  if (!y.defined()) {
    y = at::empty(shape, opts.memory_format(kNHWC));
    if (bias.has_value()) y.copy_(bias->view({1, -1, 1, 1}).expand_as(y));
    else y.zero_();
  }
  if (centre_in.defined()) conv_add_(y, centre_in, k.centre);
  return y;
}

// dL/dkernel of the valid convolution conv2d(input, kernel) given dL/doutput.
at::Tensor valid_conv_weight_grad(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& kernel) {
  return std::get<1>(at::convolution_backward(grad_out, input, kernel, std::nullopt, {1, 1}, {0, 0}, {1, 1}, false,
                                              {0, 0}, 1, {false, true, false}));
}

// The copies of x the forward convolutions (and the weight gradient) read.
std::vector<Shift> forward_shifts(const MaskedConvArgs& a, bool top, bool centre) {
  std::vector<Shift> s;
  if (top) s.push_back({-a.ch, -a.cw, a.ch, a.kw});
  if (centre) s.push_back({0, -a.cw, 1, a.ncols});
  return s;
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
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->to(dt);
  const bool any = a.n * a.h * a.w > 0, top = any && a.ch > 0, centre = any && a.ncols > 0;
  auto k = kept_kernels(weight, a, dt, false);
  std::vector<CopyJob> jobs;
  if (top || centre) jobs.push_back({&x, forward_shifts(a, top, centre)});
  make_copies(jobs, dt);
  auto y = two_part_conv(top ? jobs[0].out[0] : at::Tensor(), centre ? jobs[0].out.back() : at::Tensor(), k, b,
                         x.options().dtype(dt), {a.n, a.cout, a.h, a.w});
  return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, c10::string_view mask_type,
    int64_t data_channels, bool x_grad, bool weight_grad, bool bias_grad) {
  auto a = check_masked_conv_backward(grad_y, x, weight, std::string(mask_type), data_channels);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto dt = acc_type(x);
  const auto opts = x.options().dtype(dt);
  const bool any = a.n * a.h * a.w > 0, top = any && a.ch > 0, centre = any && a.ncols > 0;
  // one pass over grad_y and x: grad_y's copies for the input gradient, grad_y channels-last
  // (with its channel sums, the bias gradient) and x's copies for the weight gradient
  std::vector<CopyJob> jobs;
  jobs.reserve(2);  // (gy stays valid)
  CopyJob& gy = jobs.emplace_back(CopyJob{&grad_y});
  if (x_grad && top) gy.shifts.push_back({1, -a.cw, a.ch, a.kw});
  if (x_grad && centre) gy.shifts.push_back({0, a.cw - a.ncols + 1, 1, a.ncols});
  const bool wg = weight_grad && (top || centre);
  if (wg) gy.shifts.push_back({0, 0, 1, 1});
  std::vector<double> gb_sums;
  if (bias_grad) gy.sums = &gb_sums;
  if (wg) jobs.push_back({&x, forward_shifts(a, top, centre)});
  make_copies(jobs, dt);
  at::Tensor gx = x.new_empty({0}), gw = weight.new_empty({0}), gb = weight.new_empty({0});
  if (x_grad) {
    auto g = two_part_conv(top ? gy.out[0] : at::Tensor(), centre ? gy.out[top ? 1 : 0] : at::Tensor(),
                           kept_kernels(weight, a, dt, true), std::nullopt, opts, {a.n, a.cin, a.h, a.w});
    gx = g.scalar_type() == x.scalar_type() ? g : g.to(x.scalar_type());
  }
  if (weight_grad) {
    at::Tensor g_top, g_centre;
    if (wg) {
      auto k = kept_kernels(weight, a, dt, false);
      const at::Tensor& gy_nhwc = jobs[0].out.back();
      if (top) g_top = valid_conv_weight_grad(gy_nhwc, jobs[1].out[0], k.top);
      if (centre) g_centre = valid_conv_weight_grad(gy_nhwc, jobs[1].out.back(), k.centre);
    }
    gw = scatter_weight_grad(g_top, g_centre, a, opts).to(weight.scalar_type());
  }
  if (bias_grad) {
    gb = at::empty({a.cout}, weight.options().dtype(at::kDouble));
    std::copy(gb_sums.begin(), gb_sums.end(), gb.mutable_data_ptr<double>());
    if (gb_sums.empty()) gb.zero_();
    gb = gb.to(weight.scalar_type());
  }
  return {gx, gw, gb};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("masked_conv2d", &fastgen::masked_conv2d_cpu);
  m.impl("masked_conv2d_backward", &fastgen::masked_conv2d_backward_cpu);
}
