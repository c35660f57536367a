"""Drop-in nn.Modules built on fastgen.ops."""
from fastgen.nn.reparameterize import GaussianHead
from fastgen.nn.gan_loss import GANLoss

<<<<<<< HEAD
__all__ = ["GaussianHead"]
from fastgen.nn.masked_conv2d import MaskedConv2d  # noqa: E402
from fastgen.nn.gated_pixelcnn import (GatedPixelCNNLayer, HorizontalStackConv,  # noqa: E402
                                       VerticalStackConv)

__all__ += ["MaskedConv2d", "GatedPixelCNNLayer", "HorizontalStackConv", "VerticalStackConv"]
=======
__all__ = ["GaussianHead", "GANLoss"]
>>>>>>> main
