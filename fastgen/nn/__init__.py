"""Drop-in nn.Modules built on fastgen.ops."""
from fastgen.nn.reparameterize import GaussianHead

__all__ = ["GaussianHead"]
