// CUDA kernels of masked_linear: one shared-memory tiled product kernel
//     C[m, n] = sum_k A[m, k] B[k, n] (+ bias[n])
// with the mask applied by select (masked_weight of masked_linear.h, the same code the CPU
// kernel runs) either to each loaded B element (forward: B = Wm^T; grad x: B = Wm) or to each
// finished C element (grad W). The host launches it once per block of the layout, on the
// block's span only, so the all-zero blocks of the mask are never visited.
// Tiles: 32x32 outputs per 32x8 thread block, each thread 4 outputs; K in steps of 32.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>

#include "masked_linear/masked_linear_host.h"

namespace fastgen {
namespace {

constexpr int kTile = 32;
constexpr int kRows = 8;  // threadIdx.y extent; each thread covers kTile / kRows rows

template <typename scalar_t, bool MASK_B, bool MASK_C, bool HAS_BIAS>
__global__ void masked_mm_kernel(const scalar_t* __restrict__ a, int64_t s_am, int64_t s_ak,
                                 const scalar_t* __restrict__ b, int64_t s_bk, int64_t s_bn,
                                 const bool* __restrict__ keep, int64_t s_k0, int64_t s_k1,
                                 const scalar_t* __restrict__ bias, scalar_t* __restrict__ c,
                                 int64_t s_cm, int64_t s_cn, int64_t M, int64_t N, int64_t K) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t a_tile[kTile][kTile + 1];  // +1: no bank conflicts on column reads
  __shared__ acc_t b_tile[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTile;
  acc_t acc[kTile / kRows];
#pragma unroll
  for (int i = 0; i < kTile / kRows; ++i) acc[i] = acc_t(0);

  for (int64_t k0 = 0; k0 < K; k0 += kTile) {
#pragma unroll
    for (int i = 0; i < kTile / kRows; ++i) {
      const int r = ty + i * kRows;
      // A tile: rows m0 + r, columns k0 + tx
      const int64_t am = m0 + r, ak = k0 + tx;
      a_tile[r][tx] = (am < M && ak < K) ? acc_t(a[am * s_am + ak * s_ak]) : acc_t(0);
      // B tile: rows k0 + r, columns n0 + tx
      const int64_t bk = k0 + r, bn = n0 + tx;
      acc_t v = acc_t(0);
      if (bk < K && bn < N) {
        v = acc_t(b[bk * s_bk + bn * s_bn]);
        if constexpr (MASK_B) v = masked_weight<acc_t>(v, keep[bk * s_k0 + bn * s_k1]);
      }
      b_tile[r][tx] = v;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kTile; ++kk) {
      const acc_t bv = b_tile[kk][tx];
#pragma unroll
      for (int i = 0; i < kTile / kRows; ++i) acc[i] += a_tile[ty + i * kRows][kk] * bv;
    }
    __syncthreads();
  }

  const int64_t n = n0 + tx;
  if (n >= N) return;
#pragma unroll
  for (int i = 0; i < kTile / kRows; ++i) {
    const int64_t m = m0 + ty + i * kRows;
    if (m >= M) continue;
    acc_t v = acc[i];
    if constexpr (HAS_BIAS) v += acc_t(bias[n]);
    if constexpr (MASK_C) v = masked_weight<acc_t>(v, keep[m * s_k0 + n * s_k1]);
    c[m * s_cm + n * s_cn] = scalar_t(v);
  }
}

// Launches C (M x N) = A (M x K) B (K x N) with the given strides; `keep` masks B or C.
template <typename scalar_t, bool MASK_B, bool MASK_C>
void launch(const scalar_t* a, int64_t s_am, int64_t s_ak, const scalar_t* b, int64_t s_bk, int64_t s_bn,
            const bool* keep, int64_t s_k0, int64_t s_k1, const scalar_t* bias, scalar_t* c, int64_t s_cm,
            int64_t s_cn, int64_t M, int64_t N, int64_t K) {
  if (M == 0 || N == 0) return;
  const int64_t gx = (M + kTile - 1) / kTile, gy = (N + kTile - 1) / kTile;
  TORCH_CHECK(gy <= 65535 && gx <= 2147483647LL, "fastgen::masked_linear: too large for one CUDA grid");
  dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  dim3 block(kTile, kRows);
  auto stream = at::cuda::getCurrentCUDAStream();
  if (bias != nullptr) {
    masked_mm_kernel<scalar_t, MASK_B, MASK_C, true><<<grid, block, 0, stream>>>(
        a, s_am, s_ak, b, s_bk, s_bn, keep, s_k0, s_k1, bias, c, s_cm, s_cn, M, N, K);
  } else {
    masked_mm_kernel<scalar_t, MASK_B, MASK_C, false><<<grid, block, 0, stream>>>(
        a, s_am, s_ak, b, s_bk, s_bn, keep, s_k0, s_k1, bias, c, s_cm, s_cn, M, N, K);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor masked_linear_cuda(const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& mask_in,
                              const std::optional<at::Tensor>& bias_in, const at::Tensor& row_blocks,
                              const at::Tensor& col_blocks) {
  check_masked_linear_args(x_in, weight_in, mask_in, "masked_linear");
  const int64_t n = x_in.size(0), out_f = weight_in.size(0), in_f = weight_in.size(1);
  if (bias_in.has_value()) {
    check_like(weight_in, "weight", *bias_in, "masked_linear", "bias", false);
    TORCH_CHECK(bias_in->dim() == 1 && bias_in->size(0) == out_f,
                "fastgen::masked_linear: bias must have shape (", out_f, ",); got ", bias_in->sizes());
  }
  auto rows = read_mask_blocks(row_blocks, out_f, in_f, "row_blocks");
  read_mask_blocks(col_blocks, in_f, out_f, "col_blocks");
  c10::cuda::CUDAGuard guard(x_in.device());
  auto y = at::empty({n, out_f}, x_in.options());
  if (n == 0 || out_f == 0) return y;
  auto x = x_in.contiguous(), w = weight_in.contiguous(), m = mask_in.contiguous();
  at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "masked_linear_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const bool* mp = m.const_data_ptr<bool>();
    const scalar_t* bp = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    for (const auto& g : rows) {
      // y[:, r0:r1] = x[:, c0:c1] Wm[r0:r1, c0:c1]^T + b[r0:r1]; an empty span gives the bias
      const int64_t off = g.a0 * in_f + g.b0;
      launch<scalar_t, true, false>(xp + g.b0, in_f, 1, wp + off, 1, in_f, mp + off, 1, in_f,
                                    bp ? bp + g.a0 : nullptr, yp + g.a0, out_f, 1, n, g.a1 - g.a0,
                                    g.b1 - g.b0);
    }
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward_cuda(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& weight_in,
    const at::Tensor& mask_in, const at::Tensor& row_blocks, const at::Tensor& col_blocks,
    std::array<bool, 3> output_mask) {
  check_masked_linear_backward_args(grad_y_in, x_in, weight_in, mask_in);
  const int64_t n = x_in.size(0), out_f = weight_in.size(0), in_f = weight_in.size(1);
  auto rows = read_mask_blocks(row_blocks, out_f, in_f, "row_blocks");
  auto cols = read_mask_blocks(col_blocks, in_f, out_f, "col_blocks");
  c10::cuda::CUDAGuard guard(x_in.device());
  auto gy = grad_y_in.contiguous(), x = x_in.contiguous(), w = weight_in.contiguous(), m = mask_in.contiguous();
  auto none = x.new_empty({0});
  at::Tensor gx = none, gw = none, gb = none;
  if (output_mask[0]) gx = at::empty({n, in_f}, x.options());
  if (output_mask[1]) gw = at::zeros({out_f, in_f}, w.options());  // zero outside the spans
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "masked_linear_backward_cuda", [&] {
    const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const bool* mp = m.const_data_ptr<bool>();
    if (output_mask[0]) {
      scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
      for (const auto& g : cols) {
        // gx[:, c0:c1] = gy[:, r0:r1] Wm[r0:r1, c0:c1]; an empty span gives zeros
        const int64_t off = g.b0 * in_f + g.a0;
        launch<scalar_t, true, false>(gyp + g.b0, out_f, 1, wp + off, in_f, 1, mp + off, in_f, 1, nullptr,
                                      gxp + g.a0, in_f, 1, n, g.a1 - g.a0, g.b1 - g.b0);
      }
    }
    if (output_mask[1]) {
      scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
      for (const auto& g : rows) {
        // gW[r0:r1, c0:c1] = where(M, gy[:, r0:r1]^T x[:, c0:c1], 0)
        const int64_t off = g.a0 * in_f + g.b0;
        launch<scalar_t, false, true>(gyp + g.a0, 1, out_f, xp + g.b0, in_f, 1, mp + off, in_f, 1, nullptr,
                                      gwp + off, in_f, 1, g.a1 - g.a0, g.b1 - g.b0, n);
      }
    }
  });
  if (output_mask[2]) gb = n > 0 ? gy.sum(0) : at::zeros({out_f}, gy.options());
  return {gx, gw, gb};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("masked_linear", &fastgen::masked_linear_cuda);
  m.impl("masked_linear_backward", &fastgen::masked_linear_backward_cuda);
}
