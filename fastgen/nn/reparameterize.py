"""GaussianHead: a VAE encoder head on the fused reparameterize op."""
import torch
from torch import nn

from fastgen.ops.reparameterize import reparameterize


class GaussianHead(nn.Module):
    """Maps features (..., in_features) to a diagonal Gaussian posterior and samples from it.

    forward(h, eps=None, generator=None) -> (z, kl, mu, logvar): z (..., latent_dim) a
    reparameterised sample, kl (...,) = KL(q(z|x) || N(0, I)). In eval mode with
    `sample_in_eval=False`, z is the posterior mean (kl is still returned)."""

    def __init__(self, in_features, latent_dim, sample_in_eval=True):
        super().__init__()
        if not isinstance(in_features, int) or in_features <= 0:
            raise ValueError(f"in_features must be a positive int; got {in_features!r}")
        if not isinstance(latent_dim, int) or latent_dim <= 0:
            raise ValueError(f"latent_dim must be a positive int; got {latent_dim!r}")
        self.latent_dim = latent_dim
        self.sample_in_eval = sample_in_eval
        self.proj = nn.Linear(in_features, 2 * latent_dim)

    def forward(self, h, eps=None, generator=None):
        mu, logvar = self.proj(h).chunk(2, dim=-1)
        if not self.training and not self.sample_in_eval and eps is None:
            eps = torch.zeros_like(mu)
        z, kl = reparameterize(mu, logvar, eps, generator=generator)
        return z, kl, mu, logvar
