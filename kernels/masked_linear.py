"""Triton kernels of fastgen.ops.masked_linear (math: csrc/masked_linear/masked_linear.h).

One tiled product kernel C = A B (+ bias) with the 0/1 mask applied by select either to the
loaded B tile (forward: B = Wm^T, grad x: B = Wm) or to the finished C tile (grad W), launched
once per block of the layout on the block's span only, so zero blocks of the mask cost nothing:
    forward   y[:, r0:r1]  = x[:, c0:c1] where(M, W, 0)[r0:r1, c0:c1]^T + b[r0:r1]
    grad x    gx[:, c0:c1] = gy[:, r0:r1] where(M, W, 0)[r0:r1, c0:c1]
    grad W    gW[r0:r1, c0:c1] = where(M, gy[:, r0:r1]^T x[:, c0:c1], 0), 0 outside the spans
Accumulation in fp32 (fp64 for fp64 inputs, by broadcast-and-sum: tl.dot has no fp64 path).
bf16 tiles go to tl.dot as they are on the GPU (tensor cores, fp32 accumulation; the
interpreter widens them to fp32 first); fp32 tiles in IEEE
precision, or TF32 where torch's matmul setting allows it (kernels/_common.dot_precision).
Offsets are int64: rows, columns and k are widened before they meet a stride.
"""
import torch
import triton
import triton.language as tl

from fastgen.kernels._common import INTERPRET, dot_precision, on_device


@triton.jit
def _masked_mm_kernel(a_ptr, b_ptr, m_ptr, c_ptr, bias_ptr, M, N, K,
                      s_am, s_ak, s_bk, s_bn, s_mr, s_mc, s_cm, s_cn,
                      HAS_BIAS: tl.constexpr, MASK_B: tl.constexpr, MASK_C: tl.constexpr,
                      FP64: tl.constexpr, BF16: tl.constexpr, PRECISION: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float64 if FP64 else tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        k_ok = rk < K
        a = tl.load(a_ptr + rm[:, None] * s_am + rk[None, :] * s_ak,
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b_ok = k_ok[:, None] & n_ok[None, :]
        b = tl.load(b_ptr + rk[:, None] * s_bk + rn[None, :] * s_bn, mask=b_ok, other=0.0)
        if MASK_B:
            # B's mask shares B's (k, n) geometry: (s_mr, s_mc) are its strides along k and n
            keep = tl.load(m_ptr + rk[:, None] * s_mr + rn[None, :] * s_mc, mask=b_ok, other=0)
            b = tl.where(keep != 0, b, tl.zeros_like(b))
        if FP64:
            acc += tl.sum(a.to(tl.float64)[:, :, None] * b.to(tl.float64)[None, :, :], axis=1)
        elif BF16:
            acc += tl.dot(a, b, out_dtype=tl.float32)
        else:
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(acc.dtype)[None, :]
    c_ok = m_ok[:, None] & n_ok[None, :]
    if MASK_C:
        keep = tl.load(m_ptr + rm[:, None] * s_mr + rn[None, :] * s_mc, mask=c_ok, other=0)
        acc = tl.where(keep != 0, acc, tl.zeros_like(acc))
    tl.store(c_ptr + rm[:, None] * s_cm + rn[None, :] * s_cn,
             acc.to(c_ptr.dtype.element_ty), mask=c_ok)


def _launch(a, a_strides, b, b_strides, m, m_strides, c, bias, M, N, K, mask_b, mask_c):
    if M == 0 or N == 0:
        return
    block_m = 32 if M > 16 else 16
    block_n = 32 if N > 16 else 16
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _masked_mm_kernel[grid](
        a, b, m if m is not None else a, c, bias if bias is not None else c, M, N, K,
        *a_strides, *b_strides, *(m_strides if m is not None else (0, 0)), c.stride(0), c.stride(1),
        HAS_BIAS=bias is not None, MASK_B=mask_b, MASK_C=mask_c, FP64=c.dtype == torch.float64,
        BF16=c.dtype == torch.bfloat16 and not INTERPRET, PRECISION=dot_precision(c.dtype), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=32)


def _blocks(blocks):
    return [tuple(int(v) for v in row) for row in blocks.tolist()]


@on_device
def masked_linear_forward(x, weight, mask, bias, row_blocks, col_blocks=None):
    """x (N, I), weight/mask (O, I), bias (O,) or None -> y (N, O). The arguments of the op
    fastgen::masked_linear; the forward walks the row groups only (col_blocks is unused)."""
    x, weight, mask8 = x.contiguous(), weight.contiguous(), mask.contiguous().view(torch.uint8)
    n, out_f = x.shape[0], weight.shape[0]
    y = x.new_empty((n, out_f))
    for r0, r1, c0, c1, _, _ in _blocks(row_blocks):
        yv = y[:, r0:r1]
        w, mk = weight[r0:r1, c0:c1], mask8[r0:r1, c0:c1]
        _launch(x[:, c0:c1], (x.stride(0), x.stride(1)), w, (w.stride(1), w.stride(0)),
                mk, (mk.stride(1), mk.stride(0)), yv, None if bias is None else bias[r0:r1],
                n, r1 - r0, c1 - c0, mask_b=True, mask_c=False)
    return y


@on_device
def masked_linear_backward(grad_y, x, weight, mask, row_blocks, col_blocks, output_mask):
    """-> (grad_x (N, I), grad_weight (O, I), grad_bias (O,)); unrequested ones are empty."""
    gy, x, weight = grad_y.contiguous(), x.contiguous(), weight.contiguous()
    mask8 = mask.contiguous().view(torch.uint8)
    n, out_f, in_f = x.shape[0], weight.shape[0], weight.shape[1]
    none = x.new_empty(0)
    gx = gw = gb = none
    if output_mask[0]:
        gx = x.new_empty((n, in_f))
        for c0, c1, r0, r1, _, _ in _blocks(col_blocks):
            w, mk = weight[r0:r1, c0:c1], mask8[r0:r1, c0:c1]
            _launch(gy[:, r0:r1], (gy.stride(0), gy.stride(1)), w, (w.stride(0), w.stride(1)),
                    mk, (mk.stride(0), mk.stride(1)), gx[:, c0:c1], None, n, c1 - c0, r1 - r0,
                    mask_b=True, mask_c=False)
    if output_mask[1]:
        gw = torch.zeros_like(weight)
        for r0, r1, c0, c1, _, _ in _blocks(row_blocks):
            if c1 == c0:
                continue
            g, xs, mk = gy[:, r0:r1], x[:, c0:c1], mask8[r0:r1, c0:c1]
            _launch(g, (g.stride(1), g.stride(0)), xs, (xs.stride(0), xs.stride(1)),
                    mk, (mk.stride(0), mk.stride(1)), gw[r0:r1, c0:c1], None, r1 - r0, c1 - c0, n,
                    mask_b=False, mask_c=True)
    if output_mask[2]:
        gb = gy.sum(0) if n else x.new_zeros(out_f)
    return gx, gw, gb
