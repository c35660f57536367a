"""The one interface of fastgen's autoregressive models.

A model over images x: (N, C, H, W) whose pixels take integer levels 0..K-1 (K = num_levels;
binary by default) factorises p(x) = prod_d p(x_{o_d} | x_{o_<d}) along an ordering o of the
D = C*H*W flattened dimensions (default: raster order over pixels, channels R -> G -> B within a
pixel). A subclass provides `logits(x) -> (N, L, C, H, W)`: the conditional logits of every
dimension given the earlier ones; everything else follows here.

Heads: binary pixels (K = 2) are Bernoulli, L = 1 logit per dimension, p(x_d = 1) = sigmoid(l)
(the textbook models, half the output layer of a two-way softmax); K > 2 levels are categorical,
L = K logits. A Bernoulli logit l is the categorical pair (0, l): `as_categorical` says so once,
and the inverse-CDF draw goes through it, so both heads sample alike.

Conv models (PixelCNN, Gated PixelCNN, PixelRNN) share one head, `MaskedHead`, and one channel
layout of its output: (C, L), colour c's L logits in one block of channels (`head_logits`).

Sampling draws one uniform per (example, step) up front, in ordering order, and turns it into a
level by inverse CDF; every sampler reads the same uniforms, so a fast sampler and the naive one
(a full forward pass per dimension) give the same samples for the same generator.
"""
import abc
import contextlib
import math

import torch
from torch import nn

from fastgen.nn.masked_conv2d import MaskedConv2d
from fastgen.ops.bernoulli_log_prob import bernoulli_log_prob


def num_logits(num_levels):
    """Logits per dimension: 1 (Bernoulli) for binary pixels, else num_levels (categorical)."""
    return 1 if num_levels == 2 else num_levels


def as_categorical(logits):
    """(n, L) head logits -> (n, K) categorical logits: a Bernoulli logit l is (0, l)."""
    if logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], dim=1)
    return logits


def head_logits(out, data_channels):
    """A conv head's output (N, C*L, *spatial) -> logits (N, L, C, *spatial); also (n, C*L) at one
    position -> (n, L, C). Channel c*L + l holds logit l of colour c: each colour's logits are one
    block of channels, the colour group MaskedConv2d's block grouping gives them (channel i of
    C*L is in group i*C // (C*L) = i // L): a masked head keeps colour c's logits in group c."""
    return out.unflatten(1, (data_channels, -1)).transpose(1, 2)


def tap_matrix(weight, rows=None, cols=None):
    """A conv weight's taps [:rows, :cols] (all by default), (Cout, Cin, kh, kw) -> a
    (Cin * rows * cols, Cout) matrix in the layout of a gathered (n, Cin, rows, cols) patch: one
    output position of the conv as a GEMM, for the incremental samplers."""
    w = weight[:, :, :rows, :cols]
    return w.reshape(w.shape[0], -1).t().contiguous()


class MaskedHead(nn.Module):
    """The output head of the conv models: s (N, in, H, W) -> ReLU -> masked 1x1 -> ReLU ->
    masked 1x1 to C*L channels -> logits (N, L, C, H, W) (`head_logits`; L = 1: Bernoulli).
    Both convs are type B over the C colour groups, so colour c's logits keep the causality of the
    features of group c."""

    def __init__(self, in_channels, head_channels, num_logits, data_channels):
        super().__init__()
        self.c = data_channels
        self.conv1 = MaskedConv2d(in_channels, head_channels, 1, "B", data_channels, relu_input=True)
        self.conv2 = MaskedConv2d(head_channels, num_logits * data_channels, 1, "B", data_channels, relu_input=True)

    def forward(self, s):  # (the ReLUs fused into the convs)
        return head_logits(self.conv2(self.conv1(s)), self.c)

    def matrices(self):
        """(w1, b1, w2, b2): the two convs as matrices for `at_position`."""
        return (tap_matrix(self.conv1.masked_weight()), self.conv1.bias,
                tap_matrix(self.conv2.masked_weight()), self.conv2.bias)

    def at_position(self, s, mats):
        """s: (n, in_channels) activations at one position -> (n, L, C) logits."""
        w1, b1, w2, b2 = mats
        out = torch.addmm(b2, torch.relu(torch.addmm(b1, torch.relu(s), w1)), w2)
        return head_logits(out, self.c)


def channels_last(x):
    """x (N, C, H, W) with channels-last strides, by ATen's rule even for one channel (where
    .contiguous(memory_format=torch.channels_last) keeps NCHW strides): convolution stacks fed
    this keep every activation and gradient channels-last, the layout fastgen's masked_conv2d
    kernels and oneDNN work in, with no copies between layers."""
    y = x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = y.shape
    return y.as_strided(y.shape, (h * w * c, 1, w * c, c)) if c == 1 else y


def ceil_div(a, b):
    """ceil(a / b) for positive ints."""
    return -(-a // b)


def _check_shape(input_shape):
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3
            or not all(isinstance(s, int) and s > 0 for s in input_shape)):
        raise ValueError(f"input_shape must be (C, H, W) of positive ints; got {input_shape!r}")
    return tuple(input_shape)


def inverse_cdf(logits, u):
    """Level drawn from head `logits` (n, L) (L = 1: Bernoulli) with uniforms `u` (n,): the
    smallest k with cdf(k) > u. Returns (n,) in the logits' dtype."""
    cat = as_categorical(logits)
    cdf = torch.softmax(cat.double(), dim=1).cumsum(dim=1)
    k = (cdf <= u.double().unsqueeze(1)).sum(dim=1)
    return k.clamp_(max=cat.shape[1] - 1).to(logits.dtype)


def raster_ordering(input_shape):
    """Raster order over pixels, channels R -> G -> B within a pixel: (D,) flat indices."""
    c, h, w = input_shape
    return torch.arange(c * h * w).view(c, h * w).t().reshape(-1)


class AutoregressiveModel(nn.Module, abc.ABC):
    """Base class: exact log-likelihood, bits/dim, loss and (conditional) sampling."""

    def __init__(self, input_shape=(1, 28, 28), num_levels=2):
        super().__init__()
        self.input_shape = _check_shape(input_shape)
        if not isinstance(num_levels, int) or num_levels < 2:
            raise ValueError(f"num_levels must be an int >= 2; got {num_levels!r}")
        self.num_levels = num_levels
        self.num_logits = num_logits(num_levels)
        self.num_dims = math.prod(self.input_shape)

    # --- what a subclass provides -------------------------------------------------------
    @abc.abstractmethod
    def logits(self, x):
        """x: (N, C, H, W) float levels -> (N, L, C, H, W) conditional logits (L = num_logits)."""

    def ordering(self):
        """(D,) long: flat indices into (C, H, W) in sampling order. Default: raster over
        pixels, channels inner."""
        return raster_ordering(self.input_shape)

    def ordering_tensor(self, ordering, seed):
        """The (D,) ordering a model's `ordering` option names: "natural" (raster), "random" (a
        permutation drawn with `seed`) or an explicit permutation of range(D), validated."""
        d = self.num_dims
        if isinstance(ordering, str):
            if ordering == "natural":
                return raster_ordering(self.input_shape)
            if ordering == "random":
                return torch.randperm(d, generator=torch.Generator().manual_seed(seed))
            raise ValueError(f"ordering must be 'natural', 'random' or a permutation; got {ordering!r}")
        perm = torch.as_tensor(ordering, dtype=torch.long).flatten()
        if perm.numel() != d or not torch.equal(perm.sort().values, torch.arange(d)):
            raise ValueError(f"ordering must be a permutation of range({d})")
        return perm

    def _sample_fast(self, x, known, u):
        """Fill the unknown entries of x (n, C, H, W) in place from uniforms u (n, D) (step
        order). Models with a step-by-step sampler define `_sample_incremental(x, known, u)`,
        run here on one thread (its per-step ops are tiny: threads only add overhead); models
        with another cache override this method. Default: the naive sampler."""
        incremental = getattr(self, "_sample_incremental", None)
        if incremental is None:
            return self._sample_naive(x, known, u)
        with single_threaded():
            return incremental(x, known, u)

    # --- the interface ------------------------------------------------------------------
    def check_input(self, x, name="x"):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{name} must have shape (N, {', '.join(map(str, self.input_shape))});"
                             f" got {tuple(x.shape)}")
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer pixel levels; got dtype {x.dtype}")
        if x.numel():  # one pass where it can be: the check runs on every training step
            top = self.num_levels - 1
            if x.is_floating_point():  # NaN and +-inf differ from their rounded, clamped selves
                ok = torch.equal(x, x.round().clamp_(0, top))
            else:
                lo, hi = torch.aminmax(x)
                ok = bool(lo >= 0) and bool(hi <= top)
            if not ok:
                raise ValueError(f"{name} must hold integer levels in [0, {top}]")
        return x.to(self.dtype()) if not x.is_floating_point() else x

    def unit_levels(self, x):
        """x (N, C, H, W) of levels 0..K-1 -> (N, D) in [0, 1]: a view of x when K = 2 (no
        division pass on every step of a binary model)."""
        flat = x.reshape(x.shape[0], self.num_dims)
        return flat if self.num_levels == 2 else flat / (self.num_levels - 1)

    def dtype(self):
        """The floating dtype of the model's parameters (float32 for a parameter-free model)."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    def log_prob(self, x):
        """Exact log p(x) in nats: (N,)."""
        x = self.check_input(x)
        return self.log_prob_from_logits(self.logits(x), x)

    def log_prob_from_logits(self, logits, x):
        """Sum over dimensions of log p(x_d | x_<d) from logits (N, L, C, H, W): (N,)."""
        n = x.shape[0]
        if logits.shape[1] == 1:
            d = self.num_dims
            return bernoulli_log_prob(logits.reshape(n, d), x.to(logits.dtype).reshape(n, d))  # a view: no select
        logp = torch.log_softmax(logits, dim=1)
        return logp.gather(1, x.long().unsqueeze(1)).squeeze(1).reshape(n, self.num_dims).sum(1)

    def bits_per_dim(self, x):
        return -self.log_prob(x) / (self.num_dims * math.log(2.0))

    def loss(self, x):
        """Mean negative log-likelihood in nats per example (the training loss)."""
        return -self.log_prob(x).mean()

    def num_parameters(self):
        """Free parameters: a masked layer's masked-out weights (exact zeros in every
        computation) are not counted."""
        total = sum(p.numel() for p in self.parameters())
        for m in self.modules():
            weight, mask = getattr(m, "weight", None), getattr(m, "mask", None)
            if callable(mask):
                mask = mask()
            if isinstance(weight, nn.Parameter) and isinstance(mask, torch.Tensor):
                total -= weight.numel() - int(torch.count_nonzero(mask.expand_as(weight)))
        return total

    @torch.no_grad()
    def sample(self, n, *, conditioned_on=None, generator=None, fast=True):
        """n samples (n, C, H, W) float levels. `conditioned_on`: (n or 1, C, H, W) with the
        known pixels' levels and -1 (or NaN) at the missing ones, which alone are sampled."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int; got {n!r}")
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        x = torch.zeros((n,) + self.input_shape, device=device, dtype=self.dtype())
        known = torch.zeros_like(x, dtype=torch.bool)
        if conditioned_on is not None:
            cond = torch.as_tensor(conditioned_on).to(device=device, dtype=x.dtype)
            if cond.dim() != 4 or tuple(cond.shape[1:]) != self.input_shape or cond.shape[0] not in (1, n):
                raise ValueError(f"conditioned_on must have shape (n or 1, "
                                 f"{', '.join(map(str, self.input_shape))}); got {tuple(cond.shape)}")
            cond = cond.expand_as(x)
            known = ~torch.isnan(cond) & (cond >= 0)
            self.check_input(torch.where(known, cond, torch.zeros_like(cond)), "conditioned_on")
            x = torch.where(known, cond, x)
        u = torch.rand(n, self.num_dims, generator=generator, device=device)
        if n == 0:
            return x
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
