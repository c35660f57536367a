"""Generative models with one interface (see fastgen.models.base)."""
from fastgen.models.base import AutoregressiveModel, inverse_cdf
from fastgen.models.dcgan import DCGAN
from fastgen.models.vae import VAE

__all__ = ["AutoregressiveModel", "inverse_cdf", "DCGAN", "VAE"]
