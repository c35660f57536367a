"""A tiny test-only autoregressive model (the real ones arrive from other branches): logistic
regression of each pixel on the earlier ones, the mask applied in forward (never to the weights)."""
import torch
from torch import nn

from fastgen.models.base import AutoregressiveModel


class ToyAR(AutoregressiveModel):
    def __init__(self, input_shape=(1, 8, 8), num_levels=2):
        super().__init__(input_shape, num_levels)
        d, k = self.num_dims, num_levels
        self.weight = nn.Parameter(torch.randn(k, d, d) * 0.01)
        self.bias = nn.Parameter(torch.zeros(k, d))
        # Row i (output pixel in raster order, channels inner) sees only columns of earlier steps.
        order = self.ordering()
        rank = torch.empty(d, dtype=torch.long)
        rank[order] = torch.arange(d)
        self.register_buffer("mask", (rank.unsqueeze(1) > rank.unsqueeze(0)).float())

    def logits(self, x):
        flat = x.flatten(1) / (self.num_levels - 1)
        out = torch.einsum("nd,kod->nko", flat, self.weight * self.mask) + self.bias
        return out.view(x.shape[0], self.num_levels, *self.input_shape)


class ToyNaN(ToyAR):
    """Diverged from the start: every logit is NaN."""

    def logits(self, x):
        return super().logits(x) * float("nan")


class NotAModel:
    """Has the interface's names but is not a subclass of a fastgen model base."""

    def __init__(self, input_shape=(1, 8, 8), num_levels=2):
        raise AssertionError("must never be instantiated")

    def log_prob(self, x):
        raise AssertionError
