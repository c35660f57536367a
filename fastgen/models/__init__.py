"""Generative models. The autoregressive ones share one interface (fastgen.models.base)."""
from fastgen.models.base import AutoregressiveModel, inverse_cdf
from fastgen.models.independent import IndependentBernoulli, MarkovChain, full_joint_num_parameters
from fastgen.models.fvsbn import FVSBN
from fastgen.models.nade import NADE
from fastgen.models.made import MADE
from fastgen.models.pixelcnn import GatedPixelCNN, PixelCNN
from fastgen.models.pixelrnn import PixelRNN
from fastgen.models.vae import VAE
from fastgen.models.dcgan import DCGAN

__all__ = ["AutoregressiveModel", "inverse_cdf", "IndependentBernoulli", "MarkovChain",
           "full_joint_num_parameters", "FVSBN", "NADE", "MADE", "PixelCNN", "GatedPixelCNN",
           "PixelRNN", "VAE", "DCGAN"]
