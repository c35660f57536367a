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
// finite and exact for logits of any magnitude (fg_softplus / fg_sigmoid of fastgen_math.h,
// fused, with log1p on (0, 1] by a series).
// T is float/double (GPU and CPU tail) or at::vec::Vectorized<float/double> (CPU body).
#pragma once

#include <type_traits>

#include "fastgen_math.h"

namespace fastgen {

// The scalar type behind T (float, double, or the S of at::vec::Vectorized<S>).
template <typename T>
struct GanScalar {
  using type = T;
};
#if !defined(__CUDACC__) && !defined(__HIPCC__)
template <typename S>
struct GanScalar<at::vec::Vectorized<S>> {
  using type = S;
};
#endif

// 2 atanh(t) = log((1 + t) / (1 - t)) for t in [0, 1/3]: 2 (t + t^3/3 + t^5/5 + ...), truncated
// where 9^-k / (2k+1) drops below half an ulp (k <= 6 for float, k <= 16 for double). With
// t = e / (2 + e) this is log1p(e) for e in [0, 1]: on the CPU about 4x cheaper than Sleef's
// log1p and as accurate (the only roundings are in t).
template <typename T>
FASTGEN_HOST_DEVICE inline T gan_two_atanh(T t) {
  constexpr bool kDouble = std::is_same_v<typename GanScalar<T>::type, double>;
  constexpr int kTerms = kDouble ? 16 : 6;
  // The polynomial in z = t^2 with coefficients 1/(2k+1), by Estrin's scheme (pairs, then pairs
  // of pairs, ...): a dependency chain of log2 length instead of Horner's linear one.
  constexpr int kCoeffs = kTerms + 1;
  T a[kCoeffs];
  for (int k = 0; k < kCoeffs; ++k) a[k] = T(1.0 / (2 * k + 1));
  T z = t * t;
  int m = kCoeffs;
  while (m > 1) {
    for (int i = 0; i < m / 2; ++i) a[i] = a[2 * i] + a[2 * i + 1] * z;
    if (m % 2) a[m / 2] = a[m - 1];
    m = (m + 1) / 2;
    z = z * z;
  }
  return T(2) * t * a[0];
}

enum class GanFamily : int { kSoftplus = 0, kHinge = 1, kLinear = 2 };

// loss = c f(s x); grad = (c s / n) f'(s x), with cs = c * s and cs_inv_n = c * s / n precomputed.
template <GanFamily F, typename T>
FASTGEN_HOST_DEVICE inline void gan_term_element(T x, T s, T c, T cs_inv_n, T& loss, T& grad) {
  T y = s * x;
  if constexpr (F == GanFamily::kSoftplus) {
    // e in (0, 1]: no overflow for any y. One division serves both 1/(1+e) (the sigmoid) and
    // t = e/(2+e) (the log1p series): q = 1/((1+e)(2+e)).
    T e = fg_exp(T(0) - fg_abs(y));
    T u = T(1) + e, v = T(2) + e;
    T q = T(1) / (u * v);
    T r = v * q;                                     // 1 / (1 + e)
    loss = c * (fg_max(y, T(0)) + gan_two_atanh(e * u * q));  // softplus(y)
    grad = cs_inv_n * fg_where_nonneg(y, r, e * r);  // sigmoid(y)
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
