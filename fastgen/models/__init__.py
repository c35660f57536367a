"""Generative models with one interface (see fastgen.models.base)."""
from fastgen.models.base import AutoregressiveModel, inverse_cdf
from fastgen.models.pixelrnn import PixelRNN

__all__ = ["AutoregressiveModel", "inverse_cdf", "PixelRNN"]
