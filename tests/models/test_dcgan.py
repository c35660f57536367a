"""DCGAN: shapes, the alternating update against an oracle, loss kinds, errors; the 1-D GAN toy."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from fastgen.models import DCGAN
from fastgen.nn import GANLoss
from bench.gan_toy import optimal_discriminator, optimal_value, run_toy


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 5, 7)])
def test_shapes_and_sampling(shape):
    torch.manual_seed(0)
    m = DCGAN(shape, latent_dim=6, width=4)
    s1 = m.sample(5, generator=torch.Generator().manual_seed(1))
    s2 = m.sample(5, generator=torch.Generator().manual_seed(1))
    assert s1.shape == (5, *shape) and torch.equal(s1, s2) and 0 <= s1.min() and s1.max() <= 1
    assert m.generator.training  # sample() puts batch norm back the way it was
    x = torch.rand(4, *shape)
    assert m.discriminator(x).shape == (4,) and m.features(x).shape[0] == 4
    # no batch norm in D: an image's logit does not depend on the rest of its batch
    torch.testing.assert_close(m.discriminator(x[:2]), m.discriminator(x)[:2])
    assert m.sample(0).shape == (0, *shape)


def _oracle_d_loss(real_logits, fake_logits, kind):
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def _oracle_g_loss(fake_logits, kind):
    if kind == "minimax":
        return -F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    if kind == "nonsaturating":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    return -fake_logits.mean()


@pytest.mark.parametrize("g_kind, d_kind", [("minimax", "bce"), ("nonsaturating", "bce"),
                                            ("hinge", "hinge"), ("nonsaturating", "hinge")])
def test_alternating_update_matches_oracle(impl, device, g_kind, d_kind):
    torch.manual_seed(0)
    m = DCGAN((1, 8, 8), latent_dim=5, width=4, g_kind=g_kind, d_kind=d_kind).to(device)
    real = torch.rand(6, 1, 8, 8).to(device)
    ref = copy.deepcopy(m)
    # SGD, not Adam: Adam turns float-rounding-level gradients (e.g. D's bias under an all-active
    # hinge, where the real and fake terms cancel) into full-size steps, so two exact
    # computations that round differently would diverge.
    opt_d = torch.optim.SGD(m.discriminator.parameters(), lr=0.1)
    opt_g = torch.optim.SGD(m.generator.parameters(), lr=0.1)
    stats = m.train_step(real, opt_d, opt_g, generator=torch.Generator(device).manual_seed(3))
    # the oracle replays the same two steps with PyTorch's own losses
    gen = torch.Generator(device).manual_seed(3)
    ref_opt_d = torch.optim.SGD(ref.discriminator.parameters(), lr=0.1)
    ref_opt_g = torch.optim.SGD(ref.generator.parameters(), lr=0.1)
    with torch.no_grad():
        fake = ref.generator(torch.randn(6, 5, generator=gen, device=device))
    d_loss = _oracle_d_loss(ref.discriminator(real), ref.discriminator(fake), d_kind)
    d_loss.backward()
    ref_opt_d.step()
    g_loss = _oracle_g_loss(ref.discriminator(ref.generator(torch.randn(6, 5, generator=gen, device=device))), g_kind)
    ref_opt_g.zero_grad()
    g_loss.backward()
    ref_opt_g.step()
    assert math.isclose(stats["d_loss"], float(d_loss.detach()), rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(stats["g_loss"], float(g_loss.detach()), rel_tol=1e-5, abs_tol=1e-6)
    for (name, p), q in zip(m.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    # both networks moved; D only in its own step (G's step touches only G's optimiser)
    assert not torch.equal(m.discriminator.out.weight.cpu(), DCGAN((1, 8, 8), 5, 4).discriminator.out.weight)


def test_defaults_and_bad_arguments():
    assert DCGAN((1, 8, 8)).d_kind == "bce" and DCGAN((1, 8, 8), g_kind="hinge").d_kind == "hinge"
    for kwargs, match in [(dict(g_kind="wasserstein"), "g_kind"), (dict(d_kind="mse"), "d_kind"),
                          (dict(latent_dim=0), "latent_dim"), (dict(width=-1), "width"),
                          (dict(input_shape=(1, 8)), "input_shape")]:
        full = dict(input_shape=(1, 8, 8))
        full.update(kwargs)
        with pytest.raises(ValueError, match=match):
            DCGAN(**full)
    m = DCGAN((1, 8, 8), width=4)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"real must have shape \(N, 1, 8, 8\)"):
        m.train_step(torch.rand(2, 1, 7, 8), opt, opt)
    with pytest.raises(TypeError, match="x must be a float tensor"):
        m.features(torch.zeros(2, 1, 8, 8, dtype=torch.long))


def test_losses_are_a_gan_loss_module():
    m = DCGAN((1, 8, 8), width=4, g_kind="nonsaturating", d_kind="hinge")
    assert isinstance(m.gan_loss, GANLoss)
    assert (m.gan_loss.discriminator_kind, m.gan_loss.generator_kind) == ("hinge", "nonsaturating") == (m.d_kind, m.g_kind)
    assert not [k for k in m.state_dict() if "gan_loss" in k]  # checkpoints hold the same keys as before
    assert GANLoss("hinge").discriminator_kind == "hinge" and GANLoss("minimax", "hinge").discriminator_kind == "hinge"
    with pytest.raises(ValueError, match="GANLoss: discriminator_kind must be one of 'bce', 'hinge'"):
        GANLoss("hinge", discriminator_kind="mse")


def test_optimal_discriminator_formula():
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)
    torch.testing.assert_close(optimal_discriminator(x), torch.full_like(x, 0.5))
    p = torch.distributions.Normal(0.0, 1.0).log_prob(x).exp()
    q = torch.distributions.Normal(1.0, 0.5).log_prob(x).exp()
    torch.testing.assert_close(optimal_discriminator(x, 1.0, 0.5), p / (p + q))
    assert math.isclose(optimal_value(), -math.log(4), abs_tol=1e-9)
    assert optimal_value(1.0, 0.5) > -math.log(4) + 0.1  # -log 4 + 2 JSD, JSD > 0


def test_gan_toy_reaches_theory():
    same = run_toy(steps=300, batch=2048, lr=0.05)
    assert abs(same["value"] - (-math.log(4))) < 0.01
    assert same["max_abs_D_minus_Dstar"] < 0.05
    shifted = run_toy(mu_g=1.0, sigma_g=0.7, steps=300, batch=2048, lr=0.05)
    assert shifted["max_abs_D_minus_Dstar"] < 0.06
    assert abs(shifted["value"] - shifted["optimal_value"]) < 0.02
    assert shifted["value"] > -math.log(4) + 0.2  # far from -log 4 when p_g != p_data
    with pytest.raises(ValueError, match="discriminator"):
        run_toy(discriminator="svm")


class _NoLen(torch.nn.Module):
    """A wrapper like torch.compile's OptimizedModule, whose len() raises; counts its calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def __len__(self):
        raise TypeError("no len()")

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_train_step_calls_the_given_nets():
    m = DCGAN((1, 8, 8), width=4)
    g_net, d_net = _NoLen(m.generator), _NoLen(m.discriminator)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    m.train_step(torch.rand(4, 1, 8, 8), opt, opt, g_net=g_net, d_net=d_net)
    assert g_net.calls == 2 and d_net.calls == 2
