"""PixelCNN and Gated PixelCNN: autoregressive property, exact normalisation, sampling
distribution, cached sampling == naive sampling, inpainting, bad input."""
import itertools
import math

import pytest
import torch

from fastgen.models import GatedPixelCNN, PixelCNN
from fastgen.nn import GatedPixelCNNLayer, MaskedConv2d

MODELS = [PixelCNN, GatedPixelCNN]


def tiny(model_cls, shape, num_levels=2, seed=0, **kw):
    torch.manual_seed(seed)
    hidden = 6 if model_cls is GatedPixelCNN else 8
    defaults = dict(hidden_channels=hidden, num_layers=3, kernel_size=5, head_channels=8)
    defaults.update(kw)
    return model_cls(input_shape=shape, num_levels=num_levels, **defaults)


def dependency(fn, shape, trials=2, seed=0):
    """(D_out, D_in) bool: which inputs each output's logits depend on (Jacobian, a few random points)."""
    g = torch.Generator().manual_seed(seed)
    dep = None
    for _ in range(trials):
        x = torch.rand((1,) + shape, generator=g, dtype=torch.float64) * 2
        jac = torch.autograd.functional.jacobian(fn, x)  # (1, K, C, H, W, 1, C, H, W)
        d = math.prod(shape)
        j = jac.reshape(-1, jac.shape[1], d, d).abs().sum(dim=(0, 1)) > 0
        dep = j if dep is None else dep | j
    return dep


def raster_position(shape):
    """(D,) ordering position of every flat (C, H, W) index: raster over pixels, channels inner."""
    c, h, w = shape
    idx = torch.arange(c * h * w).view(c, h * w)
    pos = torch.empty(c * h * w, dtype=torch.long)
    pos[idx.t().reshape(-1)] = torch.arange(c * h * w)
    return pos


@pytest.mark.parametrize("model_cls", MODELS)
@pytest.mark.parametrize("shape", [(1, 4, 5), (3, 3, 4)])
def test_autoregressive_property(model_cls, shape):
    model = tiny(model_cls, shape).double()
    dep = dependency(model.logits, shape)
    pos = raster_position(shape)
    allowed = pos.unsqueeze(1) > pos.unsqueeze(0)  # out d may depend on in e iff e comes earlier
    assert not (dep & ~allowed).any(), "an output depends on a current or future input"
    assert dep.any()
    if model_cls is GatedPixelCNN:
        # no blind spot: with enough layers the last pixel's logits see every earlier input
        deep = tiny(model_cls, shape, num_layers=4).double()
        dep = dependency(deep.logits, shape)
        last = pos.argmax()
        assert torch.equal(dep[last], allowed[last])


def test_pixelcnn_has_its_blind_spot():
    """The plain PixelCNN misses the pixels up-right of its cone (the known blind spot): a
    sanity check that the dependency test can tell the two architectures apart."""
    shape = (1, 5, 7)
    model = tiny(PixelCNN, shape, num_layers=2, kernel_size=3, block_kernel_size=3).double()
    dep = dependency(model.logits, shape)
    allowed = raster_position(shape).unsqueeze(1) > raster_position(shape).unsqueeze(0)
    assert (allowed & ~dep).any()


@pytest.mark.parametrize("model_cls", MODELS)
def test_layers_are_autoregressive(model_cls):
    """Each colour-masked layer on its own: output group g at q sees inputs before q and, at q,
    groups < g (type A) or <= g (type B)."""
    torch.manual_seed(0)
    shape = (3, 3, 4)
    pos = raster_position(shape)
    for mask_type in ("A", "B"):
        conv = MaskedConv2d(3, 3, 3, mask_type, data_channels=3).double()
        dep = dependency(lambda x: conv(x).unsqueeze(1), shape)
        allowed = pos.unsqueeze(1) > pos.unsqueeze(0) if mask_type == "A" else pos.unsqueeze(1) >= pos.unsqueeze(0)
        assert not (dep & ~allowed).any() and dep.any()
    layer = GatedPixelCNNLayer(3, 6, 3, first=True, data_channels=3).double()
    dep = dependency(lambda x: layer(x, x)[1][:, [0, 2, 4]].unsqueeze(1), shape)  # one channel per group
    assert not (dep & ~(pos.unsqueeze(1) > pos.unsqueeze(0))).any() and dep.any()


def all_images(shape, num_levels):
    d = math.prod(shape)
    grid = torch.tensor(list(itertools.product(range(num_levels), repeat=d)), dtype=torch.float32)
    return grid.view(-1, *shape)


@pytest.mark.parametrize("model_cls", MODELS)
@pytest.mark.parametrize("shape,num_levels", [((1, 2, 2), 2), ((3, 1, 2), 2), ((1, 1, 3), 3)])
def test_exact_normalisation(model_cls, shape, num_levels):
    model = tiny(model_cls, shape, num_levels).double()
    x = all_images(shape, num_levels).double()
    total = model.log_prob(x).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    assert torch.isfinite(model.bits_per_dim(x)).all()


@pytest.mark.parametrize("model_cls", MODELS)
def test_samples_follow_exp_log_prob(model_cls):
    shape = (1, 2, 2)
    model = tiny(model_cls, shape, seed=3)
    with torch.no_grad():
        for p in model.parameters():  # sharpen the distribution so that it is far from uniform
            p.mul_(3.0)
    x = all_images(shape, 2)
    probs = model.log_prob(x).exp().detach()
    n = 4000
    samples = model.sample(n, generator=torch.Generator().manual_seed(0))
    codes = (samples.view(n, -1) * torch.tensor([8.0, 4.0, 2.0, 1.0])).sum(1).long()
    freq = torch.bincount(codes, minlength=16).double() / n
    # binomial standard error <= 0.008 at n=4000: 5 sigma
    assert (freq - probs.double()).abs().max() < 0.04
    assert probs.max() > 2 * probs.min()


@pytest.mark.parametrize("model_cls", MODELS)
@pytest.mark.parametrize("shape,num_levels", [((1, 4, 5), 2), ((3, 3, 3), 4), ((1, 2, 6), 17)])
def test_fast_sampling_equals_naive(model_cls, shape, num_levels):
    model = tiny(model_cls, shape, num_levels, seed=1)
    fast = model.sample(5, generator=torch.Generator().manual_seed(2))
    naive = model.sample(5, generator=torch.Generator().manual_seed(2), fast=False)
    assert torch.equal(fast, naive)
    assert fast.shape == (5,) + shape and fast.min() >= 0 and fast.max() <= num_levels - 1
    assert len(fast.unique()) > 1
    assert model.training  # sample() restores the mode


@pytest.mark.parametrize("model_cls", MODELS)
@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 2, 3)])
def test_conditioned_on_keeps_known_pixels(model_cls, shape):
    model = tiny(model_cls, shape, 3, seed=4)
    g = torch.Generator().manual_seed(5)
    cond = torch.randint(0, 3, (4,) + shape, generator=g).float()
    known = torch.rand(cond.shape, generator=g) < 0.5
    cond = torch.where(known, cond, torch.full_like(cond, -1.0))
    cond[1, :, 0, 0] = float("nan")  # NaN marks a missing pixel too
    known = cond >= 0
    fast = model.sample(4, conditioned_on=cond, generator=torch.Generator().manual_seed(6))
    naive = model.sample(4, conditioned_on=cond, generator=torch.Generator().manual_seed(6), fast=False)
    assert torch.equal(fast, naive)
    assert torch.equal(fast[known], cond[known])
    assert ((fast >= 0) & (fast <= 2)).all()
    # a single conditioning image broadcast to n samples
    one = model.sample(3, conditioned_on=cond[:1], generator=torch.Generator().manual_seed(6))
    assert torch.equal(one[known[:1].expand_as(one)], cond[:1].expand_as(one)[known[:1].expand_as(one)])


@pytest.mark.parametrize("model_cls", MODELS)
def test_training_step_and_masked_weight_grads(model_cls):
    model = tiny(model_cls, (3, 4, 4), 4)
    x = torch.randint(0, 4, (3, 3, 4, 4))
    loss = model.loss(x)
    loss.backward()
    assert torch.isfinite(loss)
    for m in model.modules():
        if isinstance(m, MaskedConv2d):
            assert torch.equal(m.weight.grad * (1 - m.mask()), torch.zeros_like(m.weight))
    assert model.log_prob(x).shape == (3,)


def test_default_models_build():
    for cls in MODELS:
        model = cls()
        assert model.input_shape == (1, 28, 28) and model.num_levels == 2
        assert model.num_parameters() > 0
    assert GatedPixelCNN(input_shape=(3, 8, 8)).layers[0].h_out.in_channels % 3 == 0


@pytest.mark.parametrize("model_cls", MODELS)
def test_bad_input(model_cls):
    model = tiny(model_cls, (1, 3, 3), 3)
    with pytest.raises(ValueError, match="must have shape"):
        model.log_prob(torch.zeros(2, 1, 3, 4))
    with pytest.raises(ValueError, match="must have shape"):
        model.log_prob(torch.zeros(2, 3, 3, 3))
    with pytest.raises(ValueError, match="integer levels"):
        model.log_prob(torch.full((2, 1, 3, 3), 3.0))
    with pytest.raises(ValueError, match="integer levels"):
        model.log_prob(torch.full((2, 1, 3, 3), 0.5))
    with pytest.raises(ValueError, match="conditioned_on must have shape"):
        model.sample(2, conditioned_on=torch.zeros(3, 1, 3, 3))
    with pytest.raises(ValueError, match="conditioned_on must hold integer levels"):
        model.sample(2, conditioned_on=torch.full((2, 1, 3, 3), 7.0))
    with pytest.raises(ValueError, match="n must be"):
        model.sample(-1)
    with pytest.raises(ValueError, match="num_layers"):
        model_cls(input_shape=(1, 3, 3), num_layers=0)
    with pytest.raises(ValueError, match="kernel_size"):
        model_cls(input_shape=(1, 3, 3), kernel_size=4)
    with pytest.raises(ValueError, match="input_shape"):
        model_cls(input_shape=(3, 3))
    with pytest.raises(ValueError, match="num_levels"):
        model_cls(input_shape=(1, 3, 3), num_levels=1)


def test_gated_hidden_must_split_into_colour_groups():
    with pytest.raises(ValueError, match="multiple of the 3 colour channels"):
        GatedPixelCNN(input_shape=(3, 4, 4), hidden_channels=8)
    with pytest.raises(ValueError, match="hidden_channels"):
        PixelCNN(input_shape=(3, 4, 4), hidden_channels=4)
