"""FVSBN: the fully visible sigmoid belief network (a logistic regression per pixel).

For the pixel at step t of the ordering, with v = x / (K-1) the inputs scaled to [0, 1]:
    logits_t = b_t + sum_{s<t} W_t,s v_os            (one Bernoulli logit per pixel when K=2, else K)
One MaskedLinear(D, D*L) holds all of it; its mask lets output (d, l) see input j iff j comes
before d in the ordering: n(n+1)/2 free parameters for n binary pixels. Sampling keeps the running pre-activations a = b + W_{:, <t} v_<t and
adds one input column per sampled pixel: O(D^2 K) per sample instead of O(D^3 K).
"""
import torch

from fastgen.models.base import AutoregressiveModel, inverse_cdf
from fastgen.nn.masked_linear import MaskedLinear
from fastgen.reference.masked_linear import masked_weight


class FVSBN(AutoregressiveModel):
    def __init__(self, input_shape=(1, 28, 28), num_levels=2, ordering="natural", seed=0):
        super().__init__(input_shape, num_levels)
        d, k = self.num_dims, self.num_logits
        self.register_buffer("order", self.ordering_tensor(ordering, seed))
        position = torch.empty(d, dtype=torch.long)
        position[self.order] = torch.arange(d)
        mask = (position[:, None] > position[None, :]).repeat_interleave(k, dim=0)  # (D*L, D)
        self.linear = MaskedLinear(d, d * k, mask)
        with torch.no_grad():
            self.linear.weight.mul_(0.1)
            self.linear.bias.zero_()

    def ordering(self):
        return self.order

    def logits(self, x):
        x = self.check_input(x)
        n, k = x.shape[0], self.num_logits
        out = self.linear(self.unit_levels(x))   # (N, D*L)
        return out.view(n, self.num_dims, k).transpose(1, 2).reshape(n, k, *self.input_shape)

    def _sample_incremental(self, x, known, u):
        n, k = x.shape[0], self.num_logits
        flat_x, flat_known = x.view(n, -1), known.view(n, -1)
        w = masked_weight(self.linear.weight, self.linear.mask)   # (D*L, D)
        act = self.linear.bias.expand(n, -1).clone()              # running pre-activations
        for step, d in enumerate(self.order.tolist()):
            draw = inverse_cdf(act[:, d * k:(d + 1) * k], u[:, step])
            flat_x[:, d] = torch.where(flat_known[:, d], flat_x[:, d], draw)
            act.addr_(flat_x[:, d] / (self.num_levels - 1), w[:, d])
        return x
