// Input checks of the reparameterize kernels, shared by the CPU and CUDA files.
#pragma once

#include "fastgen_host.h"

namespace fastgen {

inline void check_reparameterize_inputs(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& eps) {
  check_floating(mu, "reparameterize", "mu");
  TORCH_CHECK(mu.dim() >= 1, "fastgen::reparameterize: mu must have at least one dimension");
  check_like(mu, "mu", logvar, "reparameterize", "logvar");
  check_like(mu, "mu", eps, "reparameterize", "eps");
}

inline void check_reparameterize_backward_inputs(const at::Tensor& grad_z, const at::Tensor& grad_kl,
                                                 const at::Tensor& mu, const at::Tensor& logvar,
                                                 const at::Tensor& eps) {
  check_reparameterize_inputs(mu, logvar, eps);
  check_like(mu, "mu", grad_z, "reparameterize_backward", "grad_z");
  check_like(mu, "mu", grad_kl, "reparameterize_backward", "grad_kl", false);
  TORCH_CHECK(grad_kl.sizes() == mu.sizes().slice(0, mu.dim() - 1),
              "fastgen::reparameterize_backward: grad_kl has shape ", grad_kl.sizes(),
              " but kl has shape ", mu.sizes().slice(0, mu.dim() - 1));
}

}  // namespace fastgen
