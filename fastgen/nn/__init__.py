"""Drop-in nn.Modules built on fastgen.ops."""
from fastgen.nn.reparameterize import GaussianHead
from fastgen.nn.gan_loss import GANLoss
from fastgen.nn.masked_linear import MaskedLinear
from fastgen.nn.masked_conv2d import MaskedConv2d
from fastgen.nn.gated_pixelcnn import GatedPixelCNNLayer, HorizontalStackConv, VerticalStackConv
from fastgen.nn.row_lstm import RowLSTM
from fastgen.nn.diagonal_bilstm import DiagonalBiLSTM
from fastgen.nn.nade import NADELayer

__all__ = ["GaussianHead", "GANLoss", "MaskedLinear", "MaskedConv2d", "GatedPixelCNNLayer",
           "HorizontalStackConv", "VerticalStackConv", "RowLSTM", "DiagonalBiLSTM", "NADELayer"]
