// Schema of the bernoulli_log_prob op (kernels: bernoulli_log_prob_cpu.cpp,
// bernoulli_log_prob_cuda.cu; math: bernoulli_log_prob.h). With logits_grad false the gradient
// is not computed and an empty (0,) tensor stands in its place. The autograd (scaling the saved
// gradient by the incoming one) is registered by fastgen.ops.bernoulli_log_prob.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def("bernoulli_log_prob(Tensor logits, Tensor x, bool logits_grad) -> (Tensor log_prob, Tensor grad_logits)");
}
