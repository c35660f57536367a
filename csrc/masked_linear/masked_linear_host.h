// Host-side checks of masked_linear's arguments and of its layout, shared by the CPU and CUDA
// kernels (the Python layer checks first with friendlier messages).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "fastgen_host.h"
#include "masked_linear/masked_linear.h"

namespace fastgen {

// Reads and validates a layout: groups must partition [0, extent_a) in order, spans lie in
// [0, extent_b], all-ones ranges in their spans. A layout built for another mask of the same
// shape is not detected here (fastgen.ops.masked_linear checks that).
inline std::vector<MaskBlock> read_mask_blocks(const at::Tensor& blocks, int64_t extent_a,
                                               int64_t extent_b, const char* name) {
  TORCH_CHECK(blocks.device().is_cpu() && blocks.scalar_type() == at::kLong && blocks.dim() == 2 &&
                  blocks.size(1) == 6,
              "fastgen::masked_linear: ", name, " must be an int64 CPU tensor of shape (G, 6); got ",
              blocks.scalar_type(), " ", blocks.sizes(), " on ", blocks.device());
  auto b = blocks.contiguous();
  const int64_t* p = b.const_data_ptr<int64_t>();
  std::vector<MaskBlock> out;
  int64_t next = 0;
  for (int64_t g = 0; g < b.size(0); ++g) {
    const int64_t* r = p + 6 * g;
    MaskBlock blk{r[0], r[1], r[2], r[3], r[4], r[5]};
    if (blk.d0 == blk.d1) blk.d0 = blk.d1 = blk.b0;  // (an empty all-ones range, anywhere)
    TORCH_CHECK(blk.a0 == next && blk.a1 > blk.a0 && blk.a1 <= extent_a && blk.b0 >= 0 &&
                    blk.b0 <= blk.b1 && blk.b1 <= extent_b && blk.b0 <= blk.d0 && blk.d0 <= blk.d1 &&
                    blk.d1 <= blk.b1,
                "fastgen::masked_linear: ", name, " is not a layout of this mask (group ", g, ")");
    next = blk.a1;
    out.push_back(blk);
  }
  TORCH_CHECK(next == extent_a, "fastgen::masked_linear: ", name, " does not cover all ", extent_a,
              " rows/columns");
  return out;
}

inline void check_masked_linear_args(const at::Tensor& x, const at::Tensor& weight,
                                     const at::Tensor& mask, const char* op) {
  check_floating(x, op, "x");
  check_floating(weight, op, "weight");
  TORCH_CHECK(x.dim() == 2, "fastgen::", op, ": x must be 2-D (N, in_features); got ", x.sizes());
  TORCH_CHECK(weight.dim() == 2, "fastgen::", op, ": weight must be 2-D; got ", weight.sizes());
  check_like(weight, "weight", x, op, "x", false);
  TORCH_CHECK(x.size(1) == weight.size(1), "fastgen::", op, ": x has ", x.size(1),
              " features but weight expects ", weight.size(1));
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.sizes() == weight.sizes() &&
                  mask.device() == weight.device(),
              "fastgen::", op, ": mask must be a bool tensor shaped and placed like weight; got ",
              mask.scalar_type(), " ", mask.sizes(), " on ", mask.device());
}

inline void check_masked_linear_backward_args(const at::Tensor& grad_y, const at::Tensor& x,
                                              const at::Tensor& weight, const at::Tensor& mask) {
  check_masked_linear_args(x, weight, mask, "masked_linear_backward");
  const int64_t n = x.size(0), out_f = weight.size(0);
  check_like(weight, "weight", grad_y, "masked_linear_backward", "grad_y", false);
  TORCH_CHECK(grad_y.dim() == 2 && grad_y.size(0) == n && grad_y.size(1) == out_f,
              "fastgen::masked_linear_backward: grad_y must have shape (", n, ", ", out_f, "); got ",
              grad_y.sizes());
}

}  // namespace fastgen
