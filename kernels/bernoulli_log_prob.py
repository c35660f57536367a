"""Triton kernel of fastgen.ops.bernoulli_log_prob (math: csrc/bernoulli_log_prob/bernoulli_log_prob.h).

log_prob[r] = sum_d (x l - max(l, 0)) - log1p(e^-|l|),  grad_l = x - sigmoid(l)
(1 - sigmoid(l) taken as sigmoid(-l) for l >= 0: full relative precision, as the C++ kernels)
over rows r of logits viewed as (R, D); row r reads row r % Rx of x (Rx = x's rows: leading
sample dimensions of logits broadcast over x). One program per BLOCK_R rows, looping over D;
accumulation in fp32 (fp64 for fp64). exp, log and fp32 division are the precise ones on the
GPU, and log1p(e) for e in (0, 1] is log1p_unit (kernels/_common.py).
"""
import torch
import triton
import triton.language as tl

from fastgen.kernels._common import div, exp, log1p_unit, on_device, round_to


@triton.jit
def _forward_kernel(l_ptr, x_ptr, out_ptr, grad_ptr, R, RX, D, WRITE_GRAD: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    x_rows = rows % RX
    acc = tl.zeros([BLOCK_R], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (cols[None, :] < D)
        offs = rows[:, None] * D + cols[None, :]
        l = tl.load(l_ptr + offs, mask=ok, other=0.0).to(ACC)
        x = tl.load(x_ptr + x_rows[:, None] * D + cols[None, :], mask=ok, other=0.0).to(ACC)
        e = exp(-tl.abs(l))
        term = (x * l - tl.maximum(l, 0.0)) - log1p_unit(e)
        acc += tl.sum(tl.where(ok, term, 0.0), axis=1)
        if WRITE_GRAD:  # x - sigmoid(l), with 1 - sigmoid(l) = sigmoid(-l) for l >= 0
            small = div(e, 1.0 + e)
            tl.store(grad_ptr + offs, round_to(tl.where(l >= 0, (x - 1.0) + small, x - small),
                                               grad_ptr.dtype.element_ty), mask=ok)
    tl.store(out_ptr + rows, round_to(acc, out_ptr.dtype.element_ty), mask=row_ok)


@on_device
def bernoulli_log_prob_forward(logits, x, logits_grad):
    logits, x = logits.contiguous(), x.contiguous()
    out = logits.new_empty(logits.shape[:-1])
    grad = torch.empty_like(logits) if logits_grad else logits.new_empty(0)
    D = logits.shape[-1]
    if D == 0 or logits.numel() == 0:
        return out.zero_(), grad
    R, RX = logits.numel() // D, x.numel() // D
    block_d = min(triton.next_power_of_2(D), 1024)
    block_r = max(1, min(4096 // block_d, triton.next_power_of_2(R)))
    _forward_kernel[(triton.cdiv(R, block_r),)](
        logits, x, out, grad if logits_grad else out, R, RX, D, WRITE_GRAD=logits_grad,
        BLOCK_R=block_r, BLOCK_D=block_d, ACC=tl.float64 if logits.dtype == torch.float64 else tl.float32)
    return out, grad
