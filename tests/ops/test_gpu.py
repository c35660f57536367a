"""The GPU suite's own tests (`pytest -m gpu`; skipped without CUDA). Beside them, every test
parametrised over `impl` runs for "cuda" and compiled "triton" on CUDA tensors and is marked gpu
by tests/conftest.py. Here: each op x {cuda, triton} x dtypes against the float64 reference,
opcheck of the CUDA and Triton ops on CUDA tensors, row_lstm_scan past 48 KB of shared memory,
bitwise determinism, a non-default stream, a second device, the precise fp32 exp/log/division of
the compiled Triton kernels, bf16 NaN, and "auto" taking the vendor GEMM/convolution paths."""
import pytest
import torch

import fastgen
import fastgen.reference.masked_conv2d
from fastgen import _ext, _impl
from fastgen.ops import (bernoulli_log_prob, discriminator_loss, generator_loss, masked_conv2d,
                         masked_linear, reparameterize, row_lstm_scan)
from fastgen.ops._common import SPECS
from fastgen.reference import gan_loss as ref_gan
from fastgen.reference.bernoulli_log_prob import bernoulli_log_prob as ref_bernoulli
from fastgen.reference.masked_conv2d import masked_conv2d as ref_conv
from fastgen.reference.masked_linear import masked_linear as ref_linear
from fastgen.reference.reparameterize import reparameterize as ref_rep
from fastgen.reference.row_lstm_scan import row_lstm_scan as ref_scan
from tests.conftest import assert_close_bf16

pytestmark = pytest.mark.gpu
GPU_IMPLS = ["cuda", "triton"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _staircase(o, i):
    deg = torch.randint(0, i, (o,), generator=torch.Generator().manual_seed(0)).sort().values
    return deg[:, None] > torch.arange(i)[None, :]


def _targets(logits):
    """Fixed soft targets in [0, 1] for bernoulli_log_prob's logits (3, 41, 785): (41, 785),
    broadcast over the leading dimension."""
    return torch.rand(41, 785, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(logits)


# op name -> (ours(*inputs), reference(*inputs), input shapes, scale of each input)
OPS = {
    "reparameterize": (lambda m, l, e: reparameterize(m, l, e), lambda m, l, e: ref_rep(m, l, e),
                       [(37, 129), (37, 129), (37, 129)]),
    "discriminator_loss": (lambda r, f: discriminator_loss(r, f, "bce"),
                           lambda r, f: ref_gan.discriminator_loss(r, f, "bce"), [(301, 7), (4099,)]),
    "generator_loss": (lambda f: generator_loss(f, "hinge"), lambda f: ref_gan.generator_loss(f, "hinge"),
                       [(5, 1001)]),
    "bernoulli_log_prob": (lambda l: bernoulli_log_prob(l, _targets(l)),
                           lambda l: ref_bernoulli(l, _targets(l).expand(l.shape)), [(3, 41, 785)]),
    "masked_linear": (lambda x, w, b: masked_linear(x, w, _staircase(97, 130).to(x.device), b),
                      lambda x, w, b: ref_linear(x, w, _staircase(97, 130).to(x.device), b),
                      [(33, 130), (97, 130), (97,)]),
    "masked_conv2d": (lambda x, w, b: masked_conv2d(x, w, b, "A", 3),
                      lambda x, w, b: ref_conv(x, w, b, "A", 3), [(3, 6, 11, 13), (9, 6, 5, 5), (9,)]),
    "row_lstm_scan": (lambda x, w, b: row_lstm_scan(x, w, b), lambda x, w, b: ref_scan(x, w, b),
                      [(3, 4 * 20, 7, 19), (4 * 20, 20, 3), (80,)]),
}


def _inputs(name, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = 0.3 if name == "row_lstm_scan" else 1.0
    return [(torch.randn(s, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
            .requires_grad_(True) for s in OPS[name][2]]


def _run(fn, inputs, seed=1):
    """Output(s) and the gradients of a fixed random projection of them."""
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(seed)
    proj = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in outs]
    grads = torch.autograd.grad(sum((o * p).sum() for o, p in zip(outs, proj)), inputs)
    return [o.detach() for o in outs] + list(grads)


def _needs(impl_name):
    if impl_name == "cuda" and not _ext.CUDA_BUILT:
        pytest.skip("CUDA kernels not built")
    if impl_name == "triton" and not _impl.triton_available("cuda"):
        pytest.skip("triton not installed")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("impl_name", GPU_IMPLS)
@pytest.mark.parametrize("name", list(OPS))
def test_every_op_matches_reference(name, impl_name, dtype):
    _needs(impl_name)
    ours_fn, ref_fn, _ = OPS[name]
    inputs = _inputs(name, dtype, "cuda")
    with fastgen.use_impl(impl_name):
        ours = _run(ours_fn, inputs)
    truth = _run(ref_fn, [t.detach().double().requires_grad_(True) for t in inputs])
    if dtype == torch.bfloat16:
        ref16 = _run(ref_fn, inputs)
        for a, r, t in zip(ours, ref16, truth):
            assert_close_bf16(a, r, t)
        return
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for a, t in zip(ours, truth):
        torch.testing.assert_close(a.double(), t, **tol)


def _opcheck_cases():
    mu = torch.randn(5, 7, device="cuda", dtype=torch.float64)
    x = torch.randn(2, 3, 4, 5, device="cuda", dtype=torch.float64)
    wc = torch.randn(4, 3, 3, 3, device="cuda", dtype=torch.float64)
    xl, wl = torch.randn(6, 9, device="cuda", dtype=torch.float64), torch.randn(5, 9, device="cuda", dtype=torch.float64)
    ml = _staircase(5, 9).cuda()
    lay = fastgen.ops.mask_layout(ml, tile=2, overhead=0)
    xs = torch.randn(2, 8, 3, 4, device="cuda", dtype=torch.float64)
    ws = torch.randn(8, 2, 3, device="cuda", dtype=torch.float64)
    cases = []
    for suffix in ("", "_triton"):
        ops = torch.ops.fastgen
        cases += [
            (getattr(ops, "reparameterize" + suffix).default, (mu, mu * 0.1, mu.flip(0))),
            (getattr(ops, "discriminator_loss" + suffix).default, (mu, x.flatten()[:11], "hinge", True, True)),
            (getattr(ops, "generator_loss" + suffix).default, (mu, "minimax", True)),
            (getattr(ops, "masked_linear" + suffix).default, (xl, wl, ml, wl[:, 0], *lay)),
            (getattr(ops, "masked_conv2d" + suffix).default, (x, wc, wc[:, 0, 0, 0], "A", 3, True)),
            (getattr(ops, "row_lstm_scan" + suffix).default, (xs, ws, ws[:, 0, 0])),
        ]
    return cases


def test_opcheck_on_cuda():
    if not (_ext.CUDA_BUILT and _impl.triton_available("cuda")):
        pytest.skip("needs the CUDA kernels and triton")
    for op, args in _opcheck_cases():
        args = tuple(a.requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point()
                     and a.is_leaf else a for a in args)
        torch.library.opcheck(op, args)


def test_opcheck_bernoulli_log_prob_on_cuda():
    """(apart: its x is data, never requiring grad; the loop above makes every leaf require it)"""
    if not (_ext.CUDA_BUILT and _impl.triton_available("cuda")):
        pytest.skip("needs the CUDA kernels and triton")
    logits = torch.randn(3, 5, 7, device="cuda", dtype=torch.float64, requires_grad=True)
    x = torch.rand(5, 7, device="cuda", dtype=torch.float64)
    for op in (torch.ops.fastgen.bernoulli_log_prob.default, torch.ops.fastgen.bernoulli_log_prob_triton.default):
        torch.library.opcheck(op, (logits, x, True))


@pytest.mark.parametrize("dtype,h", [(torch.float32, 128), (torch.float64, 64)], ids=str)
@pytest.mark.parametrize("impl_name", GPU_IMPLS)
def test_row_lstm_scan_past_48kb_of_shared_memory(impl_name, dtype, h):
    """W = 32: the CUDA backward holds (4h (W + 2) + h W) elements in shared memory, 86 KB for
    fp32 at h = 128 and fp64 at h = 64, past the default 48 KB limit."""
    _needs(impl_name)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 4 * h, 3, 32, generator=g, dtype=torch.float64) * 0.3).cuda().to(dtype).requires_grad_()
    w = (torch.randn(4 * h, h, 3, generator=g, dtype=torch.float64) * 0.05).cuda().to(dtype).requires_grad_()
    b = torch.randn(4 * h, generator=g, dtype=torch.float64).cuda().to(dtype).requires_grad_()
    with fastgen.use_impl(impl_name):
        ours = _run(row_lstm_scan, [x, w, b])
    truth = _run(ref_scan, [t.detach().double().requires_grad_(True) for t in (x, w, b)])
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for a, t in zip(ours, truth):
        torch.testing.assert_close(a.double(), t, **tol)


@pytest.mark.parametrize("impl_name", GPU_IMPLS)
@pytest.mark.parametrize("name", list(OPS))
def test_bitwise_deterministic_under_deterministic_algorithms(name, impl_name):
    _needs(impl_name)
    inputs = _inputs(name, torch.float32, "cuda")
    torch.use_deterministic_algorithms(True)
    try:
        with fastgen.use_impl(impl_name):
            first, second = _run(OPS[name][0], inputs), _run(OPS[name][0], inputs)
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("impl_name", GPU_IMPLS)
@pytest.mark.parametrize("name", list(OPS))
def test_runs_on_the_current_stream(name, impl_name):
    """Inputs written on a side stream after a long sleep: a kernel launched on another stream
    would read them before they are written."""
    _needs(impl_name)
    src = _inputs(name, torch.float32, "cuda")
    with fastgen.use_impl(impl_name):
        expected = _run(OPS[name][0], src)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            late = [torch.empty_like(t) for t in src]
            torch.cuda._sleep(50_000_000)
            for d, s in zip(late, src):
                d.copy_(s.detach())
            got = _run(OPS[name][0], [t.requires_grad_(True) for t in late])
        side.synchronize()
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("impl_name", GPU_IMPLS)
@pytest.mark.parametrize("name", list(OPS))
def test_second_device(name, impl_name):
    """Tensors on cuda:1 while cuda:0 is current: every launch must go to the tensors' device."""
    _needs(impl_name)
    if torch.cuda.device_count() < 2:
        pytest.skip("one CUDA device")
    inputs = _inputs(name, torch.float32, "cuda:1")
    with torch.cuda.device(0), fastgen.use_impl(impl_name):
        ours = _run(OPS[name][0], inputs)
    truth = _run(OPS[name][1], [t.detach().double().requires_grad_(True) for t in inputs])
    for a, t in zip(ours, truth):
        assert a.device == torch.device("cuda:1")
        torch.testing.assert_close(a.double(), t, rtol=1e-5, atol=1e-5)


def test_triton_fp32_exp_and_division_are_precise():
    """Compiled tl.exp / `/` are approximate (ex2.approx, div.full); the kernels use libdevice and
    div_rn: reparameterize over logvar in [-80, 80] and the GAN loss gradients at |x| >= 30."""
    _needs("triton")
    lv = torch.linspace(-80, 80, 4001, device="cuda").view(1, -1)
    mu, eps = torch.zeros_like(lv), torch.ones_like(lv)
    with fastgen.use_impl("triton"):
        z, _ = reparameterize(mu, lv, eps)
    torch.testing.assert_close(z.double(), torch.exp(lv.double() / 2), rtol=2e-7, atol=0)
    x = torch.cat([torch.linspace(-60, -30, 301), torch.linspace(30, 60, 301)]).cuda().requires_grad_()
    xd = x.detach().double().requires_grad_()
    for kind in ("minimax", "nonsaturating"):
        with fastgen.use_impl("triton"):
            (g,) = torch.autograd.grad(generator_loss(x, kind), x)
        (gd,) = torch.autograd.grad(ref_gan.generator_loss(xd, kind), xd)
        torch.testing.assert_close(g.double(), gd, rtol=2e-6, atol=0)


@pytest.mark.parametrize("impl_name", GPU_IMPLS)
def test_bf16_nan_stays_nan(impl_name):
    """The GPU's canonical NaN (0x7FFFFFFF) must round to a bf16 NaN, not -0.0."""
    _needs(impl_name)
    empty = torch.empty(0, device="cuda", dtype=torch.bfloat16)
    with fastgen.use_impl(impl_name):
        assert torch.isnan(generator_loss(empty, "minimax"))
        mu = torch.full((2, 3), float("nan"), device="cuda", dtype=torch.bfloat16)
        z, kl = reparameterize(mu, torch.zeros_like(mu), torch.ones_like(mu))
    assert torch.isnan(z).all() and torch.isnan(kl).all()


def test_auto_takes_the_vendor_path_for_masked_linear_and_conv():
    """On CUDA tensors "auto" runs cuBLAS/cuDNN on the pre-masked weight (the reference path);
    ours stay selectable by name."""
    with fastgen.use_impl("auto"):
        for op in ("masked_linear", "masked_conv2d"):
            assert SPECS[op].select(torch.device("cuda")) == "vendor"
        x, w = torch.randn(4, 9, device="cuda"), torch.randn(5, 9, device="cuda", requires_grad=True)
        m = _staircase(5, 9).cuda()
        masked_linear(x, w, m).sum().backward()
        xc, wc = torch.randn(2, 3, 5, 6, device="cuda"), torch.randn(4, 3, 3, 3, device="cuda", requires_grad=True)
        wc_bad = torch.where(ref_mask := fastgen.reference.masked_conv2d.build_mask(4, 3, 3, 3, "A", 3, device="cuda")
                             .bool(), wc, float("nan"))
        y = masked_conv2d(xc, wc_bad, None, "A", 3)
    assert torch.equal(w.grad[~m], torch.zeros_like(w.grad[~m]))
    torch.testing.assert_close(y, ref_conv(xc, wc, None, "A", 3), rtol=1e-5, atol=1e-5)
    (gw,) = torch.autograd.grad(y.square().sum(), wc)
    assert torch.equal(gw[~ref_mask], torch.zeros_like(gw[~ref_mask]))
