// Schemas of the masked_linear op (kernels: masked_linear_cpu.cpp, masked_linear_cuda.cu).
// x is 2-D (the Python layer flattens leading dims); mask is bool; row_blocks / col_blocks are
// the mask's layout: int64 (G, 6) tensors on the CPU (host metadata read when launching).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def(
      "masked_linear(Tensor x, Tensor weight, Tensor mask, Tensor? bias, Tensor row_blocks, "
      "Tensor col_blocks) -> Tensor");
  m.def(
      "masked_linear_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor mask, "
      "Tensor row_blocks, Tensor col_blocks, bool[3] output_mask) -> "
      "(Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
}
