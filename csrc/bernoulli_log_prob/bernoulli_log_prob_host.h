// Input checks of the bernoulli_log_prob kernels, shared by the CPU and CUDA files.
#pragma once

#include "fastgen_host.h"

namespace fastgen {

// logits (..., D); x (..., D) whose shape is a suffix of logits' (leading sample dimensions of
// logits broadcast over it, as a VAE's k samples per image): row r of logits reads row
// r % (x.numel() / D) of x.
inline void check_bernoulli_log_prob_inputs(const at::Tensor& logits, const at::Tensor& x) {
  check_floating(logits, "bernoulli_log_prob", "logits");
  check_like(logits, "logits", x, "bernoulli_log_prob", "x", false);
  const int64_t ld = logits.dim(), xd = x.dim();
  TORCH_CHECK(ld >= 1 && xd >= 1 && xd <= ld && x.sizes() == logits.sizes().slice(ld - xd),
              "fastgen::bernoulli_log_prob: x must have the shape of logits or of its trailing dimensions; got x ",
              x.sizes(), " and logits ", logits.sizes());
}

}  // namespace fastgen
