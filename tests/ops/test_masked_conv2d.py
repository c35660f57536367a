"""fastgen.ops.masked_conv2d: every runnable impl against the reference and F.conv2d on a masked weight."""
import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen import _ext
from fastgen.nn import MaskedConv2d
from fastgen.ops import masked_conv2d
from fastgen.reference.masked_conv2d import masked_conv2d as reference
from tests.conftest import KERNEL_IMPLS, assert_close_bf16

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}

# (N, Cin, H, W, Cout, kh, kw, mask_type, data_channels): odd sizes, 1x1 and non-square
# kernels, colour groups that do not divide the channel counts, a kernel wider than the image.
CASES = [
    (2, 3, 5, 6, 4, 3, 3, "A", 1),
    (1, 4, 4, 3, 5, 3, 5, "B", 1),
    (2, 3, 4, 5, 7, 5, 5, "A", 3),
    (1, 7, 3, 4, 5, 3, 3, "B", 3),
    (2, 2, 3, 3, 3, 1, 1, "B", 1),
    (1, 2, 3, 3, 3, 1, 1, "A", 1),  # every tap masked: y = bias
    (1, 3, 2, 3, 3, 1, 5, "A", 3),
    (1, 2, 4, 2, 2, 7, 1, "B", 2),
    (2, 6, 3, 4, 9, 1, 1, "A", 3),  # 1x1 (the GEMM path on CPU) with colour groups
    (1, 6, 2, 5, 6, 1, 1, "B", 3),
]


def oracle_mask(cout, cin, kh, kw, mask_type, groups):
    """The PixelCNN mask by its literal definition, one entry at a time."""
    m = torch.zeros(cout, cin, kh, kw, dtype=torch.float64)
    for o in range(cout):
        for c in range(cin):
            go, gi = o * groups // cout, c * groups // cin
            for i in range(kh):
                for j in range(kw):
                    if (i, j) < (kh // 2, kw // 2):  # raster-before the centre
                        m[o, c, i, j] = 1
                    elif (i, j) == (kh // 2, kw // 2):
                        m[o, c, i, j] = float(gi < go if mask_type == "A" else gi <= go)
    return m


def oracle(x, w, b, mask_type, groups):
    cout, cin, kh, kw = w.shape
    mask = oracle_mask(cout, cin, kh, kw, mask_type, groups).to(w)
    return F.conv2d(x, w * mask, b, padding=(kh // 2, kw // 2))


def _inputs(case, dtype, device="cpu", seed=0, requires_grad=False):
    n, cin, h, w, cout, kh, kw, _, _ = case
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(s, generator=g, dtype=torch.float64) for s in ((n, cin, h, w), (cout, cin, kh, kw), (cout,))]
    return [t.to(dtype=dtype, device=device).requires_grad_(requires_grad) for t in ts]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference_and_oracle(impl, device, case, dtype):
    x, w, b = _inputs(case, dtype, device)
    mask_type, groups = case[7], case[8]
    for bias in (b, None):
        y = masked_conv2d(x, w, bias, mask_type, groups)
        assert y.shape == (case[0], case[4], case[2], case[3]) and y.dtype == dtype
        torch.testing.assert_close(y, reference(x, w, bias, mask_type, groups), **TOL[dtype])
        torch.testing.assert_close(y, oracle(x, w, bias, mask_type, groups), **TOL[dtype])


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_oracle_and_masked_taps_get_zero(impl, device, case):
    x, w, b = _inputs(case, torch.float64, device, requires_grad=True)
    mask_type, groups = case[7], case[8]
    gy = torch.randn(case[0], case[4], case[2], case[3], dtype=torch.float64, device=device)
    # (materialize: with every tap masked, the reference's y does not depend on x and w at all)
    ours = torch.autograd.grad((masked_conv2d(x, w, b, mask_type, groups) * gy).sum(), (x, w, b),
                               allow_unused=True, materialize_grads=True)
    ref = torch.autograd.grad((oracle(x, w, b, mask_type, groups) * gy).sum(), (x, w, b))
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    mask = oracle_mask(*w.shape, mask_type, groups).to(device)
    assert torch.equal(ours[1][mask == 0], torch.zeros_like(ours[1][mask == 0]))
    # only some inputs needing grad
    y = masked_conv2d(x.detach(), w, None, mask_type, groups)
    if y.requires_grad:
        (gw,) = torch.autograd.grad((y * gy).sum(), w)
    else:  # only the reference, and only when every tap is masked: its y = 0 is a constant
        assert impl == "reference" and not oracle_mask(*w.shape, mask_type, groups).any()
        gw = torch.zeros_like(w)
    torch.testing.assert_close(gw, ref[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)  # ours: the reference's is torch's
def test_gradcheck_float64(impl, device):
    x, w, b = _inputs((1, 3, 3, 4, 3, 3, 3, "B", 3), torch.float64, device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: masked_conv2d(x, w, b, "B", 3), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: masked_conv2d(x, w, None, "A", 1), (x, w))


def test_non_contiguous_channels_last_and_empty(impl, device):
    case = (2, 3, 5, 4, 4, 3, 3, "A", 1)
    x, w, b = _inputs(case, torch.float32, device, requires_grad=True)
    for xin in (x.transpose(2, 3), x[:, :, ::2], x.contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(masked_conv2d(xin, w, b, "A", 1), oracle(xin, w, b, "A", 1))
    wt = w.transpose(2, 3)  # a non-contiguous weight
    torch.testing.assert_close(masked_conv2d(x, wt, b, "B", 1), oracle(x, wt, b, "B", 1))
    g = torch.autograd.grad(masked_conv2d(x.transpose(2, 3), w, b, "A", 1).square().sum(), (x, w))
    g_ref = torch.autograd.grad(oracle(x.transpose(2, 3), w, b, "A", 1).square().sum(), (x, w))
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r)
    for shape in ((0, 3, 5, 4), (2, 3, 0, 4), (2, 3, 4, 0)):
        empty = torch.zeros(shape, device=device, requires_grad=True)
        y = masked_conv2d(empty, w, b, "A", 1)
        assert y.shape == (shape[0], 4, shape[2], shape[3])
        gx, gw, gb = torch.autograd.grad(y.sum(), (empty, w, b), allow_unused=True)
        assert gx.shape == empty.shape and torch.equal(gw, torch.zeros_like(w))
        assert torch.equal(gb, torch.zeros_like(b))


def test_bf16_error_at_most_twice_reference(impl, device):
    x, w, b = _inputs((2, 8, 5, 6, 8, 5, 5, "B", 1), torch.bfloat16, device)
    y = masked_conv2d(x, w, b, "B", 1)
    assert y.dtype == torch.bfloat16
    assert_close_bf16(y, reference(x, w, b, "B", 1), oracle(x.double(), w.double(), b.double(), "B", 1))


def test_masked_taps_are_skipped_not_multiplied(impl, device):
    """NaN/inf in the masked taps of the weight, or in the last pixel of x (a future pixel for
    every output under mask A), must not reach the output: the kernels never read them."""
    x, w, b = _inputs((1, 2, 3, 4, 3, 3, 3, "A", 1), torch.float32, device)
    mask = oracle_mask(3, 2, 3, 3, "A", 1).to(device)
    w_bad = torch.where(mask == 0, torch.full_like(w, float("nan")), w)
    y = masked_conv2d(x, w_bad, b, "A", 1)
    torch.testing.assert_close(y, oracle(x, w, b, "A", 1))
    x_bad = x.clone()
    x_bad[..., -1, -1] = float("inf")
    y = masked_conv2d(x_bad, w, b, "A", 1)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, oracle(x, w, b, "A", 1))
    big = x * 1e30  # large but finite: no overflow in the products (|w| < 10)
    y = masked_conv2d(big, w, None, "A", 1)
    torch.testing.assert_close(y.double(), oracle(big.double(), w.double(), None, "A", 1), rtol=1e-5, atol=0)


def test_output_memory_format_is_conv2d_s(impl, device):
    """NCHW in, NCHW (contiguous) out, as nn.Conv2d; channels-last in, channels-last out. The
    module's output supports .view (it did not: issue 11, item 10)."""
    x, w, b = _inputs((2, 3, 5, 4, 4, 3, 3, "A", 1), torch.float32, device)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).to(device)
    mconv = MaskedConv2d(3, 4, 3, "B").to(device)
    for xin in (x, x.transpose(2, 3), x[:, :, ::2], x.contiguous(memory_format=torch.channels_last)):
        want_cl = conv(xin).is_contiguous(memory_format=torch.channels_last) and not conv(xin).is_contiguous()
        for y in (masked_conv2d(xin, w, b, "A", 1), mconv(xin)):
            assert y.is_contiguous(memory_format=torch.channels_last if want_cl else torch.contiguous_format)
        if not want_cl:
            assert mconv(xin).view(xin.shape[0], -1).shape[1] == 4 * xin.shape[2] * xin.shape[3]
    # one input channel: NCHW and channels-last hold the same bytes, the strides tell them apart
    # (as F.conv2d does); a channels-last one gives channels-last out (a PixelCNN's first layer)
    x1 = x[:, :1].contiguous()
    conv1 = torch.nn.Conv2d(1, 4, 3, padding=1).to(device)
    for xin in (x1, x1.permute(0, 2, 3, 1).clone().permute(0, 3, 1, 2)):
        want_cl = not conv1(xin).is_contiguous()
        assert want_cl == (xin.stride(1) == 1)
        y = masked_conv2d(xin, w[:, :1], b, "A", 1)
        assert y.is_contiguous(memory_format=torch.channels_last if want_cl else torch.contiguous_format)
        assert y.is_contiguous() != want_cl


def test_pixelcnn_stays_channels_last(impl, device):
    """A PixelCNN step copies no activation between layers: every conv's input and the gradients
    flowing back are channels-last (mixed layouts made its ReLU backward 3x slower, issue 13).
    (ATen's own convolution backward, the reference's, hands some input gradients back NCHW.)"""
    from fastgen.models import PixelCNN

    if impl == "reference":
        pytest.skip("a property of fastgen's kernels")

    model = PixelCNN((1, 6, 6), hidden_channels=8, num_layers=3).to(device)
    x = (torch.rand(2, 1, 6, 6, device=device) < 0.5).float()
    seen = []

    def hook(mod, args):
        seen.append(args[0].stride(1) == 1)
        if args[0].requires_grad:
            args[0].register_hook(lambda g: seen.append(g.stride(1) == 1))

    for mod in model.modules():
        if isinstance(mod, MaskedConv2d):
            mod.register_forward_pre_hook(hook)
    model.log_prob(x).sum().backward()
    assert len(seen) > 10 and all(seen), seen


def test_module_masks_and_zero_masked_grads(impl, device):
    torch.manual_seed(0)
    for mask_type in ("A", "B"):
        for groups, cin, cout in ((1, 2, 3), (3, 3, 6), (3, 6, 9)):
            conv = MaskedConv2d(cin, cout, 5, mask_type, data_channels=groups).to(device)
            assert torch.equal(conv.mask().double().cpu(), oracle_mask(cout, cin, 5, 5, mask_type, groups))
            x = torch.randn(2, cin, 4, 6, device=device)
            y = conv(x)
            torch.testing.assert_close(y, oracle(x, conv.weight, conv.bias, mask_type, groups))
            y.square().sum().backward()
            assert torch.equal(conv.weight.grad * (1 - conv.mask()), torch.zeros_like(conv.weight))
            assert conv.weight.grad.abs().sum() > 0
    conv = MaskedConv2d(2, 2, (1, 3), "B")
    assert conv.kernel_size == (1, 3)
    with pytest.raises(ValueError, match="kernel_size"):
        MaskedConv2d(2, 2, 4)
    with pytest.raises(ValueError, match="mask_type"):
        MaskedConv2d(2, 2, 3, "C")
    with pytest.raises(ValueError, match="data_channels"):
        MaskedConv2d(2, 2, 3, "A", data_channels=3)
    with pytest.raises(ValueError, match="in_channels"):
        MaskedConv2d(0, 2, 3)


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
def test_opcheck_compiled_op():
    x, w, b = _inputs((2, 3, 4, 5, 4, 3, 3, "A", 3), torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgen.masked_conv2d.default, (x, w, b, "A", 3, False))
    torch.library.opcheck(torch.ops.fastgen.masked_conv2d.default, (x, w, None, "B", 1, True))
    w1 = torch.randn(4, 3, 1, 1, dtype=torch.float64, requires_grad=True)  # the 1x1 GEMM path
    torch.library.opcheck(torch.ops.fastgen.masked_conv2d.default, (x, w1, b, "B", 3, True))
    gy = torch.randn(2, 4, 4, 5, dtype=torch.float64)
    for flags in ((True, True, True), (False, True, False), (True, False, False)):
        for relu in (False, True):
            torch.library.opcheck(torch.ops.fastgen.masked_conv2d_backward.default,
                                  (gy, x.detach(), w.detach(), "A", 3, relu, *flags))
            torch.library.opcheck(torch.ops.fastgen.masked_conv2d_backward.default,
                                  (gy, x.detach(), w1.detach(), "B", 3, relu, *flags))


def test_opcheck_triton_sibling():
    pytest.importorskip("triton")
    x, w, b = _inputs((1, 3, 3, 4, 3, 3, 3, "A", 3), torch.float32, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgen.masked_conv2d_triton.default, (x, w, b, "A", 3, False))
    torch.library.opcheck(torch.ops.fastgen.masked_conv2d_triton.default, (x, w, b, "B", 1, True))
    gy = torch.randn(1, 3, 3, 4)
    for relu in (False, True):
        torch.library.opcheck(torch.ops.fastgen.masked_conv2d_backward_triton.default,
                              (gy, x.detach(), w.detach(), "B", 1, relu, True, True, True))


def test_torch_compile_fullgraph_forward_backward():
    x, w, b = _inputs((2, 3, 4, 5, 4, 3, 3, "B", 3), torch.float32, requires_grad=True)

    def loss(x, w, b):
        return torch.relu(masked_conv2d(x, w, b, "B", 3)).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    out = compiled(x, w, b)
    g = torch.autograd.grad(out, (x, w, b))
    with fastgen.use_impl("reference"):
        ref = loss(x, w, b)
        g_ref = torch.autograd.grad(ref, (x, w, b))
    torch.testing.assert_close(out, ref)
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r)


def test_bad_input_names_the_argument():
    x, w, b = torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3), torch.randn(3)
    with pytest.raises(TypeError, match="x must be float32"):
        masked_conv2d(x.long(), w)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        masked_conv2d([1.0], w)
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\)"):
        masked_conv2d(x[0], w)
    with pytest.raises(ValueError, match=r"weight must be \(Cout, Cin, kh, kw\)"):
        masked_conv2d(x, w[0])
    with pytest.raises(TypeError, match="weight has dtype"):
        masked_conv2d(x, w.double())
    with pytest.raises(ValueError, match="weight has 3 input channels but x has 2"):
        masked_conv2d(x, torch.randn(3, 3, 3, 3))
    with pytest.raises(ValueError, match="kernel size must be odd"):
        masked_conv2d(x, torch.randn(3, 2, 2, 3))
    with pytest.raises(ValueError, match="bias must have shape"):
        masked_conv2d(x, w, torch.randn(4))
    with pytest.raises(ValueError, match="mask_type must be 'A' or 'B'"):
        masked_conv2d(x, w, b, "C")
    with pytest.raises(ValueError, match="data_channels"):
        masked_conv2d(x, w, b, "A", 3)
    with pytest.raises(ValueError, match="data_channels"):
        masked_conv2d(x, w, b, "A", 0)
    with pytest.raises(ValueError, match="weight is on meta"):
        masked_conv2d(x, torch.empty(3, 2, 3, 3, device="meta"))


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
def test_compiled_op_rejects_bad_input_directly():
    x, w = torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3)
    with pytest.raises(RuntimeError, match="weight has 2 input channels but x has 3"):
        torch.ops.fastgen.masked_conv2d(torch.randn(1, 3, 4, 4), w, None, "A", 1, False)
    with pytest.raises(RuntimeError, match="mask_type must be 'A' or 'B'"):
        torch.ops.fastgen.masked_conv2d(x, w, None, "Z", 1, False)
    with pytest.raises(RuntimeError, match="data_channels"):
        torch.ops.fastgen.masked_conv2d(x, w, None, "A", 5, False)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        torch.ops.fastgen.masked_conv2d(x, w, torch.randn(2), "A", 1, False)
    with pytest.raises(RuntimeError, match="grad_y has shape"):
        torch.ops.fastgen.masked_conv2d_backward(torch.randn(1, 3, 4, 5), x, w, "A", 1, False, True, True, True)


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [
    (6, 5, 16, 16, 7, 5, 5, "A", 1),    # several whole images per chunk
    (2, 4, 40, 33, 6, 7, 7, "B", 2),    # bands of rows of one image
    (3, 3, 20, 70, 6, 3, 5, "A", 3),    # bands, colour groups, a wide image
])
def test_cpu_kernel_multiple_chunks_and_threads(case, dtype):
    """Shapes large enough that the CPU kernel splits the output into chunks run on several
    threads (whole images, or bands of rows whose copies read the neighbours' rows)."""
    x, w, b = _inputs(case, dtype, requires_grad=True)
    mask_type, groups = case[7], case[8]
    gy = torch.randn(case[0], case[4], case[2], case[3], dtype=dtype)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with fastgen.use_impl("cpp"):
            y = masked_conv2d(x, w, b, mask_type, groups)
            ours = torch.autograd.grad((y * gy).sum(), (x, w, b))
    finally:
        torch.set_num_threads(threads)
    y_ref = oracle(x, w, b, mask_type, groups)
    ref = torch.autograd.grad((y_ref * gy).sum(), (x, w, b))
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y, y_ref, **tol)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, **tol)
    mask = oracle_mask(*w.shape, mask_type, groups)
    assert torch.equal(ours[1][mask == 0], torch.zeros_like(ours[1][mask == 0]))
