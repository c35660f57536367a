// Schemas of the nade op (kernels: nade_cpu.cpp, nade_cuda.cu).
//
// The forward returns, besides the logits (N, D, L), a_last (N, H): the last step's
// pre-activation a_{D-1} = c + sum_{s<D-1} W[:, s] v_s, in float64 whatever the input dtype (the
// running sum is kept in float64, as torch.cumsum does for float32 on the CPU). The backward
// runs the steps in reverse from it, recovering a_{t-1} = a_t - W[:, t-1] v_{t-1}, so nothing of
// size (N, D, H) is ever stored. v_requires_grad = false skips v's gradient (returned as zeros): a model's
// inputs need none, and it costs a dot product per (example, step).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def("nade(Tensor v, Tensor W, Tensor c, Tensor V, Tensor b) -> (Tensor logits, Tensor a_last)");
  m.def(
      "nade_backward(Tensor grad_logits, Tensor v, Tensor W, Tensor V, Tensor a_last, bool v_requires_grad) -> "
      "(Tensor grad_v, Tensor grad_W, Tensor grad_c, Tensor grad_V, Tensor grad_b)");
}
