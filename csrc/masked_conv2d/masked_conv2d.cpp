// Schemas of the masked_conv2d op (kernels: masked_conv2d_cpu.cpp, masked_conv2d_cuda.cu).
// Outputs are channels-last (N, C, H, W) tensors: the kernels work in NHWC, and a stack of
// masked convolutions then passes activations on without a layout copy.
// relu_input: the layer convolves relu(x) (a PixelCNN's ReLU before each conv, fused into the
// kernels' reads of x); the backward's grad_x is then the gradient w.r.t. x itself.
// residual: a tensor of y's shape added to the output (a residual block's skip connection, added
// while the kernels hold the output in cache instead of in a pass of its own). Its gradient is
// grad_y itself, so the backward op does not take it (the autograd wiring hands grad_y on).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def(
      "masked_conv2d(Tensor x, Tensor weight, Tensor? bias, str mask_type, int data_channels, bool relu_input, "
      "Tensor? residual=None) -> Tensor");
  m.def(
      "masked_conv2d_backward(Tensor grad_y, Tensor x, Tensor weight, str mask_type, int data_channels, "
      "bool relu_input, bool x_grad, bool weight_grad, bool bias_grad) "
      "-> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
}
