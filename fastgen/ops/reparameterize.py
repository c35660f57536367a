"""fastgen.ops.reparameterize: reparameterised Gaussian sampling fused with its KL.

Implementations: "reference" (fastgen.reference.reparameterize), "cpp"/"cuda" (the compiled op
fastgen::reparameterize behind the dispatcher) and "triton" (the sibling op
fastgen::reparameterize_triton), declared once in SPEC: one fake kernel, the same backward math,
the choice of implementation. The compiled op's autograd lives in C++
(csrc/reparameterize/reparameterize.cpp): a Python backward would cost more than the kernels at
dispatch-bound sizes. The Triton sibling is a Python custom_op, wired by the spec.
"""
import torch

from fastgen import _ext
from fastgen.ops._common import FLOAT_DTYPES, OpSpec, check_float, check_like
from fastgen.reference import reparameterize as _reference

OP = "reparameterize"


# --- fake kernels (shapes only: torch.compile traces through them) ------------------------
def _fake(mu, logvar, eps):
    return torch.empty_like(mu, memory_format=torch.contiguous_format), mu.new_empty(mu.shape[:-1])


def _fake_backward(grad_z, grad_kl, mu, logvar, eps, eps_requires_grad):
    like = lambda: torch.empty_like(mu, memory_format=torch.contiguous_format)  # noqa: E731
    return like(), like(), (like() if eps_requires_grad else mu.new_empty(0))


# --- autograd -----------------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _make_backward(backward_op):
    def backward(ctx, grad_z, grad_kl):
        mu, logvar, eps = ctx.saved_tensors
        grad_z = torch.zeros_like(mu) if grad_z is None else grad_z
        grad_kl = mu.new_zeros(mu.shape[:-1]) if grad_kl is None else grad_kl
        eps_grad = ctx.needs_input_grad[2]
        dmu, dlogvar, deps = backward_op(grad_z, grad_kl, mu, logvar, eps, eps_grad)
        return dmu, dlogvar, (deps if eps_grad else None)

    return backward


def _call_kernel(op, mu, logvar, eps):
    if (op is SPEC.compiled and not torch.compiler.is_compiling() and type(mu) is torch.Tensor
            and type(logvar) is torch.Tensor and type(eps) is torch.Tensor):
        # eager, plain tensors: the same op through a native binding (see csrc/fastgen.cpp)
        return _ext.native.reparameterize(mu, logvar, eps)
    return op(mu, logvar, eps)


SPEC = OpSpec(
    OP, reference=_reference.reparameterize, call_kernel=_call_kernel, compiled_autograd=False,
    schema="(Tensor mu, Tensor logvar, Tensor eps) -> (Tensor z, Tensor kl)",
    backward_schema="(Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor logvar, Tensor eps, bool eps_requires_grad) "
                    "-> (Tensor grad_mu, Tensor grad_logvar, Tensor grad_eps)",
    fake=_fake, fake_backward=_fake_backward, setup_context=_setup_context, make_backward=_make_backward)


# --- the public op --------------------------------------------------------------------------
def _well_formed(mu, logvar, eps):
    """The common case in one cheap expression (at 128x32 the op costs a few microseconds, so
    the checks must too); anything else goes through the explaining checks."""
    if not (isinstance(mu, torch.Tensor) and isinstance(logvar, torch.Tensor) and isinstance(eps, torch.Tensor)):
        return False
    shape, dtype, device = mu.shape, mu.dtype, mu.device
    return (dtype in FLOAT_DTYPES and len(shape) >= 1 and logvar.shape == shape and eps.shape == shape
            and logvar.dtype == dtype and eps.dtype == dtype and logvar.device == device and eps.device == device)


def reparameterize(mu, logvar, eps=None, *, generator=None):
    """Reparameterised sample and KL: mu, logvar (..., D) -> z (..., D), kl (...,).

    z = mu + exp(logvar / 2) * eps, kl = KL(N(mu, exp(logvar)) || N(0, I)) per row (summed over
    the last dimension). eps=None draws standard normal noise (reproducible with `generator`).
    Gradients flow to mu and logvar through both outputs (and to eps if it requires grad)."""
    if eps is None:
        check_float(OP, "mu", mu, min_dim=1)
        check_like(OP, "mu", mu, "logvar", logvar)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    elif generator is not None:
        raise ValueError(f"fastgen.{OP}: generator is only used when eps is None")
    elif not _well_formed(mu, logvar, eps):  # the checks below say what is wrong
        check_float(OP, "mu", mu, min_dim=1)
        check_like(OP, "mu", mu, "logvar", logvar)
        check_like(OP, "mu", mu, "eps", eps)
    return SPEC.dispatch(mu.device, mu, logvar, eps)
