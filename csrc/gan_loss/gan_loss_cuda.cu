// CUDA kernels of the fused GAN losses (element math: gan_loss.h, shared with the CPU kernel).
//
// Two-stage, deterministic reduction (no atomics):
//   stage 1, per logits tensor: a grid-stride loop; each thread accumulates its loss terms in
//     acc_t (fp32 for bf16/fp32, fp64 for fp64) and writes dl/dx / n; a block tree-reduces its
//     threads and writes one partial (as double) to partials[block];
//   stage 2, one block: adds the partials of each tensor in a fixed order in double, divides by
//     n (NaN for an empty tensor) and writes the 0-dim loss.
// The grid size depends only on n, so the result is the same run to run.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "fastgen_host.h"
#include "gan_loss/gan_loss.h"
#include "gan_loss/gan_loss_host.h"

namespace fastgen {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1024;

template <typename T>
__device__ T block_sum(T v, T* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  return shared[0];
}

template <typename scalar_t, GanFamily F>
__global__ void __launch_bounds__(kThreads) gan_term_kernel(const scalar_t* __restrict__ x,
                                                            scalar_t* __restrict__ grad, int64_t n,
                                                            double s, double c, double* partials) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[kThreads];
  const acc_t sv = acc_t(s), cv = acc_t(c), csn = acc_t(c * s / double(n));
  acc_t acc = 0;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    acc_t l, g;
    gan_term_element<F, acc_t>(acc_t(x[i]), sv, cv, csn, l, g);
    acc += l;
    if (grad != nullptr) grad[i] = scalar_t(g);
  }
  const acc_t total = block_sum(acc, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = double(total);
}

__device__ double segment_mean(const double* partials, int64_t count, int64_t n, double* shared) {
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) acc += partials[i];
  const double total = block_sum(acc, shared);
  __syncthreads();  // shared is reused by the next segment
  return n > 0 ? total / double(n) : __longlong_as_double(0x7ff8000000000000LL);  // NaN
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) gan_finalize_kernel(const double* partials, int64_t count0,
                                                                int64_t n0, int64_t count1, int64_t n1,
                                                                int two_terms, scalar_t* loss) {
  __shared__ double shared[kThreads];
  double value = segment_mean(partials, count0, n0, shared);
  if (two_terms) value += segment_mean(partials + count0, count1, n1, shared);
  if (threadIdx.x == 0) {
    if constexpr (std::is_same_v<scalar_t, double>) {
      loss[0] = value;
    } else {
      loss[0] = scalar_t(float(value));
    }
  }
}

int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks); }

struct Segment {
  at::Tensor x, grad;  // grad undefined: not wanted
  GanTerm term;
};

template <typename scalar_t, GanFamily F>
void launch_term(const Segment& seg, double* partials, cudaStream_t stream) {
  const int64_t n = seg.x.numel();
  if (n == 0) return;
  gan_term_kernel<scalar_t, F><<<blocks_for(n), kThreads, 0, stream>>>(
      seg.x.const_data_ptr<scalar_t>(), seg.grad.defined() ? seg.grad.mutable_data_ptr<scalar_t>() : nullptr,
      n, seg.term.s, seg.term.c, partials);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Stage 1 over each segment, stage 2 into loss.
void run(const Segment* segs, int nseg, at::Tensor& loss) {
  const at::Tensor& x0 = segs[0].x;
  int64_t counts[2] = {0, 0};
  for (int k = 0; k < nseg; ++k) counts[k] = segs[k].x.numel() > 0 ? blocks_for(segs[k].x.numel()) : 0;
  auto partials = at::empty({std::max<int64_t>(1, counts[0] + counts[1])}, x0.options().dtype(at::kDouble));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x0.scalar_type(), "gan_loss_cuda", [&] {
    double* p = partials.mutable_data_ptr<double>();
    for (int k = 0; k < nseg; ++k) {
      switch (segs[k].term.family) {
        case GanFamily::kSoftplus: launch_term<scalar_t, GanFamily::kSoftplus>(segs[k], p, stream); break;
        case GanFamily::kHinge: launch_term<scalar_t, GanFamily::kHinge>(segs[k], p, stream); break;
        case GanFamily::kLinear: launch_term<scalar_t, GanFamily::kLinear>(segs[k], p, stream); break;
      }
      p += counts[k];
    }
    gan_finalize_kernel<scalar_t><<<1, kThreads, 0, stream>>>(
        partials.const_data_ptr<double>(), counts[0], segs[0].x.numel(), counts[1],
        nseg > 1 ? segs[1].x.numel() : 1, nseg > 1 ? 1 : 0, loss.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor grad_buffer(const at::Tensor& x, bool wanted) {
  return wanted ? at::empty_like(x) : at::empty({0}, x.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_loss_cuda(
    const at::Tensor& real_in, const at::Tensor& fake_in, c10::string_view kind, bool real_grad,
    bool fake_grad) {
  check_floating(real_in, "discriminator_loss", "real_logits");
  check_like(real_in, "real_logits", fake_in, "discriminator_loss", "fake_logits", false);
  auto terms = gan_discriminator_terms(kind);
  const c10::cuda::CUDAGuard guard(real_in.device());
  auto real = real_in.contiguous(), fake = fake_in.contiguous();
  auto grad_real = grad_buffer(real, real_grad), grad_fake = grad_buffer(fake, fake_grad);
  auto loss = at::empty({}, real.options());
  Segment segs[2] = {{real, real_grad ? grad_real : at::Tensor(), terms.first},
                     {fake, fake_grad ? grad_fake : at::Tensor(), terms.second}};
  run(segs, 2, loss);
  return {loss, grad_real, grad_fake};
}

std::tuple<at::Tensor, at::Tensor> generator_loss_cuda(const at::Tensor& fake_in, c10::string_view kind,
                                                       bool fake_grad) {
  check_floating(fake_in, "generator_loss", "fake_logits");
  const GanTerm term = gan_generator_term(kind);
  const c10::cuda::CUDAGuard guard(fake_in.device());
  auto fake = fake_in.contiguous();
  auto grad_fake = grad_buffer(fake, fake_grad);
  auto loss = at::empty({}, fake.options());
  Segment seg{fake, fake_grad ? grad_fake : at::Tensor(), term};
  run(&seg, 1, loss);
  return {loss, grad_fake};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("discriminator_loss", &fastgen::discriminator_loss_cuda);
  m.impl("generator_loss", &fastgen::generator_loss_cuda);
}
