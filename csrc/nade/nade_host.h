// Argument checks of fastgen::nade and its backward, shared by the CPU and CUDA kernels (host
// code): a direct torch.ops.fastgen call with bad input fails clearly, never inside a kernel.
#pragma once

#include <ATen/ATen.h>

#include "fastgen_host.h"

namespace fastgen {

struct NadeSizes {
  int64_t N, D, H, L;
};

// v (N, D), W (H, D), c (H,), V (D, L, H), b (D, L).
inline NadeSizes check_nade(const at::Tensor& v, const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                            const at::Tensor& b) {
  check_floating(v, "nade", "v");
  TORCH_CHECK(v.dim() == 2, "fastgen::nade: v must be (N, D); got shape ", v.sizes());
  const int64_t N = v.size(0), D = v.size(1);
  check_like(v, "v", W, "nade", "W", false);
  TORCH_CHECK(W.dim() == 2 && W.size(1) == D, "fastgen::nade: W must have shape (H, D) with D = ", D,
              "; got ", W.sizes());
  const int64_t H = W.size(0);
  check_like(v, "v", c, "nade", "c", false);
  TORCH_CHECK(c.dim() == 1 && c.size(0) == H, "fastgen::nade: c must have shape (", H, ",); got ", c.sizes());
  check_like(v, "v", V, "nade", "V", false);
  TORCH_CHECK(V.dim() == 3 && V.size(0) == D && V.size(2) == H, "fastgen::nade: V must have shape (D, L, H) = (",
              D, ", L, ", H, "); got ", V.sizes());
  const int64_t L = V.size(1);
  check_like(v, "v", b, "nade", "b", false);
  TORCH_CHECK(b.dim() == 2 && b.size(0) == D && b.size(1) == L, "fastgen::nade: b must have shape (", D, ", ", L,
              "); got ", b.sizes());
  return {N, D, H, L};
}

inline NadeSizes check_nade_backward(const at::Tensor& g, const at::Tensor& v, const at::Tensor& W,
                                     const at::Tensor& V, const at::Tensor& a_last) {
  const char* op = "nade_backward";
  check_floating(v, op, "v");
  TORCH_CHECK(v.dim() == 2, "fastgen::nade_backward: v must be (N, D); got shape ", v.sizes());
  const int64_t N = v.size(0), D = v.size(1);
  check_like(v, "v", W, op, "W", false);
  TORCH_CHECK(W.dim() == 2 && W.size(1) == D, "fastgen::nade_backward: W must have shape (H, D); got ", W.sizes());
  const int64_t H = W.size(0);
  check_like(v, "v", V, op, "V", false);
  TORCH_CHECK(V.dim() == 3 && V.size(0) == D && V.size(2) == H,
              "fastgen::nade_backward: V must have shape (D, L, H); got ", V.sizes());
  const int64_t L = V.size(1);
  check_like(v, "v", g, op, "grad_logits", false);
  TORCH_CHECK(g.dim() == 3 && g.size(0) == N && g.size(1) == D && g.size(2) == L,
              "fastgen::nade_backward: grad_logits must have shape (N, D, L) = (", N, ", ", D, ", ", L, "); got ",
              g.sizes());
  TORCH_CHECK(a_last.defined() && a_last.scalar_type() == at::kDouble && a_last.device() == v.device(),
              "fastgen::nade_backward: a_last must be a float64 tensor on ", v.device());
  TORCH_CHECK(a_last.dim() == 2 && a_last.size(0) == N && a_last.size(1) == H,
              "fastgen::nade_backward: a_last must have shape (N, H) = (", N, ", ", H, "); got ", a_last.sizes());
  return {N, D, H, L};
}

inline at::ScalarType nade_compute_type(at::ScalarType t) { return t == at::kBFloat16 ? at::kFloat : t; }

}  // namespace fastgen
