"""Triton kernels of fastgen.ops.reparameterize (math: csrc/reparameterize/reparameterize.h).

forward:  z = mu + s * eps, kl_row = 1/2 sum_d (mu^2 + s^2 - 1 - logvar), s = exp(logvar / 2)
backward: dmu = gz + gk mu, dlogvar = (gz eps s + gk (s^2 - 1)) / 2, deps = gz s
Tensors are viewed as (R, D) rows; accumulation in fp32 (fp64 for fp64 inputs).
"""
import torch
import triton
import triton.language as tl

from fastgen.kernels._common import exp, on_device, round_to


@triton.jit
def _forward_kernel(mu_ptr, lv_ptr, eps_ptr, z_ptr, kl_ptr, R, D,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    acc = tl.zeros([BLOCK_R], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (cols[None, :] < D)
        offs = rows[:, None] * D + cols[None, :]
        mu = tl.load(mu_ptr + offs, mask=ok, other=0.0).to(ACC)
        lv = tl.load(lv_ptr + offs, mask=ok, other=0.0).to(ACC)
        eps = tl.load(eps_ptr + offs, mask=ok, other=0.0).to(ACC)
        s = exp(lv * 0.5)
        tl.store(z_ptr + offs, round_to(mu + s * eps, z_ptr.dtype.element_ty), mask=ok)
        term = mu * mu + s * s - 1.0 - lv
        acc += tl.sum(tl.where(ok, term, 0.0), axis=1)
    tl.store(kl_ptr + rows, round_to(acc * 0.5, kl_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _backward_kernel(gz_ptr, gk_ptr, mu_ptr, lv_ptr, eps_ptr, dmu_ptr, dlv_ptr, deps_ptr, N, D,
                     BLOCK: tl.constexpr, ACC: tl.constexpr, EPS_GRAD: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    gz = tl.load(gz_ptr + offs, mask=ok, other=0.0).to(ACC)
    gk = tl.load(gk_ptr + offs // D, mask=ok, other=0.0).to(ACC)
    mu = tl.load(mu_ptr + offs, mask=ok, other=0.0).to(ACC)
    lv = tl.load(lv_ptr + offs, mask=ok, other=0.0).to(ACC)
    eps = tl.load(eps_ptr + offs, mask=ok, other=0.0).to(ACC)
    s = exp(lv * 0.5)
    tl.store(dmu_ptr + offs, round_to(gz + gk * mu, dmu_ptr.dtype.element_ty), mask=ok)
    dlv = 0.5 * (gz * eps * s + gk * (s * s - 1.0))
    tl.store(dlv_ptr + offs, round_to(dlv, dlv_ptr.dtype.element_ty), mask=ok)
    if EPS_GRAD:
        tl.store(deps_ptr + offs, round_to(gz * s, deps_ptr.dtype.element_ty), mask=ok)


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@on_device
def reparameterize_forward(mu, logvar, eps):
    mu, logvar, eps = mu.contiguous(), logvar.contiguous(), eps.contiguous()
    z = torch.empty_like(mu)
    kl = mu.new_empty(mu.shape[:-1])
    D = mu.shape[-1]
    if D == 0 or mu.numel() == 0:
        return z, kl.zero_()
    R = mu.numel() // D
    block_d = min(triton.next_power_of_2(D), 1024)
    block_r = max(1, min(4096 // block_d, triton.next_power_of_2(R)))
    _forward_kernel[(triton.cdiv(R, block_r),)](mu, logvar, eps, z, kl, R, D, BLOCK_R=block_r,
                                                BLOCK_D=block_d, ACC=_acc(mu.dtype))
    return z, kl


@on_device
def reparameterize_backward(grad_z, grad_kl, mu, logvar, eps, eps_requires_grad):
    grad_z, grad_kl = grad_z.contiguous(), grad_kl.contiguous()
    mu, logvar, eps = mu.contiguous(), logvar.contiguous(), eps.contiguous()
    dmu, dlv = torch.empty_like(mu), torch.empty_like(mu)
    deps = torch.empty_like(mu) if eps_requires_grad else mu.new_empty(0)
    N = mu.numel()
    if N == 0:
        return dmu, dlv, deps
    block = min(4096, triton.next_power_of_2(N))
    _backward_kernel[(triton.cdiv(N, block),)](
        grad_z, grad_kl, mu, logvar, eps, dmu, dlv, deps if eps_requires_grad else dmu, N,
        mu.shape[-1], BLOCK=block, ACC=_acc(mu.dtype), EPS_GRAD=eps_requires_grad)
    return dmu, dlv, deps
