"""fastgen.ops.masked_linear: y = x (W ⊙ M)^T + b that skips the all-zero blocks of the mask.

The mask is fixed per layer, so its block structure is worked out once (`mask_layout`): the
output rows are cut into groups, each with the span [c0, c1) of input columns its rows touch,
and the input columns likewise into groups with the span of output rows touching them. For a
MADE mask with units sorted by degree the spans are prefixes (a staircase), so every kernel
does a few large GEMM tiles over contiguous spans and its cost falls with the density:
    forward   y[:, r0:r1]  = x[:, c0:c1] Wm[r0:r1, c0:c1]^T + b[r0:r1]      (row groups)
    grad x    gx[:, c0:c1] = gy[:, r0:r1] Wm[r0:r1, c0:c1]                  (column groups)
    grad W    gW[r0:r1, c0:c1] = M ⊙ gy[:, r0:r1]^T x[:, c0:c1], 0 elsewhere (row groups)
    grad b    gb = sum_n gy[n]
with Wm = where(M, W, 0). A layout is two int64 CPU tensors (G, 4): row groups [r0, r1, c0, c1]
partitioning 0..O, column groups [c0, c1, r0, r1] partitioning 0..I.

Implementations: "reference", "cpp"/"cuda" (fastgen::masked_linear) and "triton"
(fastgen::masked_linear_triton), sharing one fake kernel and one autograd wiring.
"""
import math
from typing import NamedTuple

import torch

from fastgen import _impl
from fastgen.ops._common import check_float, check_like, register_siblings
from fastgen.reference import masked_linear as _reference

OP = "masked_linear"
GPU_DEFAULT = "cuda"
# Re-measured with the CPU kernel on oneDNN (about 10 us a GEMM call, ~230 GFLOP/s a core: one
# call is worth ~4500 weight entries at batch 256): MADE layers at D=784, H=2048 ran within noise
# of each other for tiles 32..256 and thresholds 2048..4096, so the values stay.
TILE = 128          # rows of the mask examined as one unit when building a layout
GEMM_OVERHEAD = 4096  # weight entries one extra GEMM call is worth (merging threshold)


class MaskLayout(NamedTuple):
    """The block structure of a mask (see module docstring); build it with mask_layout."""
    row_blocks: torch.Tensor
    col_blocks: torch.Tensor


def _groups(mask, tile, overhead):
    """Row groups [r0, r1, c0, c1] of a bool mask (O, I): spans of rows in tiles of `tile`,
    neighbours merged while the merged GEMM wastes less than `overhead` entries."""
    rows, cols = mask.shape
    if rows == 0:
        return torch.zeros(0, 4, dtype=torch.int64)
    n_tiles = -(-rows // tile)
    padded = torch.zeros(n_tiles * tile, cols, dtype=torch.bool)
    padded[:rows] = mask.cpu()
    touched = padded.view(n_tiles, tile, cols).any(1)
    idx = torch.arange(cols)
    if cols == 0:
        lo = hi = torch.zeros(n_tiles, dtype=torch.int64)
    else:
        lo = torch.where(touched, idx, cols).amin(1)
        hi = torch.where(touched, idx + 1, 0).amax(1)
    groups = []
    for t, (a, b) in enumerate(zip(lo.tolist(), hi.tolist())):
        r0, r1 = t * tile, min(rows, (t + 1) * tile)
        if b <= a:
            a = b = 0
        if groups:
            g = groups[-1]
            if g[3] <= g[2] and b <= a:   # both empty: extend
                g[1] = r1
                continue
            if g[3] > g[2] and b > a:
                m0, m1 = min(g[2], a), max(g[3], b)
                merged = (r1 - g[0]) * (m1 - m0)
                if merged <= (g[1] - g[0]) * (g[3] - g[2]) + (r1 - r0) * (b - a) + overhead:
                    g[1], g[2], g[3] = r1, m0, m1
                    continue
        groups.append([r0, r1, a, b])
    return torch.tensor(groups, dtype=torch.int64)


def mask_layout(mask, tile=TILE, overhead=GEMM_OVERHEAD):
    """The MaskLayout of a (O, I) 0/1 or bool mask. Reads the mask on the host: do it once per
    mask (fastgen.nn.MaskedLinear does), not per call."""
    m = mask.detach().bool()
    return MaskLayout(_groups(m, tile, overhead), _groups(m.t(), tile, overhead))


def dense_layout(out_features, in_features):
    """One block covering everything: correct for any mask, skips nothing."""
    row = torch.tensor([[0, out_features, 0, in_features]], dtype=torch.int64)
    col = torch.tensor([[0, in_features, 0, out_features]], dtype=torch.int64)
    if out_features == 0 or in_features == 0:
        row = torch.tensor([[0, out_features, 0, 0]], dtype=torch.int64)[: int(out_features > 0)]
        col = torch.tensor([[0, in_features, 0, 0]], dtype=torch.int64)[: int(in_features > 0)]
    return MaskLayout(row, col)


# --- Triton sibling ops -------------------------------------------------------------------
@torch.library.custom_op("fastgen::masked_linear_triton", mutates_args=())
def _masked_linear_triton(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                          bias: torch.Tensor | None, row_blocks: torch.Tensor,
                          col_blocks: torch.Tensor) -> torch.Tensor:
    from fastgen.kernels.masked_linear import masked_linear_forward

    return masked_linear_forward(x, weight, mask, bias, row_blocks)


@torch.library.custom_op("fastgen::masked_linear_backward_triton", mutates_args=())
def _masked_linear_backward_triton(
        grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
        row_blocks: torch.Tensor, col_blocks: torch.Tensor,
        output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from fastgen.kernels.masked_linear import masked_linear_backward

    return masked_linear_backward(grad_y, x, weight, mask, row_blocks, col_blocks, output_mask)


# --- fake kernels -------------------------------------------------------------------------
def _fake(x, weight, mask, bias, row_blocks, col_blocks):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _fake_backward(grad_y, x, weight, mask, row_blocks, col_blocks, output_mask):
    gx = torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0] else x.new_empty(0)
    gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else x.new_empty(0)
    gb = x.new_empty((weight.shape[0],)) if output_mask[2] else x.new_empty(0)
    return gx, gw, gb


# --- autograd -----------------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    x, weight, mask, bias, row_blocks, col_blocks = inputs
    ctx.save_for_backward(x, weight, mask, row_blocks, col_blocks)
    ctx.has_bias = bias is not None


def _make_backward(backward_op):
    def backward(ctx, grad_y):
        x, weight, mask, row_blocks, col_blocks = ctx.saved_tensors
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                ctx.has_bias and ctx.needs_input_grad[3]]
        gx, gw, gb = backward_op(grad_y.contiguous(), x, weight, mask, row_blocks, col_blocks, need)
        return (gx if need[0] else None, gw if need[1] else None, None,
                gb if need[2] else None, None, None)

    return backward


register_siblings("masked_linear", _fake, _fake_backward, _setup_context, _make_backward)


# --- the public op --------------------------------------------------------------------------
def check_mask(op, mask, weight, check_values=True):
    """mask must be a (O, I) bool tensor or one holding only 0 and 1, on weight's device.
    Returns it as bool."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"fastgen.{op}: mask must be a torch.Tensor; got {type(mask).__name__}")
    if mask.shape != weight.shape:
        raise ValueError(f"fastgen.{op}: mask has shape {tuple(mask.shape)} but weight has "
                         f"{tuple(weight.shape)}")
    if mask.device != weight.device:
        raise ValueError(f"fastgen.{op}: mask is on {mask.device} but weight is on {weight.device}")
    if mask.is_complex():
        raise TypeError(f"fastgen.{op}: mask must be bool or hold 0/1; got dtype {mask.dtype}")
    if mask.dtype == torch.bool:
        return mask
    if check_values and mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"fastgen.{op}: mask must hold only 0 and 1 (or be bool)")
    return mask != 0


def masked_linear(x, weight, mask, bias=None, layout=None):
    """Masked linear layer: x (..., I), weight (O, I), mask (O, I) -> (..., O).

    y = x (W ⊙ M)^T + b. `mask` is bool or 0/1 (never applied in place; masked weights get an
    exactly-zero gradient and contribute 0 even if inf/NaN). `layout` (from mask_layout(mask))
    lets the kernels skip the mask's all-zero blocks; without it one is built here (a host
    read of the mask; under torch.compile the dense layout is used instead)."""
    check_float(OP, "x", x, min_dim=1)
    check_float(OP, "weight", weight, min_dim=2)
    if weight.dim() != 2:
        raise ValueError(f"fastgen.{OP}: weight must be 2-D (out_features, in_features); got "
                         f"shape {tuple(weight.shape)}")
    check_like(OP, "weight", weight, "x", x, same_shape=False)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"fastgen.{OP}: x has {x.shape[-1]} features but weight expects "
                         f"{weight.shape[1]} (in_features)")
    if bias is not None:
        check_like(OP, "weight", weight, "bias", bias, same_shape=False)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"fastgen.{OP}: bias must have shape ({weight.shape[0]},); got "
                             f"{tuple(bias.shape)}")
    compiling = torch.compiler.is_compiling()
    mask = check_mask(OP, mask, weight, check_values=not compiling)
    impl = _impl.select(OP, x.device, GPU_DEFAULT)
    if impl == "reference":
        return _reference.masked_linear(x, weight, mask, bias)
    if layout is None:
        layout = dense_layout(*weight.shape) if compiling else mask_layout(mask)
    lead = x.shape[:-1]
    x2 = x.reshape(math.prod(lead), x.shape[-1])
    fn = torch.ops.fastgen.masked_linear_triton if impl == "triton" else torch.ops.fastgen.masked_linear
    y = fn(x2, weight, mask, bias, layout.row_blocks, layout.col_blocks)
    return y.view(*lead, weight.shape[0])
