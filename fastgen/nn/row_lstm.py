"""RowLSTM (van den Oord et al., 2016) on the fused row_lstm_scan op, and the causally masked
convolution it and the PixelRNN model use.

Causality: a pixel may see every pixel of the rows above, the pixels to its left in its own
row, and, at its own position, the channels before it (mask "A") or up to and including its
own (mask "B"). Channel groups of an image with C channels: feature channel k belongs to group
k % C (so the C input channels are groups 0..C-1, and K*C logit channels viewed as (K, C)
land in their channel's group).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.ops.row_lstm_scan import row_lstm_scan


def causal_mask(out_channels, in_channels, kernel_size, mask_type, data_channels=1):
    """(out, in, kh, kw) float mask: 1 where a tap may be used. kh, kw odd; the centre tap is
    the current pixel; taps in rows above are free, taps left of the centre in its row are
    free, taps right of it or below are masked; the centre follows the channel rule."""
    kh, kw = kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel_size must be odd; got {kernel_size}")
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B'; got {mask_type!r}")
    mask = torch.zeros(out_channels, in_channels, kh, kw)
    mask[:, :, : kh // 2, :] = 1
    mask[:, :, kh // 2, : kw // 2] = 1
    go = torch.arange(out_channels).unsqueeze(1) % data_channels
    gi = torch.arange(in_channels).unsqueeze(0) % data_channels
    centre = (gi < go) if mask_type == "A" else (gi <= go)
    mask[:, :, kh // 2, kw // 2] = centre.float()
    return mask


class CausalConv2d(nn.Conv2d):
    """A Conv2d whose weight is multiplied by a causal mask on every call (never mutated in
    place, so masked weights get no gradient). Same-size output (padding k // 2)."""

    def __init__(self, in_channels, out_channels, kernel_size, mask_type="B", data_channels=1, bias=True):
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        super().__init__(in_channels, out_channels, ks, padding=(ks[0] // 2, ks[1] // 2), bias=bias)
        self.mask_type = mask_type
        self.register_buffer("mask", causal_mask(out_channels, in_channels, ks, mask_type, data_channels))

    def masked_weight(self):
        return self.weight * self.mask

    def forward(self, x):
        return F.conv2d(x, self.masked_weight(), self.bias, padding=self.padding)


def _check_channels(in_channels, hidden_channels, data_channels):
    for name, v in (("in_channels", in_channels), ("hidden_channels", hidden_channels),
                    ("data_channels", data_channels)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int; got {v!r}")
    if hidden_channels % data_channels:
        raise ValueError(f"hidden_channels ({hidden_channels}) must be a multiple of data_channels "
                         f"({data_channels}) so every hidden unit keeps its channel group")


class RowLSTM(nn.Module):
    """Row LSTM layer: x (B, in_channels, H, W) -> hidden (B, hidden_channels, H, W).

    Input-to-state: a causally masked 1 x kernel_size convolution over the whole image (one
    call); state-to-state: a kernel-3 convolution over the previous row's hidden state; LSTM
    gating (torch.nn.LSTM order i, f, g, o) via fastgen.ops.row_lstm_scan. Hidden unit u and its
    four gates belong to channel group u % data_channels."""

    def __init__(self, in_channels, hidden_channels, kernel_size=3, mask_type="B", data_channels=1):
        super().__init__()
        _check_channels(in_channels, hidden_channels, data_channels)
        if not isinstance(kernel_size, int) or kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int; got {kernel_size!r}")
        self.hidden_channels = hidden_channels
        self.input_to_state = CausalConv2d(in_channels, 4 * hidden_channels, (1, kernel_size),
                                           mask_type, data_channels, bias=False)
        self.weight_ss = nn.Parameter(torch.empty(4 * hidden_channels, hidden_channels, 3))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_channels))
        bound = 1.0 / math.sqrt(3 * hidden_channels)
        nn.init.uniform_(self.weight_ss, -bound, bound)
        with torch.no_grad():  # forget-gate bias 1: the usual LSTM start
            self.bias[hidden_channels: 2 * hidden_channels] = 1.0

    def forward(self, x):
        return row_lstm_scan(self.input_to_state(x), self.weight_ss, self.bias)
