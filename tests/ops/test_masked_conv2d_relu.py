"""fastgen.ops.masked_conv2d with relu_input=True: conv(relu(x)), the ReLU fused into the kernels,
against the reference and F.conv2d(F.relu(x), W * mask)."""
import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen import _ext
from fastgen.ops import masked_conv2d
from fastgen.reference.masked_conv2d import masked_conv2d as reference
from tests.conftest import KERNEL_IMPLS, assert_close_bf16
from tests.ops.test_masked_conv2d import CASES, TOL, _inputs, oracle, oracle_mask


def relu_oracle(x, w, b, mask_type, groups):
    return oracle(F.relu(x), w, b, mask_type, groups)


def _with_zeros(x):
    """x with some exact zeros and a NaN-free mix of signs: relu'(0) = 0, as threshold_backward."""
    x = x.detach().clone()
    x.view(-1)[::5] = 0
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_relu_input_matches_reference_and_oracle(impl, device, case, dtype):
    x, w, b = _inputs(case, dtype, device, seed=3)
    x = _with_zeros(x).requires_grad_(True)
    w.requires_grad_(True), b.requires_grad_(True)
    mask_type, groups = case[7], case[8]
    gy = torch.randn(case[0], case[4], case[2], case[3], dtype=dtype, device=device)
    y = masked_conv2d(x, w, b, mask_type, groups, relu_input=True)
    tol = TOL[dtype]
    torch.testing.assert_close(y, reference(x, w, b, mask_type, groups, True), **tol)
    torch.testing.assert_close(y, relu_oracle(x, w, b, mask_type, groups), **tol)
    ours = torch.autograd.grad((y * gy).sum(), (x, w, b), allow_unused=True, materialize_grads=True)
    ref = torch.autograd.grad((relu_oracle(x, w, b, mask_type, groups) * gy).sum(), (x, w, b))
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, **tol)
    assert torch.equal(ours[0][x <= 0], torch.zeros_like(ours[0][x <= 0]))
    mask = oracle_mask(*w.shape, mask_type, groups).to(device)
    assert torch.equal(ours[1][mask == 0], torch.zeros_like(ours[1][mask == 0]))


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)
def test_relu_input_gradcheck_float64(impl, device):
    for shape, mask_type, groups in (((3, 3, 3, 3), "B", 3), ((4, 3, 1, 1), "B", 3), ((3, 3, 1, 3), "A", 1)):
        x, _, b = _inputs((1, 3, 3, 4, shape[0], 3, 3, mask_type, groups), torch.float64, device, requires_grad=True)
        w = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
        # (inputs away from 0, where relu is not differentiable)
        x = (x.detach() + 0.2 * torch.sign(x.detach())).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x, w, b: masked_conv2d(x, w, b, mask_type, groups, relu_input=True),
                                        (x, w, b))


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)
def test_relu_input_channels_last_nan_and_bf16(impl, device):
    x, w, b = _inputs((2, 5, 4, 6, 6, 3, 3, "B", 1), torch.float32, device, seed=4)
    w1 = torch.randn(6, 5, 1, 1, generator=torch.Generator().manual_seed(6)).to(device)
    for weight in (w, w1):
        for xin in (x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3)):
            torch.testing.assert_close(masked_conv2d(xin, weight, b, "B", 1, relu_input=True),
                                       relu_oracle(xin, weight, b, "B", 1))
        xn = x.clone()
        xn[0, 1, 2, 3] = float("nan")  # torch.relu keeps a NaN: so must the fused ReLU
        y = masked_conv2d(xn, weight, b, "B", 1, relu_input=True)
        # (against the reference: the oracle's multiply by the mask spreads the NaN through masked taps)
        assert torch.equal(y.isnan(), reference(xn, weight, b, "B", 1, True).isnan()) and y.isnan().any()
        # grad_x through the ReLU: zero where x <= 0, passed at a NaN (torch.relu's backward)
        xg, xr = xn.clone().requires_grad_(), xn.clone().requires_grad_()
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(device)
        (gx,) = torch.autograd.grad(masked_conv2d(xg, weight, b, "B", 1, relu_input=True), xg, gy)
        (gr,) = torch.autograd.grad(F.conv2d(torch.relu(xr), torch.where(oracle_mask(*weight.shape, "B", 1).to(device) > 0,
                                                                          weight, 0), b,
                                             padding=(weight.shape[2] // 2, weight.shape[3] // 2)), xr, gy)
        assert torch.isfinite(gr[0, 1, 2, 3]) and gr[0, 1, 2, 3] != 0
        torch.testing.assert_close(gx, gr, rtol=1e-4, atol=1e-4)
        xb, wb, bb = x.bfloat16(), weight.bfloat16(), b.bfloat16()
        assert_close_bf16(masked_conv2d(xb, wb, bb, "B", 1, relu_input=True),
                          reference(xb, wb, bb, "B", 1, True), relu_oracle(x.double(), weight.double(), b.double(), "B", 1))


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
@pytest.mark.parametrize("case", [(6, 5, 16, 16, 7, 5, 5, "A", 1), (3, 32, 20, 30, 16, 1, 1, "B", 1),
                                  (2, 40, 33, 40, 70, 1, 1, "B", 3)])
def test_relu_input_cpu_multiple_chunks_and_threads(case):
    """The 1x1 GEMM path's pixel blocks across chunks and threads (and a ragged last block)."""
    x, w, b = _inputs(case, torch.float32, requires_grad=True)
    mask_type, groups = case[7], case[8]
    gy = torch.randn(case[0], case[4], case[2], case[3])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with fastgen.use_impl("cpp"):
            y = masked_conv2d(x, w, b, mask_type, groups, relu_input=True)
            ours = torch.autograd.grad((y * gy).sum(), (x, w, b))
            # the weight and bias gradients are sums over the chunks, whichever worker ran them:
            # the same bits on every call
            for _ in range(4):
                again = torch.autograd.grad((masked_conv2d(x, w, b, mask_type, groups, relu_input=True) * gy).sum(),
                                            (x, w, b))
                for name, a, r in zip(("x", "weight", "bias"), again, ours):
                    assert torch.equal(a, r), f"grad {name} changed between calls"
    finally:
        torch.set_num_threads(threads)
    y_ref = relu_oracle(x, w, b, mask_type, groups)
    ref = torch.autograd.grad((y_ref * gy).sum(), (x, w, b))
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)
