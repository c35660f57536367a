"""VAE: the bounds against torch.distributions and against log p(x) by quadrature; shapes; errors."""
import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Normal, kl_divergence

from fastgen.models import VAE


def _data(decoder, shape, n=5, levels=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    if decoder == "bernoulli":
        return torch.randint(0, 2, (n, *shape), generator=g).float()
    if decoder == "categorical":
        return torch.randint(0, levels, (n, *shape), generator=g).float()
    return torch.rand((n, *shape), generator=g)


@pytest.mark.parametrize("decoder", ["bernoulli", "categorical", "gaussian"])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_elbo_terms_match_distributions_oracle(impl, device, decoder, arch):
    torch.manual_seed(0)
    shape = (2, 5, 3)  # odd sizes and two channels
    m = VAE(shape, latent_dim=3, hidden=16, arch=arch, decoder=decoder,
            num_levels=5 if decoder == "categorical" else None).to(device)
    x = _data(decoder, shape).to(device)
    rec, kl = m.elbo_terms(x, generator=torch.Generator(device).manual_seed(7))
    # oracle: the same eps, then log p(x|z) and the KL from torch.distributions
    # the encoder sees levels scaled to [0, 1] (as every model scales its input)
    mu, logvar = m.head.proj(m.encoder(x / 4 if decoder == "categorical" else x)).chunk(2, -1)
    eps = torch.randn(mu.shape, generator=torch.Generator(device).manual_seed(7), device=device)
    z = mu + torch.exp(0.5 * logvar) * eps
    out = m.decoder_net(z)
    xf = x.flatten(1)
    if decoder == "bernoulli":
        ref_rec = Bernoulli(logits=out).log_prob(xf).sum(-1)
    elif decoder == "categorical":  # decoder channels are (C, K, H*W)
        logits = out.view(len(x), 2, 5, 15).permute(0, 1, 3, 2).reshape(len(x), 30, 5)
        ref_rec = Categorical(logits=logits).log_prob(xf.long()).sum(-1)
    else:
        ref_rec = Normal(out, torch.exp(m.log_scale.flatten())).log_prob(xf).sum(-1)
    ref_kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(rec, ref_rec, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(kl, ref_kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.elbo(x, generator=torch.Generator(device).manual_seed(7)), rec - kl)


def _exact_log_px(m, x, grid=4001):
    """log p(x) = log integral p(x|z) N(z; 0, 1) dz for a 1-D latent, by the trapezoid rule."""
    z = torch.linspace(-10, 10, grid, dtype=torch.float64).unsqueeze(1)
    logits = m.decoder_net(z)  # (G, D)
    log_joint = Bernoulli(logits=logits.unsqueeze(0)).log_prob(x.flatten(1).unsqueeze(1)).sum(-1) \
        + Normal(0.0, 1.0).log_prob(z.squeeze(1))  # (N, G)
    dz = float(z[1] - z[0])
    w = torch.full((grid,), dz, dtype=torch.float64)
    w[0] = w[-1] = dz / 2
    return torch.logsumexp(log_joint + w.log(), dim=1)


def test_iwae_approaches_exact_log_likelihood():
    torch.manual_seed(1)
    m = VAE((1, 2, 3), latent_dim=1, hidden=8).double()
    with torch.no_grad():
        for p in m.decoder_net.parameters():
            p.mul_(3.0)  # a decoder that really depends on z
    x = _data("bernoulli", (1, 2, 3), n=4).double()
    exact = _exact_log_px(m, x)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack([m.elbo(x, generator=gen) for _ in range(2000)]).mean(0)
        iwae = {k: torch.stack([m.iwae(x, k, generator=gen) for _ in range(max(1, 2000 // k))]).mean(0)
                for k in (1, 10, 100)}
        big = m.iwae(x, 200000, generator=gen)
    torch.testing.assert_close(big, exact, atol=8e-3, rtol=0)  # Monte Carlo error ~3e-3 here
    # bounds in order, in expectation: ELBO <= IWAE_1 ~ (MC KL) <= IWAE_10 <= IWAE_100 <= log p(x)
    assert (elbo <= exact + 1e-6).all()
    # (finite-sample averages of heavy-tailed estimators: a margin of 0.02 nats)
    assert (iwae[1] <= iwae[10] + 0.02).all() and (iwae[10] <= iwae[100] + 0.02).all()
    assert (iwae[100] <= exact + 0.02).all()
    assert (exact - elbo).mean() > 0.1  # the gap is wide, so the ordering checks above can fail


def test_gradients_reach_every_parameter(impl, device):
    torch.manual_seed(0)
    for decoder in ("bernoulli", "gaussian"):
        m = VAE((1, 8, 8), latent_dim=4, hidden=16, arch="conv", decoder=decoder).to(device)
        m.loss(_data(decoder, (1, 8, 8)).to(device)).backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_training_improves_the_bound():
    from fastgen.data import load

    x, _ = load("digits", "train", binarize=True)
    x = x[:256]
    torch.manual_seed(0)
    m = VAE((1, 8, 8), latent_dim=8, hidden=64)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = float(m.elbo(x, generator=gen).mean())
    for i in range(60):
        loss = m.loss(x[(i % 4) * 64:(i % 4 + 1) * 64], generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(m.elbo(x, generator=gen).mean())
        iwae = float(m.iwae(x, 32, generator=gen).mean())
    assert after > before + 5
    assert iwae >= after  # IWAE >= ELBO (averaged over 256 images)
    with torch.no_grad():
        lp = float(m.log_prob(x[:8], generator=torch.Generator().manual_seed(1)).sum())
        iw = float(m.iwae(x[:8], m.iwae_k, generator=torch.Generator().manual_seed(1)).sum())
    assert math.isclose(lp, iw, rel_tol=1e-6)
    bpd = m.bits_per_dim(x[:8], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(bpd, -m.iwae(x[:8], 64, generator=torch.Generator().manual_seed(1)) / (64 * math.log(2)))


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 5, 7)])
def test_shapes_sample_reconstruct_encode(shape):
    m = VAE(shape, latent_dim=5, hidden=16, arch="conv")
    x = _data("bernoulli", shape, n=3)
    assert m.encode(x).shape == (3, 5)
    r = m.reconstruct(x)
    assert r.shape == (3, *shape) and 0 <= r.min() and r.max() <= 1
    s1 = m.sample(4, generator=torch.Generator().manual_seed(3))
    s2 = m.sample(4, generator=torch.Generator().manual_seed(3))
    assert s1.shape == (4, *shape) and torch.equal(s1, s2) and set(s1.unique().tolist()) <= {0.0, 1.0}
    assert m.sample(0).shape == (0, *shape)
    c = VAE(shape, latent_dim=2, hidden=8, decoder="categorical", num_levels=4)
    sc = c.sample(3)
    assert set(sc.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert (c.sample(2, mean=True) <= 3).all()


def test_noncontiguous_and_empty_inputs():
    m = VAE((1, 4, 6), latent_dim=3, hidden=8)
    base = _data("bernoulli", (1, 6, 4), n=3)
    x = base.transpose(2, 3)  # a non-contiguous (3, 1, 4, 6) view
    assert not x.is_contiguous()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    torch.testing.assert_close(m.elbo(x, generator=g()), m.elbo(x.contiguous(), generator=g()))
    empty = torch.zeros(0, 1, 4, 6)
    assert m.elbo(empty).shape == (0,) and m.iwae(empty, 3).shape == (0,) and m.encode(empty).shape == (0, 3)


def test_compile_fullgraph():
    torch.manual_seed(0)
    m = VAE((1, 4, 4), latent_dim=3, hidden=8)
    x = _data("bernoulli", (1, 4, 4), n=6)
    eager_rec = m.elbo_terms(x, generator=torch.Generator().manual_seed(0))

    def terms(x, eps):  # the ELBO path with explicit noise (compiled graphs cannot take a Generator)
        from fastgen.ops import reparameterize

        mu, logvar = m.head.proj(m.encoder(x)).chunk(2, -1)
        z, kl = reparameterize(mu, logvar, eps)
        return m._log_px_given_z(x.flatten(1), m._decoder_out(z)), kl

    eps = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    rec, kl = torch.compile(terms, fullgraph=True)(x, eps)
    torch.testing.assert_close(rec, eager_rec[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kl, eager_rec[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(latent_dim=0), "latent_dim"), (dict(hidden=2.5), "hidden"), (dict(arch="rnn"), "arch"),
    (dict(decoder="poisson"), "decoder"), (dict(decoder="bernoulli", num_levels=3), "num_levels"),
    (dict(input_shape=(8, 8)), "input_shape"), (dict(iwae_k=0), "iwae_k"),
])
def test_bad_constructor_arguments(kwargs, match):
    full = dict(input_shape=(1, 8, 8))
    full.update(kwargs)
    with pytest.raises(ValueError, match=match):
        VAE(**full)


def test_bad_inputs_name_the_argument():
    m = VAE((1, 4, 4), latent_dim=2, hidden=8)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 4, 4\)"):
        m.elbo(torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="x must hold integer levels in \\[0, 1\\]"):
        m.elbo(torch.full((2, 1, 4, 4), 0.5))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        m.elbo([[0.0]])
    with pytest.raises(ValueError, match="k must be a positive int"):
        m.iwae(torch.zeros(2, 1, 4, 4), 0)
    with pytest.raises(ValueError, match="n must be"):
        m.sample(-1)
