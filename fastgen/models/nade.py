"""NADE with tied weights (Larochelle & Murray, 2011), binary or K-level pixels.

In step order t (pixel o_t), with v = x / (K-1):
    a_t = c + sum_{s<t} W[:, o_s] v_os      (H,)  the shared, running pre-activation
    h_t = sigmoid(a_t)
    logits_t = V[o_t] h_t + b[o_t]           (L,): one Bernoulli logit when K = 2, else K
Density: all a_t at once by a cumulative sum over steps, O(D H) per example. Sampling keeps a
and adds one column of W per sampled pixel: O(D H) per example, not O(D^2 H).
"""
import torch
from torch import nn

from fastgen.models.base import AutoregressiveModel, inverse_cdf


class NADE(AutoregressiveModel):
    def __init__(self, input_shape=(1, 28, 28), num_levels=2, hidden_size=500, ordering="natural", seed=0):
        super().__init__(input_shape, num_levels)
        if not isinstance(hidden_size, int) or hidden_size <= 0:
            raise ValueError(f"hidden_size must be a positive int; got {hidden_size!r}")
        d, k, h = self.num_dims, self.num_logits, hidden_size
        self.hidden_size = h
        self.register_buffer("order", self.ordering_tensor(ordering, seed))
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(h, d, generator=g) * (1.0 / d) ** 0.5)
        self.c = nn.Parameter(torch.zeros(h))
        self.V = nn.Parameter(torch.randn(d, k, h, generator=g) * (1.0 / h) ** 0.5)
        self.b = nn.Parameter(torch.zeros(d, k))

    def ordering(self):
        return self.order

    def _pre_activations(self, v):
        """v: (N, D) scaled inputs in step order -> a: (N, D, H), a_t = c + sum_{s<t} ...

        A cumulative sum over [c, contributions of steps 0..D-2]; the fast sampler adds the
        same terms in the same order."""
        n = v.shape[0]
        contrib = v[:, :-1, None] * self.W[:, self.order[:-1]].t().unsqueeze(0)   # (N, D-1, H)
        start = self.c.expand(n, 1, self.hidden_size)
        return torch.cumsum(torch.cat([start, contrib], dim=1), dim=1)

    def logits(self, x):
        x = self.check_input(x)
        n, k = x.shape[0], self.num_logits
        v = x.reshape(n, self.num_dims)[:, self.order] / (self.num_levels - 1)
        hid = torch.sigmoid(self._pre_activations(v))                           # (N, D, H)
        by_step = torch.einsum("ndh,dkh->ndk", hid, self.V[self.order]) + self.b[self.order]
        out = torch.empty_like(by_step)
        out[:, self.order] = by_step
        return out.transpose(1, 2).reshape(n, k, *self.input_shape)

    def _sample_incremental(self, x, known, u):
        n = x.shape[0]
        flat_x, flat_known = x.view(n, -1), known.view(n, -1)
        # float64 running sum: torch.cumsum accumulates float32 in double, so this reproduces
        # the density path's pre-activations bit for bit
        act = self.c.double().expand(n, -1).clone()
        for step, d in enumerate(self.order.tolist()):
            hid = torch.sigmoid(act.to(self.W.dtype))
            logits = torch.einsum("nh,kh->nk", hid, self.V[d]) + self.b[d]
            draw = inverse_cdf(logits, u[:, step])
            flat_x[:, d] = torch.where(flat_known[:, d], flat_x[:, d], draw)
            act += ((flat_x[:, d] / (self.num_levels - 1))[:, None] * self.W[:, d][None, :]).double()
        return x
