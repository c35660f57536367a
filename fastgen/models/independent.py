"""The two simplest autoregressive baselines: independent pixels and a first-order Markov chain.

For n binary pixels: IndependentBernoulli has n parameters, MarkovChain 2n - 1 (the first
pixel's, then one per (pixel, previous value)); the full joint table has 2^n - 1
(full_joint_num_parameters), which is why everything else factorises.
With K levels: (K-1) n, (K-1) + (n-1) K (K-1) and K^n - 1.
"""
import torch
from torch import nn

from fastgen.models.base import AutoregressiveModel, inverse_cdf


def full_joint_num_parameters(num_pixels, num_levels=2):
    """Free parameters of the full joint table over `num_pixels` pixels with `num_levels`
    levels each: K^n - 1 (an exact Python int; it overflows any float for MNIST)."""
    if not isinstance(num_pixels, int) or num_pixels < 0:
        raise ValueError(f"num_pixels must be a non-negative int; got {num_pixels!r}")
    if not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"num_levels must be an int >= 2; got {num_levels!r}")
    return num_levels ** num_pixels - 1


def _head_logits(free):
    """(..., K-1) free logits -> the head's (..., L) logits: a Bernoulli logit itself when K = 2,
    else K categorical logits with level 0's pinned to 0 (identifiable)."""
    if free.shape[-1] == 1:
        return free
    return torch.cat([free.new_zeros(free.shape[:-1] + (1,)), free], dim=-1)


class IndependentBernoulli(AutoregressiveModel):
    """p(x) = prod_d Cat(x_d; softmax(theta_d)): every pixel on its own (Bernoulli when K=2)."""

    def __init__(self, input_shape=(1, 28, 28), num_levels=2):
        super().__init__(input_shape, num_levels)
        self.free_logits = nn.Parameter(torch.zeros(self.num_dims, num_levels - 1))

    def _dim_logits(self):
        return _head_logits(self.free_logits)               # (D, L)

    def logits(self, x):
        x = self.check_input(x)
        per_dim = self._dim_logits().t().reshape(self.num_logits, *self.input_shape)
        return per_dim.unsqueeze(0).expand(x.shape[0], *per_dim.shape)

    def _sample_fast(self, x, known, u):
        # every conditional is known up front: one inverse-CDF call over all (example, step)
        n, order = x.shape[0], self.ordering().to(x.device)
        logits = self._dim_logits()[order]                  # (D, L) in step order
        draws = inverse_cdf(logits.unsqueeze(0).expand(n, -1, -1).reshape(-1, self.num_logits),
                            u.reshape(-1)).view(n, -1)
        flat_x, flat_known = x.view(n, -1), known.view(n, -1)
        flat_x[:, order] = torch.where(flat_known[:, order], flat_x[:, order], draws)
        return x


class MarkovChain(AutoregressiveModel):
    """p(x) = p(x_o1) prod_{t>1} p(x_ot | x_o(t-1)): each pixel depends on the previous one in
    the ordering (raster order by default), with its own transition table."""

    def __init__(self, input_shape=(1, 28, 28), num_levels=2):
        super().__init__(input_shape, num_levels)
        k = num_levels
        self.first_logits = nn.Parameter(torch.zeros(k - 1))
        self.transition_logits = nn.Parameter(torch.zeros(max(self.num_dims - 1, 0), k, k - 1))

    def _step_logits(self, prev):
        """prev: (N, D-1) long levels of the previous pixel of steps 1.. -> (N, D, L)."""
        first = _head_logits(self.first_logits).expand(prev.shape[0], 1, self.num_logits)
        steps = torch.arange(self.num_dims - 1, device=prev.device)
        rest = _head_logits(self.transition_logits[steps, prev])   # (N, D-1, L)
        return torch.cat([first, rest], dim=1)

    def logits(self, x):
        x = self.check_input(x)
        n, order = x.shape[0], self.ordering().to(x.device)
        xs = x.reshape(n, self.num_dims)[:, order].long()
        by_step = self._step_logits(xs[:, :-1])            # (N, D, K)
        out = torch.empty_like(by_step)
        out[:, order] = by_step
        return out.transpose(1, 2).reshape(n, self.num_logits, *self.input_shape)

    def _sample_fast(self, x, known, u):
        n, order = x.shape[0], self.ordering().tolist()
        flat_x, flat_known = x.view(n, -1), known.view(n, -1)
        first = _head_logits(self.first_logits)
        for step, d in enumerate(order):
            if step == 0:
                logits = first.expand(n, -1)
            else:
                prev = flat_x[:, order[step - 1]].long()
                logits = _head_logits(self.transition_logits[step - 1][prev])
            draw = inverse_cdf(logits, u[:, step])
            flat_x[:, d] = torch.where(flat_known[:, d], flat_x[:, d], draw)
        return x
