"""Drop-in nn.Modules built on fastgen.ops."""
from fastgen.nn.reparameterize import GaussianHead
from fastgen.nn.gan_loss import GANLoss
from fastgen.nn.masked_linear import MaskedLinear

__all__ = ["GaussianHead", "GANLoss", "MaskedLinear"]
