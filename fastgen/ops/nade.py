"""fastgen.ops.nade: the tied-weight NADE layer in O(N D H) time, never materialising (N, D, H).

Implementations: "reference" (fastgen.reference.nade, the cumsum formula), "cpp"/"cuda" (the
compiled op fastgen::nade behind the dispatcher) and "triton" (the sibling op
fastgen::nade_triton). The compiled and Triton ops return, besides the logits, a_last (N, H):
the last step's pre-activation in float64, from which the backward op (the reverse walk over
the steps) recovers every earlier one; it skips v's gradient when v needs none. Both siblings are
declared once, in SPEC (one fake kernel, one autograd wiring, the choice of implementation).
Double backward is not supported (differentiating a gradient raises).
"""
import torch

from fastgen.ops._common import OpSpec, check_float, check_like
from fastgen.reference import nade as _reference

OP = "nade"


# --- fake kernels (shapes only: torch.compile traces through them) ------------------------
def _fake(v, W, c, V, b):
    N, D = v.shape
    return v.new_empty(N, D, V.shape[1]), v.new_empty(N, W.shape[0], dtype=torch.float64)


def _fake_backward(grad_logits, v, W, V, a_last, v_requires_grad):
    N, D = v.shape
    H, L = W.shape[0], V.shape[1]
    return (v.new_empty(N, D), v.new_empty(H, D), v.new_empty(H), v.new_empty(D, L, H), v.new_empty(D, L))


# --- autograd -----------------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    v, W, _c, V, _b = inputs
    _, a_last = output
    ctx.mark_non_differentiable(a_last)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(v, W, V, a_last)


def _make_backward(backward_op):
    def backward(ctx, grad_logits, _grad_a_last):
        if grad_logits is None:
            return None, None, None, None, None
        v, W, V, a_last = ctx.saved_tensors
        grad_v = ctx.needs_input_grad[0]  # a model's inputs need none: the kernel skips its dot products
        gv, gW, gc, gV, gb = backward_op(grad_logits, v, W, V, a_last, grad_v)
        return (gv if grad_v else None), gW, gc, gV, gb

    return backward


SPEC = OpSpec(
    OP, reference=_reference.nade,
    schema="(Tensor v, Tensor W, Tensor c, Tensor V, Tensor b) -> (Tensor logits, Tensor a_last)",
    backward_schema="(Tensor grad_logits, Tensor v, Tensor W, Tensor V, Tensor a_last, bool v_requires_grad) "
                    "-> (Tensor grad_v, Tensor grad_W, Tensor grad_c, Tensor grad_V, Tensor grad_b)",
    fake=_fake, fake_backward=_fake_backward, setup_context=_setup_context, make_backward=_make_backward)


# --- the public op --------------------------------------------------------------------------
def check_nade_inputs(v, W, c, V, b, op=OP):
    """Validate the layer's arguments (shared with the model); returns (N, D, H, L)."""
    check_float(op, "v", v)
    if v.dim() != 2:
        raise ValueError(f"fastgen.{op}: v must be (N, D) inputs in step order; got shape {tuple(v.shape)}")
    N, D = v.shape
    check_like(op, "v", v, "W", W, same_shape=False)
    if W.dim() != 2 or W.shape[1] != D:
        raise ValueError(f"fastgen.{op}: W must have shape (H, D) with D = {D} (v's steps); got {tuple(W.shape)}")
    H = W.shape[0]
    check_like(op, "v", v, "c", c, same_shape=False)
    if tuple(c.shape) != (H,):
        raise ValueError(f"fastgen.{op}: c must have shape (H,) = ({H},); got {tuple(c.shape)}")
    check_like(op, "v", v, "V", V, same_shape=False)
    if V.dim() != 3 or V.shape[0] != D or V.shape[2] != H:
        raise ValueError(f"fastgen.{op}: V must have shape (D, L, H) = ({D}, L, {H}); got {tuple(V.shape)}")
    L = V.shape[1]
    check_like(op, "v", v, "b", b, same_shape=False)
    if tuple(b.shape) != (D, L):
        raise ValueError(f"fastgen.{op}: b must have shape (D, L) = ({D}, {L}); got {tuple(b.shape)}")
    return N, D, H, L


def nade(v, W, c, V, b):
    """NADE layer: v (N, D) inputs in step order, W (H, D), c (H,), V (D, L, H), b (D, L)
    -> logits (N, D, L).

    a_0 = c, a_t = c + sum_{s<t} W[:, s] v_s, h_t = sigmoid(a_t), logits[:, t, l] = V[t, l] . h_t
    + b[t, l]: the conditional logits of step t given the earlier steps (L = 1: a Bernoulli
    logit; L = K: K-level categorical). Differentiable in all five arguments."""
    check_nade_inputs(v, W, c, V, b)
    return SPEC.dispatch(v.device, v, W, c, V, b)
