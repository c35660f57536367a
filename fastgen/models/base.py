"""The one interface of fastgen's autoregressive models.

A model over images x: (N, C, H, W) whose pixels take integer levels 0..K-1 (K = num_levels;
binary by default) factorises p(x) = prod_d p(x_{o_d} | x_{o_<d}) along an ordering o of the
D = C*H*W flattened dimensions (default: raster order over pixels, channels R -> G -> B within a
pixel). A subclass provides `logits(x) -> (N, K, C, H, W)`: the conditional logits of every
dimension given the earlier ones; everything else follows here.

Sampling draws one uniform per (example, step) up front, in ordering order, and turns it into a
level by inverse CDF; every sampler reads the same uniforms, so a fast sampler and the naive one
(a full forward pass per dimension) give the same samples for the same generator.
"""
import abc
import contextlib
import math

import torch
from torch import nn


def _check_shape(input_shape):
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3
            or not all(isinstance(s, int) and s > 0 for s in input_shape)):
        raise ValueError(f"input_shape must be (C, H, W) of positive ints; got {input_shape!r}")
    return tuple(input_shape)


def inverse_cdf(logits, u):
    """Level drawn from categorical `logits` (n, K) with uniforms `u` (n,): smallest k with
    cdf(k) > u. Returns (n,) float."""
    cdf = torch.softmax(logits.double(), dim=1).cumsum(dim=1)
    k = (cdf <= u.double().unsqueeze(1)).sum(dim=1)
    return k.clamp_(max=logits.shape[1] - 1).to(torch.float32)


class AutoregressiveModel(nn.Module, abc.ABC):
    """Base class: exact log-likelihood, bits/dim, loss and (conditional) sampling."""

    def __init__(self, input_shape=(1, 28, 28), num_levels=2):
        super().__init__()
        self.input_shape = _check_shape(input_shape)
        if not isinstance(num_levels, int) or num_levels < 2:
            raise ValueError(f"num_levels must be an int >= 2; got {num_levels!r}")
        self.num_levels = num_levels
        self.num_dims = math.prod(self.input_shape)

    # --- what a subclass provides -------------------------------------------------------
    @abc.abstractmethod
    def logits(self, x):
        """x: (N, C, H, W) float levels -> (N, K, C, H, W) conditional logits."""

    def ordering(self):
        """(D,) long: flat indices into (C, H, W) in sampling order. Default: raster over
        pixels, channels inner."""
        c, h, w = self.input_shape
        idx = torch.arange(self.num_dims).view(c, h * w)
        return idx.t().reshape(-1)

    def _sample_fast(self, x, known, u):
        """Fill the unknown entries of x (n, C, H, W) in place from uniforms u (n, D) (step
        order); models with a cache override it. Default: the naive sampler."""
        return self._sample_naive(x, known, u)

    # --- the interface ------------------------------------------------------------------
    def check_input(self, x, name="x"):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{name} must have shape (N, {', '.join(map(str, self.input_shape))});"
                             f" got {tuple(x.shape)}")
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer pixel levels; got dtype {x.dtype}")
        if x.numel():
            xf = x.double()
            if not torch.equal(xf, xf.round()) or xf.min() < 0 or xf.max() > self.num_levels - 1:
                raise ValueError(f"{name} must hold integer levels in [0, {self.num_levels - 1}]")
        return x.to(torch.float32) if not x.is_floating_point() else x

    def log_prob(self, x):
        """Exact log p(x) in nats: (N,)."""
        x = self.check_input(x)
        logp = torch.log_softmax(self.logits(x), dim=1)
        return logp.gather(1, x.long().unsqueeze(1)).squeeze(1).flatten(1).sum(1)

    def bits_per_dim(self, x):
        return -self.log_prob(x) / (self.num_dims * math.log(2.0))

    def loss(self, x):
        """Mean negative log-likelihood in nats per example (the training loss)."""
        return -self.log_prob(x).mean()

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def sample(self, n, *, conditioned_on=None, generator=None, fast=True):
        """n samples (n, C, H, W) float levels. `conditioned_on`: (n or 1, C, H, W) with the
        known pixels' levels and -1 (or NaN) at the missing ones, which alone are sampled."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int; got {n!r}")
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        x = torch.zeros((n,) + self.input_shape, device=device)
        known = torch.zeros_like(x, dtype=torch.bool)
        if conditioned_on is not None:
            cond = torch.as_tensor(conditioned_on).to(device=device, dtype=torch.float32)
            if cond.dim() != 4 or tuple(cond.shape[1:]) != self.input_shape or cond.shape[0] not in (1, n):
                raise ValueError(f"conditioned_on must have shape (n or 1, "
                                 f"{', '.join(map(str, self.input_shape))}); got {tuple(cond.shape)}")
            cond = cond.expand_as(x)
            known = ~torch.isnan(cond) & (cond >= 0)
            self.check_input(torch.where(known, cond, torch.zeros_like(cond)), "conditioned_on")
            x = torch.where(known, cond, x)
        u = torch.rand(n, self.num_dims, generator=generator, device=device)
        was_training = self.training
        self.eval()
        try:
            return self._sample_fast(x, known, u) if fast else self._sample_naive(x, known, u)
        finally:
            self.train(was_training)

    def _sample_naive(self, x, known, u):
        """Reference sampler: one full forward pass per dimension."""
        flat_x, flat_known = x.view(x.shape[0], -1), known.view(x.shape[0], -1)
        for step, d in enumerate(self.ordering().tolist()):
            if bool(flat_known[:, d].all()):
                continue
            logits_d = self.logits(x).flatten(2)[:, :, d]
            draw = inverse_cdf(logits_d, u[:, step])
            flat_x[:, d] = torch.where(flat_known[:, d], flat_x[:, d], draw)
        return x


@contextlib.contextmanager
def single_threaded():
    """Run the enclosed ops on one intra-op thread (restored after). For incremental samplers,
    whose per-step ops are a few thousand FLOPs: starting a parallel region (or MKL's threads)
    for each costs more than it saves, badly so when the cores are busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
