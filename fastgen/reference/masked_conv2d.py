"""Reference for fastgen.ops.masked_conv2d: the PixelCNN masked convolution.

Mask of a (kh, kw) kernel with centre (ch, cw) = (kh // 2, kw // 2):
  rows above the centre row       all taps
  centre row, left of the centre  all taps
  the centre tap                  input-channel group <  output-channel group (type "A")
                                  input-channel group <= output-channel group (type "B")
  everything else                 zero
Channel groups (data_channels = G colour channels, R -> G -> B): channel i of C belongs to group
i * G // C; with G = 1 type A excludes the centre and type B includes it.

The reference sums one shifted 1x1 "conv" per non-zero tap (the literal definition), so it is
independent of the F.conv2d-on-a-masked-weight oracle used in the tests.
"""
import torch

MASK_TYPES = ("A", "B")


def channel_groups(channels, data_channels, device=None):
    """(channels,) long: the colour group of every channel."""
    return torch.arange(channels, device=device) * data_channels // channels


def centre_mask(out_channels, in_channels, mask_type, data_channels, dtype=torch.float32, device=None):
    """(Cout, Cin) 0/1: which (output, input) channel pairs the centre tap connects."""
    go = channel_groups(out_channels, data_channels, device).unsqueeze(1)
    gi = channel_groups(in_channels, data_channels, device).unsqueeze(0)
    allowed = gi < go if mask_type == "A" else gi <= go
    return allowed.to(dtype)


def build_mask(out_channels, in_channels, kh, kw, mask_type, data_channels=1, dtype=torch.float32,
               device=None):
    """(Cout, Cin, kh, kw) 0/1 PixelCNN mask (see the module docstring)."""
    ch, cw = kh // 2, kw // 2
    mask = torch.zeros(out_channels, in_channels, kh, kw, dtype=dtype, device=device)
    mask[:, :, :ch, :] = 1
    mask[:, :, ch, :cw] = 1
    mask[:, :, ch, cw] = centre_mask(out_channels, in_channels, mask_type, data_channels, dtype, device)
    return mask


def masked_conv2d(x, weight, bias, mask_type, data_channels, relu_input=False, residual=None):
    """x: (N, Cin, H, W), weight: (Cout, Cin, kh, kw) (kh, kw odd), bias: (Cout,) or None,
    residual: (N, Cout, H, W) or None
    -> y: (N, Cout, H, W), y = conv2d(x, weight * mask, bias, padding=(kh // 2, kw // 2)) + residual,
    on relu(x) instead of x when relu_input."""
    if relu_input:
        x = torch.relu(x)
    n, _, h, w = x.shape
    cout, cin, kh, kw = weight.shape
    ch, cw = kh // 2, kw // 2
    xp = torch.nn.functional.pad(x, (cw, cw, ch, ch))
    y = x.new_zeros(n, cout, h, w)
    centre = centre_mask(cout, cin, mask_type, data_channels, torch.bool, weight.device)
    for i in range(ch + 1):
        # the centre only when some channel pair passes it (type B, or A with colour groups)
        for j in range(kw if i < ch else cw + int(mask_type == "B" or data_channels > 1)):
            w_tap = weight[:, :, i, j]
            if (i, j) == (ch, cw):  # select, not multiply: a masked tap never reaches y
                w_tap = torch.where(centre, w_tap, torch.zeros_like(w_tap))
            y = y + torch.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + w], w_tap)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    if residual is not None:
        y = y + residual
    return y
