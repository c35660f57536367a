"""Triton helpers shared by fastgen's kernels."""
import triton
import triton.language as tl


@triton.jit
def round_to(x, dtype):
    """x (fp32/fp64) as dtype, rounded to nearest even. The interpreter's fp32 -> bf16 cast
    truncates (whatever fp_downcast_rounding says), so bf16 is rounded here by hand: add
    0x7FFF plus the lowest kept bit to the fp32 bits, keep the top 16 (NaN stays NaN, overflow
    goes to inf). On a GPU this equals the native cast."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)
