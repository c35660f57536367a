"""DiagonalBiLSTM (van den Oord et al., 2016) on the row_lstm_scan op.

Skewing shifts row r of the map right by r, so each diagonal of the image becomes a column of
the skewed map (B, C, H, W + H - 1). The diagonal LSTM advances column by column; the state at
image pixel (r, c) reads the states of its left neighbour (r, c-1) and its upper neighbour
(r-1, c), which in the skewed map are the previous column at rows r and r-1: a 2 x 1
state-to-state convolution. Transposed, that is exactly row_lstm_scan with the kernel-3 weight
[w_above, w_left, 0]. The right-to-left direction runs on the mirrored image and its output is
shifted down one row, so pixel (r, c) sees its right half only through row r - 1.
"""
import torch
import torch.nn.functional as F
from torch import nn

from fastgen.nn.row_lstm import LSTMGateConv2d, lstm_state_parameters
from fastgen.ops.row_lstm_scan import row_lstm_scan


def skew(x):
    """(B, C, H, W) -> (B, C, H, W + H - 1): row r shifted right by r, zeros elsewhere."""
    B, C, H, W = x.shape
    flat = F.pad(x, (0, H)).reshape(B, C, H * (W + H))
    return flat[:, :, : H * (W + H - 1)].reshape(B, C, H, W + H - 1)


def unskew(y, width):
    """Inverse of skew: (B, C, H, W + H - 1) -> (B, C, H, W)."""
    B, C, H, _ = y.shape
    flat = F.pad(y.reshape(B, C, H * (width + H - 1)), (0, H))
    return flat.reshape(B, C, H, width + H)[:, :, :, :width]


class DiagonalLSTM(nn.Module):
    """One direction (left to right): x (B, in, H, W) -> hidden (B, hidden, H, W); the state at
    (r, c) summarises the pixels (r' <= r, c' <= c). Input-to-state: a masked 1x1 convolution
    (fastgen.nn.row_lstm.LSTMGateConv2d, the colour groups of RowLSTM)."""

    def __init__(self, in_channels, hidden_channels, mask_type="B", data_channels=1):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.input_to_state = LSTMGateConv2d(in_channels, hidden_channels, 1, mask_type, data_channels)
        # taps [above, left] of the 2 x 1 state-to-state convolution
        self.weight_ss, self.bias = lstm_state_parameters(hidden_channels, 2)

    def scan_weight(self):
        """The (4h, h, 3) row_lstm_scan weight: taps at rows r-1, r, r+1 of the previous column."""
        return torch.cat([self.weight_ss, torch.zeros_like(self.weight_ss[:, :, :1])], dim=2)

    def forward(self, x):
        W = x.shape[3]
        gates = skew(self.input_to_state(x)).transpose(2, 3)  # (B, 4h, W + H - 1, H)
        hidden = row_lstm_scan(gates, self.scan_weight(), self.bias)
        return unskew(hidden.transpose(2, 3), W)


class DiagonalBiLSTM(nn.Module):
    """Diagonal BiLSTM layer: x (B, in_channels, H, W) -> (B, hidden_channels, H, W), the sum of
    the left-to-right diagonal LSTM and the right-to-left one shifted down one row."""

    def __init__(self, in_channels, hidden_channels, mask_type="B", data_channels=1):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.forward_dir = DiagonalLSTM(in_channels, hidden_channels, mask_type, data_channels)
        self.backward_dir = DiagonalLSTM(in_channels, hidden_channels, mask_type, data_channels)

    def forward(self, x):
        left = self.forward_dir(x)
        right = self.backward_dir(x.flip(3)).flip(3)
        return left + F.pad(right, (0, 0, 1, 0))[:, :, : x.shape[2]]
