// Input checks shared by the fastgen kernels (CPU and CUDA): the Python layer checks first with
// friendlier messages; these make a direct torch.ops.fastgen call fail clearly, never crash.
#pragma once

#include <ATen/ATen.h>

namespace fastgen {

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), "fastgen::", op, ": ", name, " is undefined");
  auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16, "fastgen::", op, ": ",
              name, " must be float32, float64 or bfloat16; got ", st);
}

inline void check_like(const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                       const char* op, const char* name, bool same_shape = true) {
  check_floating(t, op, name);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fastgen::", op, ": ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), "fastgen::", op, ": ", name, " is on ", t.device(),
              " but ", ref_name, " is on ", ref.device());
  TORCH_CHECK(!same_shape || t.sizes() == ref.sizes(), "fastgen::", op, ": ", name, " has shape ",
              t.sizes(), " but ", ref_name, " has ", ref.sizes());
}

}  // namespace fastgen
