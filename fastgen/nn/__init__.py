"""Drop-in nn.Modules built on fastgen.ops."""
from fastgen.nn.reparameterize import GaussianHead
from fastgen.nn.gan_loss import GANLoss

__all__ = ["GaussianHead", "GANLoss"]
