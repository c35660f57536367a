"""kernels/_common.py: the helpers every Triton kernel rounds and computes with, in the mode of
this run (interpreter on CPU tensors, or compiled on a GPU): bf16 rounding against torch's own
conversion (round to nearest even; every NaN stays NaN, the GPU's canonical 0x7FFFFFFF too), and
exp / log / division against float64."""
import pytest
import torch

from tests.conftest import TRITON_DEVICE

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from fastgen.kernels._common import div, exp, log, round_to  # noqa: E402


@triton.jit
def _round_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    tl.store(y_ptr + offs, round_to(tl.load(x_ptr + offs, mask=ok), y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _math_kernel(x_ptr, e_ptr, l_ptr, d_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(x_ptr + offs, mask=ok, other=1.0)
    tl.store(e_ptr + offs, exp(x), mask=ok)
    tl.store(l_ptr + offs, log(tl.abs(x)), mask=ok)
    tl.store(d_ptr + offs, div(tl.full(x.shape, 1.0, x.dtype), x), mask=ok)


def test_bf16_rounding_matches_torch_and_keeps_every_nan():
    bits = torch.tensor([0x7FFFFFFF, 0xFFFFFFFF - (1 << 32), 0x7FC00000, 0x7F800001, 0x7F800000,
                         0x7F7FFFFF, 0x3F808000, 0x3F818000, 0x3F807FFF, 0x00000001, 0x80000000 - (1 << 32)],
                        dtype=torch.int64).to(torch.int32)
    x = torch.cat([bits.view(torch.float32), torch.randn(1000, generator=torch.Generator().manual_seed(0))])
    x = x.to(TRITON_DEVICE)
    y = torch.empty(x.shape, dtype=torch.bfloat16, device=TRITON_DEVICE)
    _round_kernel[(triton.cdiv(x.numel(), 256),)](x, y, x.numel(), BLOCK=256)
    expected = x.to(torch.bfloat16)
    assert torch.equal(torch.isnan(y), torch.isnan(x))
    ok = ~torch.isnan(x)
    assert torch.equal(y[ok].view(torch.int16), expected[ok].view(torch.int16))  # bit-exact, signed zeros too


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_log_div_are_accurate(dtype):
    x = torch.cat([torch.linspace(-87, 88, 2001), torch.linspace(0.001, 3, 500)]).to(dtype)
    x = x.to(TRITON_DEVICE)
    outs = [torch.empty_like(x) for _ in range(3)]
    _math_kernel[(triton.cdiv(x.numel(), 512),)](x, *outs, x.numel(), BLOCK=512)
    xd = x.double()
    rtol = 3e-7 if dtype == torch.float32 else 1e-15
    for got, want in zip(outs, (xd.exp(), xd.abs().log(), 1 / xd)):
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=1e-30)
