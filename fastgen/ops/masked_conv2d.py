"""fastgen.ops.masked_conv2d: the PixelCNN masked convolution, skipping the mask's zero taps.

y = conv2d(relu(x) if relu_input else x, weight * mask, bias, padding=(kh // 2, kw // 2)) (+ residual)
with the PixelCNN mask of type
"A" or "B" over `data_channels` colour groups (fastgen.reference.masked_conv2d). The mask is
never materialised on the weight: the kernels only visit the taps above and left of the centre
(plus the centre's allowed channel pairs), about half of a square kernel, and the gradient of
every masked weight is exactly zero.

Implementations: "reference", "cpp"/"cuda" (fastgen::masked_conv2d behind the dispatcher) and
"triton" (the sibling op fastgen::masked_conv2d_triton), declared once in SPEC (one fake kernel,
one autograd wiring, the choice of implementation).
"""
import torch
from torch._prims_common import suggest_memory_format

from fastgen.ops._common import OpSpec, check_float, check_like
from fastgen.reference import masked_conv2d as _reference

OP = "masked_conv2d"


# --- fake kernels ---------------------------------------------------------------------------
# The kernels work in NHWC: activations and input gradients come back channels-last.
def _channels_last(t, shape):
    return torch.empty(shape, dtype=t.dtype, device=t.device, memory_format=torch.channels_last)


def _fake(x, weight, bias, mask_type, data_channels, relu_input, residual=None):
    return _channels_last(x, (x.shape[0], weight.shape[0], x.shape[2], x.shape[3]))


def _fake_backward(grad_y, x, weight, mask_type, data_channels, relu_input, x_grad, weight_grad, bias_grad):
    return (_channels_last(x, x.shape) if x_grad else x.new_empty(0),
            torch.empty_like(weight, memory_format=torch.contiguous_format) if weight_grad
            else weight.new_empty(0),
            weight.new_empty(weight.shape[0]) if bias_grad else weight.new_empty(0))


# --- autograd -----------------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    x, weight, bias, mask_type, data_channels, relu_input, residual = inputs
    ctx.save_for_backward(x, weight)
    ctx.mask_type, ctx.data_channels, ctx.has_bias = mask_type, data_channels, bias is not None
    ctx.relu_input, ctx.has_residual = relu_input, residual is not None


def _make_backward(backward_op):
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx, gw, gb = backward_op(grad_y, x, weight, ctx.mask_type, ctx.data_channels, ctx.relu_input,
                                 need[0], need[1], bool(ctx.has_bias and need[2]))
        # d(y)/d(residual) is the identity: grad_y itself, no copy
        return (gx if need[0] else None, gw if need[1] else None,
                gb if (ctx.has_bias and need[2]) else None, None, None, None,
                grad_y if (ctx.has_residual and need[6]) else None)

    return backward


# --- the public op --------------------------------------------------------------------------
def check_args(x, weight, bias, mask_type, data_channels, relu_input=False, residual=None):
    check_float(OP, "x", x)
    if x.dim() != 4:
        raise ValueError(f"fastgen.{OP}: x must be (N, C, H, W); got shape {tuple(x.shape)}")
    check_like(OP, "x", x, "weight", weight, same_shape=False)
    if weight.dim() != 4:
        raise ValueError(f"fastgen.{OP}: weight must be (Cout, Cin, kh, kw); got shape "
                         f"{tuple(weight.shape)}")
    cout, cin, kh, kw = weight.shape
    if cin != x.shape[1]:
        raise ValueError(f"fastgen.{OP}: weight has {cin} input channels but x has {x.shape[1]}")
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"fastgen.{OP}: weight's kernel size must be odd; got ({kh}, {kw})")
    if bias is not None:
        check_like(OP, "x", x, "bias", bias, same_shape=False)
        if tuple(bias.shape) != (cout,):
            raise ValueError(f"fastgen.{OP}: bias must have shape ({cout},); got {tuple(bias.shape)}")
    if mask_type not in _reference.MASK_TYPES:
        raise ValueError(f"fastgen.{OP}: mask_type must be 'A' or 'B'; got {mask_type!r}")
    if (not isinstance(data_channels, int) or isinstance(data_channels, bool) or data_channels < 1
            or data_channels > min(cin, cout)):
        raise ValueError(f"fastgen.{OP}: data_channels must be an int in [1, min(Cin, Cout) = "
                         f"{min(cin, cout)}]; got {data_channels!r}")
    if not isinstance(relu_input, bool):
        raise ValueError(f"fastgen.{OP}: relu_input must be a bool; got {relu_input!r}")
    if residual is not None:
        check_like(OP, "x", x, "residual", residual, same_shape=False)
        y_shape = (x.shape[0], cout, x.shape[2], x.shape[3])
        if tuple(residual.shape) != y_shape:
            raise ValueError(f"fastgen.{OP}: residual must have the output's shape {y_shape}; got "
                             f"{tuple(residual.shape)}")


def _vendor(x, weight, bias, mask_type, data_channels, relu_input, residual=None):
    """F.conv2d on where(mask, W, 0): a select, so masked taps contribute exactly 0 (even inf/NaN
    weights) and get exactly-zero gradients; the output in F.conv2d's memory format."""
    cout, cin, kh, kw = weight.shape
    mask = _reference.build_mask(cout, cin, kh, kw, mask_type, data_channels, torch.bool, weight.device)
    masked = torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
    x = torch.relu(x) if relu_input else x
    y = torch.nn.functional.conv2d(x, masked, bias, padding=(kh // 2, kw // 2))
    return y if residual is None else y + residual


# On CUDA tensors "auto" runs cuDNN (F.conv2d) on the pre-masked weight (_vendor): tensor cores;
# our direct convolution is SIMT. "cuda" / "triton" stay selectable by name.
SPEC = OpSpec(
    OP, reference=_reference.masked_conv2d, gpu_default="vendor", vendor=_vendor, output=None,
    schema="(Tensor x, Tensor weight, Tensor? bias, str mask_type, int data_channels, bool relu_input, "
           "Tensor? residual=None) -> Tensor",
    backward_schema="(Tensor grad_y, Tensor x, Tensor weight, str mask_type, int data_channels, bool relu_input, "
                    "bool x_grad, bool weight_grad, bool bias_grad) "
                    "-> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)",
    fake=_fake, fake_backward=_fake_backward, setup_context=_setup_context, make_backward=_make_backward)


def masked_conv2d(x, weight, bias=None, mask_type="B", data_channels=1, relu_input=False, residual=None):
    """PixelCNN masked convolution, same-size output.

    x: (N, Cin, H, W), weight: (Cout, Cin, kh, kw) with kh, kw odd, bias: (Cout,) or None
    -> (N, Cout, H, W), in x's memory format as F.conv2d (channels-last for channels-last x, else
    contiguous). mask_type "A" excludes the centre tap (between equal colour groups),
    "B" includes it; data_channels: number of colour groups (R -> G -> B) the channels split into.
    relu_input: convolve relu(x) instead of x (the ReLU fused into the kernels' reads of x and,
    backward, into their write of grad_x: no separate ReLU pass over x or its gradient).
    residual: None or a tensor of the output's shape (N, Cout, H, W) added to it, y = conv + bias +
    residual (a residual block's skip connection, added while the kernel holds the output block in
    cache; its gradient is grad_y itself)."""
    check_args(x, weight, bias, mask_type, data_channels, relu_input, residual)
    y = SPEC.dispatch(x.device, x, weight, bias, mask_type, data_channels, relu_input, residual)
    # The kernels return channels-last; every impl hands back the layout F.conv2d gives, by ATen's
    # rule on x's strides (suggest_memory_format, which also tells a channels-last x of one
    # channel from a contiguous one): channels-last for a channels-last x (a stack of layers fed
    # channels-last passes on without copies), else contiguous NCHW (one copy of the output)
    return y.contiguous(memory_format=suggest_memory_format(x))
