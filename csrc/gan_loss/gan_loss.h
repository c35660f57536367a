// Per-element math of the fused GAN losses (kernels: gan_loss_cpu.cpp, gan_loss_cuda.cu).
//
// Every loss term is the mean over one tensor of l(x) = c * f(s * x), s and c in {+1, -1}:
//   kSoftplus  f(y) = softplus(y) = max(y, 0) + log1p(e^-|y|)   dl/dx = c * s * sigmoid(s x)
//   kHinge     f(y) = relu(1 + y)                                dl/dx = c * s * [1 + s x > 0]
//   kLinear    f(y) = y                                          dl/dx = c * s
// (the hinge gradient at the kink is 0, as relu's). The kinds:
//   discriminator "bce":   real softplus(-x) (s=-1, c=+1)   fake softplus(x) (s=+1, c=+1)
//   discriminator "hinge": real relu(1 - x)  (s=-1, c=+1)   fake relu(1 + x) (s=+1, c=+1)
//   generator "minimax": -softplus(x) (s=+1, c=-1); "nonsaturating": softplus(-x) (s=-1, c=+1);
//             "hinge": -x (kLinear, s=-1, c=+1)
// The forward writes dl/dx / n (the gradient of the mean) next to the loss, so the backward only
// scales it by the incoming gradient. softplus and sigmoid share one e = exp(-|y|) in (0, 1]:
// finite and exact for logits of any magnitude (fg_logistic_parts of fastgen_math.h, with
// log1p on (0, 1] by a series).
// T is float/double (GPU and CPU tail) or at::vec::Vectorized<float/double> (CPU body).
#pragma once

#include "fastgen_math.h"

namespace fastgen {

enum class GanFamily : int { kSoftplus = 0, kHinge = 1, kLinear = 2 };

// loss = c f(s x); grad = (c s / n) f'(s x), with cs = c * s and cs_inv_n = c * s / n precomputed.
template <GanFamily F, typename T>
FASTGEN_HOST_DEVICE inline void gan_term_element(T x, T s, T c, T cs_inv_n, T& loss, T& grad) {
  T y = s * x;
  if constexpr (F == GanFamily::kSoftplus) {
    T tail, big, small;
    fg_logistic_parts(y, tail, big, small);
    loss = c * (fg_max(y, T(0)) + tail);               // softplus(y)
    grad = cs_inv_n * fg_where_nonneg(y, big, small);  // sigmoid(y)
  } else if constexpr (F == GanFamily::kHinge) {
    T h = T(1) + y;
    loss = c * fg_max(h, T(0));
    grad = cs_inv_n * fg_positive(h);
  } else {
    loss = c * y;
    grad = cs_inv_n;
  }
}

}  // namespace fastgen
