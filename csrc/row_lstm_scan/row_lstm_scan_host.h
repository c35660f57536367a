// Argument checks of fastgen::row_lstm_scan and its backward, shared by the CPU and CUDA
// kernels (host code): a direct torch.ops.fastgen call with bad input fails clearly.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "fastgen_host.h"

namespace fastgen {

// input_gates (B, 4h, H, W), weight_ss (4h, h, 3), bias (4h,) or none; returns h.
inline int64_t check_row_lstm_scan(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  check_floating(x, "row_lstm_scan", "input_gates");
  TORCH_CHECK(x.dim() == 4, "fastgen::row_lstm_scan: input_gates must be (B, 4h, H, W); got shape ", x.sizes());
  const int64_t four_h = x.size(1);
  TORCH_CHECK(four_h > 0 && four_h % 4 == 0, "fastgen::row_lstm_scan: input_gates must have 4h channels "
              "(gates i, f, g, o); got ", four_h);
  const int64_t h = four_h / 4;
  check_like(x, "input_gates", w, "row_lstm_scan", "weight_ss", false);
  TORCH_CHECK(w.dim() == 3 && w.size(0) == four_h && w.size(1) == h && w.size(2) == 3,
              "fastgen::row_lstm_scan: weight_ss must have shape (4h, h, 3) = (", four_h, ", ", h,
              ", 3); got ", w.sizes());
  if (bias.has_value() && bias->defined()) {
    check_like(x, "input_gates", *bias, "row_lstm_scan", "bias", false);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == four_h, "fastgen::row_lstm_scan: bias must have shape (",
                four_h, ",); got ", bias->sizes());
  }
  return h;
}

inline void check_row_lstm_scan_backward(const at::Tensor& grad_hidden, const at::Tensor& w,
                                         const at::Tensor& hidden, const at::Tensor& cell,
                                         const at::Tensor& gates) {
  const char* op = "row_lstm_scan_backward";
  check_floating(hidden, op, "hidden");
  TORCH_CHECK(hidden.dim() == 4, "fastgen::row_lstm_scan_backward: hidden must be (B, h, H, W); got ", hidden.sizes());
  check_like(hidden, "hidden", grad_hidden, op, "grad_hidden");
  check_like(hidden, "hidden", w, op, "weight_ss", false);
  const int64_t B = hidden.size(0), h = hidden.size(1), H = hidden.size(2), W = hidden.size(3);
  TORCH_CHECK(w.dim() == 3 && w.size(0) == 4 * h && w.size(1) == h && w.size(2) == 3,
              "fastgen::row_lstm_scan_backward: weight_ss must have shape (4h, h, 3); got ", w.sizes());
  const auto acc = hidden.scalar_type() == at::kBFloat16 ? at::kFloat : hidden.scalar_type();
  TORCH_CHECK(cell.scalar_type() == acc && gates.scalar_type() == acc,
              "fastgen::row_lstm_scan_backward: cell and gates must be ", acc);
  TORCH_CHECK(cell.sizes() == at::IntArrayRef({H, h, B, W}), "fastgen::row_lstm_scan_backward: cell must "
              "have shape (H, h, B, W); got ", cell.sizes());
  TORCH_CHECK(gates.sizes() == at::IntArrayRef({H, 4 * h, B, W}), "fastgen::row_lstm_scan_backward: gates "
              "must have shape (H, 4h, B, W); got ", gates.sizes());
}

inline at::ScalarType row_lstm_acc_type(at::ScalarType t) { return t == at::kBFloat16 ? at::kFloat : t; }

}  // namespace fastgen
