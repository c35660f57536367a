// The Bernoulli log-likelihood of binary data under logits, summed over the last dimension
// (kernels: bernoulli_log_prob_cpu.cpp, bernoulli_log_prob_cuda.cu):
//   log_prob[r] = sum_d x[r, d] l[r, d] - softplus(l[r, d])     = -BCE-with-logits summed
//   grad_l[r, d] = x[r, d] - sigmoid(l[r, d])                    (d log_prob[r] / d l[r, d])
// with softplus(l) = max(l, 0) + log1p(e^-|l|): x l - max(l, 0) is formed first, so that a
// confident correct logit (x = 1, l = 20) gives -log1p(e^-20) to full relative precision rather
// than 20 - 20.000000002; likewise the gradient uses 1 - sigmoid(l) = sigmoid(-l) directly. Exact and finite for finite logits of any magnitude; x may be any value
// in [0, 1] (soft targets), as F.binary_cross_entropy_with_logits.
// The forward writes grad_l next to the row sums (Liger's fused cross-entropy way); the backward
// only scales it by the incoming gradient of each row.
// T is float/double (GPU and CPU tail) or at::vec::Vectorized<float/double> (CPU body).
#pragma once

#include "fastgen_math.h"

namespace fastgen {

template <typename T>
FASTGEN_HOST_DEVICE inline void bernoulli_log_prob_element(T l, T x, T& logp, T& grad) {
  T tail, big, small;
  fg_logistic_parts(l, tail, big, small);  // softplus(l) = max(l, 0) + tail
  logp = (x * l - fg_max(l, T(0))) - tail;
  grad = fg_where_nonneg(l, (x - T(1)) + small, x - small);  // x - sigmoid(l), 1 - sigmoid(l) = small for l >= 0
}

}  // namespace fastgen
