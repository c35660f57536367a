"""MaskedConv2d: the PixelCNN masked convolution as a drop-in module (fastgen.ops.masked_conv2d)."""
import math

import torch
from torch import nn

from fastgen.ops.masked_conv2d import masked_conv2d
from fastgen.reference.masked_conv2d import build_mask


def _pair(kernel_size):
    ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if len(ks) != 2 or not all(isinstance(k, int) and k > 0 and k % 2 == 1 for k in ks):
        raise ValueError(f"kernel_size must be an odd positive int or a pair of them; got {kernel_size!r}")
    return ks


class MaskedConv2d(nn.Module):
    """Same-size masked convolution: x (N, in_channels, H, W) -> (N, out_channels, H, W).

    Output pixel (h, w) sees the input rows above h and the pixels left of w in row h; the
    centre pixel is excluded (mask_type "A") or included (mask_type "B"). With data_channels=3
    the channels split into R, G, B groups and at the centre group g sees groups < g ("A") or
    <= g ("B"). The weight is stored unmasked and never mutated; masked entries get zero grads.
    relu_input=True: the layer computes conv(relu(x)), the ReLU fused into the kernel (a PixelCNN's
    ReLU before each conv, without a separate pass over the activation and its gradient)."""

    def __init__(self, in_channels, out_channels, kernel_size, mask_type="A", data_channels=1, bias=True,
                 relu_input=False):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B'; got {mask_type!r}")
        if not isinstance(data_channels, int) or not 1 <= data_channels <= min(in_channels, out_channels):
            raise ValueError(f"data_channels must be an int in [1, min(in_channels, out_channels)]; "
                             f"got {data_channels!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        if not isinstance(relu_input, bool):
            raise ValueError(f"relu_input must be a bool; got {relu_input!r}")
        self.mask_type, self.data_channels, self.relu_input = mask_type, data_channels, relu_input
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        # fan-in counts only the taps the mask keeps, so deep stacks keep their scale.
        kh, kw = self.kernel_size
        taps = (kh // 2) * kw + kw // 2 + 1
        bound = 1.0 / math.sqrt(self.in_channels * taps)
        nn.init.uniform_(self.weight, -bound * math.sqrt(3.0), bound * math.sqrt(3.0))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def mask(self):
        """(out, in, kh, kw) 0/1 mask this layer applies (built on demand, never stored in the weight)."""
        return build_mask(self.out_channels, self.in_channels, *self.kernel_size, self.mask_type,
                          self.data_channels, self.weight.dtype, self.weight.device)

    def masked_weight(self):
        return self.weight * self.mask()

    def forward(self, x, residual=None):
        """x: (N, in_channels, H, W) -> (N, out_channels, H, W); residual: None or a tensor of the
        output's shape added to it (fused into the kernel's write of the output)."""
        return masked_conv2d(x, self.weight, self.bias, self.mask_type, self.data_channels, self.relu_input,
                             residual)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"mask_type={self.mask_type!r}, data_channels={self.data_channels}, "
                f"bias={self.bias is not None}" + (", relu_input=True" if self.relu_input else ""))
