"""fastgen.ops.row_lstm_scan: the whole Row LSTM recurrence (all rows) in one call.

Implementations: "reference" (fastgen.reference.row_lstm_scan, the loop over rows), "cpp"/"cuda"
(the compiled op fastgen::row_lstm_scan behind the dispatcher) and "triton" (the sibling op
fastgen::row_lstm_scan_triton). The compiled and Triton ops return, besides the hidden states,
the cell states and activated gates in a row-major workspace layout, (H, h, B, W) and
(H, 4h, B, W), in the accumulation dtype (float32 for bfloat16 inputs); the backward op (the
reverse scan) consumes them. Both siblings are declared once, in SPEC (one fake kernel, one
autograd wiring, the choice of implementation).
"""
import torch

from fastgen.ops._common import OpSpec, check_float, check_like
from fastgen.reference import row_lstm_scan as _reference

OP = "row_lstm_scan"


# --- fake kernels (shapes only: torch.compile traces through them) ------------------------
def _acc_dtype(dtype):
    return torch.float32 if dtype == torch.bfloat16 else dtype


def _fake(input_gates, weight_ss, bias):
    B, four_h, H, W = input_gates.shape
    h = four_h // 4
    acc = _acc_dtype(input_gates.dtype)
    return (input_gates.new_empty(B, h, H, W), input_gates.new_empty(H, h, B, W, dtype=acc),
            input_gates.new_empty(H, four_h, B, W, dtype=acc))


def _fake_backward(grad_hidden, weight_ss, hidden, cell, gates, bias_requires_grad):
    B, h, H, W = hidden.shape
    return (hidden.new_empty(B, 4 * h, H, W), torch.empty_like(weight_ss, memory_format=torch.contiguous_format),
            weight_ss.new_empty(4 * h if bias_requires_grad else 0))


# --- autograd -----------------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    _, weight_ss, bias = inputs
    hidden, cell, gates = output
    ctx.mark_non_differentiable(cell, gates)
    # no zero-filled gradients for the workspaces (and for an unused hidden): the backward never
    # reads them, and filling the (H, 4h, B, W) gates alone costs about a tenth of the backward
    ctx.set_materialize_grads(False)
    ctx.has_bias = bias is not None
    ctx.save_for_backward(weight_ss, hidden, cell, gates)


def _make_backward(backward_op):
    def backward(ctx, grad_hidden, _grad_cell, _grad_gates):
        weight_ss, hidden, cell, gates = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden) if grad_hidden is None else grad_hidden
        bias_grad = ctx.has_bias and ctx.needs_input_grad[2]
        gx, gw, gb = backward_op(grad_hidden, weight_ss, hidden, cell, gates, bias_grad)
        return gx, gw, (gb if bias_grad else None)

    return backward


SPEC = OpSpec(
    OP, reference=_reference.row_lstm_scan,
    schema="(Tensor input_gates, Tensor weight_ss, Tensor? bias) -> (Tensor hidden, Tensor cell, Tensor gates)",
    backward_schema="(Tensor grad_hidden, Tensor weight_ss, Tensor hidden, Tensor cell, Tensor gates, "
                    "bool bias_requires_grad) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)",
    fake=_fake, fake_backward=_fake_backward, setup_context=_setup_context, make_backward=_make_backward)


# --- the public op --------------------------------------------------------------------------
def check_row_lstm_inputs(input_gates, weight_ss, bias, op=OP):
    """Validate the scan's arguments (shared with the modules); returns h."""
    check_float(op, "input_gates", input_gates)
    if input_gates.dim() != 4:
        raise ValueError(f"fastgen.{op}: input_gates must be (B, 4h, H, W); got shape "
                         f"{tuple(input_gates.shape)}")
    four_h = input_gates.shape[1]
    if four_h == 0 or four_h % 4:
        raise ValueError(f"fastgen.{op}: input_gates must have 4h channels (gates i, f, g, o); "
                         f"got {four_h} channels")
    h = four_h // 4
    check_like(op, "input_gates", input_gates, "weight_ss", weight_ss, same_shape=False)
    if tuple(weight_ss.shape) != (four_h, h, 3):
        raise ValueError(f"fastgen.{op}: weight_ss must have shape (4h, h, 3) = {(four_h, h, 3)} "
                         f"for input_gates with {four_h} channels; got {tuple(weight_ss.shape)}")
    if bias is not None:
        check_like(op, "input_gates", input_gates, "bias", bias, same_shape=False)
        if tuple(bias.shape) != (four_h,):
            raise ValueError(f"fastgen.{op}: bias must have shape ({four_h},); got {tuple(bias.shape)}")
    return h


def row_lstm_scan(input_gates, weight_ss, bias=None):
    """Row LSTM scan: input_gates (B, 4h, H, W), weight_ss (4h, h, 3), bias (4h,) or None
    -> hidden (B, h, H, W).

    Row by row from the top with zero initial state: the gates of row r are input_gates[:, :, r]
    plus the kernel-3 convolution (padding 1) of the previous row's hidden state with weight_ss
    plus bias, in torch.nn.LSTM order (i, f, g, o); c_r = f c_{r-1} + i g, h_r = o tanh(c_r).
    Differentiable in all three arguments."""
    check_row_lstm_inputs(input_gates, weight_ss, bias)
    return SPEC.dispatch(input_gates.device, input_gates, weight_ss, bias)
