"""MaskedLinear: nn.Linear seen through a fixed 0/1 connectivity mask (MADE, FVSBN layers)."""
import math

import torch
from torch import nn

from fastgen.ops.masked_linear import check_mask, mask_layout, masked_linear


class MaskedLinear(nn.Module):
    """y = x (W ⊙ M)^T + b for x (..., in_features) -> (..., out_features).

    `mask` (out_features, in_features), bool or 0/1, is a buffer; the weight is never masked in
    place, so masked weights keep their values and get exactly-zero gradients. The mask's block
    layout (so the kernels skip its zero blocks) follows the mask: it is rebuilt when the mask
    buffer changes (set_mask, load_state_dict, an in-place edit, .to(device)), detected by the
    buffer's version counter and storage, which costs no device sync per call."""

    def __init__(self, in_features, out_features, mask, bias=True, dtype=None, device=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"MaskedLinear: {name} must be a non-negative int; got {v!r}")
        self.in_features, self.out_features = in_features, out_features
        kw = dict(dtype=dtype, device=device)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool,
                                                device=device))
        self.set_mask(mask)
        self.reset_parameters()

    def reset_parameters(self):
        # nn.Linear's init with the fan-in each unit really has would be nicer, but a unit's
        # fan-in changes when MADE resamples masks; keep nn.Linear's for drop-in parity.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @torch.no_grad()
    def set_mask(self, mask, layout=None):
        """Replace the mask (e.g. MADE's connectivity-agnostic resampling); weights unchanged.
        `layout`: mask_layout(mask) when the caller has it cached."""
        mask = torch.as_tensor(mask)
        if mask.shape != (self.out_features, self.in_features):
            raise ValueError(f"MaskedLinear: mask must have shape ({self.out_features}, "
                             f"{self.in_features}); got {tuple(mask.shape)}")
        given = mask
        mask = check_mask("MaskedLinear", mask.to(self.weight.device), self.weight)
        if layout is not None and not layout.covers(given):
            raise ValueError("MaskedLinear: layout does not belong to this mask; build it with "
                             "mask_layout(mask)")
        self.mask.copy_(mask)
        if layout is not None:
            layout._remember(self.mask)  # self.mask now holds `given`, which the layout covers
        self._set_layout(mask_layout(self.mask) if layout is None else layout)

    def _mask_key(self):
        return (id(self.mask), self.mask._version, self.mask.data_ptr())

    def _set_layout(self, layout):
        # plain attributes, not buffers: the layout is host-side metadata and stays on the CPU
        self._layout, self._layout_key = layout, self._mask_key()

    @property
    def layout(self):
        """The MaskLayout of the current mask (rebuilt, a host read of the mask, when it changed)."""
        if self._layout_key != self._mask_key():
            self._set_layout(mask_layout(self.mask))
        return self._layout

    def forward(self, x):
        # under torch.compile the dense layout (correct for any mask): a compiled graph cannot
        # see the mask's version counter, so a layout of ours could go stale inside it
        layout = None if torch.compiler.is_compiling() else self.layout
        return masked_linear(x, self.weight, self.mask, self.bias, layout=layout)

    def extra_repr(self):
        density = self.mask.float().mean().item() if self.mask.numel() else 0.0
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, density={density:.3f}")
