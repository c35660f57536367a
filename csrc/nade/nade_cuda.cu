// CUDA kernels of nade (written for an H100; compiled here, never run: no GPU on the build hosts).
//
// The recurrence is independent per hidden unit: a_t[j] = c[j] + sum_{s<t} W[j, s] v_s needs no
// other unit, and only the head's dot products (forward) and dv_t = W[:, t] . R (backward) sum
// over units. So the grid is (H / kUnits) x (N / kRows): thread j of a block owns hidden unit j
// for kRows examples, keeping their running sums a (and R) in float64 registers over all D
// steps (a persistent loop, one launch). Per step, the reads W^T[t, j] and V[t, l, j] are
// coalesced rows (W is passed transposed, (D, H)); v[n, t] and g[n, t, l] are the same address
// for the whole block (broadcast). Sums over units inside a block are warp shuffles plus a
// shared-memory pass in a fixed order; sums across blocks go to partial buffers, summed in
// block order by a second kernel: no atomics anywhere, so results are deterministic.
//   forward:  partial[hb, n, t, l] = sum_{j in block hb} sigmoid(a_t[j]) V[t, l, j];
//             logits = b + sum_hb partial  (reduce kernel)
//   backward: per step dh = sum_l g V[t, l, j], da = dh h (1 - h); the block's examples give
//             dV_part[nb, t, l, j] = sum_n g h and dW_part[nb, t, j] = sum_n v_t R (per thread,
//             no reduction), dv_part[hb, n, t] = sum_j W[j, t] R (block reduction); then
//             R += da, a -= W[:, t-1] v_{t-1} (subtracting the forward's rounded term exactly).
// Math shared with the CPU kernel: nade.h. bfloat16 runs in float32.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "nade/nade.h"
#include "nade/nade_host.h"

namespace fastgen {
namespace {

using at::Tensor;
constexpr int kUnits = 64;  // threads (hidden units) per block: two warps
constexpr int kWarps = kUnits / 32;
constexpr int kRows = 4;    // examples per block

template <typename T>
__device__ inline T warp_sum(T x) {
  for (int off = 16; off > 0; off >>= 1) x += __shfl_down_sync(0xffffffffu, x, off);
  return x;
}

// The block's sum over its units of x[i] for each of its kRows examples, in a fixed order;
// result valid in threads 0..kRows-1 (thread i holds example i's sum). red: kWarps * kRows.
template <typename C>
__device__ inline C block_sum_rows(const C (&x)[kRows], C* red, int i_out) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const C s = warp_sum(x[i]);
    if (lane == 0) red[warp * kRows + i] = s;
  }
  __syncthreads();
  C total = C(0);
  if (i_out < kRows)
    for (int w = 0; w < kWarps; ++w) total += red[w * kRows + i_out];
  __syncthreads();  // red is reused by the next call
  return total;
}

template <typename C>
__global__ void nade_forward_kernel(const C* __restrict__ v, const C* __restrict__ wt, const C* __restrict__ c,
                                    const C* __restrict__ V, C* __restrict__ partial, double* __restrict__ a_last,
                                    int64_t N, int64_t D, int64_t H, int64_t L) {
  __shared__ C red[kWarps * kRows];
  const int64_t j = int64_t(blockIdx.x) * kUnits + threadIdx.x, n0 = int64_t(blockIdx.y) * kRows;
  const bool unit = j < H;
  double a[kRows];
  const double cj = unit ? double(c[j]) : 0.0;
#pragma unroll
  for (int i = 0; i < kRows; ++i) a[i] = cj;
  for (int64_t t = 0; t < D; ++t) {
    C h[kRows], p[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) h[i] = fg_sigmoid(C(a[i]));
    for (int64_t l = 0; l < L; ++l) {
      const C vl = unit ? V[(t * L + l) * H + j] : C(0);
#pragma unroll
      for (int i = 0; i < kRows; ++i) p[i] = h[i] * vl;
      const C s = block_sum_rows(p, red, threadIdx.x);
      const int64_t n = n0 + threadIdx.x;
      if (threadIdx.x < kRows && n < N) partial[((int64_t(blockIdx.x) * N + n) * D + t) * L + l] = s;
    }
    if (t + 1 < D && unit) {
      const C w = wt[t * H + j];
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const C vn = n0 + i < N ? v[(n0 + i) * D + t] : C(0);
        a[i] += double(vn * w);  // rounded to C first, as the reference's cumsum adds it
      }
    }
  }
  if (unit)
    for (int i = 0; i < kRows; ++i)
      if (n0 + i < N) a_last[(n0 + i) * H + j] = a[i];
}

template <typename C>
__global__ void nade_backward_kernel(const C* __restrict__ g, const C* __restrict__ v, const C* __restrict__ wt,
                                     const C* __restrict__ V, const double* __restrict__ a_last,
                                     C* __restrict__ gv_part, C* __restrict__ dwt_part, C* __restrict__ dV_part,
                                     double* __restrict__ dc_part, int64_t N, int64_t D, int64_t H, int64_t L,
                                     bool grad_v) {
  __shared__ C red[kWarps * kRows];
  const int64_t j = int64_t(blockIdx.x) * kUnits + threadIdx.x, n0 = int64_t(blockIdx.y) * kRows;
  const bool unit = j < H;
  double a[kRows], R[kRows];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    a[i] = unit && n0 + i < N ? a_last[(n0 + i) * H + j] : 0.0;
    R[i] = 0.0;
  }
  auto v_at = [&](int i, int64_t t) { return n0 + i < N ? v[(n0 + i) * D + t] : C(0); };
  for (int64_t t = D - 1; t >= 0; --t) {
    C h[kRows], dh[kRows], r[kRows], p[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      h[i] = fg_sigmoid(C(a[i]));
      dh[i] = C(0);
      r[i] = C(R[i]);
    }
    for (int64_t l = 0; l < L; ++l) {
      const C vl = unit ? V[(t * L + l) * H + j] : C(0);
      C dv_sum = C(0);
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const C gl = n0 + i < N ? g[((n0 + i) * D + t) * L + l] : C(0);
        dh[i] += gl * vl;
        dv_sum += gl * h[i];
      }
      if (unit) dV_part[((int64_t(blockIdx.y) * D + t) * L + l) * H + j] = dv_sum;
    }
    const C w = unit ? wt[t * H + j] : C(0);
    C dw = C(0);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      p[i] = w * r[i];
      dw += v_at(i, t) * r[i];
    }
    if (unit) dwt_part[(int64_t(blockIdx.y) * D + t) * H + j] = dw;
    if (grad_v) {  // the same for the whole block: its barriers stay uniform
      const C s = block_sum_rows(p, red, threadIdx.x);
      if (threadIdx.x < kRows && n0 + threadIdx.x < N) gv_part[(int64_t(blockIdx.x) * N + n0 + threadIdx.x) * D + t] = s;
    }
    const C wp = unit && t > 0 ? wt[(t - 1) * H + j] : C(0);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      R[i] += double(nade_preact_grad(dh[i], h[i]));
      if (t > 0) a[i] -= double(v_at(i, t - 1) * wp);
    }
  }
  if (unit) {
    double s = 0.0;
    for (int i = 0; i < kRows; ++i) s += R[i];
    dc_part[int64_t(blockIdx.y) * H + j] = s;
  }
}

// out[k] = (bias ? bias[k % period] : 0) + sum_{p < P} part[p * K + k], p in order.
template <typename S, typename C>
__global__ void sum_partials_kernel(const S* __restrict__ part, int64_t P, int64_t K, const C* __restrict__ bias,
                                    int64_t period, C* __restrict__ out) {
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= K) return;
  S acc = bias ? S(bias[k % period]) : S(0);
  for (int64_t p = 0; p < P; ++p) acc += part[p * K + k];
  out[k] = C(acc);
}

template <typename S, typename C>
void sum_partials(const Tensor& part, const C* bias, int64_t period, Tensor& out) {
  const int64_t K = out.numel(), P = part.size(0);
  if (K == 0) return;
  const int threads = 256;
  const int64_t blocks = (K + threads - 1) / threads;
  sum_partials_kernel<S, C><<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
      part.const_data_ptr<S>(), P, K, bias, period, out.data_ptr<C>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

dim3 nade_grid(int64_t N, int64_t H) {
  const int64_t hb = (H + kUnits - 1) / kUnits, nb = (N + kRows - 1) / kRows;
  TORCH_CHECK(nb <= 65535, "fastgen::nade (CUDA): N = ", N, " examples exceed the grid's ", 65535 * kRows);
  return dim3(static_cast<unsigned>(hb), static_cast<unsigned>(nb));
}

std::tuple<Tensor, Tensor> nade_cuda(const Tensor& v_in, const Tensor& W_in, const Tensor& c_in, const Tensor& V_in,
                                     const Tensor& b_in) {
  const auto s = check_nade(v_in, W_in, c_in, V_in, b_in);
  const at::cuda::CUDAGuard guard(v_in.device());
  const auto dt = v_in.scalar_type(), ct = nade_compute_type(dt);
  auto out = at::empty({s.N, s.D, s.L}, v_in.options().dtype(ct));
  auto a_last = at::empty({s.N, s.H}, v_in.options().dtype(at::kDouble));
  if (s.N == 0) return {out.to(dt), a_last};
  if (s.H == 0) {  // sigmoid of nothing: the logits are the biases
    out.copy_(b_in.to(ct).expand({s.N, s.D, s.L}));
    return {out.to(dt), a_last};
  }
  auto v = v_in.to(ct).contiguous(), wt = W_in.to(ct).t().contiguous(), c = c_in.to(ct).contiguous();
  auto V = V_in.to(ct).contiguous(), b = b_in.to(ct).contiguous();
  const dim3 grid = nade_grid(s.N, s.H);
  auto partial = at::empty({int64_t(grid.x), s.N, s.D, s.L}, v.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "nade_cuda", [&] {
    nade_forward_kernel<scalar_t><<<grid, kUnits, 0, at::cuda::getCurrentCUDAStream()>>>(
        v.const_data_ptr<scalar_t>(), wt.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
        V.const_data_ptr<scalar_t>(), partial.data_ptr<scalar_t>(), a_last.data_ptr<double>(), s.N, s.D, s.H, s.L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_partials<scalar_t, scalar_t>(partial, b.const_data_ptr<scalar_t>(), s.D * s.L, out);
  });
  return {out.to(dt), a_last};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> nade_backward_cuda(const Tensor& g_in, const Tensor& v_in,
                                                                      const Tensor& W_in, const Tensor& V_in,
                                                                      const Tensor& a_last_in, bool grad_v) {
  const auto s = check_nade_backward(g_in, v_in, W_in, V_in, a_last_in);
  const at::cuda::CUDAGuard guard(v_in.device());
  const auto dt = v_in.scalar_type(), ct = nade_compute_type(dt);
  const auto copts = v_in.options().dtype(ct);
  auto g = g_in.to(ct).contiguous();
  auto gb = g.sum(0);
  if (s.N == 0 || s.D == 0 || s.H == 0 || s.L == 0) {
    return {at::zeros({s.N, s.D}, v_in.options()), at::zeros({s.H, s.D}, v_in.options()),
            at::zeros({s.H}, v_in.options()), at::zeros({s.D, s.L, s.H}, v_in.options()), gb.to(dt)};
  }
  auto v = v_in.to(ct).contiguous(), wt = W_in.to(ct).t().contiguous(), V = V_in.to(ct).contiguous();
  auto a_last = a_last_in.contiguous();
  const dim3 grid = nade_grid(s.N, s.H);
  auto gv_part = at::empty({int64_t(grid.x), s.N, s.D}, copts);
  auto dwt_part = at::empty({int64_t(grid.y), s.D, s.H}, copts);
  auto dV_part = at::empty({int64_t(grid.y), s.D, s.L, s.H}, copts);
  auto dc_part = at::empty({int64_t(grid.y), s.H}, copts.dtype(at::kDouble));
  auto gv = at::empty({s.N, s.D}, copts), dwt = at::empty({s.D, s.H}, copts), dV = at::empty({s.D, s.L, s.H}, copts);
  auto gc = at::empty({s.H}, copts);
  AT_DISPATCH_FLOATING_TYPES(ct, "nade_backward_cuda", [&] {
    nade_backward_kernel<scalar_t><<<grid, kUnits, 0, at::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), wt.const_data_ptr<scalar_t>(),
        V.const_data_ptr<scalar_t>(), a_last.const_data_ptr<double>(), gv_part.data_ptr<scalar_t>(),
        dwt_part.data_ptr<scalar_t>(), dV_part.data_ptr<scalar_t>(), dc_part.data_ptr<double>(), s.N, s.D, s.H, s.L,
        grad_v);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const scalar_t* none = nullptr;
    if (grad_v) sum_partials<scalar_t, scalar_t>(gv_part, none, 1, gv); else gv.zero_();
    sum_partials<scalar_t, scalar_t>(dwt_part, none, 1, dwt);
    sum_partials<scalar_t, scalar_t>(dV_part, none, 1, dV);
    sum_partials<double, scalar_t>(dc_part, none, 1, gc);
  });
  return {gv.to(dt), dwt.t().contiguous().to(dt), gc.to(dt), dV.to(dt), gb.to(dt)};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("nade", &fastgen::nade_cuda);
  m.impl("nade_backward", &fastgen::nade_backward_cuda);
}
