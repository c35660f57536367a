"""fastgen.ops.reparameterize: reparameterised Gaussian sampling fused with its KL.

Implementations: "reference" (fastgen.reference.reparameterize), "cpp"/"cuda" (the compiled op
fastgen::reparameterize behind the dispatcher) and "triton" (the sibling op
fastgen::reparameterize_triton). They share one fake kernel and the same backward math. The
compiled op's autograd lives in C++ (csrc/reparameterize/reparameterize.cpp): a Python backward
would cost more than the kernels at dispatch-bound sizes. The Triton sibling is a Python
custom_op, wired with register_autograd.
"""
import torch

from fastgen import _ext, _impl
from fastgen.ops._common import call_backward, FLOAT_DTYPES, check_float, check_like, register_siblings
from fastgen.reference import reparameterize as _reference

OP = "reparameterize"
GPU_DEFAULT = "cuda"


# --- Triton sibling ops -------------------------------------------------------------------
@torch.library.custom_op("fastgen::reparameterize_triton", mutates_args=())
def _reparameterize_triton(mu: torch.Tensor, logvar: torch.Tensor,
                           eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from fastgen.kernels.reparameterize import reparameterize_forward

    return reparameterize_forward(mu, logvar, eps)


@torch.library.custom_op("fastgen::reparameterize_backward_triton", mutates_args=())
def _reparameterize_backward_triton(
        grad_z: torch.Tensor, grad_kl: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
        eps: torch.Tensor, eps_requires_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from fastgen.kernels.reparameterize import reparameterize_backward

    return reparameterize_backward(grad_z, grad_kl, mu, logvar, eps, eps_requires_grad)


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
        dmu, dlogvar, deps = call_backward(OP, backward_op, grad_z, grad_kl, mu, logvar, eps, eps_grad)
        return dmu, dlogvar, (deps if eps_grad else None)

    return backward


register_siblings("reparameterize", _fake, _fake_backward, _setup_context, _make_backward,
                  compiled_autograd=False)


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
    impl = _impl.select(OP, mu.device, GPU_DEFAULT)
    if impl == "cpp" or impl == "cuda":
        if (type(mu) is torch.Tensor and type(logvar) is torch.Tensor and type(eps) is torch.Tensor
                and not torch.compiler.is_compiling()):
            # eager, plain tensors: the same op through a native binding (see csrc/fastgen.cpp)
            return _ext.native.reparameterize(mu, logvar, eps)
        return torch.ops.fastgen.reparameterize.default(mu, logvar, eps)
    if impl == "triton":
        return torch.ops.fastgen.reparameterize_triton.default(mu, logvar, eps)
    return _reference.reparameterize(mu, logvar, eps)
