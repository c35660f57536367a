"""Reference for fastgen.ops.masked_linear: a linear layer whose weight is seen through a 0/1 mask."""
import torch


def masked_weight(weight, mask):
    """W ⊙ M as a select, never a product: a masked entry contributes exactly 0 even when the
    weight there is inf or NaN, and its gradient is exactly 0. Never mutates `weight`."""
    return torch.where(mask.bool(), weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def masked_linear(x, weight, mask, bias=None):
    """x: (..., I), weight: (O, I), mask: (O, I) bool or 0/1, bias: (O,) or None -> (..., O).

    y = x (W ⊙ M)^T + b."""
    y = torch.matmul(x, masked_weight(weight, mask).t())
    return y if bias is None else y + bias
