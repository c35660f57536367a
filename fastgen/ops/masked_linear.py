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
with Wm = where(M, W, 0). A layout is two int64 CPU tensors (G, 6): row groups
[r0, r1, c0, c1, d0, d1] partitioning 0..O, column groups [c0, c1, r0, r1, d0, d1] partitioning
0..I, where [d0, d1) is a range inside the span on which the group's mask is all ones (empty when
d0 == d1): there the CPU kernel reads W in place instead of packing where(M, W, 0) (a staircase
group is mostly such a range: FVSBN's triangle, MADE's degree-sorted units).

Implementations: "reference", "cpp"/"cuda" (fastgen::masked_linear) and "triton"
(fastgen::masked_linear_triton), declared once in SPEC (one fake kernel, one autograd wiring, the
choice of implementation).
"""
import math
import weakref

import torch

from fastgen.ops._common import OpSpec, check_float, check_like
from fastgen.reference import masked_linear as _reference

OP = "masked_linear"
# Re-measured with the CPU kernel on oneDNN (about 10 us a GEMM call, ~230 GFLOP/s a core: one
# call is worth ~4500 weight entries at batch 256): MADE layers at D=784, H=2048 ran within noise
# of each other for tiles 32..256 and thresholds 2048..4096, so the values stay.
TILE = 128          # rows of the mask examined as one unit when building a layout
GEMM_OVERHEAD = 4096  # weight entries one extra GEMM call is worth (merging threshold)
MIN_ONES = 16       # the shortest all-ones range worth its own GEMM call (CPU: W read in place)


class MaskLayout:
    """The block structure of a mask (see module docstring); build it with mask_layout.

    row_blocks, col_blocks: int64 CPU tensors (G, 6). A layout is correct for a mask when its
    blocks cover every non-zero of it and its all-ones ranges hold no zero of it (dense_layout,
    which claims no all-ones range, covers any mask); masked_linear refuses one that is not.
    The check reads the mask on the host, so a layout remembers the masks it was checked
    against (the tensor, its version counter and storage; up to a few), and a call with one of
    them unchanged costs no check and no device sync: the hot path of a module whose mask stays
    put. A mask edited in place or reloaded bumps its version and is checked again."""

    __slots__ = ("row_blocks", "col_blocks", "_known")
    _KNOWN_MAX = 8

    def __init__(self, row_blocks, col_blocks):
        self.row_blocks, self.col_blocks = row_blocks, col_blocks
        self._known = []  # (weakref to a mask tensor, its _version, its data_ptr) checked to be covered

    def __getstate__(self):  # (pickle, deepcopy) the checked masks are not carried over
        return (self.row_blocks, self.col_blocks)

    def __setstate__(self, state):
        self.row_blocks, self.col_blocks = state
        self._known = []

    def __iter__(self):  # row_blocks, col_blocks = layout
        return iter((self.row_blocks, self.col_blocks))

    def __repr__(self):
        return f"MaskLayout(row_blocks={self.row_blocks.tolist()}, col_blocks={self.col_blocks.tolist()})"

    def _key_known(self, mask):
        version, ptr = mask._version, mask.data_ptr()
        return any(ref() is mask and v == version and p == ptr for ref, v, p in self._known)

    def _remember(self, mask):
        self._known = [k for k in self._known if k[0]() is not None and k[0]() is not mask]
        self._known.append((weakref.ref(mask), mask._version, mask.data_ptr()))
        del self._known[:-self._KNOWN_MAX]

    def covers(self, mask):
        """Whether every non-zero of the (O, I) mask lies inside the blocks and every all-ones
        range holds only ones (a host read of the mask, unless this mask, unchanged, was checked
        before)."""
        if self._key_known(mask):
            return True
        ok = _blocks_cover(self.row_blocks, mask.detach() != 0) and \
            _blocks_cover(self.col_blocks, (mask.detach() != 0).t())
        if ok:
            self._remember(mask)
        return ok


def _blocks_cover(blocks, m):
    """Whether the groups [a0, a1, b0, b1, d0, d1] partition m's rows in order, hold all of m's
    non-zeros in their spans [b0, b1) and only non-zeros in their all-ones ranges [d0, d1)."""
    rows, cols = m.shape
    if blocks.dim() != 2 or blocks.shape[1] != 6 or blocks.dtype != torch.int64:
        return False
    b = blocks.cpu()
    starts, ends = b[:, 0], b[:, 1]
    if rows == 0:
        return b.shape[0] == 0 or bool((ends == starts).all())
    if b.shape[0] == 0 or starts[0] != 0 or ends[-1] != rows or bool((ends < starts).any()) or \
            bool((starts[1:] != ends[:-1]).any()) or bool((b[:, 2:] < 0).any()) or bool((b[:, 3] > cols).any()) \
            or bool((b[:, 4] > b[:, 5]).any()) or \
            bool(((b[:, 4] < b[:, 5]) & ((b[:, 4] < b[:, 2]) | (b[:, 5] > b[:, 3]))).any()):
        return False
    counts = (ends - starts).to(m.device)
    lo, hi, d0, d1 = (torch.repeat_interleave(b[:, k].to(m.device), counts, output_size=rows) for k in (2, 3, 4, 5))
    j = torch.arange(cols, device=m.device)
    outside = (j < lo[:, None]) | (j >= hi[:, None])
    ones = (j >= d0[:, None]) & (j < d1[:, None])
    return not bool((m & outside).any()) and not bool((~m & ones).any())


def _ones_range(block):
    """The longest run of columns on which the bool block (rows, span) is all ones: (d0, d1)
    relative to the block, (0, 0) when it is shorter than MIN_ONES."""
    full = block.all(0).tolist() if block.shape[0] else []
    best, start = (0, 0), None
    for c, v in enumerate(full + [False]):
        if v and start is None:
            start = c
        elif not v and start is not None:
            if c - start > best[1] - best[0]:
                best = (start, c)
            start = None
    return best if best[1] - best[0] >= MIN_ONES else (0, 0)


def _groups(mask, tile, overhead):
    """Row groups [r0, r1, c0, c1, d0, d1] of a bool mask (O, I): spans of rows in tiles of
    `tile`, neighbours merged while the merged GEMM wastes less than `overhead` entries; then
    each group's longest all-ones range."""
    rows, cols = mask.shape
    if rows == 0:
        return torch.zeros(0, 6, dtype=torch.int64)
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
    m = mask.cpu()
    for g in groups:
        d0, d1 = _ones_range(m[g[0]:g[1], g[2]:g[3]])
        g += [g[2] + d0, g[2] + d1] if d1 > d0 else [g[2], g[2]]
    return torch.tensor(groups, dtype=torch.int64).view(-1, 6)


def mask_layout(mask, tile=TILE, overhead=GEMM_OVERHEAD):
    """The MaskLayout of a (O, I) 0/1 or bool mask. Reads the mask on the host: do it once per
    mask (fastgen.nn.MaskedLinear does), not per call."""
    m = mask.detach().bool()
    layout = MaskLayout(_groups(m, tile, overhead), _groups(m.t(), tile, overhead))
    if isinstance(mask, torch.Tensor):
        layout._remember(mask)  # built from it: covers it by construction
    return layout


def dense_layout(out_features, in_features):
    """One block covering everything: correct for any mask, skips nothing."""
    row = torch.tensor([[0, out_features, 0, in_features, 0, 0]], dtype=torch.int64)
    col = torch.tensor([[0, in_features, 0, out_features, 0, 0]], dtype=torch.int64)
    if out_features == 0 or in_features == 0:
        row = torch.tensor([[0, out_features, 0, 0, 0, 0]], dtype=torch.int64)[: int(out_features > 0)]
        col = torch.tensor([[0, in_features, 0, 0, 0, 0]], dtype=torch.int64)[: int(in_features > 0)]
    return MaskLayout(row, col)


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


def _reference_call(x, weight, mask, bias, layout):
    return _reference.masked_linear(x, weight, mask, bias)


def _call_kernel(op, x, weight, mask, bias, layout):
    """The kernels take x as (N, I) and a layout (built here when none is given)."""
    if layout is None:
        layout = dense_layout(*weight.shape) if torch.compiler.is_compiling() else mask_layout(mask)
    lead = x.shape[:-1]
    y = op(x.reshape(math.prod(lead), x.shape[-1]), weight, mask, bias, layout.row_blocks, layout.col_blocks)
    return y.view(*lead, weight.shape[0])


# On CUDA tensors "auto" runs cuBLAS on the pre-masked weight (the reference's matmul on
# where(M, W, 0): tensor cores, masked weights get exact-zero gradients); the SIMT kernel of ours
# is one to two orders of magnitude slower by estimate. "cuda" / "triton" by name.
SPEC = OpSpec(
    OP, reference=_reference_call, gpu_default="vendor", vendor=_reference_call, call_kernel=_call_kernel,
    schema="(Tensor x, Tensor weight, Tensor mask, Tensor? bias, Tensor row_blocks, Tensor col_blocks) -> Tensor",
    backward_schema="(Tensor grad_y, Tensor x, Tensor weight, Tensor mask, Tensor row_blocks, Tensor col_blocks, "
                    "bool[3] output_mask) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)",
    fake=_fake, fake_backward=_fake_backward, setup_context=_setup_context, make_backward=_make_backward)


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
    read of the mask; under torch.compile the dense layout is used instead). A layout whose
    blocks miss a non-zero of `mask` is refused (checked once per mask and mask version, see
    MaskLayout; under torch.compile it is trusted)."""
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
    given_mask = mask
    mask = check_mask(OP, mask, weight, check_values=not compiling)
    if layout is not None:
        if not isinstance(layout, MaskLayout):
            raise TypeError(f"fastgen.{OP}: layout must be a MaskLayout (from mask_layout(mask)); "
                            f"got {type(layout).__name__}")
        # (under torch.compile the layout is trusted: the check reads the mask on the host)
        if not compiling and not layout.covers(given_mask):
            raise ValueError(f"fastgen.{OP}: layout does not belong to this mask (the mask has "
                             "non-zeros outside the layout's blocks, or zeros inside its all-ones "
                             "ranges); build it with mask_layout(mask)")
    return SPEC.dispatch(x.device, x, weight, mask, bias, layout)
