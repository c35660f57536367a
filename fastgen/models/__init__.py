"""Generative models with one interface (see fastgen.models.base)."""
from fastgen.models.base import AutoregressiveModel, inverse_cdf
from fastgen.models.independent import IndependentBernoulli, MarkovChain, full_joint_num_parameters
from fastgen.models.fvsbn import FVSBN
from fastgen.models.nade import NADE
from fastgen.models.made import MADE

__all__ = ["AutoregressiveModel", "inverse_cdf", "IndependentBernoulli", "MarkovChain",
           "full_joint_num_parameters", "FVSBN", "NADE", "MADE"]
