"""Functional ops. Each chooses its implementation through fastgen.use_impl / FASTGEN_IMPL."""
from fastgen.ops.reparameterize import reparameterize
from fastgen.ops.gan_loss import discriminator_loss, generator_loss

__all__ = ["reparameterize", "discriminator_loss", "generator_loss"]
