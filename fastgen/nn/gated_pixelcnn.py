"""The vertical and horizontal stacks of Gated PixelCNN (van den Oord et al. 2016), no blind spot.

The vertical stack at (r, c) sees every input row <= r (a dense (k//2 + 1) x k kernel over rows
r - k//2 .. r); it reaches the horizontal stack shifted down one row, so there it carries rows
< r only. The horizontal stack is a masked (1 x k) convolution over row r, left of c plus the
centre (type "A" in the first layer, "B" after), with the colour-group mask at the centre.
Gate: tanh(a) * sigmoid(b) with a, b the even and odd channels of a 2h-channel pre-activation
(so that with colour groups a pair always shares a group: needs hidden % data_channels == 0).
"""
import torch
import torch.nn.functional as F
from torch import nn

from fastgen.nn.masked_conv2d import MaskedConv2d


def gate(t):
    """(N, 2h, ...) -> (N, h, ...): tanh(even channels) * sigmoid(odd channels)."""
    return torch.tanh(t[:, 0::2]) * torch.sigmoid(t[:, 1::2])


def shift_down(t):
    """Shift a map (N, C, H, W) one row down (row 0 becomes zeros)."""
    return F.pad(t, (0, 0, 1, -1))


class VerticalStackConv(nn.Module):
    """Pre-activation of the vertical stack: (N, Cin, H, W) -> (N, out, H, W); output (r, c)
    sees input rows r - k//2 .. r, columns c - k//2 .. c + k//2 (a dense kernel: no zero taps)."""

    def __init__(self, in_channels, out_channels, kernel_size):
        super().__init__()
        self.pad = kernel_size // 2
        self.conv = nn.Conv2d(in_channels, out_channels, (self.pad + 1, kernel_size))

    def forward(self, x):
        return self.conv(F.pad(x, (self.pad, self.pad, self.pad, 0)))


class HorizontalStackConv(MaskedConv2d):
    """Pre-activation of the horizontal stack: the (1 x k) masked convolution over the row."""

    def __init__(self, in_channels, out_channels, kernel_size, mask_type, data_channels=1):
        super().__init__(in_channels, out_channels, (1, kernel_size), mask_type, data_channels)


class GatedPixelCNNLayer(nn.Module):
    """One gated layer: (v, h) -> (v', h'), both (N, hidden, H, W) (the first layer takes the
    image (N, C, H, W) for both and uses the type-A horizontal mask and no residual).

      v_pre = vconv(v);  v' = gate(v_pre)
      h'    = [h +] h_out(gate(hconv(h) + v_to_h(shift_down(v_pre))))"""

    def __init__(self, in_channels, hidden_channels, kernel_size=3, first=False, data_channels=1):
        super().__init__()
        if hidden_channels % data_channels:
            raise ValueError(f"hidden_channels ({hidden_channels}) must be a multiple of "
                             f"data_channels ({data_channels})")
        self.first = first
        two_h = 2 * hidden_channels
        self.vconv = VerticalStackConv(in_channels, two_h, kernel_size)
        self.hconv = HorizontalStackConv(in_channels, two_h, kernel_size, "A" if first else "B", data_channels)
        self.v_to_h = nn.Conv2d(two_h, two_h, 1)
        self.h_out = MaskedConv2d(hidden_channels, hidden_channels, 1, "B", data_channels)

    def forward(self, v, h):
        v_pre = self.vconv(v)
        h_new = self.h_out(gate(self.hconv(h) + self.v_to_h(shift_down(v_pre))))
        return gate(v_pre), (h_new if self.first else h + h_new)
