"""NADE with tied weights (Larochelle & Murray, 2011), binary or K-level pixels.

In step order t (pixel o_t), with v = x / (K-1):
    a_t = c + sum_{s<t} W[:, o_s] v_os      (H,)  the shared, running pre-activation
    h_t = sigmoid(a_t)
    logits_t = V[o_t] h_t + b[o_t]           (L,): one Bernoulli logit when K = 2, else K
Density: fastgen.ops.nade, O(D H) per example without materialising (N, D, H) (the fused op; its
reference is the cumulative-sum formula). Sampling keeps a and adds one column of W per sampled
pixel: O(D H) per example, not O(D^2 H).
"""
import torch
from torch import nn

from fastgen.models.base import AutoregressiveModel, inverse_cdf
from fastgen.ops.nade import nade as nade_layer


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

    def _natural_order(self):
        """Whether the ordering is the identity (then nothing is gathered); cached per version
        of the order buffer (load_state_dict may change it), so no host sync per call."""
        key = (self.order.data_ptr(), self.order._version)
        if getattr(self, "_natural_key", None) != key:
            self._natural = bool(torch.equal(self.order.cpu(), torch.arange(self.num_dims)))
            self._natural_key = key
        return self._natural

    def logits(self, x):
        x = self.check_input(x)
        n, k = x.shape[0], self.num_logits
        v = self.unit_levels(x)
        if self._natural_order():
            by_step = nade_layer(v, self.W, self.c, self.V, self.b)                  # (N, D, L)
            return by_step.transpose(1, 2).reshape(n, k, *self.input_shape)
        o = self.order
        by_step = nade_layer(v[:, o], self.W[:, o], self.c, self.V[o], self.b[o])
        out = torch.empty_like(by_step)
        out[:, o] = by_step
        return out.transpose(1, 2).reshape(n, k, *self.input_shape)

    def _sample_incremental(self, x, known, u):
        n = x.shape[0]
        flat_x, flat_known = x.view(n, -1), known.view(n, -1)
        # float64 running sum of the products rounded to the model's dtype: exactly the
        # pre-activations of the density path (fastgen.ops.nade sums the same terms in float64 in
        # every implementation, as its reference's torch.cumsum does); h and the logits then
        # agree with it to a rounding of the last bit (sigmoid and dot-product implementations)
        act = self.c.double().expand(n, -1).clone()
        compute = torch.float32 if self.c.dtype == torch.bfloat16 else self.c.dtype
        for step, d in enumerate(self.order.tolist()):
            hid = torch.sigmoid(act.to(compute)).to(self.V.dtype)
            logits = torch.einsum("nh,kh->nk", hid, self.V[d]) + self.b[d]
            draw = inverse_cdf(logits, u[:, step])
            flat_x[:, d] = torch.where(flat_known[:, d], flat_x[:, d], draw)
            act += ((flat_x[:, d] / (self.num_levels - 1))[:, None] * self.W[:, d][None, :]).double()
        return x
