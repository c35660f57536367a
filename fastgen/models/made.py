"""MADE: masked autoencoder for distribution estimation (Germain et al., 2015).

Inputs v = x / (K-1) (D,), hidden layers of MaskedLinear + ReLU, output one Bernoulli logit per
pixel when K = 2, else K categorical logits.
Degrees: input d has its position in the ordering, 1..D; every hidden unit a degree m in
[min of the layer below, D-1]; a hidden unit sees the units below with degree <= m, the output
of pixel d sees the top hidden units with degree < deg(d): the autoregressive property.
Hidden units are kept sorted by degree, so with the natural ordering every mask is a staircase
whose zero blocks the masked_linear kernels skip.

Connectivity-agnostic training: `num_masks` mask sets (seeds 0..num_masks-1, each with new
hidden degrees and, for ordering="random", a new ordering) shared by one set of weights;
`next_mask()` moves to the next, `log_prob(x, ensemble=E)` averages the probabilities (not the
logits) of the first E masks.

Fast sampling: a unit of degree m only depends on pixels at positions <= m, so once the pixel
at position t-1 is drawn the units of degree t-1 are final in every layer. Step t computes just
those units (the first layer from running pre-activations, updated by one input column per
drawn pixel) and the K logits of pixel o_t: one forward pass per sample in total, instead of one
per pixel.
"""
import bisect
import math

import torch

from fastgen.models.base import AutoregressiveModel, inverse_cdf
from fastgen.nn.masked_linear import MaskedLinear
from fastgen.ops.masked_linear import mask_layout
from fastgen.reference.masked_linear import masked_weight


class MADE(AutoregressiveModel):
    def __init__(self, input_shape=(1, 28, 28), num_levels=2, hidden_sizes=(2048,),
                 ordering="natural", num_masks=1, seed=0):
        super().__init__(input_shape, num_levels)
        hidden_sizes = tuple(hidden_sizes)
        if not hidden_sizes or not all(isinstance(h, int) and h > 0 for h in hidden_sizes):
            raise ValueError(f"hidden_sizes must be a non-empty sequence of positive ints; got {hidden_sizes!r}")
        if not isinstance(num_masks, int) or num_masks < 1:
            raise ValueError(f"num_masks must be a positive int; got {num_masks!r}")
        if not (isinstance(ordering, str) and ordering in ("natural", "random")):
            self.ordering_tensor(ordering, seed)   # validates an explicit permutation
        self.hidden_sizes, self.num_masks, self.seed = hidden_sizes, num_masks, seed
        self._ordering_spec = ordering
        d, k = self.num_dims, self.num_logits
        sizes = (d,) + hidden_sizes
        self.hidden = torch.nn.ModuleList(
            MaskedLinear(sizes[i], sizes[i + 1], torch.ones(sizes[i + 1], sizes[i], dtype=torch.bool))
            for i in range(len(hidden_sizes)))
        self.output = MaskedLinear(hidden_sizes[-1], d * k, torch.ones(d * k, hidden_sizes[-1], dtype=torch.bool))
        self._cache = {}
        self.mask_index = 0
        self.set_mask(0)
        self.register_load_state_dict_post_hook(_follow_loaded_masks)

    # --- masks ------------------------------------------------------------------------------
    def _build_masks(self, index):
        """Ordering, per-layer degrees and masks of mask set `index` (deterministic in seed)."""
        d, k = self.num_dims, self.num_logits
        g = torch.Generator().manual_seed(self.seed * 100003 + index)
        spec = self._ordering_spec
        if isinstance(spec, str) and spec == "random":
            order = torch.randperm(d, generator=g)
        else:
            order = self.ordering_tensor(spec, self.seed)
        deg_in = torch.empty(d, dtype=torch.long)
        deg_in[order] = torch.arange(1, d + 1)
        degrees, masks, below = [], [], deg_in
        for h in self.hidden_sizes:
            low = min(int(below.min()), d - 1)
            deg = torch.randint(low, d, (h,), generator=g).sort().values  # sorted: staircase masks
            masks.append(deg[:, None] >= below[None, :])
            degrees.append(deg)
            below = deg
        masks.append((deg_in[:, None] > below[None, :]).repeat_interleave(k, dim=0))
        layouts = [mask_layout(m) for m in masks]
        return order, degrees, masks, layouts

    def set_mask(self, index):
        """Use mask set `index` (0 <= index < num_masks); the weights are shared by all."""
        if not isinstance(index, int) or not 0 <= index < self.num_masks:
            raise ValueError(f"mask index must be an int in [0, {self.num_masks}); got {index!r}")
        if index not in self._cache:
            self._cache[index] = self._build_masks(index)
        order, degrees, masks, layouts = self._cache[index]
        for layer, m, lay in zip(list(self.hidden) + [self.output], masks, layouts):
            layer.set_mask(m, layout=lay)
        self.order, self.degrees, self.mask_index = order, degrees, index

    def _mask_set_index(self, masks):
        """The index of the mask set whose masks equal `masks` (one per layer), or None."""
        for index in [self.mask_index] + [i for i in range(self.num_masks) if i != self.mask_index]:
            built = self._cache[index][2] if index in self._cache else self._build_masks(index)[2]
            if all(torch.equal(b.to(m.device), m.bool()) for b, m in zip(built, masks)):
                return index
        return None

    def next_mask(self):
        """Connectivity-agnostic training: move to the next mask set (cyclically)."""
        self.set_mask((self.mask_index + 1) % self.num_masks)

    def ordering(self):
        return self.order

    # --- density ----------------------------------------------------------------------------
    def logits(self, x):
        x = self.check_input(x)
        n, k = x.shape[0], self.num_logits
        h = self.unit_levels(x)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        out = self.output(h).view(n, self.num_dims, k)
        return out.transpose(1, 2).reshape(n, k, *self.input_shape)

    def log_prob(self, x, ensemble=1):
        """Exact log p(x) (N,) under the current mask set, or with ensemble=E the log of the
        average probability over mask sets 0..E-1 (a proper mixture, hence normalised)."""
        if not isinstance(ensemble, int) or not 1 <= ensemble <= self.num_masks:
            raise ValueError(f"ensemble must be an int in [1, {self.num_masks}]; got {ensemble!r}")
        if ensemble == 1:
            return super().log_prob(x)
        current = self.mask_index
        try:
            logps = []
            for i in range(ensemble):
                self.set_mask(i)
                logps.append(super().log_prob(x))
        finally:
            self.set_mask(current)
        return torch.logsumexp(torch.stack(logps), dim=0) - math.log(ensemble)

    # --- fast sampling ----------------------------------------------------------------------
    def _sample_incremental(self, x, known, u):
        n, k, d_total = x.shape[0], self.num_logits, self.num_dims
        flat_x, flat_known = x.view(n, -1), known.view(n, -1)
        layers = list(self.hidden)
        weights = [masked_weight(l.weight, l.mask) for l in layers]
        w_out = masked_weight(self.output.weight, self.output.mask)
        b_out = self.output.bias
        # count[l][m] = number of units of layer l with degree <= m (degrees sorted ascending)
        degs = [deg.tolist() for deg in self.degrees]
        count = [[bisect.bisect_right(dg, m) for m in range(d_total + 1)] for dg in degs]
        act1 = layers[0].bias.expand(n, -1).clone()          # running first-layer pre-activations
        hid = [x.new_zeros(n, l.out_features) for l in layers]
        for step, d in enumerate(self.order.tolist()):
            m = step                                          # units of degree m become final now
            lo, hi = (count[0][m - 1] if m > 0 else 0), count[0][m]
            if hi > lo:
                hid[0][:, lo:hi] = torch.relu(act1[:, lo:hi])
            for li in range(1, len(layers)):
                lo, hi = (count[li][m - 1] if m > 0 else 0), count[li][m]
                if hi > lo:
                    below = count[li - 1][m]
                    hid[li][:, lo:hi] = torch.relu(torch.addmm(
                        layers[li].bias[lo:hi], hid[li - 1][:, :below], weights[li][lo:hi, :below].t()))
            seen = count[-1][m]                               # top units of degree < step + 1
            rows = slice(d * k, (d + 1) * k)
            logits = torch.addmm(b_out[rows], hid[-1][:, :seen], w_out[rows, :seen].t())
            draw = inverse_cdf(logits, u[:, step])
            flat_x[:, d] = torch.where(flat_known[:, d], flat_x[:, d], draw)
            start = count[0][m]                               # only units of degree > step see d
            if start < act1.shape[1]:
                act1[:, start:].addr_(flat_x[:, d] / (self.num_levels - 1), weights[0][start:, d])
        return x


def _follow_loaded_masks(model, incompatible_keys):
    """After load_state_dict: the masks are buffers and arrive with the state, the ordering and
    degrees (plain attributes the samplers and ensembles read) follow them here, so a model
    saved on mask set i is back on mask set i. Masks that are none of this MADE's mask sets
    (another seed, ordering or num_masks) are refused rather than sampled from wrongly."""
    index = model._mask_set_index([layer.mask for layer in list(model.hidden) + [model.output]])
    if index is None:
        raise ValueError("MADE.load_state_dict: the loaded masks are none of this model's "
                         f"{model.num_masks} mask set(s); build the MADE with the seed, ordering "
                         "and num_masks it was saved with")
    model.set_mask(index)
