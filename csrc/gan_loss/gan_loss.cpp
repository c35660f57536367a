// Schemas of the fused GAN losses (kernels: gan_loss_cpu.cpp, gan_loss_cuda.cu) and their
// autograd, in C++ (as reparameterize): at a dispatch-bound size a Python backward would cost
// more than the kernels.
//
// Each forward returns the loss and the gradient of the loss w.r.t. each logits tensor; with
// real_grad/fake_grad false that gradient is not computed and an empty (0,) tensor stands in its
// place. The autograd node saves those gradients and its backward only scales them by the
// incoming gradient of the loss (Liger's fused cross-entropy way).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

namespace fastgen {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using DiscriminatorSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                        c10::string_view, bool, bool);
using GeneratorSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::string_view, bool);

// Whether t is a real CPU scalar equal to 1: read on the host, which is no device sync for a CPU
// tensor; never under tracing (fake, functional or Python-dispatch tensors, or a dispatch mode
// active), where its value is unknown and reading it would be a data-dependent guard.
bool is_exactly_one(const at::Tensor& t) {
  if (!t.device().is_cpu() || t.numel() != 1) return false;
  const auto keys = t.key_set();
  if (keys.has(c10::DispatchKey::Python) || keys.has(c10::DispatchKey::Functionalize)) return false;
  if (c10::impl::TorchDispatchModeTLS::any_modes_set() || !t.has_storage()) return false;
  return t.item<double>() == 1.0;
}

// grad_loss * saved, or undefined when the input needs no gradient. A gradient asked of a
// forward run with its flag off is an error, never a wrong answer; so is a double backward (the
// saved gradient is a constant here, so its own derivative would silently be lost).
// Out of place: the saved gradients are also the op's gradient outputs, which a caller may hold
// (scaling them in place, as Liger does, would change those outputs under the caller's feet).
at::Tensor scaled(AutogradContext* ctx, const char* op, size_t index, const at::Tensor& grad_loss,
                  const at::Tensor& saved, const char* name) {
  if (!ctx->needs_input_grad(index) || !grad_loss.defined()) return at::Tensor();
  const auto shape = ctx->saved_data[name].toIntVector();
  TORCH_CHECK(saved.sizes() == c10::IntArrayRef(shape), "fastgen gan loss: ", name,
              " requires grad but the forward was called with its gradient flag False");
  // (the wording of fastgen/ops/_common.py's double_backward_error, as for every fastgen op)
  TORCH_CHECK(!at::GradMode::is_enabled(), "double backward is not supported by fastgen.", op,
              " (its gradient was taken with create_graph=True, but the fused kernels save the gradient "
              "as a constant); use fastgen.use_impl('reference') for it");
  // loss.backward() on a CPU loss, the common case: the incoming gradient is exactly 1 (read on
  // the host, no device sync for a CPU tensor), so the saved gradient is the answer and is handed
  // on without a copy. Autograd treats gradients as read-only, and AccumulateGrad copies one that
  // something else still holds (a retained graph, a caller holding the op's outputs) instead of
  // adopting it; only a caller that writes in place into a gradient returned by
  // torch.autograd.grad(..., retain_graph=True) would see the saved one change.
  if (is_exactly_one(grad_loss)) return saved;
  return saved * grad_loss;
}

class DiscriminatorLossFunction : public torch::autograd::Function<DiscriminatorLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& real, const at::Tensor& fake,
                               const std::string& kind, bool real_grad, bool fake_grad) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fastgen::discriminator_loss", "")
                         .typed<DiscriminatorSig>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad_real, grad_fake] = op.call(real, fake, kind, real_grad, fake_grad);
    ctx->saved_data["real_logits"] = real.sizes().vec();
    ctx->saved_data["fake_logits"] = fake.sizes().vec();
    ctx->save_for_backward({grad_real, grad_fake});
    ctx->mark_non_differentiable({grad_real, grad_fake});
    ctx->set_materialize_grads(false);  // the gradient outputs get no incoming gradient: no zeros
    return {loss, grad_real, grad_fake};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    return {scaled(ctx, "discriminator_loss", 0, grads[0], saved[0], "real_logits"),
            scaled(ctx, "discriminator_loss", 1, grads[0], saved[1], "fake_logits"),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class GeneratorLossFunction : public torch::autograd::Function<GeneratorLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& fake, const std::string& kind,
                               bool fake_grad) {
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("fastgen::generator_loss", "").typed<GeneratorSig>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad_fake] = op.call(fake, kind, fake_grad);
    ctx->saved_data["fake_logits"] = fake.sizes().vec();
    ctx->save_for_backward({grad_fake});
    ctx->mark_non_differentiable({grad_fake});
    ctx->set_materialize_grads(false);
    return {loss, grad_fake};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    return {scaled(ctx, "generator_loss", 0, grads[0], saved[0], "fake_logits"), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_loss_autograd(const at::Tensor& real,
                                                                           const at::Tensor& fake,
                                                                           c10::string_view kind, bool real_grad,
                                                                           bool fake_grad) {
  auto out = DiscriminatorLossFunction::apply(real, fake, std::string(kind), real_grad, fake_grad);
  return {out[0], out[1], out[2]};
}

std::tuple<at::Tensor, at::Tensor> generator_loss_autograd(const at::Tensor& fake, c10::string_view kind,
                                                           bool fake_grad) {
  auto out = GeneratorLossFunction::apply(fake, std::string(kind), fake_grad);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_FRAGMENT(fastgen, m) {
  m.def(
      "discriminator_loss(Tensor real_logits, Tensor fake_logits, str kind, bool real_grad, "
      "bool fake_grad) -> (Tensor loss, Tensor grad_real, Tensor grad_fake)");
  m.def("generator_loss(Tensor fake_logits, str kind, bool fake_grad) -> (Tensor loss, Tensor grad_fake)");
}

TORCH_LIBRARY_IMPL(fastgen, Autograd, m) {
  m.impl("discriminator_loss", &fastgen::discriminator_loss_autograd);
  m.impl("generator_loss", &fastgen::generator_loss_autograd);
}
