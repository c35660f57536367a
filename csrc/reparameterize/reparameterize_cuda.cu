// CUDA kernels of reparameterize (math: reparameterize.h, shared with the CPU kernel).
// Forward: one warp per row (grid-stride over rows), lanes stride over the row, the KL row sum
// reduced with warp shuffles. Backward: elementwise, grid-stride.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "reparameterize/reparameterize.h"
#include "reparameterize/reparameterize_host.h"

namespace fastgen {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ mu, const scalar_t* __restrict__ lv,
                               const scalar_t* __restrict__ eps, scalar_t* __restrict__ z,
                               scalar_t* __restrict__ kl, int64_t rows, int64_t cols) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_total = (int64_t)gridDim.x * (blockDim.x / kWarp);
  for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / kWarp) + threadIdx.x / kWarp; r < rows;
       r += warps_total) {
    const int64_t base = r * cols;
    acc_t acc = 0;
    for (int64_t d = lane; d < cols; d += kWarp) {
      acc_t zz, term;
      reparameterize_element<acc_t>(acc_t(mu[base + d]), acc_t(lv[base + d]), acc_t(eps[base + d]), zz, term);
      z[base + d] = scalar_t(zz);
      acc += term;
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (lane == 0) kl[r] = scalar_t(acc_t(0.5) * acc);
  }
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ gz, const scalar_t* __restrict__ gk,
                                const scalar_t* __restrict__ mu, const scalar_t* __restrict__ lv,
                                const scalar_t* __restrict__ eps, scalar_t* __restrict__ dmu,
                                scalar_t* __restrict__ dlv, scalar_t* __restrict__ deps, int64_t n,
                                int64_t cols) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    acc_t a, b, c;
    reparameterize_backward_element<acc_t>(acc_t(gz[i]), acc_t(gk[i / cols]), acc_t(mu[i]), acc_t(lv[i]),
                                           acc_t(eps[i]), a, b, c);
    dmu[i] = scalar_t(a);
    dlv[i] = scalar_t(b);
    if (deps != nullptr) deps[i] = scalar_t(c);
  }
}

int blocks_for(int64_t work, int per_block) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  int64_t b = (work + per_block - 1) / per_block;
  return (int)std::max<int64_t>(1, std::min<int64_t>(b, sms * 32));
}

std::tuple<at::Tensor, at::Tensor> reparameterize_cuda(const at::Tensor& mu_in, const at::Tensor& logvar_in,
                                                       const at::Tensor& eps_in) {
  check_reparameterize_inputs(mu_in, logvar_in, eps_in);
  c10::cuda::CUDAGuard guard(mu_in.device());
  auto mu = mu_in.contiguous(), logvar = logvar_in.contiguous(), eps = eps_in.contiguous();
  const int64_t cols = mu.size(-1);
  auto z = at::empty_like(mu);
  auto kl = at::zeros(mu.sizes().slice(0, mu.dim() - 1), mu.options());
  if (cols == 0 || mu.numel() == 0) return {z, kl};
  const int64_t rows = mu.numel() / cols;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, mu.scalar_type(), "reparameterize_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(rows, kThreads / kWarp), kThreads, 0, stream>>>(
        mu.const_data_ptr<scalar_t>(), logvar.const_data_ptr<scalar_t>(), eps.const_data_ptr<scalar_t>(),
        z.mutable_data_ptr<scalar_t>(), kl.mutable_data_ptr<scalar_t>(), rows, cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reparameterize_backward_cuda(
    const at::Tensor& grad_z_in, const at::Tensor& grad_kl_in, const at::Tensor& mu_in,
    const at::Tensor& logvar_in, const at::Tensor& eps_in, bool eps_requires_grad) {
  check_reparameterize_backward_inputs(grad_z_in, grad_kl_in, mu_in, logvar_in, eps_in);
  c10::cuda::CUDAGuard guard(mu_in.device());
  auto gz = grad_z_in.contiguous(), gk = grad_kl_in.contiguous();
  auto mu = mu_in.contiguous(), logvar = logvar_in.contiguous(), eps = eps_in.contiguous();
  auto dmu = at::empty_like(mu), dlv = at::empty_like(mu);
  auto deps = eps_requires_grad ? at::empty_like(mu) : at::empty({0}, mu.options());
  const int64_t n = mu.numel();
  if (n == 0) return {dmu, dlv, deps};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, mu.scalar_type(), "reparameterize_backward_cuda", [&] {
    backward_kernel<scalar_t><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
        gz.const_data_ptr<scalar_t>(), gk.const_data_ptr<scalar_t>(), mu.const_data_ptr<scalar_t>(),
        logvar.const_data_ptr<scalar_t>(), eps.const_data_ptr<scalar_t>(), dmu.mutable_data_ptr<scalar_t>(),
        dlv.mutable_data_ptr<scalar_t>(), eps_requires_grad ? deps.mutable_data_ptr<scalar_t>() : nullptr, n,
        mu.size(-1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dmu, dlv, deps};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("reparameterize", &fastgen::reparameterize_cuda);
  m.impl("reparameterize_backward", &fastgen::reparameterize_backward_cuda);
}
