"""Functional ops. Each chooses its implementation through fastgen.use_impl / FASTGEN_IMPL."""
from fastgen.ops.reparameterize import reparameterize

__all__ = ["reparameterize"]
