"""Drop-in nn.Modules built on fastgen.ops."""
from fastgen.nn.reparameterize import GaussianHead
from fastgen.nn.gan_loss import GANLoss
from fastgen.nn.masked_conv2d import MaskedConv2d
from fastgen.nn.gated_pixelcnn import GatedPixelCNNLayer, HorizontalStackConv, VerticalStackConv

__all__ = ["GaussianHead", "GANLoss", "MaskedConv2d", "GatedPixelCNNLayer", "HorizontalStackConv",
           "VerticalStackConv"]
