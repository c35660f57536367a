"""fastgen.ops.discriminator_loss / generator_loss: the GAN losses on logits, fused.

Implementations: "reference" (fastgen.reference.gan_loss), "cpp"/"cuda" (the compiled ops
fastgen::discriminator_loss / fastgen::generator_loss behind the dispatcher, autograd in C++) and
"triton" (the sibling ops fastgen::discriminator_loss_triton / generator_loss_triton), each op
declared once in its spec: one fake kernel and the same backward (scale the saved gradient) for
both siblings, the choice of implementation.

The fused forward reads each logits tensor once and returns the loss together with the gradient
of the loss w.r.t. the logits (Liger's fused cross-entropy way); that gradient is saved, and the
backward only scales it by the incoming gradient (one multiply, no host sync). The gradient is
computed only for the logits that need it (requires_grad under grad mode).
"""
import torch

from fastgen.ops._common import OpSpec, check_float, check_like
from fastgen.reference import gan_loss as _reference
# the one table of GAN kinds (FORMULATIONS re-exported for fastgen.nn.GANLoss)
from fastgen.reference.gan_loss import DISCRIMINATOR_KINDS, FORMULATIONS, GENERATOR_KINDS  # noqa: F401


# --- fake kernels (shapes only: torch.compile traces through them) ------------------------
def _grad_like(x, wanted):
    return torch.empty_like(x, memory_format=torch.contiguous_format) if wanted else x.new_empty(0)


def _fake_discriminator(real_logits, fake_logits, kind, real_grad, fake_grad):
    return (real_logits.new_empty(()), _grad_like(real_logits, real_grad),
            _grad_like(fake_logits, fake_grad))


def _fake_generator(fake_logits, kind, fake_grad):
    return fake_logits.new_empty(()), _grad_like(fake_logits, fake_grad)


# --- autograd: the backward scales the gradient saved by the forward -----------------------
def _setup_context(ctx, inputs, output):
    grads = output[1:]
    ctx.mark_non_differentiable(*grads)
    ctx.set_materialize_grads(False)  # the gradient outputs get no incoming gradient: no zeros
    ctx.save_for_backward(*grads)


def _scaled(ctx, grad_loss, saved, index, name):
    if not ctx.needs_input_grad[index] or grad_loss is None:
        return None
    if tuple(saved.shape) != ctx.saved_shapes[index]:
        raise RuntimeError(f"fastgen gan loss: {name} requires grad but the forward was called "
                           f"with its gradient flag False")
    return saved * grad_loss


def _backward_discriminator(ctx, grad_loss, _grad_real, _grad_fake):
    grad_real, grad_fake = ctx.saved_tensors
    return (_scaled(ctx, grad_loss, grad_real, 0, "real_logits"),
            _scaled(ctx, grad_loss, grad_fake, 1, "fake_logits"), None, None, None)


def _backward_generator(ctx, grad_loss, _grad_fake):
    (grad_fake,) = ctx.saved_tensors
    return _scaled(ctx, grad_loss, grad_fake, 0, "fake_logits"), None, None


def _setup_discriminator(ctx, inputs, output):
    ctx.saved_shapes = (tuple(inputs[0].shape), tuple(inputs[1].shape))
    _setup_context(ctx, inputs, output)


def _setup_generator(ctx, inputs, output):
    ctx.saved_shapes = (tuple(inputs[0].shape),)
    _setup_context(ctx, inputs, output)


def _wants_grad(t):
    return torch.is_grad_enabled() and t.requires_grad


def _call_discriminator(op, real_logits, fake_logits, kind):
    return op(real_logits, fake_logits, kind, _wants_grad(real_logits), _wants_grad(fake_logits))[0]


def _call_generator(op, fake_logits, kind):
    return op(fake_logits, kind, _wants_grad(fake_logits))[0]


# The compiled ops' autograd lives in C++ (csrc/gan_loss/gan_loss.cpp, the same saved-gradient
# scaling): a Python backward would cost more than the kernels at dispatch-bound sizes. The
# Triton siblings are Python custom_ops, wired by the specs. Neither has a backward op.
DISCRIMINATOR_SPEC = OpSpec(
    "discriminator_loss", kernels="gan_loss", reference=_reference.discriminator_loss,
    call_kernel=_call_discriminator, compiled_autograd=False,
    schema="(Tensor real_logits, Tensor fake_logits, str kind, bool real_grad, bool fake_grad) "
           "-> (Tensor loss, Tensor grad_real, Tensor grad_fake)",
    fake=_fake_discriminator, setup_context=_setup_discriminator, make_backward=lambda _: _backward_discriminator)
GENERATOR_SPEC = OpSpec(
    "generator_loss", kernels="gan_loss", reference=_reference.generator_loss,
    call_kernel=_call_generator, compiled_autograd=False,
    schema="(Tensor fake_logits, str kind, bool fake_grad) -> (Tensor loss, Tensor grad_fake)",
    fake=_fake_generator, setup_context=_setup_generator, make_backward=lambda _: _backward_generator)


# --- the public ops -------------------------------------------------------------------------
def _check_kind(op, kind, kinds):
    if not isinstance(kind, str) or kind not in kinds:
        raise ValueError(f"fastgen.{op}: kind must be one of {', '.join(map(repr, kinds))}; "
                         f"got {kind!r}")


def discriminator_loss(real_logits, fake_logits, kind="bce"):
    """The discriminator's loss: real_logits, fake_logits (any shapes, same dtype and device)
    -> 0-dim loss in their dtype.

    "bce":   mean softplus(-real) + mean softplus(fake)   (-mean log D(x) - mean log(1 - D(G(z))))
    "hinge": mean relu(1 - real) + mean relu(1 + fake)
    Means run over all elements of each tensor; the mean of an empty tensor is NaN (as
    torch.mean). Exact and finite for logits of any magnitude."""
    op = "discriminator_loss"
    check_float(op, "real_logits", real_logits)
    check_like(op, "real_logits", real_logits, "fake_logits", fake_logits, same_shape=False)
    _check_kind(op, kind, DISCRIMINATOR_KINDS)
    return DISCRIMINATOR_SPEC.dispatch(real_logits.device, real_logits, fake_logits, kind)


def generator_loss(fake_logits, kind="nonsaturating"):
    """The generator's loss: fake_logits (any shape) -> 0-dim loss in its dtype.

    "minimax": -mean softplus(fake) (the saturating mean log(1 - D(G(z))));
    "nonsaturating": mean softplus(-fake) (-mean log D(G(z))); "hinge": -mean fake.
    The mean of an empty tensor is NaN (as torch.mean). Exact and finite for any logits."""
    op = "generator_loss"
    check_float(op, "fake_logits", fake_logits)
    _check_kind(op, kind, GENERATOR_KINDS)
    return GENERATOR_SPEC.dispatch(fake_logits.device, fake_logits, kind)
