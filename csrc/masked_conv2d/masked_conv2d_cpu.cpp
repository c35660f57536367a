// CPU kernels of masked_conv2d: implicit GEMM over the mask's non-zero taps only.
//
// forward:      Y (M, Cout) = P_x (M, K) @ Wf (K, Cout) + b,   M = N*H*W, K = taps * Cin
// grad input:   dX (M, Cin) = P_dy (M, K') @ Wb (K', Cout->Cin)  (mirrored taps, flipped weight)
// grad weight:  dWf (K, Cout) = P_x^T @ dY;  grad bias = column sums of dY
// P_* are patch matrices gathered from NHWC activations by the tap segments of masked_conv2d.h:
// a 7x7 type-A mask keeps 24 of 49 taps, so the GEMMs do half of a dense convolution's work.
// Rows are processed in chunks (a chunk's patch stays in cache), chunks in parallel, each
// chunk's product on the BLAS of ATen. bf16 runs in float and rounds once at the end.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "masked_conv2d/masked_conv2d_host.h"

namespace fastgen {
namespace {

struct Plan {
  TapSegment segs[kMaxSegments];
  int nseg = 0;
  int64_t taps = 0;
};

Plan make_plan(const MaskedConvArgs& a, bool input_grad) {
  Plan p;
  p.nseg = input_grad ? backward_input_segments(a.kh, a.kw, a.centre, p.segs)
                      : forward_segments(a.kh, a.kw, a.centre, p.segs);
  for (int s = 0; s < p.nseg; ++s) p.taps += p.segs[s].len;
  return p;
}

// Patch rows m0..m1 of the (M, taps * C) patch matrix of src (N, H, W, C) into dst (row stride K).
template <typename T>
void gather_rows(const T* src, int64_t h, int64_t w, int64_t c, const Plan& plan, int64_t m0, int64_t m1, T* dst) {
  const int64_t k = plan.taps * c;
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t n = m / (h * w), y = (m / w) % h, x = m % w;
    T* row = dst + (m - m0) * k;
    for (int s = 0; s < plan.nseg; ++s) {
      const TapSegment& seg = plan.segs[s];
      const int64_t len = seg.len * c, yy = y + seg.dy, x0 = x + seg.dx;
      if (yy < 0 || yy >= h) {
        std::memset(row, 0, sizeof(T) * len);
      } else {
        const int64_t lo = std::max<int64_t>(x0, 0), hi = std::min<int64_t>(x0 + seg.len, w);
        const int64_t before = (lo - x0) * c, inside = std::max<int64_t>(hi - lo, 0) * c;
        if (before > 0) std::memset(row, 0, sizeof(T) * std::min(before, len));
        if (inside > 0) std::memcpy(row + before, src + ((n * h + yy) * w + lo) * c, sizeof(T) * inside);
        const int64_t done = std::min(before, len) + inside;
        if (done < len) std::memset(row + done, 0, sizeof(T) * (len - done));
      }
      row += len;
    }
  }
}

int64_t chunk_rows(int64_t k) { return std::clamp<int64_t>(131072 / std::max<int64_t>(k, 1), 32, 1024); }

// Runs body(chunk) for chunks 0..chunks-1 on the intra-op threads, each thread taking the next
// chunk when it is done with one: on a shared machine a thread that loses its core takes fewer
// chunks instead of holding every other thread up (a static split waits for the slowest).
template <typename F>
void for_each_chunk(int64_t chunks, const F& body) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), chunks);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) body(c);
  });
}

// out (M, Cout_mat) += patches(src) @ mat, chunk by chunk.
template <typename T>
void patch_matmul(const at::Tensor& src, const MaskedConvArgs& a, int64_t c, const Plan& plan,
                  const at::Tensor& mat, at::Tensor& out) {
  const int64_t m_total = out.size(0), k = plan.taps * c, rows = chunk_rows(k);
  if (plan.nseg == 1 && plan.taps == 1 && plan.segs[0].dy == 0 && plan.segs[0].dx == 0) {
    out.addmm_(src.view({m_total, c}), mat);  // a 1x1 kernel: the activations are the patch
    return;
  }
  const int64_t chunks = (m_total + rows - 1) / rows;
  const T* s = src.const_data_ptr<T>();
  std::vector<at::Tensor> patches(at::get_num_threads());
  for_each_chunk(chunks, [&](int64_t ci) {
    auto& patch = patches[at::get_thread_num()];
    if (!patch.defined()) patch = at::empty({rows, k}, mat.options());
    const int64_t m0 = ci * rows, m1 = std::min(m_total, m0 + rows);
    gather_rows<T>(s, a.h, a.w, c, plan, m0, m1, patch.mutable_data_ptr<T>());
    out.narrow(0, m0, m1 - m0).addmm_(patch.narrow(0, 0, m1 - m0), mat);
  });
}

// sum over chunks of patches(src)^T @ gy, one accumulator per thread.
template <typename T>
at::Tensor patch_grad(const at::Tensor& src, const MaskedConvArgs& a, const Plan& plan, const at::Tensor& gy) {
  // longer chunks than the forward's: they are the inner dimension of these products
  const int64_t m_total = gy.size(0), k = plan.taps * a.cin, rows = 4 * chunk_rows(k);
  if (plan.nseg == 1 && plan.taps == 1 && plan.segs[0].dy == 0 && plan.segs[0].dx == 0)
    return at::mm(src.view({m_total, a.cin}).t(), gy);  // a 1x1 kernel
  const int64_t chunks = (m_total + rows - 1) / rows;
  std::vector<at::Tensor> acc(at::get_num_threads());
  const T* s = src.const_data_ptr<T>();
  std::vector<at::Tensor> patches(at::get_num_threads());
  for_each_chunk(chunks, [&](int64_t ci) {
    const int tid = at::get_thread_num();
    if (!patches[tid].defined()) {
      patches[tid] = at::empty({rows, k}, gy.options());
      acc[tid] = at::zeros({k, a.cout}, gy.options());
    }
    const int64_t m0 = ci * rows, m1 = std::min(m_total, m0 + rows);
    gather_rows<T>(s, a.h, a.w, a.cin, plan, m0, m1, patches[tid].mutable_data_ptr<T>());
    acc[tid].addmm_(patches[tid].narrow(0, 0, m1 - m0).t(), gy.narrow(0, m0, m1 - m0));
  });
  at::Tensor total = at::zeros({k, a.cout}, gy.options());
  for (auto& t : acc)
    if (t.defined()) total.add_(t);
  return total;
}

at::ScalarType acc_type(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 ? at::kFloat : t.scalar_type(); }

at::Tensor masked_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             c10::string_view mask_type, int64_t data_channels) {
  auto a = check_masked_conv("masked_conv2d", x, weight, std::string(mask_type), data_channels);
  if (bias.has_value()) {
    check_like(x, "x", *bias, "masked_conv2d", "bias", false);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == a.cout, "fastgen::masked_conv2d: bias must have shape (",
                a.cout, ",); got ", bias->sizes());
  }
  const auto dt = acc_type(x);
  const auto opts = x.options().dtype(dt);
  auto out = at::empty({a.n * a.h * a.w, a.cout}, opts);
  if (bias.has_value()) out.copy_(bias->to(dt).unsqueeze(0).expand_as(out));
  else out.zero_();
  Plan plan = make_plan(a, false);
  if (out.numel() > 0 && plan.taps > 0 && a.cin > 0) {
    auto cmask = centre_mask(a, opts);
    auto mat = forward_matrix(weight.to(dt), a, cmask);
    auto xs = to_nhwc(x, dt);
    AT_DISPATCH_FLOATING_TYPES(dt, "masked_conv2d_cpu", [&] { patch_matmul<scalar_t>(xs, a, a.cin, plan, mat, out); });
  }
  return from_nhwc(out.view({a.n, a.h, a.w, a.cout}), x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, c10::string_view mask_type,
    int64_t data_channels, bool x_grad, bool weight_grad, bool bias_grad) {
  auto a = check_masked_conv_backward(grad_y, x, weight, std::string(mask_type), data_channels);
  const auto dt = acc_type(x);
  const auto opts = x.options().dtype(dt);
  const int64_t m_total = a.n * a.h * a.w;
  auto gy = to_nhwc(grad_y, dt).view({m_total, a.cout});
  auto cmask = centre_mask(a, opts);
  at::Tensor gx = x.new_empty({0}), gw = weight.new_empty({0}), gb = weight.new_empty({0});
  if (x_grad) {
    auto out = at::zeros({m_total, a.cin}, opts);
    Plan plan = make_plan(a, true);
    if (m_total > 0 && plan.taps > 0 && a.cout > 0) {
      auto mat = backward_input_matrix(weight.to(dt), a, cmask);
      AT_DISPATCH_FLOATING_TYPES(dt, "masked_conv2d_backward_input_cpu",
                                 [&] { patch_matmul<scalar_t>(gy, a, a.cout, plan, mat, out); });
    }
    gx = from_nhwc(out.view({a.n, a.h, a.w, a.cin}), x.scalar_type());
  }
  if (weight_grad) {
    Plan plan = make_plan(a, false);
    at::Tensor gmat;
    if (m_total > 0 && plan.taps > 0) {
      auto xs = to_nhwc(x, dt);
      AT_DISPATCH_FLOATING_TYPES(dt, "masked_conv2d_backward_weight_cpu",
                                 [&] { gmat = patch_grad<scalar_t>(xs, a, plan, gy); });
    } else {
      gmat = at::zeros({plan.taps * a.cin, a.cout}, opts);
    }
    gw = scatter_weight_grad(gmat, a, cmask, opts).to(weight.scalar_type());
  }
  if (bias_grad) gb = gy.sum(0).to(weight.scalar_type());
  return {gx, gw, gb};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("masked_conv2d", &fastgen::masked_conv2d_cpu);
  m.impl("masked_conv2d_backward", &fastgen::masked_conv2d_backward_cpu);
}
