"""NADELayer: the tied-weight NADE layer (Larochelle & Murray, 2011) on the fused nade op."""
import torch
from torch import nn

from fastgen.ops.nade import nade


class NADELayer(nn.Module):
    """forward(v) -> logits: v (N, D) inputs in step order (0/1, or levels / (K-1)) -> (N, D, L),
    the conditional logits of step t given steps < t (L = 1: Bernoulli; L = K: categorical).

    Parameters W (H, D), c (H,), V (D, L, H), b (D, L), initialised as in the NADE model."""

    def __init__(self, num_steps, hidden_size, num_logits=1, generator=None):
        super().__init__()
        for name, val in (("num_steps", num_steps), ("hidden_size", hidden_size), ("num_logits", num_logits)):
            if not isinstance(val, int) or val <= 0:
                raise ValueError(f"{name} must be a positive int; got {val!r}")
        d, h, k = num_steps, hidden_size, num_logits
        self.W = nn.Parameter(torch.randn(h, d, generator=generator) * (1.0 / d) ** 0.5)
        self.c = nn.Parameter(torch.zeros(h))
        self.V = nn.Parameter(torch.randn(d, k, h, generator=generator) * (1.0 / h) ** 0.5)
        self.b = nn.Parameter(torch.zeros(d, k))

    def forward(self, v):
        return nade(v, self.W, self.c, self.V, self.b)
