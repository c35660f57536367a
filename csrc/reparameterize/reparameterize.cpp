// Schemas of the reparameterize op (kernels: reparameterize_cpu.cpp, reparameterize_cuda.cu)
// and its autograd, in C++: at a dispatch-bound size (128x32) a Python backward costs more than
// the kernels, so the backward node calls reparameterize_backward without entering Python.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace fastgen {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> call_forward(const at::Tensor& mu, const at::Tensor& logvar,
                                                const at::Tensor& eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgen::reparameterize", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&)>();
  return op.call(mu, logvar, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(const at::Tensor& gz, const at::Tensor& gk,
                                                             const at::Tensor& mu, const at::Tensor& logvar,
                                                             const at::Tensor& eps, bool eps_grad) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgen::reparameterize_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, bool)>();
  return op.call(gz, gk, mu, logvar, eps, eps_grad);
}

// The backward op under create_graph=True: a node whose own backward raises, so a double
// backward through reparameterize is a clear error instead of silent zeros (the backward op has
// no derivative of its own). Only built when grad mode is on inside the backward, i.e. under
// create_graph=True: a plain backward calls the op directly and pays nothing.
class ReparameterizeBackwardFunction : public torch::autograd::Function<ReparameterizeBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& gz, const at::Tensor& gk,
                               const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& eps,
                               bool eps_grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [dmu, dlogvar, deps] = call_backward(gz, gk, mu, logvar, eps, eps_grad);
    return {dmu, dlogvar, deps};
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "double backward is not supported by fastgen.reparameterize (its gradient was taken "
                "with create_graph=True and then differentiated); use fastgen.use_impl('reference') for it");
  }
};

class ReparameterizeFunction : public torch::autograd::Function<ReparameterizeFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& logvar,
                               const at::Tensor& eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [z, kl] = call_forward(mu, logvar, eps);
    ctx->save_for_backward({mu, logvar, eps});
    return {z, kl};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& mu = saved[0];
    at::Tensor gz = grads[0].defined() ? grads[0] : at::zeros_like(mu);
    at::Tensor gk = grads[1].defined() ? grads[1] : at::zeros(mu.sizes().slice(0, mu.dim() - 1), mu.options());
    const bool eps_grad = ctx->needs_input_grad(2);
    if (at::GradMode::is_enabled()) {  // create_graph=True
      auto out = ReparameterizeBackwardFunction::apply(gz, gk, mu, saved[1], saved[2], eps_grad);
      return {out[0], out[1], eps_grad ? out[2] : at::Tensor()};
    }
    auto [dmu, dlogvar, deps] = call_backward(gz, gk, mu, saved[1], saved[2], eps_grad);
    return {dmu, dlogvar, eps_grad ? deps : at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> reparameterize_autograd(const at::Tensor& mu, const at::Tensor& logvar,
                                                           const at::Tensor& eps) {
  auto out = ReparameterizeFunction::apply(mu, logvar, eps);
  return {out[0], out[1]};
}

}  // namespace
// The op through the whole dispatcher (autograd included), for fastgen._C.reparameterize: the
// eager fast path of fastgen.ops.reparameterize, which skips torch.ops' boxed argument parsing
// (about 1.5 us of a 25 us forward+backward at 128x32).
std::tuple<at::Tensor, at::Tensor> reparameterize_call(const at::Tensor& mu, const at::Tensor& logvar,
                                                       const at::Tensor& eps) {
  return call_forward(mu, logvar, eps);
}

}  // namespace fastgen

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def("reparameterize(Tensor mu, Tensor logvar, Tensor eps) -> (Tensor z, Tensor kl)");
  m.def(
      "reparameterize_backward(Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor logvar, "
      "Tensor eps, bool eps_requires_grad) -> (Tensor grad_mu, Tensor grad_logvar, Tensor grad_eps)");
}

TORCH_LIBRARY_IMPL(fastgen, Autograd, m) {
  m.impl("reparameterize", &fastgen::reparameterize_autograd);
}
