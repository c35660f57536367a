// Schemas of the fused GAN losses (kernels: gan_loss_cpu.cpp, gan_loss_cuda.cu).
// Each forward returns the loss and the gradient of the loss w.r.t. each logits tensor (the
// backward only scales it); with real_grad/fake_grad false that gradient is not computed and
// an empty (0,) tensor is returned in its place.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def(
      "discriminator_loss(Tensor real_logits, Tensor fake_logits, str kind, bool real_grad, "
      "bool fake_grad) -> (Tensor loss, Tensor grad_real, Tensor grad_fake)");
  m.def("generator_loss(Tensor fake_logits, str kind, bool fake_grad) -> (Tensor loss, Tensor grad_fake)");
}
