"""A 1-D check of GAN theory (Goodfellow et al. 2014, Prop. 1 and Thm. 1).

Data p_data = N(0, 1); a fixed generator G(z) = mu_g + sigma_g z, z ~ N(0, 1), so p_g = N(mu_g, sigma_g^2).
For fixed G the discriminator maximising V(D) = E_data[log D(x)] + E_z[log(1 - D(G(z)))] is
  D*(x) = p_data(x) / (p_data(x) + p_g(x)),   V(D*) = -log 4 + 2 JSD(p_data || p_g),
so with p_g = p_data, D* = 1/2 everywhere and V = -log 4. The discriminator here is
D(x) = sigmoid(a x^2 + b x + c) (the log density ratio of two Gaussians is quadratic, so D* is in
the family) or a small MLP; it is trained with fastgen.ops.discriminator_loss(kind="bce"), which is
exactly -V on a minibatch.
"""
import math

import torch
from torch import nn

import fastgen.ops as ops


def _log_normal(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)


def optimal_discriminator(x, mu_g=0.0, sigma_g=1.0):
    """D*(x) = p_data / (p_data + p_g) for p_data = N(0, 1), p_g = N(mu_g, sigma_g^2)."""
    return torch.sigmoid(_log_normal(x, 0.0, 1.0) - _log_normal(x, mu_g, sigma_g))


def optimal_value(mu_g=0.0, sigma_g=1.0, grid=20001):
    """V(D*) = -log 4 + 2 JSD(p_data || p_g), by quadrature on [-12, 12] (wide enough here)."""
    x = torch.linspace(-12 - abs(mu_g) - 12 * sigma_g, 12 + abs(mu_g) + 12 * sigma_g, grid, dtype=torch.float64)
    p, q = _log_normal(x, 0.0, 1.0).exp(), _log_normal(x, mu_g, sigma_g).exp()
    d = optimal_discriminator(x, mu_g, sigma_g)
    integrand = p * torch.log(d.clamp_min(1e-300)) + q * torch.log((1 - d).clamp_min(1e-300))
    return float(torch.trapezoid(integrand, x))


class _Quadratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x):
        return self.lin(torch.stack([x, x * x], -1)).squeeze(-1)


def _mlp():
    return nn.Sequential(nn.Unflatten(-1, (-1, 1)), nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, 1), nn.Flatten(0))


def run_toy(mu_g=0.0, sigma_g=1.0, discriminator="quadratic", steps=1500, batch=4096, lr=0.02, seed=0):
    """Train D against the fixed generator; returns a dict of what the theory predicts and what D reached."""
    if discriminator not in ("quadratic", "mlp"):
        raise ValueError(f"discriminator must be 'quadratic' or 'mlp'; got {discriminator!r}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    d = _Quadratic() if discriminator == "quadratic" else _mlp()
    opt = torch.optim.Adam(d.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        real = torch.randn(batch, generator=gen)
        fake = mu_g + sigma_g * torch.randn(batch, generator=gen)
        loss = ops.discriminator_loss(d(real), d(fake), "bce")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        grid = torch.linspace(-3, 3, 121)
        d_grid = torch.sigmoid(d(grid))
        err = (d_grid - optimal_discriminator(grid, mu_g, sigma_g)).abs().max()
        n_eval = 1 << 18
        real = torch.randn(n_eval, generator=gen)
        fake = mu_g + sigma_g * torch.randn(n_eval, generator=gen)
        value = -float(ops.discriminator_loss(d(real), d(fake), "bce"))
        d_at_0 = float(torch.sigmoid(d(torch.zeros(1)))[0])
    return {"mu_g": mu_g, "sigma_g": sigma_g, "discriminator": discriminator,
            "value": value, "optimal_value": optimal_value(mu_g, sigma_g), "minus_log4": -math.log(4.0),
            "max_abs_D_minus_Dstar": float(err), "D_at_0": d_at_0}
