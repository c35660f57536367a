"""PixelCNN and Gated PixelCNN (van den Oord et al. 2016) with exact cached sampling.

Both model p(x) over raster order, channels R -> G -> B within a pixel (fastgen.models.base).

Cached sampling. In a PixelCNN every activation at position q (any layer, any channel group)
depends only on inputs before q (and on x_q's earlier channels), so it is final as soon as the
pixel before q has been drawn. The fast samplers therefore compute, at step q, only the
activations *at q*, layer by layer, reading their neighbours' activations from full-size caches
filled at earlier steps: a few (n, taps * C) x (taps * C, C') products per layer instead of a
whole forward pass. Colour images recompute position q once per channel (the activations of
group g are final after sub-step g). Gated PixelCNN's vertical stack sees its whole current row,
so it is computed one row at a time, at the start of the next row, where the horizontal stack
(which reads it shifted down one row) first needs it.
"""
import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.base import AutoregressiveModel, MaskedHead, channels_last, inverse_cdf, tap_matrix
from fastgen.nn.gated_pixelcnn import GatedPixelCNNLayer, gate
from fastgen.nn.masked_conv2d import MaskedConv2d


def _check_int(name, v, low):
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ValueError(f"{name} must be an int >= {low}; got {v!r}")


class _ResidualBlock(nn.Module):
    """s + 1x1(ReLU(kxk_B(ReLU(1x1(ReLU(s)))))) with a channels / 2 bottleneck (all masked; each
    ReLU fused into the conv after it, the skip connection into the last conv's output)."""

    def __init__(self, channels, kernel_size, data_channels):
        super().__init__()
        mid = channels // 2
        self.reduce = MaskedConv2d(channels, mid, 1, "B", data_channels, relu_input=True)
        self.conv = MaskedConv2d(mid, mid, kernel_size, "B", data_channels, relu_input=True)
        self.expand = MaskedConv2d(mid, channels, 1, "B", data_channels, relu_input=True)

    def forward(self, s):
        return self.expand(self.conv(self.reduce(s)), residual=s)


class PixelCNN(AutoregressiveModel):
    """PixelCNN: a kxk type-A masked conv, (num_layers - 1) residual blocks around kxk type-B
    masked convs, and a 1x1 head; hidden_channels wide. x: (N, C, H, W) levels in 0..K-1."""

    def __init__(self, input_shape=(1, 28, 28), num_levels=2, hidden_channels=64, num_layers=15,
                 kernel_size=7, block_kernel_size=3, head_channels=None):
        super().__init__(input_shape, num_levels)
        c = self.input_shape[0]
        _check_int("num_layers", num_layers, 1)
        _check_int("hidden_channels", hidden_channels, 2 * c)
        for name, k in (("kernel_size", kernel_size), ("block_kernel_size", block_kernel_size)):
            if not isinstance(k, int) or k < 1 or k % 2 == 0:
                raise ValueError(f"{name} must be an odd positive int; got {k!r}")
        head_channels = hidden_channels if head_channels is None else head_channels
        _check_int("head_channels", head_channels, c)
        self.conv_in = MaskedConv2d(c, hidden_channels, kernel_size, "A", c)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden_channels, block_kernel_size, c)
                                    for _ in range(num_layers - 1))
        self.head = MaskedHead(hidden_channels, head_channels, self.num_logits, c)

    def scale(self, x):
        """Levels 0..K-1 -> [-1, 1] (the network's input)."""
        return x * (2.0 / (self.num_levels - 1)) - 1.0

    def logits(self, x):
        s = self.conv_in(channels_last(self.scale(x)))
        for block in self.blocks:
            s = block(s)
        return self.head(s)

    def _sample_fast(self, x, known, u):
        n, c, h, w = x.shape
        k, p = self.conv_in.kernel_size[0], self.conv_in.kernel_size[0] // 2
        w_in, b_in = tap_matrix(self.conv_in.masked_weight(), rows=p + 1), self.conv_in.bias
        xs = x.new_zeros(n, c, h + 2 * p, w + 2 * p)  # scaled input, zero padded
        xs[:, :, p:p + h, p:p + w] = self.scale(x)
        blocks = []
        for blk in self.blocks:
            kb = blk.conv.kernel_size[0]
            pb = kb // 2
            cache = x.new_zeros(n, blk.conv.in_channels, h + 2 * pb, w + 2 * pb)
            blocks.append((kb, pb, cache, tap_matrix(blk.reduce.masked_weight()), blk.reduce.bias,
                           tap_matrix(blk.conv.masked_weight(), rows=pb + 1), blk.conv.bias,
                           tap_matrix(blk.expand.masked_weight()), blk.expand.bias))
        head = self.head.matrices()
        for r in range(h):
            for col in range(w):
                for g in range(c):
                    s = torch.addmm(b_in, xs[:, :, r:r + p + 1, col:col + k].reshape(n, -1), w_in)
                    for kb, pb, cache, wa, ba, wb, bb, wc, bc in blocks:
                        cache[:, :, r + pb, col + pb] = torch.relu(torch.addmm(ba, torch.relu(s), wa))
                        t = torch.relu(torch.addmm(bb, cache[:, :, r:r + pb + 1, col:col + kb].reshape(n, -1), wb))
                        s = s + torch.addmm(bc, t, wc)
                    step = (r * w + col) * c + g
                    kn = known[:, g, r, col]
                    if bool(kn.all()):
                        continue
                    draw = inverse_cdf(self.head.at_position(s, head)[:, :, g], u[:, step])
                    x[:, g, r, col] = torch.where(kn, x[:, g, r, col], draw)
                    xs[:, g, r + p, col + p] = self.scale(x[:, g, r, col])
        return x


class GatedPixelCNN(AutoregressiveModel):
    """Gated PixelCNN: num_layers gated layers with vertical and horizontal stacks (the first
    kernel_size wide, the rest block_kernel_size), then a 1x1 head on the horizontal stack.
    hidden_channels defaults to 64 rounded up to a multiple of C."""

    def __init__(self, input_shape=(1, 28, 28), num_levels=2, hidden_channels=None, num_layers=15,
                 kernel_size=7, block_kernel_size=3, head_channels=None):
        super().__init__(input_shape, num_levels)
        c = self.input_shape[0]
        if hidden_channels is None:
            hidden_channels = -(-64 // c) * c
        _check_int("num_layers", num_layers, 1)
        _check_int("hidden_channels", hidden_channels, c)
        if hidden_channels % c:
            raise ValueError(f"hidden_channels must be a multiple of the {c} colour channels; "
                             f"got {hidden_channels}")
        for name, k in (("kernel_size", kernel_size), ("block_kernel_size", block_kernel_size)):
            if not isinstance(k, int) or k < 1 or k % 2 == 0:
                raise ValueError(f"{name} must be an odd positive int; got {k!r}")
        head_channels = hidden_channels if head_channels is None else head_channels
        _check_int("head_channels", head_channels, c)
        self.layers = nn.ModuleList(
            GatedPixelCNNLayer(c if i == 0 else hidden_channels, hidden_channels,
                               kernel_size if i == 0 else block_kernel_size, first=(i == 0),
                               data_channels=c) for i in range(num_layers))
        self.head = MaskedHead(hidden_channels, head_channels, self.num_logits, c)

    def scale(self, x):
        return x * (2.0 / (self.num_levels - 1)) - 1.0

    def logits(self, x):
        v = h = self.scale(x)
        for layer in self.layers:
            v, h = layer(v, h)
        return self.head(h)

    def _sample_fast(self, x, known, u):
        n, c, hh, w = x.shape
        layers = []
        for layer in self.layers:
            k = layer.hconv.kernel_size[1]
            p = k // 2
            cin = layer.hconv.in_channels
            layers.append(dict(
                k=k, p=p, first=layer.first, vconv=layer.vconv.conv,
                v_in=x.new_zeros(n, cin, hh + p, w + 2 * p),  # vertical-stack input, padded top/left/right
                h_in=x.new_zeros(n, cin, w + p),  # horizontal-stack input of the current row, padded left
                wh=tap_matrix(layer.hconv.masked_weight(), cols=p + 1),
                bh=layer.hconv.bias, v_to_h=layer.v_to_h,
                wo=tap_matrix(layer.h_out.masked_weight()), bo=layer.h_out.bias))
        first = layers[0]
        first["v_in"][:, :, first["p"]:, first["p"]:first["p"] + w] = self.scale(x)
        head = self.head.matrices()
        for r in range(hh):
            # the vertical stack's row r - 1 (complete now), shifted down into row r's links
            for i, ly in enumerate(layers):
                if r == 0:
                    ly["link"] = ly["v_to_h"].bias.view(1, -1, 1).expand(n, -1, w)
                    continue
                v_pre = F.conv2d(ly["v_in"][:, :, r - 1:r + ly["p"]], ly["vconv"].weight, ly["vconv"].bias)
                ly["link"] = ly["v_to_h"](v_pre)[:, :, 0]
                if i + 1 < len(layers):
                    nxt = layers[i + 1]
                    nxt["v_in"][:, :, r - 1 + nxt["p"], nxt["p"]:nxt["p"] + w] = gate(v_pre)[:, :, 0]
            first["h_in"][:, :, first["p"]:] = self.scale(x[:, :, r])
            for col in range(w):
                for g in range(c):
                    for i, ly in enumerate(layers):
                        p = ly["p"]
                        pre = torch.addmm(ly["bh"], ly["h_in"][:, :, col:col + p + 1].reshape(n, -1), ly["wh"])
                        h_new = torch.addmm(ly["bo"], gate(pre + ly["link"][:, :, col]), ly["wo"])
                        if not ly["first"]:
                            h_new = h_new + ly["h_in"][:, :, col + p]
                        if i + 1 < len(layers):
                            layers[i + 1]["h_in"][:, :, col + layers[i + 1]["p"]] = h_new
                    kn = known[:, g, r, col]
                    if bool(kn.all()):
                        continue
                    draw = inverse_cdf(self.head.at_position(h_new, head)[:, :, g], u[:, (r * w + col) * c + g])
                    x[:, g, r, col] = torch.where(kn, x[:, g, r, col], draw)
                    value = self.scale(x[:, g, r, col])
                    first["h_in"][:, g, col + first["p"]] = value
                    first["v_in"][:, g, r + first["p"], col + first["p"]] = value
        return x
