// Schemas of the row_lstm_scan op (kernels: row_lstm_scan_cpu.cpp, row_lstm_scan_cuda.cu).
// The forward returns, besides hidden (B, h, H, W), the cell states (H, h, B, W) and the
// activated gates (H, 4h, B, W) in the accumulation dtype, which the backward (the reverse scan)
// consumes.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def("row_lstm_scan(Tensor input_gates, Tensor weight_ss, Tensor? bias) -> (Tensor hidden, Tensor cell, Tensor gates)");
  m.def(
      "row_lstm_scan_backward(Tensor grad_hidden, Tensor weight_ss, Tensor hidden, Tensor cell, "
      "Tensor gates, bool bias_requires_grad) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
}
