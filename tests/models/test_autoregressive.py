"""IndependentBernoulli, MarkovChain, FVSBN, NADE, MADE: the autoregressive property, exact
normalisation, samples distributed as exp(log_prob), fast sampler == naive, inpainting, bad input."""
import itertools

import pytest
import torch

from fastgen.models import FVSBN, MADE, NADE, IndependentBernoulli, MarkovChain, full_joint_num_parameters

SHAPE = (1, 2, 3)

FACTORIES = {
    "independent": lambda shape, k: IndependentBernoulli(shape, k),
    "markov": lambda shape, k: MarkovChain(shape, k),
    "fvsbn": lambda shape, k: FVSBN(shape, k),
    "fvsbn-random": lambda shape, k: FVSBN(shape, k, ordering="random", seed=3),
    "nade": lambda shape, k: NADE(shape, k, hidden_size=7),
    "nade-random": lambda shape, k: NADE(shape, k, hidden_size=5, ordering="random", seed=2),
    "made": lambda shape, k: MADE(shape, k, hidden_sizes=(9, 8)),
    "made-random-3layers": lambda shape, k: MADE(shape, k, hidden_sizes=(7, 6, 8), ordering="random", seed=1),
    "made-masks": lambda shape, k: MADE(shape, k, hidden_sizes=(10,), ordering="random", num_masks=3),
}


def make(name, shape=SHAPE, k=2, seed=0):
    torch.manual_seed(seed)
    model = FACTORIES[name](shape, k)
    with torch.no_grad():   # away from the (often symmetric) init, so every test can fail
        for p in model.parameters():
            p.normal_(0.0, 1.0)
    return model


def all_images(shape, k):
    d = shape[0] * shape[1] * shape[2]
    return torch.tensor(list(itertools.product(range(k), repeat=d)), dtype=torch.float32).view(-1, *shape)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_exact_normalisation(name, k):
    model = make(name, k=k)
    total = model.log_prob(all_images(SHAPE, k)).double().exp().sum().item()
    assert abs(total - 1.0) < 1e-5


def test_made_ensemble_is_normalised_average_of_probabilities():
    model = make("made-masks")
    x = all_images(SHAPE, 2)
    per_mask = []
    for i in range(3):
        model.set_mask(i)
        per_mask.append(model.log_prob(x).double().exp())
    model.set_mask(0)
    ens = model.log_prob(x, ensemble=3).double().exp()
    torch.testing.assert_close(ens, torch.stack(per_mask).mean(0), rtol=1e-5, atol=1e-9)
    assert abs(ens.sum().item() - 1.0) < 1e-5
    assert model.mask_index == 0
    assert not torch.allclose(per_mask[0], per_mask[1])   # the masks differ


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_autoregressive_property_by_perturbation(name, k):
    """Changing the pixels at positions >= t leaves the logits of positions <= t unchanged,
    and (except for independent pixels) changing earlier pixels changes later logits."""
    model = make(name, k=k)
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, k, (4,) + SHAPE, generator=gen).float()
    order = model.ordering().tolist()
    base = model.logits(x).flatten(2)
    depends = False
    for t in range(len(order)):
        x2 = x.clone().view(4, -1)
        later = order[t:]
        x2[:, later] = (x2[:, later] + torch.randint(1, k, (4, len(later)), generator=gen)) % k
        out = model.logits(x2.view_as(x)).flatten(2)
        torch.testing.assert_close(out[:, :, order[:t + 1]], base[:, :, order[:t + 1]], rtol=0, atol=1e-6)
        if t == 0:
            depends = not torch.allclose(out[:, :, order[1:]], base[:, :, order[1:]])
    assert depends or name == "independent"


@pytest.mark.parametrize("name", list(FACTORIES))
def test_samples_distributed_as_exp_log_prob(name):
    shape, n = (1, 1, 3), 20000
    for k in (2, 3):
        model = make(name, shape=shape, k=k, seed=1)
        images = all_images(shape, k)
        p = model.log_prob(images).double().exp()
        s = model.sample(n, generator=torch.Generator().manual_seed(0)).view(n, -1)
        codes = (s.long() * (k ** torch.arange(shape[2] - 1, -1, -1))).sum(1)
        freq = torch.bincount(codes, minlength=k ** 3).double() / n
        tv = 0.5 * (freq - p).abs().sum().item()
        assert tv < 0.03, f"total variation {tv:.4f} between samples and exp(log_prob)"


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_fast_sampler_equals_naive(name, k):
    model = make(name, shape=(1, 3, 4), k=k)
    fast = model.sample(6, generator=torch.Generator().manual_seed(7), fast=True)
    naive = model.sample(6, generator=torch.Generator().manual_seed(7), fast=False)
    assert torch.equal(fast, naive)
    cond = torch.full((6, 1, 3, 4), -1.0)
    cond[:, :, 1] = torch.randint(0, k, (6, 1, 4)).float()
    cond[:3, :, 2, 0] = float("nan")
    fast = model.sample(6, conditioned_on=cond, generator=torch.Generator().manual_seed(8), fast=True)
    naive = model.sample(6, conditioned_on=cond, generator=torch.Generator().manual_seed(8), fast=False)
    assert torch.equal(fast, naive)
    assert torch.equal(fast[:, :, 1], cond[:, :, 1])                 # known pixels kept
    assert ((fast >= 0) & (fast < k) & (fast == fast.round())).all()


def test_conditioned_on_single_row_broadcasts_and_fills_only_missing():
    model = make("made")
    cond = torch.full((1,) + SHAPE, -1.0)
    cond[0, 0, 0] = torch.tensor([1.0, 0.0, 1.0])
    s = model.sample(50, conditioned_on=cond, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s[:, 0, 0], cond[0, 0, 0].expand(50, 3))
    assert s[:, 0, 1].std() > 0                                        # the rest is sampled


def test_num_parameters():
    n = 6
    assert IndependentBernoulli(SHAPE).num_parameters() == n
    assert MarkovChain(SHAPE).num_parameters() == 2 * n - 1
    assert full_joint_num_parameters(n) == 2 ** n - 1
    assert full_joint_num_parameters(784) == 2 ** 784 - 1
    assert IndependentBernoulli(SHAPE, 5).num_parameters() == 4 * n
    assert MarkovChain(SHAPE, 5).num_parameters() == 4 + (n - 1) * 5 * 4
    assert full_joint_num_parameters(n, 5) == 5 ** n - 1


def test_made_masks_are_staircases_and_masked_weights_get_zero_grad():
    model = MADE((1, 16, 16), hidden_sizes=(512, 512))
    for layer in list(model.hidden) + [model.output]:
        work = sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1, _, _ in layer.layout.row_blocks.tolist())
        assert work < 0.8 * layer.mask.numel()        # zero blocks are skipped
    x = torch.randint(0, 2, (5, 1, 16, 16)).float()
    model.loss(x).backward()
    for layer in list(model.hidden) + [model.output]:
        assert torch.all(layer.weight.grad[~layer.mask] == 0)


def test_made_mask_resampling_keeps_weights():
    model = make("made-masks")
    weights = [p.detach().clone() for p in model.parameters()]
    masks0 = [m.mask.clone() for m in list(model.hidden) + [model.output]]
    order0 = model.ordering().clone()
    model.next_mask()
    assert model.mask_index == 1
    assert any(not torch.equal(a, m.mask) for a, m in zip(masks0, list(model.hidden) + [model.output]))
    assert not torch.equal(order0, model.ordering())
    for a, p in zip(weights, model.parameters()):
        assert torch.equal(a, p)
    model.next_mask()
    model.next_mask()
    assert model.mask_index == 0 and torch.equal(order0, model.ordering())


def test_training_step_lowers_loss():
    model = MADE((1, 4, 4), hidden_sizes=(32,))
    x = (torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss(x).item()
    for _ in range(30):
        opt.zero_grad()
        model.loss(x).backward()
        opt.step()
    assert model.loss(x).item() < first - 0.5


@pytest.mark.parametrize("name", ["independent", "markov", "fvsbn", "nade", "made"])
def test_bad_input_raises_clearly(name):
    model = make(name, k=3)
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(torch.zeros(2, 1, 2, 4))
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(torch.zeros(2, 3, 2, 3))                      # wrong channels
    with pytest.raises(ValueError, match="levels"):
        model.log_prob(torch.full((2,) + SHAPE, 3.0))                # outside 0..K-1
    with pytest.raises(ValueError, match="levels"):
        model.log_prob(torch.full((2,) + SHAPE, 0.5))
    for bad in (float("nan"), float("inf"), float("-inf"), -1.0):    # the one-pass check's edges
        with pytest.raises(ValueError, match="levels"):
            model.log_prob(torch.zeros((2,) + SHAPE).index_fill_(0, torch.tensor([1]), bad))
    with pytest.raises(ValueError, match="levels"):
        model.log_prob(torch.full((2,) + SHAPE, 3, dtype=torch.long))  # integer dtypes: the range
    x = torch.randint(0, 3, (2,) + SHAPE)
    torch.testing.assert_close(model.log_prob(x), model.log_prob(x.float()))
    with pytest.raises(ValueError, match="conditioned_on"):
        model.sample(2, conditioned_on=torch.zeros((3,) + SHAPE))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="permutation"):
        FVSBN(SHAPE, ordering=[0, 1, 2, 3, 4, 4])
    with pytest.raises(ValueError, match="ordering"):
        NADE(SHAPE, ordering="sideways")
    with pytest.raises(ValueError, match="hidden_sizes"):
        MADE(SHAPE, hidden_sizes=())
    with pytest.raises(ValueError, match="num_levels"):
        MADE(SHAPE, num_levels=1)
    with pytest.raises(ValueError, match="mask index"):
        MADE(SHAPE, num_masks=2).set_mask(2)
    with pytest.raises(ValueError, match="ensemble"):
        MADE(SHAPE).log_prob(torch.zeros((1,) + SHAPE), ensemble=2)
    with pytest.raises(ValueError, match="num_pixels"):
        full_joint_num_parameters(-1)


def test_reloaded_made_follows_the_loaded_mask_set():
    """The masks arrive with the state dict; the ordering and degrees must follow them, or the
    samplers would draw in another mask set's order (issue: a reloaded num_masks=3 MADE)."""
    saved = make("made-masks")
    saved.next_mask()
    saved.next_mask()
    fresh = FACTORIES["made-masks"](SHAPE, 2)
    assert fresh.mask_index == 0
    fresh.load_state_dict(saved.state_dict())
    assert fresh.mask_index == 2 and torch.equal(fresh.ordering(), saved.ordering())
    for fast in (True, False):
        a = saved.sample(8, generator=torch.Generator().manual_seed(4), fast=fast)
        b = fresh.sample(8, generator=torch.Generator().manual_seed(4), fast=fast)
        assert torch.equal(a, b)
    other = MADE(SHAPE, 2, hidden_sizes=(10,), ordering="random", num_masks=3, seed=9)
    with pytest.raises(ValueError, match="none of this model's"):
        other.load_state_dict(saved.state_dict())
