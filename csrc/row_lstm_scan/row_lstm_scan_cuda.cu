// CUDA kernels of row_lstm_scan: a persistent scan, one launch for all rows.
//
// One block per batch element loops over the H rows; the previous row's hidden state lives in
// shared memory (zero-padded by one column each side, double-buffered), the cell state in the
// saved workspace. Thread t handles (unit u, column w) pairs of the row, grid-stride:
//   z_q = x[b, q*h + u, r, w] + bias + sum_{c, k} W[q*h + u, c, k] * h_{r-1}[c, w + k - 1]
// and the cell math of row_lstm_scan.h. The backward block runs the rows in reverse: dz of the
// row goes to dx and to shared memory, then dh_{r-1}[c, w] = sum_{j, k} W[j, c, k] dz[j, w - k + 1].
// The weight and bias gradients come after the scan, from dx (which then holds every dz):
//   dW[j, c, k] = sum_{b, r >= 1, w} dz[b, j, r, w] h[b, c, r - 1, w + k - 1],  db[j] = sum dz[b, j]
// as one cuBLAS GEMM over (b, r, w) and one reduction: deterministic (no atomics across blocks;
// cuBLAS itself follows torch.use_deterministic_algorithms, which asks for a fixed workspace).
// Shared memory: the row state takes (2h (W + 2)) elements forward and (4h (W + 2) + h W)
// backward; past the default 48 KB a kernel opts in to the device's larger limit (227 KB on an
// H100: h = 128 at W = 32 needs 86 KB backward in fp32), and beyond that the error says so.
// Layouts as in the CPU kernel: x, hidden (B, ., H, W); cell (H, h, B, W); gates (H, 4h, B, W).
// bfloat16 runs in float32.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "row_lstm_scan/row_lstm_scan.h"
#include "row_lstm_scan/row_lstm_scan_host.h"

namespace fastgen {
namespace {

using at::Tensor;
constexpr int kThreads = 256;
constexpr size_t kDefaultShared = 48 * 1024;

// Lets `kernel` take `bytes` of dynamic shared memory: above the default 48 KB it must opt in
// (cudaFuncSetAttribute), up to the device's per-block opt-in maximum.
template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes, const char* op, const char* what) {
  if (bytes <= kDefaultShared) return;
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(bytes <= static_cast<size_t>(optin), "fastgen::", op, " (CUDA): ", what, " needs ", bytes,
              " bytes of shared memory, more than this GPU's ", optin, " per block; use a smaller h or W, "
              "or fastgen.use_impl('reference')");
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// dW (4h, h, 3) and db (4h,) from the gate gradients dz (B, 4h, H, W) and the hidden states
// (B, h, H, W): one GEMM over (b, r >= 1, w) and one reduction, deterministic.
std::pair<Tensor, Tensor> param_grads(const Tensor& dz, const Tensor& hidden, bool bias_grad) {
  const int64_t B = dz.size(0), G = dz.size(1), H = dz.size(2), W = dz.size(3), h = hidden.size(1);
  auto gw = at::zeros({G, h, 3}, dz.options());
  if (H > 1 && B * W > 0) {
    auto d = dz.narrow(2, 1, H - 1).transpose(0, 1).reshape({G, -1});              // (4h, B (H-1) W)
    auto hp = at::constant_pad_nd(hidden.narrow(2, 0, H - 1), {1, 1});              // (B, h, H-1, W+2)
    auto shifted = at::stack({hp.narrow(3, 0, W), hp.narrow(3, 1, W), hp.narrow(3, 2, W)}, 2);  // (B, h, 3, H-1, W)
    auto hs = shifted.permute({1, 2, 0, 3, 4}).reshape({h * 3, -1});                // (h*3, B (H-1) W)
    gw = at::mm(d, hs.t()).view({G, h, 3});
  }
  auto gb = bias_grad ? dz.sum({0, 2, 3}) : at::empty({0}, dz.options());
  return {gw, gb};
}

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
                                         const T* __restrict__ cell,
                                         const T* __restrict__ gates, T* __restrict__ gx,
                                         T* __restrict__ dc_buf, int64_t B, int64_t h,
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
      }
    }
    __syncthreads();
    if (r == 0) break;
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
    allow_shared(row_lstm_forward_kernel<scalar_t>, shared, "row_lstm_scan", "the row state 2h (W + 2)");
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
  auto gx = at::empty({B, G, H, W}, opts);  // every element written by the kernel
  auto hidden = hidden_in.to(acc).contiguous();
  if (hidden_in.numel() > 0) {
    auto gh = grad_hidden.to(acc).contiguous();
    auto cell = cell_in.contiguous(), gates = gates_in.contiguous(), w = w_in.to(acc).contiguous();
    auto dc = at::zeros({B, h, W}, opts);
    AT_DISPATCH_FLOATING_TYPES(acc, "row_lstm_scan_backward_cuda", [&] {
      const size_t shared = (G * (W + 2) + h * W) * sizeof(scalar_t);
      allow_shared(row_lstm_backward_kernel<scalar_t>, shared, "row_lstm_scan_backward",
                   "the row gradient 4h (W + 2) + h W");
      row_lstm_backward_kernel<scalar_t><<<B, kThreads, shared, at::cuda::getCurrentCUDAStream()>>>(
          gh.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), cell.const_data_ptr<scalar_t>(),
          gates.const_data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(), B, h, H, W);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  auto [gw, gb] = param_grads(gx, hidden, bias_requires_grad);
  return {gx.to(dt), gw.to(dt), gb.to(dt)};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("row_lstm_scan", &fastgen::row_lstm_scan_cuda);
  m.impl("row_lstm_scan_backward", &fastgen::row_lstm_scan_backward_cuda);
}
