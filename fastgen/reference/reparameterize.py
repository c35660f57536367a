"""Reference for fastgen.ops.reparameterize: reparameterised Gaussian sample and its KL."""
import torch


def reparameterize(mu, logvar, eps):
    """mu, logvar, eps: (..., D) -> z (..., D), kl (...,).

    z = mu + exp(logvar / 2) * eps; kl = KL(N(mu, exp(logvar)) || N(0, I)) summed over D."""
    z = mu + torch.exp(0.5 * logvar) * eps
    kl = 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar).sum(dim=-1)
    return z, kl
