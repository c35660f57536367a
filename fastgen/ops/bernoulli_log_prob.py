"""fastgen.ops.bernoulli_log_prob: the Bernoulli log-likelihood of binary data under logits,
fused with its gradient.

Every binary model's likelihood ends in it (the Bernoulli heads of FVSBN, NADE, MADE, PixelCNN,
PixelRNN; a VAE's decoder, k samples per image for the IWAE bound), and PyTorch's
F.binary_cross_entropy_with_logits is slow on the CPU: its log1p runs several times slower
than the rest of the loss (on this project's AMD host, torch 2.14's AVX-512 log1p takes 9 ns a
float, 6x its AVX2 one). The fused kernel reads logits and x once, writes the row sums and the
gradient x - sigmoid(l) (Liger's fused cross-entropy way), with log1p by a short series.

Implementations: "reference" (fastgen.reference.bernoulli_log_prob), "cpp"/"cuda" (the compiled
op fastgen::bernoulli_log_prob) and "triton" (fastgen::bernoulli_log_prob_triton), declared once
in SPEC. The backward only scales the saved gradient by each row's incoming gradient. x is data:
when it requires grad, the public op runs the (differentiable) reference.
"""
import torch

from fastgen.ops._common import OpSpec, check_float, check_like
from fastgen.reference import bernoulli_log_prob as _reference

OP = "bernoulli_log_prob"


def _fake(logits, x, logits_grad):
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if logits_grad else logits.new_empty(0)
    return logits.new_empty(logits.shape[:-1]), grad


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.logits_shape = tuple(inputs[0].shape)
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_log_prob, _grad_grad):
    if ctx.needs_input_grad[1]:
        raise RuntimeError(f"fastgen::{OP}: x requires grad, which the fused op does not give; call "
                           f"fastgen.ops.{OP} (it runs the reference then)")
    if not ctx.needs_input_grad[0] or grad_log_prob is None:
        return None, None, None
    (grad,) = ctx.saved_tensors
    if tuple(grad.shape) != ctx.logits_shape:
        raise RuntimeError(f"fastgen::{OP}: logits requires grad but the forward was called with "
                           "logits_grad False")
    return grad * grad_log_prob.unsqueeze(-1), None, None


def _call_kernel(op, logits, x):
    return op(logits, x, torch.is_grad_enabled() and logits.requires_grad)[0]


SPEC = OpSpec(
    OP, reference=_reference.bernoulli_log_prob, call_kernel=_call_kernel,
    schema="(Tensor logits, Tensor x, bool logits_grad) -> (Tensor log_prob, Tensor grad_logits)",
    fake=_fake, setup_context=_setup_context, make_backward=lambda _: _backward)


def bernoulli_log_prob(logits, x):
    """log p(x) of binary data x under Bernoulli logits, summed over the last dimension:
    logits (..., D), x (..., D) -> (...,) (logits' leading shape), in logits' dtype.

    sum_d x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)) = -F.binary_cross_entropy_with_logits(
    logits, x, reduction="none").sum(-1). x's shape may be a suffix of logits' (leading sample
    dimensions of logits broadcast over it, e.g. logits (k, N, D) of k decoder samples per image
    and x (N, D)); x may hold any values in [0, 1] (soft targets). Exact and finite for finite
    logits of any magnitude. Gradients flow to logits (and to x, through the reference, if it
    requires grad)."""
    check_float(OP, "logits", logits, min_dim=1)
    check_like(OP, "logits", logits, "x", x, same_shape=False)
    if x.dim() < 1 or x.dim() > logits.dim() or x.shape != logits.shape[logits.dim() - x.dim():]:
        raise ValueError(f"fastgen.{OP}: x must have the shape of logits or of its trailing dimensions; "
                         f"got x {tuple(x.shape)} and logits {tuple(logits.shape)}")
    if x.requires_grad and torch.is_grad_enabled():
        return _reference.bernoulli_log_prob(logits, x)
    return SPEC.dispatch(logits.device, logits, x)
