"""Bernoulli heads for binary pixels, one logit layout for the conv models, free-parameter
counts, every dtype, empty batches."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from fastgen.models import (FVSBN, MADE, NADE, GatedPixelCNN, IndependentBernoulli, MarkovChain,
                            PixelCNN, PixelRNN)
from fastgen.models.base import MaskedHead, as_categorical, head_logits

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


COLOUR = (3, 3, 4)
CONV_MODELS = {
    "pixelcnn": lambda k: PixelCNN(COLOUR, k, hidden_channels=6, num_layers=2, kernel_size=3),
    "gated-pixelcnn": lambda k: GatedPixelCNN(COLOUR, k, hidden_channels=6, num_layers=2, kernel_size=3),
    "pixelrnn-row": lambda k: PixelRNN(COLOUR, "row", k, hidden_channels=6, num_layers=1),
    "pixelrnn-diagonal": lambda k: PixelRNN(COLOUR, "diagonal", k, hidden_channels=6, num_layers=1),
}


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("name", list(CONV_MODELS))
def test_conv_models_share_one_logit_layout(name, k):
    """The head's raw output (N, C*L, H, W) holds colour c's L logits in channels c*L .. c*L+L-1
    in every conv model: log_prob is the sum of per-(pixel, colour) log-probs read that way, and
    head_logits reads the same."""
    torch.manual_seed(0)
    model = CONV_MODELS[name](k).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    assert type(model.head) is MaskedHead
    raw = []
    model.head.conv2.register_forward_hook(lambda mod, inp, out: raw.append(out))
    x = torch.randint(0, k, (3,) + COLOUR).double()
    lp = model.log_prob(x)
    out = raw[-1]
    c, L = COLOUR[0], model.num_logits
    assert out.shape == (3, c * L) + COLOUR[1:]
    expected = torch.zeros(3, dtype=torch.float64)
    for ch in range(c):
        block = out[:, ch * L:(ch + 1) * L]  # colour ch's logits
        target = x[:, ch].long()
        if L == 1:
            expected -= F.binary_cross_entropy_with_logits(block[:, 0], x[:, ch], reduction="none").sum((1, 2))
        else:
            expected -= F.cross_entropy(block, target, reduction="none").sum((1, 2))
    torch.testing.assert_close(lp, expected)
    logits = head_logits(out, c)
    assert logits.shape == (3, L) + COLOUR
    for ch, level in itertools.product(range(c), range(L)):
        assert torch.equal(logits[:, level, ch], out[:, ch * L + level])
    torch.testing.assert_close(model.logits(x), logits)


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
