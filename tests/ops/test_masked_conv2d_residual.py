"""fastgen.ops.masked_conv2d with a residual: y = conv(relu?(x)) + bias + residual, the add fused into
the kernels' write of y, against the reference and F.conv2d(x, W * mask) + residual; its gradient
is grad_y itself."""
import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen import _ext
from fastgen.models import PixelCNN
from fastgen.nn import MaskedConv2d
from fastgen.ops import masked_conv2d
from fastgen.reference.masked_conv2d import masked_conv2d as reference
from tests.conftest import KERNEL_IMPLS, assert_close_bf16
from tests.ops.test_masked_conv2d import CASES, TOL, _inputs, oracle


def residual_oracle(x, w, b, mask_type, groups, relu, r):
    return oracle(F.relu(x) if relu else x, w, b, mask_type, groups) + r


def _residual(case, dtype, device, seed=7):
    n, _, h, w, cout = case[:5]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, cout, h, w, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_residual_matches_reference_and_oracle(impl, device, case, dtype, relu):
    x, w, b = _inputs(case, dtype, device, seed=3, requires_grad=True)
    r = _residual(case, dtype, device).requires_grad_(True)
    mask_type, groups = case[7], case[8]
    gy = torch.randn(r.shape, dtype=dtype, device=device)
    tol = TOL[dtype]
    for bias in (b, None):
        y = masked_conv2d(x, w, bias, mask_type, groups, relu_input=relu, residual=r)
        assert y.shape == r.shape and y.dtype == dtype
        torch.testing.assert_close(y, reference(x, w, bias, mask_type, groups, relu, r), **tol)
        torch.testing.assert_close(y, residual_oracle(x, w, bias, mask_type, groups, relu, r), **tol)
    ours = torch.autograd.grad((y * gy).sum(), (x, w, r), allow_unused=True, materialize_grads=True)
    ref = torch.autograd.grad((residual_oracle(x, w, None, mask_type, groups, relu, r) * gy).sum(), (x, w, r))
    for a, e in zip(ours, ref):
        torch.testing.assert_close(a, e, **tol)
    assert torch.equal(ours[2], gy)  # the residual's gradient is grad_y, exactly


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)
def test_residual_gradcheck_float64(impl, device):
    for shape, mask_type, groups, relu in (((3, 3, 3, 3), "B", 3, True), ((4, 3, 1, 1), "B", 3, True),
                                           ((4, 3, 1, 1), "A", 3, False), ((3, 3, 1, 3), "A", 1, False)):
        x, _, b = _inputs((1, 3, 3, 4, shape[0], 3, 3, mask_type, groups), torch.float64, device, requires_grad=True)
        w = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
        r = torch.randn(1, shape[0], 3, 4, dtype=torch.float64, device=device, requires_grad=True)
        x = (x.detach() + 0.2 * torch.sign(x.detach())).requires_grad_(True)  # (away from relu's kink)
        assert torch.autograd.gradcheck(
            lambda x, w, b, r: masked_conv2d(x, w, b, mask_type, groups, relu_input=relu, residual=r), (x, w, b, r))


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)
def test_residual_layouts_and_bf16(impl, device):
    """Residuals of any strides (NCHW, channels-last, a transposed view), with x in either layout;
    bf16 within twice the reference's own bf16 error."""
    for w_shape in ((6, 5, 3, 3), (6, 5, 1, 1)):
        x, _, b = _inputs((2, 5, 4, 6, 6, 3, 3, "B", 1), torch.float32, device, seed=4)
        w = torch.randn(w_shape, generator=torch.Generator().manual_seed(1)).to(device)
        r = torch.randn(2, 6, 6, 4, generator=torch.Generator().manual_seed(2)).to(device).transpose(2, 3)
        for xin in (x, x.contiguous(memory_format=torch.channels_last)):
            for rin in (r, r.contiguous(), r.contiguous(memory_format=torch.channels_last)):
                for relu in (False, True):
                    torch.testing.assert_close(masked_conv2d(xin, w, b, "B", 1, relu_input=relu, residual=rin),
                                               residual_oracle(xin, w, b, "B", 1, relu, rin))
        xb, wb, bb, rb = x.bfloat16(), w.bfloat16(), b.bfloat16(), r.bfloat16()
        assert_close_bf16(masked_conv2d(xb, wb, bb, "B", 1, relu_input=True, residual=rb),
                          reference(xb, wb, bb, "B", 1, True, rb),
                          residual_oracle(x.double(), w.double(), b.double(), "B", 1, True, rb.double()))


def test_residual_empty_batch(impl, device):
    x, w, b = _inputs((0, 3, 4, 5, 4, 1, 1, "B", 1), torch.float32, device, requires_grad=True)
    r = torch.zeros(0, 4, 4, 5, device=device, requires_grad=True)
    y = masked_conv2d(x, w, b, "B", 1, relu_input=True, residual=r)
    assert y.shape == (0, 4, 4, 5)
    y.sum().backward()
    assert r.grad.shape == r.shape


def test_bad_residual_names_the_argument():
    x, w = torch.randn(1, 2, 4, 4), torch.randn(3, 2, 1, 1)
    with pytest.raises(ValueError, match="residual must have the output's shape"):
        masked_conv2d(x, w, None, "B", 1, residual=torch.randn(1, 2, 4, 4))
    with pytest.raises(TypeError, match="residual has dtype torch.float64"):
        masked_conv2d(x, w, None, "B", 1, residual=torch.randn(1, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="residual must be a torch.Tensor"):
        masked_conv2d(x, w, None, "B", 1, residual=1.0)
    with pytest.raises(ValueError, match="residual is on meta"):
        masked_conv2d(x, w, None, "B", 1, residual=torch.randn(1, 3, 4, 4, device="meta"))


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
def test_compiled_op_rejects_bad_residual_directly():
    x = torch.randn(1, 2, 4, 4)
    for w in (torch.randn(3, 2, 1, 1), torch.randn(3, 2, 3, 3)):
        with pytest.raises(RuntimeError, match="residual must have y's shape"):
            torch.ops.fastgen.masked_conv2d(x, w, None, "B", 1, False, torch.randn(1, 3, 4, 5))
        with pytest.raises(RuntimeError, match="residual has dtype"):
            torch.ops.fastgen.masked_conv2d(x, w, None, "B", 1, False, torch.randn(1, 3, 4, 4).double())


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
def test_opcheck_compiled_op_with_residual():
    x, w, b = _inputs((2, 3, 4, 5, 4, 3, 3, "A", 3), torch.float64, requires_grad=True)
    w1 = torch.randn(4, 3, 1, 1, dtype=torch.float64, requires_grad=True)  # the 1x1 GEMM path
    r = torch.randn(2, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    for weight, relu in ((w, False), (w, True), (w1, False), (w1, True)):
        torch.library.opcheck(torch.ops.fastgen.masked_conv2d.default, (x, weight, b, "A", 3, relu, r))


def test_opcheck_triton_sibling_with_residual():
    pytest.importorskip("triton")
    x, w, b = _inputs((1, 3, 3, 4, 3, 3, 3, "A", 3), torch.float32, requires_grad=True)
    r = torch.randn(1, 3, 3, 4, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgen.masked_conv2d_triton.default, (x, w, b, "B", 1, True, r))


def test_torch_compile_fullgraph_with_residual():
    x, w, b = _inputs((2, 3, 4, 5, 4, 1, 1, "B", 3), torch.float32, requires_grad=True)
    r = torch.randn(2, 4, 4, 5, requires_grad=True)

    def loss(x, w, b, r):
        return masked_conv2d(x, w, b, "B", 3, relu_input=True, residual=r).square().sum()

    out = torch.compile(loss, fullgraph=True, backend="aot_eager")(x, w, b, r)
    g = torch.autograd.grad(out, (x, w, b, r))
    with fastgen.use_impl("reference"):
        ref = loss(x, w, b, r)
        g_ref = torch.autograd.grad(ref, (x, w, b, r))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    for a, e in zip(g, g_ref):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-4)


def test_module_forward_with_residual(impl, device):
    torch.manual_seed(0)
    m = MaskedConv2d(4, 6, 1, "B", 2, relu_input=True).to(device)
    x, r = torch.randn(2, 4, 3, 5, device=device), torch.randn(2, 6, 3, 5, device=device)
    torch.testing.assert_close(m(x, residual=r), m(x) + r)
    torch.testing.assert_close(m(x, r), residual_oracle(x, m.weight, m.bias, "B", 2, True, r))


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
def test_pixelcnn_block_matches_the_unfused_sum():
    """The fused skip connection computes the block's s + expand(...) to rounding, and its
    gradients (which flow through both paths) match the unfused block's."""
    torch.manual_seed(0)
    model = PixelCNN(input_shape=(1, 6, 7), hidden_channels=8, num_layers=3)
    x = (torch.rand(3, 1, 6, 7) < 0.3).float()
    fused = torch.autograd.grad(model.log_prob(x).sum(), list(model.parameters()))
    blocks = model.blocks
    unfused = [lambda s, b=b: s + b.expand(b.conv(b.reduce(s))) for b in blocks]
    originals = [b.forward for b in blocks]
    try:
        for b, f in zip(blocks, unfused):
            b.forward = f
        plain = torch.autograd.grad(model.log_prob(x).sum(), list(model.parameters()))
    finally:
        for b, f in zip(blocks, originals):
            b.forward = f
    for a, e in zip(fused, plain):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
