"""fastgen.ops.bernoulli_log_prob: every runnable impl against the reference and against
torch.distributions.Bernoulli (an oracle from PyTorch itself)."""
import math

import pytest
import torch
from torch.distributions import Bernoulli

import fastgen
from fastgen import _ext
from fastgen.ops import bernoulli_log_prob
from fastgen.reference.bernoulli_log_prob import bernoulli_log_prob as reference
from tests.conftest import FLOAT_DTYPES, KERNEL_IMPLS, SHAPES, assert_close_bf16

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def _inputs(shape, dtype, device="cpu", seed=0, requires_grad=False, x_shape=None, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    x = torch.bernoulli(torch.full(x_shape or shape, 0.3, dtype=torch.float64), generator=g)
    return logits.to(dtype=dtype, device=device).requires_grad_(requires_grad), x.to(dtype=dtype, device=device)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference_and_distributions(impl, device, shape, dtype):
    logits, x = _inputs(shape, dtype, device)
    out = bernoulli_log_prob(logits, x)
    assert out.shape == logits.shape[:-1] and out.dtype == dtype
    torch.testing.assert_close(out, reference(logits, x), **TOL[dtype])
    oracle = Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(out, oracle, **TOL[dtype])


@pytest.mark.parametrize("shape,x_shape", [((3, 7, 33), (7, 33)), ((2, 3, 4, 9), (4, 9)), ((5, 6), (6,)),
                                           ((4, 0, 5), (0, 5))])
def test_leading_dims_broadcast_over_x(impl, device, shape, x_shape):
    """A VAE's k decoder samples per image: logits (k, N, D), x (N, D)."""
    logits, x = _inputs(shape, torch.float64, device, x_shape=x_shape, requires_grad=True)
    g = torch.randn(shape[:-1], dtype=torch.float64, device=device)
    out = bernoulli_log_prob(logits, x)
    ref = reference(logits, x.expand(shape))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    ours = torch.autograd.grad((out * g).sum(), logits)[0]
    torch.testing.assert_close(ours, torch.autograd.grad((ref * g).sum(), logits)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(7, 33), (2, 3, 9), (0, 4), (3, 0)])
def test_gradients_match_reference(impl, device, shape):
    logits, x = _inputs(shape, torch.float64, device, requires_grad=True)
    g = torch.randn(shape[:-1], dtype=torch.float64, device=device)
    ours = torch.autograd.grad((bernoulli_log_prob(logits, x) * g).sum(), logits)[0]
    ref = torch.autograd.grad((reference(logits, x) * g).sum(), logits)[0]
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    # the closed form: d/dl = x - sigmoid(l), scaled by each row's gradient
    torch.testing.assert_close(ours, (x - torch.sigmoid(logits.detach())) * g.unsqueeze(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)  # ours: the reference's is torch's
def test_gradcheck_float64(impl, device):
    logits, x = _inputs((3, 5), torch.float64, device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: bernoulli_log_prob(a, x), (logits,))
    soft = torch.rand(3, 5, dtype=torch.float64, device=device)  # soft targets in [0, 1]
    assert torch.autograd.gradcheck(lambda a: bernoulli_log_prob(a, soft), (logits,))


def test_x_requiring_grad_goes_through_the_reference(impl, device):
    logits, _ = _inputs((4, 6), torch.float64, device, requires_grad=True)
    x = torch.rand(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    gl, gx = torch.autograd.grad(bernoulli_log_prob(logits, x).sum(), (logits, x))
    torch.testing.assert_close(gx, logits.detach(), rtol=1e-12, atol=1e-12)  # d/dx (x l - softplus l) = l
    torch.testing.assert_close(gl, x.detach() - torch.sigmoid(logits.detach()), rtol=1e-12, atol=1e-12)


def test_non_contiguous_inputs(impl, device):
    logits, x = _inputs((9, 12), torch.float64, device)
    lt, xt = logits.t(), x.t()
    torch.testing.assert_close(bernoulli_log_prob(lt, xt), reference(lt, xt), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bernoulli_log_prob(logits[:, ::2], x[:, ::2]), reference(logits[:, ::2], x[:, ::2]),
                               rtol=1e-12, atol=1e-12)


def test_bf16_error_at_most_twice_reference(impl, device):
    logits, x = _inputs((6, 200), torch.float64, device)
    truth = reference(logits, x)
    lb, xb = logits.bfloat16().requires_grad_(), x.bfloat16()
    out = bernoulli_log_prob(lb, xb)
    ref = reference(lb, xb)
    assert_close_bf16(out, ref, truth)
    g_true = x - torch.sigmoid(logits)
    assert_close_bf16(torch.autograd.grad(out.sum(), lb)[0], torch.autograd.grad(ref.sum(), lb)[0], g_true)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_extreme_values_finite_and_exact(impl, device, dtype):
    """Confident logits of either sign, right and wrong: finite, and exact to relative precision
    (x = 1, l = 20 gives -log1p(e^-20), not 20 - 20.000000002)."""
    l = torch.tensor([[1e30, -1e30, 1e4, -1e4, 88.0, -88.0, 20.0, -20.0, 0.0, 1e-30]], dtype=torch.float64)
    for x_val in (0.0, 1.0):
        x = torch.full_like(l, x_val)
        # the truth from math.log1p on Python floats: log p(1) = -softplus(-l), log p(0) =
        # -softplus(l), softplus(y) = max(y, 0) + log1p(e^-|y|) (torch's float64 BCE, which adds
        # log(1 + e^-88) as log(1.0), is not exact enough here)
        truth = torch.tensor([-(max(y, 0.0) + math.log1p(math.exp(-abs(y))))
                              for y in (-v if x_val else v for v in l[0].tolist())], dtype=torch.float64)
        lt, xt = l.to(dtype=dtype, device=device).requires_grad_(), x.to(dtype=dtype, device=device)
        per_element = torch.stack([bernoulli_log_prob(lt[:, i:i + 1], xt[:, i:i + 1])[0] for i in range(l.shape[1])])
        assert torch.isfinite(per_element).all()
        # relative precision down to float32's smallest normal (torch's own BCE, the reference,
        # only to absolute precision: at l = -20, x = 0 it gives 0 for -2e-9 in float32)
        rtol = 1e-6 if dtype == torch.float32 else 1e-14
        atol = (1e-38 if dtype == torch.float32 else 1e-300) if impl != "reference" else 1e-6
        torch.testing.assert_close(per_element.double().cpu(), truth, rtol=rtol, atol=atol)
        grad = torch.autograd.grad(bernoulli_log_prob(lt, xt).sum(), lt)[0]
        assert torch.isfinite(grad).all()
        # x - sigmoid(l) without cancellation: 1 - sigmoid(l) is sigmoid(-l)
        grad_truth = torch.where(l >= 0, (x - 1) + torch.sigmoid(-l), x - torch.sigmoid(l))
        torch.testing.assert_close(grad.double().cpu(), grad_truth, rtol=rtol,
                                   atol=1e-30 if impl != "reference" else 1e-6)


def test_nan_propagates(impl, device):
    logits, x = _inputs((2, 5), torch.float32, device)
    logits[0, 3] = float("nan")
    out = bernoulli_log_prob(logits, x)
    assert torch.isnan(out[0]) and torch.isfinite(out[1])


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
def test_opcheck_compiled_op():
    logits, x = _inputs((4, 7), torch.float32)
    for flag in (True, False):
        torch.library.opcheck(torch.ops.fastgen.bernoulli_log_prob.default, (logits.requires_grad_(flag), x, flag))
    logits, x = _inputs((3, 4, 7), torch.float32, x_shape=(4, 7))
    torch.library.opcheck(torch.ops.fastgen.bernoulli_log_prob.default, (logits, x, False))


def test_opcheck_triton_sibling():
    logits, x = _inputs((4, 7), torch.float32)
    torch.library.opcheck(torch.ops.fastgen.bernoulli_log_prob_triton.default, (logits.requires_grad_(), x, True))


def test_torch_compile_fullgraph_forward_backward():
    logits, x = _inputs((6, 10), torch.float32, requires_grad=True)

    def loss(logits, x):
        return -bernoulli_log_prob(logits, x).mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    out = compiled(logits, x)
    g = torch.autograd.grad(out, logits)[0]
    with fastgen.use_impl("reference"):
        ref = loss(logits, x)
        g_ref = torch.autograd.grad(ref, logits)[0]
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, g_ref)


def test_bad_input_names_the_argument():
    logits = torch.randn(3, 4)
    with pytest.raises(TypeError, match="logits must be float32, float64 or bfloat16"):
        bernoulli_log_prob(logits.long(), logits)
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        bernoulli_log_prob([1.0, 2.0], logits)
    with pytest.raises(TypeError, match="x has dtype"):
        bernoulli_log_prob(logits, logits.double())
    with pytest.raises(ValueError, match="x must have the shape of logits or of its trailing"):
        bernoulli_log_prob(logits, torch.randn(4, 3))
    with pytest.raises(ValueError, match="x must have the shape of logits or of its trailing"):
        bernoulli_log_prob(logits, torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="logits must have at least 1 dimension"):
        bernoulli_log_prob(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="x is on meta"):
        bernoulli_log_prob(logits, torch.empty(3, 4, device="meta"))


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
def test_compiled_op_rejects_bad_input_directly():
    logits = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="x must have the shape of logits"):
        torch.ops.fastgen.bernoulli_log_prob(logits, torch.randn(4, 4), False)
    with pytest.raises(RuntimeError, match="x has dtype"):
        torch.ops.fastgen.bernoulli_log_prob(logits, logits.double(), False)
    with pytest.raises(RuntimeError, match="x requires grad"):
        x = torch.rand(3, 4, requires_grad=True)
        torch.ops.fastgen.bernoulli_log_prob(logits.requires_grad_(), x, True)[0].sum().backward()
