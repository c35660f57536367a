"""Variational autoencoder (Kingma & Welling 2014) with the importance-weighted bound (Burda et al. 2016).

Model: z ~ N(0, I) (latent_dim), x | z ~ p_theta(x | z); posterior q_phi(z | x) = N(mu(x), diag exp(logvar(x))).
  ELBO(x)    = E_q[log p(x | z)] - KL(q(z | x) || N(0, I))            (one reparameterised sample)
  IWAE_k(x)  = E[log (1/k) sum_i p(x, z_i) / q(z_i | x)], z_i ~ q      (IWAE_1 = ELBO <= IWAE_k <= log p(x))
Both in nats, per example. z and the KL come from the fused op fastgen.ops.reparameterize.
Decoders: "bernoulli" (x in {0, 1}), "categorical" (x in levels 0..K-1), "gaussian" (real x; per-pixel
learned scale, so log p is a density). Architectures: "mlp" and "conv" (two stride-2 convolutions,
sized for 8x8 and 28x28 and any other H, W: the decoder overshoots to 4*ceil(H/4) and crops).
"""
import math

import torch
from torch import nn

from fastgen.models.base import ceil_div
from fastgen.nn.reparameterize import GaussianHead
from fastgen.ops.bernoulli_log_prob import bernoulli_log_prob
from fastgen.ops.reparameterize import reparameterize

DECODERS = ("bernoulli", "gaussian", "categorical")
ARCHS = ("mlp", "conv")
DEFAULT_IWAE_K = 64  # log_prob's default number of importance samples
_LOG_2PI = math.log(2 * math.pi)


def _positive_int(name, v):
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive int; got {v!r}")
    return v


class _ConvEncoder(nn.Module):
    def __init__(self, c, h, w, hidden):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(64 * ceil_div(h, 4) * ceil_div(w, 4), hidden),
                                  nn.ReLU())

    def forward(self, x):
        return self.body(x)


class _ConvDecoder(nn.Module):
    def __init__(self, latent_dim, hidden, out_channels, h, w):
        super().__init__()
        self.h, self.w = h, w
        self.h4, self.w4 = ceil_div(h, 4), ceil_div(w, 4)   # two stride-2 layers
        self.fc = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(),
                                nn.Linear(hidden, 64 * self.h4 * self.w4), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
                                nn.ConvTranspose2d(32, out_channels, 4, 2, 1))

    def forward(self, z):
        y = self.up(self.fc(z).view(-1, 64, self.h4, self.w4))
        return y[:, :, :self.h, :self.w].flatten(1)


class VAE(nn.Module):
    """VAE over images (N, C, H, W). Every bound is (N,) nats per example (higher is better)."""

    def __init__(self, input_shape=(1, 28, 28), latent_dim=16, hidden=256, arch="mlp",
                 decoder="bernoulli", num_levels=None, iwae_k=DEFAULT_IWAE_K):
        super().__init__()
        if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3
                or not all(isinstance(s, int) and s > 0 for s in input_shape)):
            raise ValueError(f"input_shape must be (C, H, W) of positive ints; got {input_shape!r}")
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}; got {decoder!r}")
        if num_levels is None:
            num_levels = 256 if decoder == "categorical" else 2
        if decoder == "bernoulli" and num_levels != 2:
            raise ValueError(f"a bernoulli decoder has num_levels 2; got {num_levels!r}")
        if not isinstance(num_levels, int) or num_levels < 2:
            raise ValueError(f"num_levels must be an int >= 2; got {num_levels!r}")
        self.input_shape = tuple(input_shape)
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.hidden = _positive_int("hidden", hidden)
        self.iwae_k = _positive_int("iwae_k", iwae_k)
        self.arch, self.decoder, self.num_levels = arch, decoder, num_levels
        c, h, w = self.input_shape
        self.num_dims = c * h * w
        per_pixel = num_levels if decoder == "categorical" else 1
        if arch == "mlp":
            self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(self.num_dims, hidden), nn.ReLU(),
                                         nn.Linear(hidden, hidden), nn.ReLU())
            self.decoder_net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                             nn.ReLU(), nn.Linear(hidden, self.num_dims * per_pixel))
        else:
            self.encoder = _ConvEncoder(c, h, w, hidden)
            self.decoder_net = _ConvDecoder(latent_dim, hidden, c * per_pixel, h, w)
        self.head = GaussianHead(hidden, latent_dim)
        # Gaussian decoder: a learned per-pixel log standard deviation (so log p(x|z) is a density).
        self.log_scale = nn.Parameter(torch.full(self.input_shape, -1.0)) if decoder == "gaussian" else None

    # --- pieces ----------------------------------------------------------------------------
    def check_input(self, x, name="x"):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{name} must have shape (N, {', '.join(map(str, self.input_shape))}); "
                             f"got {tuple(x.shape)}")
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be a real tensor; got dtype {x.dtype}")
        x = x.float() if not x.is_floating_point() else x
        if x.numel() and self.decoder != "gaussian":
            top = self.num_levels - 1
            if not torch.equal(x, x.round()) or x.min() < 0 or x.max() > top:
                raise ValueError(f"{name} must hold integer levels in [0, {top}] for a {self.decoder} decoder")
        return x

    def _encoder_input(self, x):
        """Levels 0..K-1 -> [0, 1], as every model scales its input (raw levels up to 255 would
        blow up the first layer); grey (Gaussian) values are already in [0, 1]."""
        return x if self.decoder == "gaussian" or self.num_levels == 2 else x / (self.num_levels - 1)

    def _posterior(self, x):
        """x (N, C, H, W) -> mu, logvar (N, latent_dim)."""
        return self.head.proj(self.encoder(self._encoder_input(x))).chunk(2, dim=-1)

    def _decoder_out(self, z):
        """z (..., L) -> decoder parameters (..., D) or (..., D, K) for categorical."""
        out = self.decoder_net(z.reshape(-1, self.latent_dim))
        if self.decoder == "categorical":
            c, h, w = self.input_shape
            out = out.view(-1, c, self.num_levels, h * w).permute(0, 1, 3, 2).reshape(-1, self.num_dims, self.num_levels)
        return out.view(*z.shape[:-1], *out.shape[1:])

    def _log_px_given_z(self, x_flat, out):
        """log p(x | z) summed over pixels: x_flat (..., D) broadcast against decoder output."""
        if self.decoder == "bernoulli":
            x = x_flat.to(out.dtype)
            if x.dim() > out.dim() or x.shape != out.shape[out.dim() - x.dim():]:
                x = x.expand_as(out)
            return bernoulli_log_prob(out, x)
        if self.decoder == "categorical":
            logp = torch.log_softmax(out, dim=-1)
            index = x_flat.long().expand(out.shape[:-1]).unsqueeze(-1)
            return logp.gather(-1, index).squeeze(-1).sum(-1)
        log_s = self.log_scale.flatten()
        return (-0.5 * ((x_flat - out) * torch.exp(-log_s)) ** 2 - log_s - 0.5 * _LOG_2PI).sum(-1)

    def _mean(self, out):
        if self.decoder == "bernoulli":
            return torch.sigmoid(out)
        if self.decoder == "categorical":
            levels = torch.arange(self.num_levels, device=out.device, dtype=out.dtype)
            return (torch.softmax(out, -1) * levels).sum(-1)
        return out

    # --- bounds ----------------------------------------------------------------------------
    def elbo_terms(self, x, generator=None):
        """(reconstruction E_q log p(x|z) (N,), KL(q(z|x) || p(z)) (N,)); one sample of z."""
        x = self.check_input(x)
        mu, logvar = self._posterior(x)
        z, kl = reparameterize(mu, logvar, generator=generator)
        return self._log_px_given_z(x.flatten(1), self._decoder_out(z)), kl

    def elbo(self, x, generator=None):
        """The evidence lower bound in nats: (N,)."""
        rec, kl = self.elbo_terms(x, generator)
        return rec - kl

    def iwae(self, x, k=DEFAULT_IWAE_K, generator=None, chunk=None):
        """Importance-weighted bound with k samples: (N,) nats. `chunk` caps samples per pass."""
        _positive_int("k", k)
        x = self.check_input(x)
        n = x.shape[0]
        mu, logvar = self._posterior(x)
        x_flat = x.flatten(1)
        chunk = chunk or max(1, min(k, (1 << 22) // max(1, n * self.num_dims * (self.num_levels if self.decoder == "categorical" else 1))))
        log_w = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            eps = torch.randn((m, n, self.latent_dim), generator=generator, device=x.device, dtype=mu.dtype)
            z, _ = reparameterize(mu.expand(m, -1, -1), logvar.expand(m, -1, -1), eps)
            log_pz = -0.5 * (z * z + _LOG_2PI).sum(-1)
            log_qz = -0.5 * (eps * eps + _LOG_2PI + logvar).sum(-1)
            log_w.append(self._log_px_given_z(x_flat, self._decoder_out(z)) + log_pz - log_qz)
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)

    def log_prob(self, x, k=None, generator=None):
        """Estimate of log p(x) in nats (N,): the IWAE bound with k = self.iwae_k (default 64)."""
        return self.iwae(x, self.iwae_k if k is None else k, generator=generator)

    def bits_per_dim(self, x, k=None, generator=None):
        return -self.log_prob(x, k, generator) / (self.num_dims * math.log(2.0))

    def loss(self, x, generator=None):
        """Negative ELBO, mean over the batch (the training loss)."""
        return -self.elbo(x, generator).mean()

    # --- use -------------------------------------------------------------------------------
    def encode(self, x):
        """Posterior mean mu(x): (N, latent_dim), the learned features."""
        return self._posterior(self.check_input(x))[0]

    def decode(self, z, mean=True, generator=None):
        """z (N, latent_dim) -> images (N, C, H, W): the decoder mean, or a draw from p(x | z)."""
        out = self._decoder_out(z)
        if mean:
            x = self._mean(out)
        elif self.decoder == "bernoulli":
            x = torch.bernoulli(torch.sigmoid(out), generator=generator)
        elif self.decoder == "categorical":
            x = torch.multinomial(torch.softmax(out, -1).reshape(-1, self.num_levels), 1,
                                  generator=generator).view(out.shape[:-1]).float()
        else:
            noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
            x = out + torch.exp(self.log_scale.flatten()) * noise
        return x.view(-1, *self.input_shape)

    @torch.no_grad()
    def sample(self, n, *, generator=None, mean=False):
        """n images (n, C, H, W): z ~ N(0, I), then x ~ p(x | z) (or its mean if mean=True)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative int; got {n!r}")
        device = self.head.proj.weight.device
        z = torch.randn((n, self.latent_dim), generator=generator, device=device,
                        dtype=self.head.proj.weight.dtype)
        return self.decode(z, mean=mean, generator=generator)

    @torch.no_grad()
    def reconstruct(self, x):
        """Decoder mean at the posterior mean: (N, C, H, W)."""
        return self.decode(self.encode(x), mean=True)
