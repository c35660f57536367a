"""Triton kernels of fastgen.ops.discriminator_loss / generator_loss (math: csrc/gan_loss/gan_loss.h).

Each loss term is the mean over one tensor of l(x) = c * f(s * x), s, c in {+1, -1}:
    FAMILY 0 (softplus)  f(y) = max(y, 0) + log1p(e^-|y|)   dl/dx = c s sigmoid(s x)
    FAMILY 1 (hinge)     f(y) = relu(1 + y)                  dl/dx = c s [1 + s x > 0]
    FAMILY 2 (linear)    f(y) = y                            dl/dx = c s
Stage 1: each program reduces BLOCK elements to one partial sum (fp32 accumulation, fp64 for
fp64) and writes dl/dx / n. Stage 2: one program adds the partials of each tensor in order, in
fp64, and divides by n (NaN for an empty tensor, as torch.mean). No atomics: the result is
deterministic. exp, log and fp32 division are the precise ones on the GPU (kernels/_common.py).
log1p(e) for e in (0, 1] is log1p_unit (kernels/_common.py: the interpreter has no libdevice
log1p).
"""
import torch
import triton
import triton.language as tl

from fastgen.kernels._common import div, exp, log1p_unit, on_device, round_to
from fastgen.reference.gan_loss import DISCRIMINATOR_KINDS, GENERATOR_KINDS

SOFTPLUS, HINGE, LINEAR = 0, 1, 2
# The kinds are fastgen.reference.gan_loss's (the one table of GAN kinds); here only their terms:
# kind -> (family, (s, c) per term), the real term first for the discriminator.
DISCRIMINATOR = {"bce": (SOFTPLUS, ((-1.0, 1.0), (1.0, 1.0))),
                 "hinge": (HINGE, ((-1.0, 1.0), (1.0, 1.0)))}
GENERATOR = {"minimax": (SOFTPLUS, ((1.0, -1.0),)),
             "nonsaturating": (SOFTPLUS, ((-1.0, 1.0),)),
             "hinge": (LINEAR, ((-1.0, 1.0),))}
if set(DISCRIMINATOR) != set(DISCRIMINATOR_KINDS) or set(GENERATOR) != set(GENERATOR_KINDS):
    raise ImportError("kernels/gan_loss.py: the terms table does not cover exactly the kinds of "
                      f"fastgen.reference.gan_loss ({DISCRIMINATOR_KINDS}, {GENERATOR_KINDS})")
BLOCK = 2048
FINAL_BLOCK = 1024


@triton.jit
def _term_kernel(x_ptr, grad_ptr, partial_ptr, N, S: tl.constexpr, C: tl.constexpr,
                 FAMILY: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr,
                 ACC: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(ACC)
    y = S * x
    # 1/n formed here in ACC: a float kernel argument would be rounded to fp32
    cs_inv_n = div(tl.full([], C * S, ACC), tl.cast(N, ACC))
    if FAMILY == 0:
        e = exp(-tl.abs(y))
        r = div(tl.full([BLOCK], 1.0, ACC), 1.0 + e)
        loss = C * (tl.maximum(y, 0.0) + log1p_unit(e))
        grad = cs_inv_n * tl.where(y >= 0, r, e * r)
    elif FAMILY == 1:
        h = 1.0 + y
        # NaN propagates (relu(NaN) = NaN, as the reference); the gradient passes a NaN as
        # relu's backward does (it zeroes only where the result is <= 0)
        loss = C * tl.where(h <= 0, 0.0, h)
        grad = tl.where(h <= 0, 0.0, cs_inv_n)
    else:
        loss = C * y
        grad = tl.zeros_like(y) + cs_inv_n
    if WRITE_GRAD:
        tl.store(grad_ptr + offs, round_to(grad, grad_ptr.dtype.element_ty), mask=ok)
    tl.store(partial_ptr + pid, tl.sum(tl.where(ok, loss, 0.0), axis=0))


@triton.jit
def _segment_mean(partial_ptr, count, n, BLOCK: tl.constexpr):
    total = tl.zeros([BLOCK], dtype=tl.float64)
    for i0 in range(0, count, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        total += tl.load(partial_ptr + idx, mask=idx < count, other=0.0).to(tl.float64)
    nf = tl.cast(n, tl.float64)
    return tl.where(n > 0, tl.sum(total, axis=0) / tl.maximum(nf, 1.0), float("nan"))  # fp64: exact /


@triton.jit
def _finalize_kernel(partial_ptr, count0, n0, count1, n1, loss_ptr,
                     TWO_TERMS: tl.constexpr, BLOCK: tl.constexpr):
    loss = _segment_mean(partial_ptr, count0, n0, BLOCK)
    if TWO_TERMS:
        loss += _segment_mean(partial_ptr + count0, count1, n1, BLOCK)
    tl.store(loss_ptr, round_to(loss, loss_ptr.dtype.element_ty))


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _run(tensors, wants, family, signs):
    """Launch stage 1 per tensor and stage 2 once -> (loss, grads...)."""
    tensors = [t.contiguous() for t in tensors]
    x0 = tensors[0]
    counts = [triton.cdiv(t.numel(), BLOCK) for t in tensors]
    acc_dtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
    partials = torch.empty(max(1, sum(counts)), dtype=acc_dtype, device=x0.device)
    grads, start = [], 0
    for t, want, (s, c), count in zip(tensors, wants, signs, counts):
        grad = torch.empty_like(t) if want else t.new_empty(0)
        grads.append(grad)
        n = t.numel()
        if n > 0:
            _term_kernel[(count,)](t, grad if want else t, partials[start:], n, S=s, C=c,
                                   FAMILY=family, WRITE_GRAD=want, BLOCK=BLOCK, ACC=_acc(t.dtype))
        start += count
    loss = x0.new_empty(())
    two = len(tensors) > 1
    _finalize_kernel[(1,)](partials, counts[0], tensors[0].numel(), counts[1] if two else 0,
                           tensors[1].numel() if two else 1, loss, TWO_TERMS=two, BLOCK=FINAL_BLOCK)
    return (loss, *grads)


@on_device
def discriminator_loss_forward(real_logits, fake_logits, kind, real_grad, fake_grad):
    family, signs = DISCRIMINATOR[kind]
    return _run([real_logits, fake_logits], [real_grad, fake_grad], family, signs)


@on_device
def generator_loss_forward(fake_logits, kind, fake_grad):
    family, signs = GENERATOR[kind]
    return _run([fake_logits], [fake_grad], family, signs)
