// CUDA kernel of bernoulli_log_prob (math: bernoulli_log_prob.h, shared with the CPU kernel):
// one warp per row (grid-stride over rows), lanes stride over the row (coalesced), the row sum
// reduced with warp shuffles in the accumulation type (float for float32 and bfloat16, double
// for float64), the gradient written as it goes. Deterministic: a fixed reduction order.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "bernoulli_log_prob/bernoulli_log_prob.h"
#include "bernoulli_log_prob/bernoulli_log_prob_host.h"

namespace fastgen {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ l, const scalar_t* __restrict__ x,
                               scalar_t* __restrict__ out, scalar_t* __restrict__ grad, int64_t rows,
                               int64_t x_rows, int64_t cols) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_total = (int64_t)gridDim.x * (blockDim.x / kWarp);
  for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / kWarp) + threadIdx.x / kWarp; r < rows;
       r += warps_total) {
    const int64_t base = r * cols, xbase = (r % x_rows) * cols;
    acc_t acc = 0;
    for (int64_t d = lane; d < cols; d += kWarp) {
      acc_t term, g;
      bernoulli_log_prob_element<acc_t>(acc_t(l[base + d]), acc_t(x[xbase + d]), term, g);
      if (grad != nullptr) grad[base + d] = scalar_t(g);
      acc += term;
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (lane == 0) out[r] = scalar_t(acc);
  }
}

int blocks_for(int64_t rows) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t b = (rows + kThreads / kWarp - 1) / (kThreads / kWarp);
  return (int)std::max<int64_t>(1, std::min<int64_t>(b, sms * 32));
}

std::tuple<at::Tensor, at::Tensor> bernoulli_log_prob_cuda(const at::Tensor& logits_in, const at::Tensor& x_in,
                                                           bool logits_grad) {
  check_bernoulli_log_prob_inputs(logits_in, x_in);
  c10::cuda::CUDAGuard guard(logits_in.device());
  auto logits = logits_in.contiguous(), x = x_in.contiguous();
  const int64_t cols = logits.size(-1);
  auto out = at::zeros(logits.sizes().slice(0, logits.dim() - 1), logits.options());
  auto grad = logits_grad ? at::empty(logits.sizes(), logits.options()) : at::empty({0}, logits.options());
  if (cols == 0 || logits.numel() == 0) return {out, grad};
  const int64_t rows = logits.numel() / cols, x_rows = x.numel() / cols;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, logits.scalar_type(), "bernoulli_log_prob_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(rows), kThreads, 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
        logits_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr, rows, x_rows, cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, grad};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("bernoulli_log_prob", &fastgen::bernoulli_log_prob_cuda);
}
