"""fastgen.ops.reparameterize: every runnable impl against the reference and torch.distributions."""
import pytest
import torch
from torch.distributions import Normal, kl_divergence
from torch.distributions.transforms import AffineTransform

import fastgen
from fastgen import _ext
from fastgen.nn import GaussianHead
from fastgen.ops import reparameterize
from fastgen.reference.reparameterize import reparameterize as reference
from tests.conftest import FLOAT_DTYPES, KERNEL_IMPLS, SHAPES, assert_close_bf16

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def _inputs(shape, dtype, device="cpu", seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    mu, logvar, eps = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    return [t.to(dtype=dtype, device=device).requires_grad_(requires_grad) for t in (mu, logvar, eps)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference_and_distributions(impl, device, shape, dtype):
    mu, logvar, eps = _inputs(shape, dtype, device)
    z, kl = reparameterize(mu, logvar, eps)
    z_ref, kl_ref = reference(mu, logvar, eps)
    assert z.shape == mu.shape and kl.shape == mu.shape[:-1] and z.dtype == dtype
    torch.testing.assert_close(z, z_ref, **TOL[dtype])
    torch.testing.assert_close(kl, kl_ref, **TOL[dtype])
    # independent oracles from torch.distributions: the closed-form Gaussian KL, and the sample
    # as the affine map of the standard normal noise onto N(mu, std^2)
    std = torch.exp(0.5 * logvar)
    oracle = kl_divergence(Normal(mu, std), Normal(torch.zeros_like(mu), 1.0)).sum(-1)
    torch.testing.assert_close(kl, oracle, **TOL[dtype])
    torch.testing.assert_close(z, AffineTransform(loc=mu, scale=std)(eps), **TOL[dtype])


@pytest.mark.parametrize("shape", [(7, 33), (2, 3, 9), (0, 4)])
def test_gradients_match_reference(impl, device, shape):
    mu, logvar, eps = _inputs(shape, torch.float64, device, requires_grad=True)
    gz, gk = torch.randn(shape, dtype=torch.float64, device=device), torch.randn(shape[:-1], dtype=torch.float64, device=device)
    z, kl = reparameterize(mu, logvar, eps)
    ours = torch.autograd.grad((z * gz).sum() + (kl * gk).sum(), (mu, logvar, eps))
    z, kl = reference(mu, logvar, eps)
    ref = torch.autograd.grad((z * gz).sum() + (kl * gk).sum(), (mu, logvar, eps))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)  # ours: the reference's is torch's
def test_gradcheck_float64(impl, device):
    mu, logvar, eps = _inputs((3, 5), torch.float64, device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: reparameterize(a, b, c), (mu, logvar, eps))
    # only one output used, eps without grad
    eps = eps.detach()
    assert torch.autograd.gradcheck(lambda a, b: reparameterize(a, b, eps)[1], (mu, logvar))
    assert torch.autograd.gradcheck(lambda a, b: reparameterize(a, b, eps)[0], (mu, logvar))


def test_non_contiguous_inputs(impl, device):
    mu, logvar, eps = (t.transpose(0, 1) for t in _inputs((9, 6), torch.float32, device, requires_grad=True))
    assert not mu.is_contiguous()
    z, kl = reparameterize(mu, logvar, eps)
    z_ref, kl_ref = reference(mu, logvar, eps)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(kl, kl_ref)
    g = torch.autograd.grad(z.sum() + kl.sum(), (mu, logvar))
    g_ref = torch.autograd.grad(z_ref.sum() + kl_ref.sum(), (mu, logvar))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_bf16_error_at_most_twice_reference(impl, device):
    mu, logvar, eps = _inputs((16, 257), torch.bfloat16, device)
    z, kl = reparameterize(mu, logvar, eps)
    z_ref, kl_ref = reference(mu, logvar, eps)
    z_true, kl_true = reference(mu.double(), logvar.double(), eps.double())
    assert z.dtype == kl.dtype == torch.bfloat16
    assert_close_bf16(z, z_ref, z_true)
    assert_close_bf16(kl, kl_ref, kl_true)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_extreme_values_finite_and_exact(impl, device, dtype):
    top = 80.0 if dtype == torch.float32 else 700.0  # largest logvar whose exp is finite
    mu = torch.tensor([[1e4, -1e4, 0.0, 3.0], [0.0, 1e-30, -5.0, 1e4]], dtype=dtype, device=device)
    logvar = torch.tensor([[-1e4, top, 0.0, -1e4], [top, -50.0, 1e-8, 0.0]], dtype=dtype, device=device)
    eps = torch.tensor([[1.0, -2.0, 0.5, 1e4], [0.0, 3.0, -1.0, 1.0]], dtype=dtype, device=device)
    z, kl = reparameterize(mu, logvar, eps)
    assert torch.isfinite(z).all() and torch.isfinite(kl).all()
    z_true, kl_true = reference(mu.double(), logvar.double(), eps.double())
    torch.testing.assert_close(z.double(), z_true, rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=0)
    torch.testing.assert_close(kl.double(), kl_true, rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=0)


def test_generator_reproducible_and_default_noise(impl, device):
    mu, logvar, _ = _inputs((4, 6), torch.float32, device)
    g1 = torch.Generator(device=device).manual_seed(7)
    g2 = torch.Generator(device=device).manual_seed(7)
    z1, kl1 = reparameterize(mu, logvar, generator=g1)
    z2, kl2 = reparameterize(mu, logvar, generator=g2)
    torch.testing.assert_close(z1, z2, rtol=0, atol=0)
    eps = torch.randn(mu.shape, generator=torch.Generator(device=device).manual_seed(7), device=device)
    torch.testing.assert_close(z1, reference(mu, logvar, eps)[0])
    z3, _ = reparameterize(mu, logvar)
    assert not torch.equal(z3, z1)  # fresh noise without a generator


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
def test_opcheck_compiled_op():
    mu, logvar, eps = _inputs((5, 7), torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgen.reparameterize.default, (mu, logvar, eps))
    mu, logvar, eps = _inputs((3, 4), torch.float32)
    gz, gk = torch.randn(3, 4), torch.randn(3)
    for flag in (True, False):
        torch.library.opcheck(torch.ops.fastgen.reparameterize_backward.default, (gz, gk, mu, logvar, eps, flag))


def test_opcheck_triton_sibling():
    pytest.importorskip("triton")
    mu, logvar, eps = _inputs((5, 7), torch.float32, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgen.reparameterize_triton.default, (mu, logvar, eps))
    gz, gk = torch.randn(5, 7), torch.randn(5)
    torch.library.opcheck(torch.ops.fastgen.reparameterize_backward_triton.default,
                          (gz, gk, mu.detach(), logvar.detach(), eps.detach(), True))


def test_torch_compile_fullgraph_forward_backward():
    mu, logvar, eps = _inputs((6, 10), torch.float32, requires_grad=True)

    def loss(mu, logvar, eps):
        z, kl = reparameterize(mu, logvar, eps)
        return (z * z).sum() + kl.sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    out = compiled(mu, logvar, eps)
    g = torch.autograd.grad(out, (mu, logvar))
    with fastgen.use_impl("reference"):
        ref = loss(mu, logvar, eps)
        g_ref = torch.autograd.grad(ref, (mu, logvar))
    torch.testing.assert_close(out, ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_bad_input_names_the_argument():
    mu = torch.randn(3, 4)
    with pytest.raises(TypeError, match="mu must be float32, float64 or bfloat16"):
        reparameterize(mu.long(), mu)
    with pytest.raises(TypeError, match="mu must be a torch.Tensor"):
        reparameterize([1.0, 2.0], mu)
    with pytest.raises(ValueError, match="logvar has shape"):
        reparameterize(mu, torch.randn(3, 5))
    with pytest.raises(TypeError, match="logvar has dtype"):
        reparameterize(mu, mu.double())
    with pytest.raises(ValueError, match="eps has shape"):
        reparameterize(mu, mu, torch.randn(4, 3))
    with pytest.raises(TypeError, match="eps must be float32"):
        reparameterize(mu, mu, torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="logvar is on meta"):
        reparameterize(mu, torch.empty(3, 4, device="meta"))
    with pytest.raises(ValueError, match="mu must have at least 1 dimension"):
        reparameterize(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="generator is only used when eps is None"):
        reparameterize(mu, mu, mu, generator=torch.Generator())
    with pytest.raises(TypeError, match="mu must be float32"):
        reparameterize(mu.half(), mu.half())


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
def test_compiled_op_rejects_bad_input_directly():
    mu = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="logvar has shape"):
        torch.ops.fastgen.reparameterize(mu, torch.randn(3, 5), mu)
    with pytest.raises(RuntimeError, match="eps must be float32"):
        torch.ops.fastgen.reparameterize(mu, mu, mu.long())


def test_gaussian_head_module(impl, device):
    torch.manual_seed(0)
    head = GaussianHead(12, 5).to(device)
    h = torch.randn(8, 12, device=device, requires_grad=True)
    z, kl, mu, logvar = head(h, generator=torch.Generator(device).manual_seed(1))
    assert z.shape == (8, 5) and kl.shape == (8,)
    (z.sum() + kl.sum()).backward()
    assert head.proj.weight.grad is not None and torch.isfinite(head.proj.weight.grad).all()
    mean_head = GaussianHead(12, 5, sample_in_eval=False).eval()
    z, kl, mu, _ = mean_head(h)
    torch.testing.assert_close(z, mu)
    with pytest.raises(ValueError, match="latent_dim"):
        GaussianHead(12, 0)


def test_float32_exp_accurate_over_the_whole_range(impl, device):
    """z = exp(logvar / 2) when mu = 0, eps = 1: the kernels' float exp against float64, from
    underflow to overflow (the CPU kernel has its own inline vector exp)."""
    half = torch.cat([torch.linspace(-110.0, 95.0, 200014, dtype=torch.float64),
                      torch.tensor([0.0, -0.0, 88.7228, 88.72284, -87.3, -103.97, -103.98, 1.0])])
    logvar = (2 * half).to(torch.float32).reshape(-1, 37)  # 2x is exact in binary
    ones = torch.ones_like(logvar)
    z, _ = reparameterize(torch.zeros_like(logvar).to(device), logvar.to(device), ones.to(device))
    truth = torch.exp(logvar.double() / 2)
    big = torch.finfo(torch.float32).max
    finite = truth < big * (1 - 1e-6)
    normal = finite & (truth > 1.2e-38)
    rel = ((z.double().cpu() - truth).abs() / truth)[normal]
    assert rel.max().item() < 2.5e-7, rel.max().item()  # about 2 ulp
    assert torch.isinf(z[(truth > big * (1 + 1e-6)).to(z.device)]).all()
    tiny = (truth < 1.2e-38).to(z.device)
    assert ((z[tiny].double().cpu() - truth[tiny.cpu()]).abs() <= 3e-45).all()  # denormals: 2 ulp
    nan = reparameterize(torch.zeros(1, 1, device=device), torch.full((1, 1), float("nan"), device=device),
                         torch.ones(1, 1, device=device))[0]
    assert torch.isnan(nan).all()
