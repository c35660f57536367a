"""Double backward through the fastgen ops: the compiled and Triton implementations have no
derivative of their backward ops, so differentiating a gradient taken with create_graph=True must
raise a clear error naming the op (never silent zeros); the gradient itself, with
create_graph=True, still works and equals the plain one. The GAN losses and bernoulli_log_prob
(no backward op: their backward scales a gradient saved as a constant) refuse create_graph=True
itself, with the same error. The reference supports double backward, which is what the error message points to."""
import pytest
import torch

import fastgen
from fastgen.ops import (bernoulli_log_prob, discriminator_loss, generator_loss, masked_conv2d,
                         masked_linear, nade, reparameterize, row_lstm_scan)
from tests.conftest import KERNEL_IMPLS


def _rand(*shape, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device).requires_grad_(True)


def _cases(device):
    """op name -> (function of the differentiable inputs -> a scalar, inputs)."""
    mask = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.bool, device=device)
    eps = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(11)).to(device)
    v = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64, device=device)
    return {
        "reparameterize": (lambda mu, lv: sum(t.sum() * (i + 1) for i, t in enumerate(reparameterize(mu, lv, eps))),
                           (_rand(3, 4, device=device, seed=0), _rand(3, 4, device=device, seed=1))),
        "masked_linear": (lambda x, w, b: masked_linear(x, w, mask, b).square().sum(),
                          (_rand(2, 4, device=device, seed=2), _rand(3, 4, device=device, seed=3),
                           _rand(3, device=device, seed=4))),
        "masked_conv2d": (lambda x, w, b: masked_conv2d(x, w, b, "B").square().sum(),
                          (_rand(1, 2, 4, 3, device=device, seed=5), _rand(2, 2, 3, 3, device=device, seed=6),
                           _rand(2, device=device, seed=7))),
        "row_lstm_scan": (lambda g, w, b: row_lstm_scan(g, w, b).square().sum(),
                          (_rand(1, 4, 2, 3, device=device, seed=8), _rand(4, 1, 3, device=device, seed=9),
                           _rand(4, device=device, seed=10))),
        "nade": (lambda W, c, V, b: nade(v, W, c, V, b).square().sum(),
                 (_rand(4, 3, device=device, seed=12), _rand(4, device=device, seed=13),
                  _rand(3, 2, 4, device=device, seed=14), _rand(3, 2, device=device, seed=15))),
        "discriminator_loss": (lambda r, f: discriminator_loss(r, f, "bce"),
                               (_rand(5, device=device, seed=16), _rand(3, 2, device=device, seed=17))),
        "generator_loss": (lambda f: generator_loss(f, "minimax"), (_rand(3, 2, device=device, seed=18),)),
        "bernoulli_log_prob": (lambda l: bernoulli_log_prob(l, v).square().sum(), (_rand(2, 3, device=device, seed=19),)),
    }


WITH_BACKWARD_OP = ["reparameterize", "masked_linear", "masked_conv2d", "row_lstm_scan", "nade"]
# no backward op: their backward scales a gradient the forward saved
SAVED_GRADIENT = ["discriminator_loss", "generator_loss", "bernoulli_log_prob"]


@pytest.mark.parametrize("op", WITH_BACKWARD_OP + SAVED_GRADIENT)
def test_reference_supports_double_backward(op):
    fn, inputs = _cases("cpu")[op]
    with fastgen.use_impl("reference"):
        assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)
@pytest.mark.parametrize("op", WITH_BACKWARD_OP)
def test_double_backward_raises_clearly(impl, device, op):
    fn, inputs = _cases(device)[op]
    grads = torch.autograd.grad(fn(*inputs), inputs, create_graph=True)
    plain = torch.autograd.grad(fn(*inputs), inputs)
    for a, b in zip(grads, plain):  # the first-order gradient is unaffected by create_graph
        torch.testing.assert_close(a, b)
    assert all(g.requires_grad for g in grads)  # wired to raise, not detached (which would give zeros)
    with pytest.raises(RuntimeError, match=f"double backward is not supported by fastgen.{op} "):
        torch.autograd.grad(sum((g * g).sum() for g in grads), inputs)


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)
@pytest.mark.parametrize("op", SAVED_GRADIENT)
def test_saved_gradient_ops_refuse_create_graph(impl, device, op):
    fn, inputs = _cases(device)[op]
    with pytest.raises(RuntimeError, match=f"double backward is not supported by fastgen.{op} "):
        torch.autograd.grad(fn(*inputs), inputs, create_graph=True)
    plain = torch.autograd.grad(fn(*inputs), inputs)  # a plain backward is unaffected
    with fastgen.use_impl("reference"):
        want = torch.autograd.grad(fn(*inputs), inputs)
    for a, b in zip(plain, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)
@pytest.mark.parametrize("op", WITH_BACKWARD_OP)
def test_gradgradcheck_fails_loudly_not_silently(impl, device, op):
    """gradgradcheck itself: an error, not a numerical mismatch hidden behind zeros. (Not for
    triton under the interpreter: gradgradcheck's numerical part takes minutes there; the test
    above shows its error.)"""
    if impl == "triton" and device == "cpu":
        pytest.skip("minutes under the Triton interpreter")
    fn, inputs = _cases(device)[op]
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.gradgradcheck(fn, inputs)
