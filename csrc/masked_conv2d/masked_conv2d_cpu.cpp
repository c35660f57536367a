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
// (masked_conv2d_cpu_shift.h): exact output size, nothing computed for a masked tap, no masked
// input ever read. The convolutions run on ATen's CPU convolution, for float32 oneDNN's
// AVX-512 jit kernel (about twice the AVX2 sgemm an im2col GEMM gets here), adding into the
// output inside oneDNN; the weight gradients on its convolution_backward. A 7x7 type-A mask
// keeps 24 of 49 taps: half of the dense convolution's work, on the same engine.
// Activations are channels-last (NHWC): oneDNN's native layout, no reorders, and the layout the
// op's outputs promise. bf16 runs in float and rounds once at the end; float64 takes ATen's own
// (exact, slower) convolution.
//
// Threading: the output rows are cut into chunks (a few per thread: whole images, or bands of
// one), and each thread takes the next chunk when done with one and runs its copies and
// convolutions single-threaded (oneDNN does inside a parallel region). One parallel region for
// the forward and the input gradient instead of one per copy and per oneDNN primitive: on a
// shared machine every region waits for its slowest thread, about a scheduler time slice when
// a neighbour holds a core, and a thread that loses its core here just takes fewer chunks.
// A chunk's copies stay in cache for its convolutions. The weight gradient alone runs after the
// chunks, whole-batch on all threads (oneDNN's kernel for it hangs inside a parallel region).
// Weight-sized work (kernel rearrangement, gradient scatter, bias sums) runs in serial loops.
// A residual (the op's optional addend of y's shape) starts each chunk's output together with the
// bias, so it is added while the chunk is in cache rather than in a pass over y of its own.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "fastgen_gemm.h"
#include "masked_conv2d/masked_conv2d_cpu_1x1.h"
#include "masked_conv2d/masked_conv2d_cpu_shift.h"
#include "masked_conv2d/masked_conv2d_host.h"

namespace fastgen {
namespace {

constexpr auto kNHWC = at::MemoryFormat::ChannelsLast;

at::ScalarType acc_type(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 ? at::kFloat : t.scalar_type(); }

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

// dL/dkernel of the valid convolution conv2d(input, kernel) given dL/doutput.
at::Tensor valid_conv_weight_grad(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& kernel) {
  return std::get<1>(at::convolution_backward(grad_out, input, kernel, std::nullopt, {1, 1}, {0, 0}, {1, 1}, false,
                                              {0, 0}, 1, {false, true, false}));
}

// The chunk's rows of t (N, C, H, W) channels-last, as a tensor with its own dense strides.
at::Tensor chunk_view(const at::Tensor& t, const Chunk& ch) {
  const int64_t c = t.size(1), w = t.size(3);
  return t.as_strided({ch.nb, c, ch.nr, w}, {ch.nr * w * c, 1, w * c, c},
                      t.storage_offset() + (ch.n0 * t.size(2) + ch.r0) * w * c);
}

// t (channels-last, contiguous) = value[channel] everywhere, or zero without value; plus `add`
// (a tensor of t's shape, channels-last dense) when given: a chunk's output started as b + R.
void fill_channels(at::Tensor& t, const std::optional<at::Tensor>& value, const at::Tensor* add = nullptr) {
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "masked_conv2d_fill", [&] {
    scalar_t* p = t.mutable_data_ptr<scalar_t>();
    const int64_t c = t.size(1), pixels = t.numel() / std::max<int64_t>(c, 1);
    const scalar_t* r = add != nullptr ? add->const_data_ptr<scalar_t>() : nullptr;
    if (!value.has_value()) {
      if (r) std::copy(r, r + t.numel(), p);
      else std::fill(p, p + t.numel(), scalar_t(0));
      return;
    }
    const scalar_t* v = value->const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < pixels; ++i)
      if (r)
        for (int64_t k = 0; k < c; ++k) p[i * c + k] = r[i * c + k] + v[k];
      else
        std::copy(v, v + c, p + i * c);
  });
}

// gxs (a chunk of the input gradient, channels-last dense) = 0 where x <= 0 (a NaN x passes its
// gradient, as torch.relu's threshold_backward does): the
// gradient through a fused input ReLU, in cache right after the chunk's convolutions. x: the
// layer's input (N, C, H, W), any strides, its dtype.
void relu_grad_mask_(at::Tensor& gxs, const at::Tensor& x, const Chunk& ch) {
  const int64_t c = x.size(1), w = x.size(3);
  AT_DISPATCH_FLOATING_TYPES(gxs.scalar_type(), "masked_conv2d_relu_grad", [&] {
    using G = scalar_t;
    G* g = gxs.mutable_data_ptr<G>();
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "masked_conv2d_relu_grad_x", [&] {
      if (x.is_contiguous(kNHWC)) {  // the chunk's x is one dense run like gxs: a vectorised select
        const scalar_t* xs = x.const_data_ptr<scalar_t>() + (ch.n0 * x.size(2) + ch.r0) * w * c;
        for (int64_t i = 0; i < ch.nb * ch.nr * w * c; ++i) g[i] = xs[i] <= scalar_t(0) ? G(0) : g[i];
        return;
      }
      const int64_t sn = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
      for (int64_t n = 0; n < ch.nb; ++n)
        for (int64_t r = 0; r < ch.nr; ++r) {
          const scalar_t* xr = x.const_data_ptr<scalar_t>() + (ch.n0 + n) * sn + (ch.r0 + r) * sh;
          G* gr = g + (n * ch.nr + r) * w * c;
          for (int64_t q = 0; q < w; ++q)
            for (int64_t k = 0; k < c; ++k)
              if (xr[q * sw + k * sc] <= scalar_t(0)) gr[q * c + k] = G(0);
        }
    });
  });
}

std::vector<Shift> forward_shifts(const MaskedConvArgs& a, bool top, bool centre) {
  std::vector<Shift> s;
  if (top) s.push_back({-a.ch, -a.cw, a.ch, a.kw});
  if (centre) s.push_back({0, -a.cw, 1, a.ncols});
  return s;
}

at::Tensor masked_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             c10::string_view mask_type, int64_t data_channels, bool relu_input,
                             const std::optional<at::Tensor>& residual) {
  auto a = check_masked_conv_forward(x, weight, bias, std::string(mask_type), data_channels, residual);
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // the inner convolutions record no graph
  const auto dt = acc_type(x);
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->to(dt).contiguous();
  at::Tensor r;  // the residual channels-last in dt (no copy when it is already)
  if (residual.has_value()) r = residual->to(dt).contiguous(kNHWC);
  const bool top = a.ch > 0, centre = a.ncols > 0;
  if (use_1x1_gemm(a, x, dt))
    return conv1x1_forward(x, centre_matrix(weight, a, dt), b, r.defined() ? pixel_matrix(r) : r, a, relu_input);
  auto k = kept_kernels(weight, a, dt, false);
  auto y = at::empty({a.n, a.cout, a.h, a.w}, x.options().dtype(dt).memory_format(kNHWC));
  const auto shifts = forward_shifts(a, top, centre);
  for_each_chunk(make_chunks(a.n, a.h, a.w), [&](const Chunk& ch, int) {
    auto ys = chunk_view(y, ch);
    if (r.defined()) {
      const auto rs = chunk_view(r, ch);
      fill_channels(ys, b, &rs);
    } else {
      fill_channels(ys, b);
    }
    auto xs = chunk_copies(x, ch, shifts, dt, nullptr, relu_input);
    if (top) conv_add_(ys, xs[0], k.top);
    if (centre) conv_add_(ys, xs.back(), k.centre);
  });
  return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, c10::string_view mask_type,
    int64_t data_channels, bool relu_input, bool x_grad, bool weight_grad, bool bias_grad) {
  auto a = check_masked_conv_backward(grad_y, x, weight, std::string(mask_type), data_channels);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto dt = acc_type(x);
  if (use_1x1_gemm(a, x, dt)) return conv1x1_backward(grad_y, x, weight, a, relu_input, x_grad, weight_grad, bias_grad);
  const auto opts = x.options().dtype(dt);
  const bool top = a.ch > 0, centre = a.ncols > 0, wg = weight_grad && (top || centre) && a.n * a.h * a.w > 0;
  // grad_y's copies: for the input gradient, and itself (for the weight and bias gradients)
  // grad_y's copies for the input gradient: per chunk, in its worker
  std::vector<Shift> gx_shifts;
  if (x_grad && top) gx_shifts.push_back({1, -a.cw, a.ch, a.kw});
  if (x_grad && centre) gx_shifts.push_back({0, a.cw - a.ncols + 1, 1, a.ncols});
  // the weight gradient's inputs, whole-batch: grad_y channels-last and x's copies. Its
  // convolutions run after the chunks, on all threads: oneDNN's weight-gradient kernel cannot run
  // inside a parallel region (it waits at a barrier for threads that never come). grad_y is
  // used as it is when channels-last in dt already (a stack of these layers passes it so).
  const bool gy_direct = grad_y.scalar_type() == dt && grad_y.is_contiguous(kNHWC);
  const int64_t ncopy = (wg ? 1 : 0) + (wg && top ? 1 : 0) + (wg && centre ? 1 : 0);
  std::vector<at::Tensor> whole;  // grad_y, x top copy, x centre copy
  if (wg) whole.push_back(gy_direct ? grad_y : at::empty({a.n, a.cout, a.h, a.w}, opts.memory_format(kNHWC)));
  for (const Shift& s : forward_shifts(a, wg && top, wg && centre))
    whole.push_back(at::empty({a.n, a.cin, a.h + s.kh - 1, a.w + s.kw - 1}, opts.memory_format(kNHWC)));
  Kernels kf;
  if (x_grad) kf = kept_kernels(weight, a, dt, true);
  at::Tensor gx;
  if (x_grad) gx = at::empty({a.n, a.cin, a.h, a.w}, opts.memory_format(kNHWC));
  const int threads = at::get_num_threads();
  std::vector<std::vector<double>> g_bias(threads, std::vector<double>(bias_grad ? a.cout : 0, 0.0));
  for_each_chunk(make_chunks(a.n, a.h, a.w), [&](const Chunk& ch, int tid) {
    if (x_grad) {
      auto gys = chunk_copies(grad_y, ch, gx_shifts, dt);
      auto gxs = chunk_view(gx, ch);
      fill_channels(gxs, std::nullopt);
      if (top) conv_add_(gxs, gys[0], kf.top);
      if (centre) conv_add_(gxs, gys.back(), kf.centre);
      if (relu_input) relu_grad_mask_(gxs, x, ch);
    }
    if (ch.r0 != 0 || !(wg || bias_grad)) return;  // (whole images: the chunk starting them)
    const Chunk images{ch.n0, ch.nb, 0, a.h};
    std::vector<at::Tensor> dst;
    for (int64_t i = 0; i < ncopy; ++i) dst.push_back(whole[i].narrow(0, ch.n0, ch.nb));
    const auto gy = gy_direct ? grad_y.narrow(0, ch.n0, ch.nb)
                              : chunk_copies(grad_y, images, {{0, 0, 1, 1}}, dt, wg ? &dst[0] : nullptr)[0];
    if (wg) {
      std::vector<at::Tensor> xdst(dst.begin() + 1, dst.end());
      chunk_copies(x, images, forward_shifts(a, top, centre), dt, &xdst[0], relu_input);
    }
    if (bias_grad) {
      AT_DISPATCH_FLOATING_TYPES(dt, "masked_conv2d_bias_grad", [&] {
        const scalar_t* p = gy.const_data_ptr<scalar_t>();
        for (int64_t i = 0; i < gy.numel() / a.cout; ++i)
          for (int64_t o = 0; o < a.cout; ++o) g_bias[tid][o] += static_cast<double>(p[i * a.cout + o]);
      });
    }
  });
  at::Tensor gw = weight.new_empty({0}), gb = weight.new_empty({0});
  if (weight_grad) {
    at::Tensor gt, gc;
    auto k = kept_kernels(weight, a, dt, false);
    if (wg && top) gt = valid_conv_weight_grad(whole[0], whole[1], k.top);
    if (wg && centre) gc = valid_conv_weight_grad(whole[0], whole.back(), k.centre);
    if (top && !gt.defined()) gt = at::zeros({a.cout, a.cin, a.ch, a.kw}, opts);  // (no pixels)
    if (centre && !gc.defined()) gc = at::zeros({a.cout, a.cin, 1, a.ncols}, opts);
    gw = scatter_weight_grad(gt, gc, a, opts).to(weight.scalar_type());
  }
  if (bias_grad) {
    gb = at::zeros({a.cout}, weight.options().dtype(at::kDouble));
    double* p = gb.mutable_data_ptr<double>();
    for (int t = 0; t < threads; ++t)
      for (int64_t o = 0; o < a.cout; ++o) p[o] += g_bias[t][o];
    gb = gb.to(weight.scalar_type());
  }
  if (!x_grad) return {x.new_empty({0}), gw, gb};
  return {gx.scalar_type() == x.scalar_type() ? gx : gx.to(x.scalar_type()), gw, gb};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("masked_conv2d", &fastgen::masked_conv2d_cpu);
  m.impl("masked_conv2d_backward", &fastgen::masked_conv2d_backward_cpu);
}
