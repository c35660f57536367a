"""Functional ops. Each chooses its implementation through fastgen.use_impl / FASTGEN_IMPL."""
from fastgen.ops.reparameterize import reparameterize

__all__ = ["reparameterize"]
from fastgen.ops.masked_conv2d import masked_conv2d  # noqa: E402

__all__ += ["masked_conv2d"]
