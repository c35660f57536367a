"""Reference for fastgen.ops.row_lstm_scan: the Row LSTM recurrence as the literal loop over rows.

For each row r (top to bottom), with zero initial state h_{-1} = c_{-1} = 0:
    z_r = input_gates[:, :, r, :] + conv1d(h_{r-1}, weight_ss, padding=1) + bias     (B, 4h, W)
    i, f, o = sigmoid(z_r[i], z_r[f], z_r[o]);  g = tanh(z_r[g])       (torch.nn.LSTM order i, f, g, o)
    c_r = f * c_{r-1} + i * g;   h_r = o * tanh(c_r)
"""
import torch
import torch.nn.functional as F


def row_lstm_scan(input_gates, weight_ss, bias=None):
    """input_gates: (B, 4h, H, W), weight_ss: (4h, h, 3), bias: (4h,) or None -> hidden (B, h, H, W)."""
    B, four_h, H, W = input_gates.shape
    h = four_h // 4
    if input_gates.numel() == 0:
        return input_gates.new_zeros(B, h, H, W)
    h_prev = input_gates.new_zeros(B, h, W)
    c_prev = input_gates.new_zeros(B, h, W)
    rows = []
    for r in range(H):
        z = input_gates[:, :, r, :] + F.conv1d(h_prev, weight_ss, bias, padding=1)
        zi, zf, zg, zo = z.chunk(4, dim=1)
        c_prev = torch.sigmoid(zf) * c_prev + torch.sigmoid(zi) * torch.tanh(zg)
        h_prev = torch.sigmoid(zo) * torch.tanh(c_prev)
        rows.append(h_prev)
    return torch.stack(rows, dim=2)
