"""Generative models with one interface (see fastgen.models.base)."""
from fastgen.models.base import AutoregressiveModel, inverse_cdf

__all__ = ["AutoregressiveModel", "inverse_cdf"]
from fastgen.models.pixelcnn import GatedPixelCNN, PixelCNN  # noqa: E402

__all__ += ["PixelCNN", "GatedPixelCNN"]
