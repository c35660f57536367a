"""Functional ops. Each chooses its implementation through fastgen.use_impl / FASTGEN_IMPL."""
from fastgen.ops.reparameterize import reparameterize
from fastgen.ops.masked_linear import masked_linear, mask_layout

__all__ = ["reparameterize", "masked_linear", "mask_layout"]
