"""RowLSTM (van den Oord et al., 2016) on the fused row_lstm_scan op, and the masked
input-to-state convolution it shares with the diagonal LSTM.

Causality: a pixel may see every pixel of the rows above, the pixels to its left in its own
row, and, at its own position, the colour groups before its own (mask "A") or up to and
including its own (mask "B"). The colour groups are MaskedConv2d's: channel i of n belongs to
group i * C // n (blocks: R's channels, then G's, then B's), in the input, the gates and the
hidden state alike. Only the input-to-state convolution touches the current pixel; the
state-to-state convolution reads the previous row (or column), which every channel may see.
"""
import math

import torch
from torch import nn

from fastgen.nn.masked_conv2d import MaskedConv2d
from fastgen.ops.row_lstm_scan import row_lstm_scan


class LSTMGateConv2d(MaskedConv2d):
    """Masked input-to-state convolution of an LSTM layer: x (N, in_channels, H, W) -> the gate
    pre-activations (N, 4h, H, W) of h = hidden_channels units in torch.nn.LSTM order (i, f, g, o:
    gate j of unit u at channel j*h + u), the layout row_lstm_scan reads.

    Hidden unit u is in colour group u * C // h, so all four of its gates must be too; in the
    gate-major layout they are not (gate j's block spans every group). The weight's rows are
    therefore stored colour-major, (C, 4, h/C): row g*4h/C + j*h/C + v holds gate j of unit
    g*h/C + v, and MaskedConv2d's block grouping of the 4h rows (row i in group i*C // 4h) puts
    it in group g, its unit's group. forward reorders the channels to gate-major (a no-op for
    C = 1). No bias: the LSTM's bias is added in the scan."""

    def __init__(self, in_channels, hidden_channels, kernel_size, mask_type="B", data_channels=1):
        if not isinstance(hidden_channels, int) or isinstance(hidden_channels, bool) or hidden_channels <= 0:
            raise ValueError(f"hidden_channels must be a positive int; got {hidden_channels!r}")
        super().__init__(in_channels, 4 * hidden_channels, kernel_size, mask_type, data_channels, bias=False)
        if hidden_channels % data_channels:
            raise ValueError(f"hidden_channels ({hidden_channels}) must be a multiple of data_channels "
                             f"({data_channels}) so every hidden unit's gates share its colour group")
        self.hidden_channels = hidden_channels

    def _gate_major(self, t, dim):
        """Reorder dim (size 4h) of t from colour-major (C, 4, h/C) to gate-major (4, C, h/C)."""
        c = self.data_channels
        if c == 1:
            return t
        return t.unflatten(dim, (c, 4, -1)).transpose(dim, dim + 1).flatten(dim, dim + 2)

    def gate_weight(self):
        """(4h, in, kh, kw) masked weight with its rows in gate-major order (the forward's output
        channels): for incremental samplers computing one pixel's gates as a GEMM."""
        return self._gate_major(self.masked_weight(), 0)

    def forward(self, x):
        return self._gate_major(super().forward(x), 1)


def lstm_state_parameters(hidden_channels, taps):
    """The state-to-state weight (4h, h, taps) and the bias (4h,) of an LSTM layer, initialised
    uniform(+-1/sqrt(taps * h)) and 0 with forget-gate bias 1 (the usual LSTM start)."""
    weight = nn.Parameter(torch.empty(4 * hidden_channels, hidden_channels, taps))
    bias = nn.Parameter(torch.zeros(4 * hidden_channels))
    bound = 1.0 / math.sqrt(taps * hidden_channels)
    nn.init.uniform_(weight, -bound, bound)
    with torch.no_grad():
        bias[hidden_channels: 2 * hidden_channels] = 1.0
    return weight, bias


class RowLSTM(nn.Module):
    """Row LSTM layer: x (B, in_channels, H, W) -> hidden (B, hidden_channels, H, W).

    Input-to-state: a masked 1 x kernel_size convolution over the whole image (one call of the
    fused masked_conv2d op); state-to-state: a kernel-3 convolution over the previous row's hidden
    state; LSTM gating (torch.nn.LSTM order i, f, g, o) via fastgen.ops.row_lstm_scan. Hidden unit
    u and its four gates belong to colour group u * data_channels // hidden_channels."""

    def __init__(self, in_channels, hidden_channels, kernel_size=3, mask_type="B", data_channels=1):
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int; got {kernel_size!r}")
        self.hidden_channels = hidden_channels
        self.input_to_state = LSTMGateConv2d(in_channels, hidden_channels, (1, kernel_size), mask_type,
                                             data_channels)
        self.weight_ss, self.bias = lstm_state_parameters(hidden_channels, 3)

    def forward(self, x):
        return row_lstm_scan(self.input_to_state(x), self.weight_ss, self.bias)
