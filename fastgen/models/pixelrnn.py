"""PixelRNN (van den Oord et al., 2016): Row LSTM or Diagonal BiLSTM layers with residual
connections, exact likelihood, and a fast sampler that advances the recurrent state pixel by
pixel.

Network: x (N, C, H, W) levels -> scaled to [0, 1] -> 7x7 causal conv (mask A) -> num_layers x
[x + 1x1 conv(LSTM(x))] (mask B) -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv to L*C channels viewed
as (N, L, C, H, W) logits (L = 1 Bernoulli logit for binary pixels, else K). Channel k of every feature map belongs to image channel k % C.
"""
import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.base import AutoregressiveModel, inverse_cdf
from fastgen.nn.diagonal_bilstm import DiagonalBiLSTM
from fastgen.nn.row_lstm import CausalConv2d, RowLSTM

KINDS = ("row", "diagonal")


class PixelRNN(AutoregressiveModel):
    """PixelRNN over (C, H, W) images with num_levels levels per channel.

    kind: "row" (RowLSTM layers, input-to-state kernel `kernel_size`) or "diagonal"
    (DiagonalBiLSTM layers). hidden_channels must be a multiple of C."""

    def __init__(self, input_shape=(1, 28, 28), kind="row", num_levels=2, hidden_channels=32,
                 num_layers=2, kernel_size=3, head_channels=None):
        super().__init__(input_shape, num_levels)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int; got {num_layers!r}")
        C = self.input_shape[0]
        R = hidden_channels
        if not isinstance(R, int) or R <= 0 or R % C:
            raise ValueError(f"hidden_channels must be a positive multiple of C={C}; got {R!r}")
        head = head_channels or R
        if not isinstance(head, int) or head % C:
            raise ValueError(f"head_channels must be a positive multiple of C={C}; got {head!r}")
        self.kind = kind
        self.input_conv = CausalConv2d(C, R, 7, "A", C)
        if kind == "row":
            self.lstms = nn.ModuleList(RowLSTM(R, R, kernel_size, "B", C) for _ in range(num_layers))
        else:
            self.lstms = nn.ModuleList(DiagonalBiLSTM(R, R, "B", C) for _ in range(num_layers))
        self.residuals = nn.ModuleList(CausalConv2d(R, R, 1, "B", C) for _ in range(num_layers))
        self.head1 = CausalConv2d(R, head, 1, "B", C)
        self.head2 = CausalConv2d(self.head1.out_channels, self.num_logits * C, 1, "B", C)

    def _dtype(self):
        return self.input_conv.weight.dtype

    def scale(self, x):
        """Levels 0..K-1 -> [0, 1] in the model's dtype (the network's input)."""
        return x.to(self._dtype()) / (self.num_levels - 1)

    def _head(self, feat):
        return self.head2(F.relu(self.head1(F.relu(feat))))

    def logits(self, x):
        """x: (N, C, H, W) float levels -> (N, L, C, H, W) logits."""
        feat = self.input_conv(self.scale(x))
        for lstm, res in zip(self.lstms, self.residuals):
            feat = feat + res(lstm(feat))
        out = self._head(feat)
        N, _, H, W = out.shape
        return out.view(N, self.num_logits, self.input_shape[0], H, W)

    def _sample_fast(self, x, known, u):
        if self.kind == "row":
            from fastgen.models._pixelrnn_sampling import sample_row

            return sample_row(self, x, known, u)
        from fastgen.models._pixelrnn_sampling import sample_diagonal

        return sample_diagonal(self, x, known, u)
