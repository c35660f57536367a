"""Triton helpers shared by fastgen's kernels.

Two modes, fixed when this module is imported (as triton.jit fixes its own): compiled for a GPU,
or the interpreter (TRITON_INTERPRET=1, CPU tensors). They differ where the GPU's fast paths
are approximate and the interpreter lacks libdevice:
  - fp32 exp/log: tl.exp / tl.log compile to ex2.approx / lg2.approx (relative error growing
    with |x| for exp: about 2^-21 at |x| = 30); compiled, these helpers call libdevice's
    correctly range-reduced expf/logf (<= 2 ulp). The interpreter runs numpy's exp/log and has
    no libdevice: there tl.exp / tl.log are exact enough.
  - fp32 division: `/` compiles to div.full.f32 (2 ulp); compiled, `div` is tl.div_rn (IEEE
    round-to-nearest); the interpreter's `/` is IEEE already.
  - bf16 rounding: compiled, the native conversion (round to nearest even); the interpreter's
    fp32 -> bf16 cast truncates, so there it is rounded by hand.
Launchers run under the tensors' CUDA device (`on_device`): Triton launches on the current
device, not the tensor's.
"""
import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

if INTERPRET:
    @triton.jit
    def exp(x):
        return tl.exp(x)

    @triton.jit
    def log(x):
        return tl.log(x)

    @triton.jit
    def div(a, b):
        return a / b

    @triton.jit
    def round_to(x, dtype):
        """x (fp32/fp64) as dtype, rounded to nearest even: bf16 by hand (add 0x7FFF plus the
        lowest kept bit to the fp32 bits, keep the top 16; overflow goes to inf). A NaN is kept
        apart: the canonical NaN 0x7FFFFFFF would wrap to -0.0, and one whose payload sits in the
        low 16 bits would truncate to inf; its quiet bit is set before its top 16 bits are kept."""
        if dtype == tl.bfloat16:
            x32 = x.to(tl.float32)
            bits = x32.to(tl.uint32, bitcast=True)
            rounded = bits + 0x7FFF + ((bits >> 16) & 1)
            bits = tl.where(x32 == x32, rounded, bits | 0x400000)
            return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            return x.to(dtype)
else:
    from triton.language.extra import libdevice

    @triton.jit
    def exp(x):
        return libdevice.exp(x)

    @triton.jit
    def log(x):
        return libdevice.log(x)

    @triton.jit
    def div(a, b):
        if a.dtype == tl.float64:
            return a / b  # div.rn.f64 already
        else:
            return tl.div_rn(a, b)

    @triton.jit
    def round_to(x, dtype):
        """x as dtype, rounded to nearest even (the native conversion; NaN stays NaN)."""
        if dtype == tl.bfloat16:
            return x.to(tl.float32).to(tl.bfloat16, fp_downcast_rounding="rtne")
        else:
            return x.to(dtype)


@triton.jit
def log1p_unit(e):
    """log1p(e) for e in [0, 1] by the series of the compiled kernels (fastgen_math.h's
    fg_two_atanh): 2 atanh(t) = 2 (t + t^3/3 + t^5/5 + ...) with t = e / (2 + e) <= 1/3, 7 terms
    for fp32 and 17 for fp64 (the rest below half an ulp). Arithmetic only: the same result
    compiled and in the interpreter (which has no libdevice log1p, and whose fp64 log is not
    exact enough for e near 0)."""
    t = div(e, 2.0 + e)
    z = t * t
    if e.dtype == tl.float64:
        p = tl.full(e.shape, 1.0 / 33.0, tl.float64)
        for k in tl.static_range(15, -1, -1):
            p = p * z + 1.0 / (2 * k + 1)
    else:
        p = tl.full(e.shape, 1.0 / 13.0, e.dtype)
        for k in tl.static_range(5, -1, -1):
            p = p * z + 1.0 / (2 * k + 1)
    return 2.0 * t * p


def dot_precision(dtype):
    """tl.dot's input_precision for fp32 operands: "tf32" where torch's own fp32 matmuls may use
    TF32 (torch.backends.cuda.matmul.allow_tf32) on a GPU, else "ieee" (the interpreter has only
    ieee). bf16 operands go to tl.dot as they are (tensor cores, fp32 accumulation)."""
    if not INTERPRET and dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def on_device(fn):
    """Run a launcher under its first CUDA tensor argument's device (torch.cuda.device)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = next((a for a in args if isinstance(a, torch.Tensor) and a.is_cuda), None)
        with torch.cuda.device(t.device) if t is not None else contextlib.nullcontext():
            return fn(*args, **kwargs)
    return wrapper
