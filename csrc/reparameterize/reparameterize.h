// Reparameterised Gaussian sampling fused with its KL to the standard normal.
//
//   s  = exp(logvar / 2)
//   z  = mu + s * eps
//   kl = 1/2 * sum_d (mu^2 + s^2 - 1 - logvar)          KL(N(mu, s^2) || N(0, 1)) per row
// backward, with gz = dL/dz and gk = dL/dkl (one value per row):
//   dmu     = gz + gk * mu
//   dlogvar = gz * eps * s / 2 + gk * (s^2 - 1) / 2
//   deps    = gz * s
// T is float/double (GPU and CPU tail) or at::vec::Vectorized<float/double> (CPU body).
#pragma once

#include "fastgen_math.h"

namespace fastgen {

template <typename T>
FASTGEN_HOST_DEVICE inline void reparameterize_element(T mu, T logvar, T eps, T& z, T& kl_term) {
  T s = fg_exp(logvar * T(0.5));
  z = mu + s * eps;
  kl_term = mu * mu + s * s - T(1) - logvar;  // the row sum is halved once, at the end
}

template <typename T>
FASTGEN_HOST_DEVICE inline void reparameterize_backward_element(T gz, T gk, T mu, T logvar, T eps,
                                                                T& dmu, T& dlogvar, T& deps) {
  T s = fg_exp(logvar * T(0.5));
  dmu = gz + gk * mu;
  dlogvar = T(0.5) * (gz * eps * s + gk * (s * s - T(1)));
  deps = gz * s;
}

}  // namespace fastgen
