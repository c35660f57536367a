// Schemas of the reparameterize op (kernels: reparameterize_cpu.cpp, reparameterize_cuda.cu).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def("reparameterize(Tensor mu, Tensor logvar, Tensor eps) -> (Tensor z, Tensor kl)");
  m.def(
      "reparameterize_backward(Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor logvar, "
      "Tensor eps, bool eps_requires_grad) -> (Tensor grad_mu, Tensor grad_logvar, Tensor grad_eps)");
}
