// CUDA kernels of row_lstm_scan: a persistent scan, one launch for all rows.
//
// One block per batch element loops over the H rows; the previous row's hidden state lives in
// shared memory (zero-padded by one column each side, double-buffered), the cell state in the
// saved workspace. Thread t handles (unit u, column w) pairs of the row, grid-stride:
//   z_q = x[b, q*h + u, r, w] + bias + sum_{c, k} W[q*h + u, c, k] * h_{r-1}[c, w + k - 1]
// and the cell math of row_lstm_scan.h. The backward block runs the rows in reverse: dz of the
// row goes to dx and to shared memory, then dW[j, c, k] += sum_w dz[j, w] h_{r-1}[c, w + k - 1]
// and db (atomics across blocks), then dh_{r-1}[c, w] = sum_{j, k} W[j, c, k] dz[j, w - k + 1].
// Layouts as in the CPU kernel: x, hidden (B, ., H, W); cell (H, h, B, W); gates (H, 4h, B, W).
// bfloat16 runs in float32.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "row_lstm_scan/row_lstm_scan.h"
#include "row_lstm_scan/row_lstm_scan_check.h"

namespace fastgen {
namespace {

using at::Tensor;
constexpr int kThreads = 256;
constexpr size_t kMaxShared = 48 * 1024;

template <typename T>
__global__ void row_lstm_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                                        T* __restrict__ hidden, T* __restrict__ cell, T* __restrict__ gates,
                                        int64_t B, int64_t h, int64_t H, int64_t W) {
  extern __shared__ unsigned char smem_raw[];
  T* hs = reinterpret_cast<T*>(smem_raw);  // two buffers of (h, W + 2)
  const int64_t b = blockIdx.x, Wp = W + 2, G = 4 * h, BW = B * W;
  T* cur = hs;
  T* nxt = hs + h * Wp;
  for (int64_t i = threadIdx.x; i < 2 * h * Wp; i += blockDim.x) hs[i] = T(0);
  __syncthreads();
  for (int64_t r = 0; r < H; ++r) {
    for (int64_t idx = threadIdx.x; idx < h * W; idx += blockDim.x) {
      const int64_t u = idx / W, col = idx % W;
      T z[4];
      for (int q = 0; q < 4; ++q) {
        const int64_t j = q * h + u;
        T acc = x[((b * G + j) * H + r) * W + col] + (bias ? bias[j] : T(0));
        if (r > 0) {
          for (int64_t c = 0; c < h; ++c) {
            const T* wj = w + (j * h + c) * 3;
            const T* hp = cur + c * Wp + col;  // padded: hp[k] = h_{r-1}[c, col + k - 1]
            acc += wj[0] * hp[0] + wj[1] * hp[1] + wj[2] * hp[2];
          }
        }
        z[q] = acc;
      }
      const T c_prev = r > 0 ? cell[((r - 1) * h + u) * BW + b * W + col] : T(0);
      T i, f, g, o, c, hv;
      lstm_cell_forward(z[0], z[1], z[2], z[3], c_prev, i, f, g, o, c, hv);
      T* gt = gates + r * G * BW + b * W + col;
      gt[u * BW] = i;
      gt[(h + u) * BW] = f;
      gt[(2 * h + u) * BW] = g;
      gt[(3 * h + u) * BW] = o;
      cell[(r * h + u) * BW + b * W + col] = c;
      hidden[((b * h + u) * H + r) * W + col] = hv;
      nxt[u * Wp + col + 1] = hv;
    }
    __syncthreads();  // the whole row is written before the next reads it shifted
    T* t = cur;
    cur = nxt;
    nxt = t;
  }
}

template <typename T>
__global__ void row_lstm_backward_kernel(const T* __restrict__ gh, const T* __restrict__ w,
                                         const T* __restrict__ hidden, const T* __restrict__ cell,
                                         const T* __restrict__ gates, T* __restrict__ gx, T* __restrict__ gw,
                                         T* __restrict__ gb, T* __restrict__ dc_buf, int64_t B, int64_t h,
                                         int64_t H, int64_t W) {
  extern __shared__ unsigned char smem_raw[];
  const int64_t b = blockIdx.x, Wp = W + 2, G = 4 * h, BW = B * W;
  T* dzs = reinterpret_cast<T*>(smem_raw);  // (4h, W + 2), zero-padded columns
  T* dh_rec = dzs + G * Wp;                 // (h, W)
  T* dc = dc_buf + b * h * W;               // (h, W), zeroed by the caller
  for (int64_t i = threadIdx.x; i < G * Wp; i += blockDim.x) dzs[i] = T(0);
  for (int64_t i = threadIdx.x; i < h * W; i += blockDim.x) dh_rec[i] = T(0);
  __syncthreads();
  for (int64_t r = H - 1; r >= 0; --r) {
    for (int64_t idx = threadIdx.x; idx < h * W; idx += blockDim.x) {
      const int64_t u = idx / W, col = idx % W;
      const T* gt = gates + r * G * BW + b * W + col;
      const T dh = gh[((b * h + u) * H + r) * W + col] + dh_rec[idx];
      const T c = cell[(r * h + u) * BW + b * W + col];
      const T c_prev = r > 0 ? cell[((r - 1) * h + u) * BW + b * W + col] : T(0);
      T d[4], dcp;
      lstm_cell_backward(dh, dc[idx], gt[u * BW], gt[(h + u) * BW], gt[(2 * h + u) * BW], gt[(3 * h + u) * BW], c,
                         c_prev, d[0], d[1], d[2], d[3], dcp);
      dc[idx] = dcp;
      for (int q = 0; q < 4; ++q) {
        const int64_t j = q * h + u;
        gx[((b * G + j) * H + r) * W + col] = d[q];
        dzs[j * Wp + col + 1] = d[q];
        if (gb) atomicAdd(gb + j, d[q]);
      }
    }
    __syncthreads();
    if (r == 0) break;
    for (int64_t idx = threadIdx.x; idx < G * h * 3; idx += blockDim.x) {  // weight gradient
      const int64_t j = idx / (h * 3), c = (idx / 3) % h, k = idx % 3;
      const T* hp = hidden + ((b * h + c) * H + (r - 1)) * W;
      T acc = T(0);
      for (int64_t col = 0; col < W; ++col) {
        const int64_t s = col + k - 1;
        if (s >= 0 && s < W) acc += dzs[j * Wp + col + 1] * hp[s];
      }
      atomicAdd(gw + idx, acc);
    }
    for (int64_t idx = threadIdx.x; idx < h * W; idx += blockDim.x) {  // dh_{r-1}
      const int64_t c = idx / W, col = idx % W;
      T acc = T(0);
      for (int64_t j = 0; j < G; ++j) {
        const T* wj = w + (j * h + c) * 3;
        const T* dp = dzs + j * Wp + col + 1;  // dp[1 - k] = dz[j, col - k + 1]
        acc += wj[0] * dp[1] + wj[1] * dp[0] + wj[2] * dp[-1];
      }
      dh_rec[idx] = acc;
    }
    __syncthreads();
  }
}

std::tuple<Tensor, Tensor, Tensor> row_lstm_scan_cuda(const Tensor& x_in, const Tensor& w_in,
                                                      const std::optional<Tensor>& bias_in) {
  const int64_t h = check_row_lstm_scan(x_in, w_in, bias_in);
  const at::cuda::CUDAGuard guard(x_in.device());
  const int64_t B = x_in.size(0), H = x_in.size(2), W = x_in.size(3), G = 4 * h;
  const auto acc = row_lstm_acc_type(x_in.scalar_type());
  const bool has_bias = bias_in.has_value() && bias_in->defined();
  auto x = x_in.to(acc).contiguous(), w = w_in.to(acc).contiguous();
  auto bias = has_bias ? bias_in->to(acc).contiguous() : Tensor();
  auto opts = x.options();
  auto hidden = at::empty({B, h, H, W}, opts);
  auto cell = at::empty({H, h, B, W}, opts), gates = at::empty({H, G, B, W}, opts);
  if (hidden.numel() == 0) return {hidden.zero_().to(x_in.scalar_type()), cell, gates};
  AT_DISPATCH_FLOATING_TYPES(acc, "row_lstm_scan_cuda", [&] {
    const size_t shared = 2 * h * (W + 2) * sizeof(scalar_t);
    TORCH_CHECK(shared <= kMaxShared, "fastgen::row_lstm_scan (CUDA): h * (W + 2) = ", h * (W + 2),
                " is too large for the shared-memory row state");
    row_lstm_forward_kernel<scalar_t><<<B, kThreads, shared, at::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), has_bias ? bias.const_data_ptr<scalar_t>() : nullptr,
        hidden.data_ptr<scalar_t>(), cell.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(), B, h, H, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {hidden.to(x_in.scalar_type()), cell, gates};
}

std::tuple<Tensor, Tensor, Tensor> row_lstm_scan_backward_cuda(const Tensor& grad_hidden, const Tensor& w_in,
                                                               const Tensor& hidden_in, const Tensor& cell_in,
                                                               const Tensor& gates_in, bool bias_requires_grad) {
  check_row_lstm_scan_backward(grad_hidden, w_in, hidden_in, cell_in, gates_in);
  const at::cuda::CUDAGuard guard(hidden_in.device());
  const int64_t B = hidden_in.size(0), h = hidden_in.size(1), H = hidden_in.size(2), W = hidden_in.size(3);
  const int64_t G = 4 * h;
  const auto dt = hidden_in.scalar_type();
  const auto acc = row_lstm_acc_type(dt);
  auto opts = cell_in.options();
  auto gx = at::empty({B, G, H, W}, opts);
  auto gw = at::zeros({G, h, 3}, opts);
  auto gb = bias_requires_grad ? at::zeros({G}, opts) : at::empty({0}, opts);
  if (hidden_in.numel() > 0) {
    auto gh = grad_hidden.to(acc).contiguous(), hidden = hidden_in.to(acc).contiguous();
    auto cell = cell_in.contiguous(), gates = gates_in.contiguous(), w = w_in.to(acc).contiguous();
    auto dc = at::zeros({B, h, W}, opts);
    AT_DISPATCH_FLOATING_TYPES(acc, "row_lstm_scan_backward_cuda", [&] {
      const size_t shared = (G * (W + 2) + h * W) * sizeof(scalar_t);
      TORCH_CHECK(shared <= kMaxShared, "fastgen::row_lstm_scan_backward (CUDA): 4h * (W + 2) + h * W = ",
                  G * (W + 2) + h * W, " is too large for the shared-memory row gradient");
      row_lstm_backward_kernel<scalar_t><<<B, kThreads, shared, at::cuda::getCurrentCUDAStream()>>>(
          gh.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), hidden.const_data_ptr<scalar_t>(),
          cell.const_data_ptr<scalar_t>(), gates.const_data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
          gw.data_ptr<scalar_t>(), bias_requires_grad ? gb.data_ptr<scalar_t>() : nullptr, dc.data_ptr<scalar_t>(),
          B, h, H, W);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {gx.to(dt), gw.to(dt), gb.to(dt)};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("row_lstm_scan", &fastgen::row_lstm_scan_cuda);
  m.impl("row_lstm_scan_backward", &fastgen::row_lstm_scan_backward_cuda);
}
