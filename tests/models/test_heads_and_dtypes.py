"""Bernoulli heads for binary pixels, free-parameter counts, every dtype, empty batches."""
import pytest
import torch

from fastgen.models import (FVSBN, MADE, NADE, GatedPixelCNN, IndependentBernoulli, MarkovChain,
                            PixelCNN, PixelRNN)
from fastgen.models.base import as_categorical

SHAPE = (1, 3, 4)
FACTORIES = {
    "independent": lambda k: IndependentBernoulli(SHAPE, k),
    "markov": lambda k: MarkovChain(SHAPE, k),
    "fvsbn": lambda k: FVSBN(SHAPE, k),
    "nade": lambda k: NADE(SHAPE, k, hidden_size=6),
    "made": lambda k: MADE(SHAPE, k, hidden_sizes=(10, 9)),
    "pixelcnn": lambda k: PixelCNN(SHAPE, k, hidden_channels=6, num_layers=2, kernel_size=3),
    "gated-pixelcnn": lambda k: GatedPixelCNN(SHAPE, k, hidden_channels=6, num_layers=2, kernel_size=3),
    "pixelrnn-row": lambda k: PixelRNN(SHAPE, "row", k, hidden_channels=4, num_layers=1),
    "pixelrnn-diagonal": lambda k: PixelRNN(SHAPE, "diagonal", k, hidden_channels=4, num_layers=1),
}


def make(name, k=2):
    torch.manual_seed(0)
    model = FACTORIES[name](k)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.7)
    return model


@pytest.mark.parametrize("name", list(FACTORIES))
def test_binary_pixels_have_one_bernoulli_logit(name):
    model = make(name)
    x = torch.randint(0, 2, (5,) + SHAPE).float()
    logits = model.logits(x)
    assert logits.shape == (5, 1) + SHAPE
    # the Bernoulli logit l is the categorical pair (0, l): the same log-likelihood
    cat = as_categorical(logits.movedim(1, -1).reshape(-1, 1)).view(*logits.shape[:1], *SHAPE, 2)
    ref = torch.log_softmax(cat, -1).gather(-1, x.long().unsqueeze(-1)).flatten(1).sum(1)
    torch.testing.assert_close(model.log_prob(x), ref, rtol=1e-5, atol=1e-5)
    assert make(name, k=3).logits(x).shape == (5, 3) + SHAPE   # K > 2 stays categorical


def test_free_parameter_counts():
    c, h, w = SHAPE
    n = c * h * w
    assert IndependentBernoulli(SHAPE).num_parameters() == n
    assert MarkovChain(SHAPE).num_parameters() == 2 * n - 1
    assert FVSBN(SHAPE).num_parameters() == n * (n + 1) // 2
    assert FVSBN((1, 28, 28)).num_parameters() == 784 * 785 // 2
    assert NADE(SHAPE, hidden_size=6).num_parameters() == 2 * n * 6 + n + 6
    made = MADE(SHAPE, hidden_sizes=(10,))
    assert made.output.out_features == n                              # D logits
    dense = sum(p.numel() for p in made.parameters())
    masked_out = sum(int((l.mask == 0).sum()) for l in (made.hidden[0], made.output))
    assert made.num_parameters() == dense - masked_out < dense


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_every_dtype_samples_fast_equal_naive(name, dtype):
    model = make(name).to(dtype)
    fast = model.sample(4, generator=torch.Generator().manual_seed(3), fast=True)
    naive = model.sample(4, generator=torch.Generator().manual_seed(3), fast=False)
    assert fast.dtype == dtype and torch.equal(fast, naive)
    lp = model.log_prob(fast)
    assert lp.dtype == dtype and torch.isfinite(lp).all()
    if dtype == torch.float64:
        torch.testing.assert_close(lp.float(), make(name).log_prob(fast.float()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_empty_batches(name):
    model = make(name)
    assert model.sample(0).shape == (0,) + SHAPE
    assert model.sample(0, fast=False).shape == (0,) + SHAPE
    assert model.log_prob(torch.zeros((0,) + SHAPE)).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_vae_and_dcgan_sample_in_the_model_dtype(dtype):
    from fastgen.models import DCGAN, VAE

    for model in (VAE(SHAPE, latent_dim=2, hidden=8), DCGAN(SHAPE, latent_dim=4, width=4)):
        model = model.to(dtype)
        s = model.sample(3, generator=torch.Generator().manual_seed(0))
        assert s.dtype == dtype and s.shape == (3,) + SHAPE and torch.isfinite(s.float()).all()
        assert model.sample(0).shape == (0,) + SHAPE
