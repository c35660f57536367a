// CUDA kernels of masked_conv2d: direct convolution over the mask's kept taps only, NHWC.
//
//   forward      y[m, o]   = b[o] + sum_{taps (i, j), ci} x[m + (i - ch, j - cw), ci] * W[o, ci, i, j]
//                one thread per output element; neighbouring threads take neighbouring o, so
//                the weight reads coalesce and the activation reads broadcast
//   grad input   dx[m, ci] = sum_{taps, o} dy[m + (ch - i, cw - j), o] * W[o, ci, i, j]
//                one thread per input element, the mirrored segments of masked_conv2d.h
//   grad weight  dW[o, ci, i, j] = sum_m x[m + (i - ch, j - cw), ci] * dy[m, o]
//                one block per kept (tap, ci, o), a block reduction over m; masked taps stay 0
// With relu_input, x above is relu(x), taken once before the kernels (forward and grad weight), and
// dx is zeroed where x <= 0 afterwards: the kernels themselves are unchanged.
// A residual (y's shape) is added to the accumulator before the store: y = acc + residual.
// The tap geometry and the centre's channel mask are the functions the CPU kernel uses
// (masked_conv2d.h), so the CPU tests exercise them. Accumulation in at::opmath_type.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "masked_conv2d/masked_conv2d_host.h"

namespace fastgen {
namespace {

constexpr int kThreads = 256;

struct Geometry {
  int64_t n, h, w, cin, cout, groups;
  int kh, kw;
  bool type_a, centre;
};

Geometry geometry(const MaskedConvArgs& a) {
  return Geometry{a.n, a.h, a.w, a.cin, a.cout, a.groups, a.kh, a.kw, a.type_a, a.centre};
}

int blocks_for(int64_t total) {
  return static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535LL * 8));
}

// x (N, H, W, Cin), w (kh, kw, Cin, Cout), y (N, H, W, Cout)
// residual (N, H, W, Cout) or null
template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                               const scalar_t* __restrict__ bias, const scalar_t* __restrict__ residual,
                               scalar_t* __restrict__ y, Geometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  TapSegment segs[kMaxSegments];
  const int nseg = forward_segments(g.kh, g.kw, g.centre, segs);
  const int ch = g.kh / 2, cw = g.kw / 2;
  const int64_t total = g.n * g.h * g.w * g.cout;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t o = idx % g.cout, m = idx / g.cout;
    const int64_t col = m % g.w, row = (m / g.w) % g.h, img = m / (g.w * g.h);
    acc_t acc = bias != nullptr ? acc_t(bias[o]) : acc_t(0);
    for (int s = 0; s < nseg; ++s) {
      const int64_t yy = row + segs[s].dy;
      if (yy < 0 || yy >= g.h) continue;
      const int i = segs[s].dy + ch;
      for (int p = 0; p < segs[s].len; ++p) {
        const int64_t xx = col + segs[s].dx + p;
        if (xx < 0 || xx >= g.w) continue;
        const int j = segs[s].dx + p + cw;
        const bool at_centre = (i == ch && j == cw);
        const scalar_t* xp = x + ((img * g.h + yy) * g.w + xx) * g.cin;
        const scalar_t* wp = w + (int64_t(i) * g.kw + j) * g.cin * g.cout + o;
        for (int64_t ci = 0; ci < g.cin; ++ci) {
          if (at_centre && !centre_allowed(o, ci, g.cout, g.cin, g.groups, g.type_a)) continue;
          acc += acc_t(xp[ci]) * acc_t(wp[ci * g.cout]);
        }
      }
    }
    if (residual != nullptr) acc += acc_t(residual[idx]);
    y[idx] = scalar_t(acc);
  }
}

// gy (N, H, W, Cout), w (kh, kw, Cout, Cin), gx (N, H, W, Cin)
template <typename scalar_t>
__global__ void backward_input_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ w,
                                      scalar_t* __restrict__ gx, Geometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  TapSegment segs[kMaxSegments];
  const int nseg = backward_input_segments(g.kh, g.kw, g.centre, segs);
  const int ch = g.kh / 2, cw = g.kw / 2;
  const int64_t total = g.n * g.h * g.w * g.cin;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t ci = idx % g.cin, m = idx / g.cin;
    const int64_t col = m % g.w, row = (m / g.w) % g.h, img = m / (g.w * g.h);
    acc_t acc = 0;
    for (int s = 0; s < nseg; ++s) {
      const int64_t yy = row + segs[s].dy;
      if (yy < 0 || yy >= g.h) continue;
      for (int p = 0; p < segs[s].len; ++p) {
        const int64_t xx = col + segs[s].dx + p;
        if (xx < 0 || xx >= g.w) continue;
        int i, j;
        backward_input_tap(s, p, g.kh, g.kw, g.centre, i, j);
        const bool at_centre = (i == ch && j == cw);
        const scalar_t* gp = gy + ((img * g.h + yy) * g.w + xx) * g.cout;
        const scalar_t* wp = w + (int64_t(i) * g.kw + j) * g.cout * g.cin + ci;
        for (int64_t o = 0; o < g.cout; ++o) {
          if (at_centre && !centre_allowed(o, ci, g.cout, g.cin, g.groups, g.type_a)) continue;
          acc += acc_t(gp[o]) * acc_t(wp[o * g.cin]);
        }
      }
    }
    gx[idx] = scalar_t(acc);
  }
}

// x (N, H, W, Cin), gy (N, H, W, Cout) -> gw (kh, kw, Cin, Cout) at the kept taps.
template <typename scalar_t>
__global__ void backward_weight_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gy,
                                       scalar_t* __restrict__ gw, Geometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kThreads];
  const int ch = g.kh / 2, cw = g.kw / 2;
  const int64_t pairs = g.cin * g.cout;
  const int64_t t = blockIdx.x / pairs, pair = blockIdx.x % pairs;
  const int64_t ci = pair / g.cout, o = pair % g.cout;
  const int i = t < int64_t(ch) * g.kw ? int(t / g.kw) : ch;
  const int j = t < int64_t(ch) * g.kw ? int(t % g.kw) : int(t - int64_t(ch) * g.kw);
  const int64_t dst = ((int64_t(i) * g.kw + j) * g.cin + ci) * g.cout + o;
  if (i == ch && j == cw && !centre_allowed(o, ci, g.cout, g.cin, g.groups, g.type_a)) {
    if (threadIdx.x == 0) gw[dst] = scalar_t(0);
    return;  // the whole block leaves together: no barrier is skipped
  }
  acc_t acc = 0;
  const int64_t m_total = g.n * g.h * g.w;
  for (int64_t m = threadIdx.x; m < m_total; m += blockDim.x) {
    const int64_t col = m % g.w + (j - cw), row = (m / g.w) % g.h + (i - ch), img = m / (g.w * g.h);
    if (row < 0 || row >= g.h || col < 0 || col >= g.w) continue;
    acc += acc_t(x[((img * g.h + row) * g.w + col) * g.cin + ci]) * acc_t(gy[m * g.cout + o]);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) gw[dst] = scalar_t(partial[0]);
}

at::Tensor masked_conv2d_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              c10::string_view mask_type, int64_t data_channels, bool relu_input,
                              const std::optional<at::Tensor>& residual) {
  auto a = check_masked_conv_forward(x, weight, bias, std::string(mask_type), data_channels, residual);
  c10::cuda::CUDAGuard guard(x.device());
  auto xs = to_nhwc(relu_input ? at::relu(x) : x, x.scalar_type());  // the layer's input: relu(x) when fused
  auto wa = weight.permute({2, 3, 1, 0}).contiguous();
  auto b = bias.has_value() ? bias->contiguous() : at::Tensor();
  auto r = residual.has_value() ? to_nhwc(*residual, x.scalar_type()) : at::Tensor();  // (N, H, W, Cout)
  auto y = at::empty({a.n, a.h, a.w, a.cout}, x.options());
  const int64_t total = y.numel();
  if (total > 0) {
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "masked_conv2d_cuda", [&] {
      forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
          xs.const_data_ptr<scalar_t>(), wa.const_data_ptr<scalar_t>(),
          b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, r.defined() ? r.const_data_ptr<scalar_t>() : nullptr,
          y.mutable_data_ptr<scalar_t>(), geometry(a));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return from_nhwc(y, x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, c10::string_view mask_type,
    int64_t data_channels, bool relu_input, bool x_grad, bool weight_grad, bool bias_grad) {
  auto a = check_masked_conv_backward(grad_y, x, weight, std::string(mask_type), data_channels);
  c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  auto gy = to_nhwc(grad_y, x.scalar_type());
  at::Tensor gx = x.new_empty({0}), gw = weight.new_empty({0}), gb = weight.new_empty({0});
  if (x_grad) {
    auto out = at::empty({a.n, a.h, a.w, a.cin}, x.options());
    auto wa = weight.permute({2, 3, 0, 1}).contiguous();
    const int64_t total = out.numel();
    if (total > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "masked_conv2d_backward_input_cuda", [&] {
        backward_input_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
            gy.const_data_ptr<scalar_t>(), wa.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
            geometry(a));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    // through the fused input ReLU: zero where x <= 0, a NaN x passing (threshold_backward's rule)
    if (relu_input) out.masked_fill_(to_nhwc(x, x.scalar_type()).le(0), 0);
    gx = from_nhwc(out, x.scalar_type());
  }
  if (weight_grad) {
    auto arranged = at::zeros({a.kh, a.kw, a.cin, a.cout}, weight.options());
    const int64_t taps = int64_t(a.ch) * a.kw + a.ncols;
    const int64_t blocks = taps * a.cin * a.cout;
    if (blocks > 0 && a.n * a.h * a.w > 0) {
      TORCH_CHECK(blocks < (int64_t(1) << 31), "fastgen::masked_conv2d_backward: too many weight taps for one grid");
      auto xs = to_nhwc(relu_input ? at::relu(x) : x, x.scalar_type());
      AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "masked_conv2d_backward_weight_cuda", [&] {
        backward_weight_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
            xs.const_data_ptr<scalar_t>(), gy.const_data_ptr<scalar_t>(), arranged.mutable_data_ptr<scalar_t>(),
            geometry(a));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    gw = arranged.permute({3, 2, 0, 1}).contiguous();
  }
  if (bias_grad) {
    const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    gb = gy.sum({0, 1, 2}, false, acc).to(weight.scalar_type());
  }
  return {gx, gw, gb};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("masked_conv2d", &fastgen::masked_conv2d_cuda);
  m.impl("masked_conv2d_backward", &fastgen::masked_conv2d_backward_cuda);
}
