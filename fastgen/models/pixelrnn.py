"""PixelRNN (van den Oord et al., 2016): Row LSTM or Diagonal BiLSTM layers with residual
connections, exact likelihood, and a fast sampler that advances the recurrent state pixel by
pixel.

Network: x (N, C, H, W) levels -> scaled to [0, 1] -> 7x7 masked conv (mask A) -> num_layers x
[x + 1x1 masked conv(LSTM(x))] (mask B) -> the conv models' MaskedHead (ReLU -> 1x1 -> ReLU ->
1x1 to C*L channels, layout (C, L)) -> (N, L, C, H, W) logits (L = 1 Bernoulli logit for binary
pixels, else K). Every convolution is a fastgen.nn.MaskedConv2d (the fused masked_conv2d op), so
the colour groups are its blocks: channel i of n belongs to image channel i * C // n, as in
PixelCNN.
"""
from torch import nn

from fastgen.models.base import AutoregressiveModel, MaskedHead
from fastgen.nn.diagonal_bilstm import DiagonalBiLSTM
from fastgen.nn.masked_conv2d import MaskedConv2d
from fastgen.nn.row_lstm import RowLSTM

KINDS = ("row", "diagonal")


class PixelRNN(AutoregressiveModel):
    """PixelRNN over (C, H, W) images with num_levels levels per channel.

    kind: "row" (RowLSTM layers, input-to-state kernel `kernel_size`) or "diagonal"
    (DiagonalBiLSTM layers). hidden_channels must be a multiple of C (every hidden unit's four
    LSTM gates share its colour group); head_channels (default hidden_channels) at least C."""

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
        head = R if head_channels is None else head_channels
        if not isinstance(head, int) or head < C:
            raise ValueError(f"head_channels must be an int >= C={C}; got {head!r}")
        self.kind = kind
        self.input_conv = MaskedConv2d(C, R, 7, "A", C)
        if kind == "row":
            self.lstms = nn.ModuleList(RowLSTM(R, R, kernel_size, "B", C) for _ in range(num_layers))
        else:
            self.lstms = nn.ModuleList(DiagonalBiLSTM(R, R, "B", C) for _ in range(num_layers))
        self.residuals = nn.ModuleList(MaskedConv2d(R, R, 1, "B", C) for _ in range(num_layers))
        self.head = MaskedHead(R, head, self.num_logits, C)

    def scale(self, x):
        """Levels 0..K-1 -> [0, 1] in the model's dtype (the network's input)."""
        return x.to(self.input_conv.weight.dtype) / (self.num_levels - 1)

    def logits(self, x):
        """x: (N, C, H, W) float levels -> (N, L, C, H, W) logits."""
        feat = self.input_conv(self.scale(x))
        for lstm, res in zip(self.lstms, self.residuals):
            feat = feat + res(lstm(feat))
        return self.head(feat)

    def _sample_fast(self, x, known, u):
        if self.kind == "row":
            from fastgen.models._pixelrnn_sampling import sample_row

            return sample_row(self, x, known, u)
        from fastgen.models._pixelrnn_sampling import sample_diagonal

        return sample_diagonal(self, x, known, u)
