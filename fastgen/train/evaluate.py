"""Using a trained model: reload it, score NLL, anomaly AUROC, features and a linear probe."""
import math

import torch

from fastgen.data import num_levels
from fastgen.train.checkpoint import CheckpointError, checkpoint_path, load_checkpoint
from fastgen.train.families import get_family
from fastgen.train.registry import ModelError, build_model, resolve_spec


class NonFiniteError(ValueError):
    """A model's weights or scores are NaN or infinite (a diverged or damaged run)."""


def load_trained(path, device="cpu", weights="best", model=None):
    """(model in eval mode, checkpoint payload, ModelSpec) from OUT or OUT/checkpoint.pt.
    weights: "best" (lowest validation loss; the last weights when the run has no validation
    loss, e.g. a GAN) or "last". model: the "package.module:ClassName" the user passes for a run
    of their own class (never taken from the file; registry runs need none)."""
    if weights not in ("best", "last"):
        raise ValueError(f"weights must be 'best' or 'last'; got {weights!r}")
    payload = load_checkpoint(path)
    state = payload["model_state"]
    if weights == "best" and isinstance(payload.get("best"), dict) and "model_state" in payload["best"]:
        state = payload["best"]["model_state"]
    try:
        spec = resolve_spec(payload["model"]["name"], model)
        model, _ = build_model(spec, payload["model"]["input_shape"], num_levels(payload["data"]),
                               payload["model"]["kwargs"])
        model.load_state_dict(state)
    except ModelError:
        raise
    except (RuntimeError, KeyError, TypeError) as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[:2])[:200]
        raise CheckpointError(f"{checkpoint_path(path)}: the checkpoint does not describe a loadable "
                              f"model ({type(exc).__name__}: {detail})") from None
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.is_floating_point()):
        raise NonFiniteError(f"{checkpoint_path(path)}: the {weights} weights hold NaN or infinite values "
                             "(a diverged run); retrain with a smaller --lr")
    return model.to(device).eval(), payload, spec


@torch.no_grad()
def nll(model, family, x, batch=128, k=None, seed=0):
    """Per-example negative log-likelihood in nats (N,). family: a fastgen.train.families class or
    its name. AR: exact; VAE: -IWAE_k (k=None: the model's default) with a seeded generator, so
    scores are reproducible."""
    family = get_family(family)
    if not family.has_likelihood:
        raise ModelError(f"a {family.title} has no likelihood: score needs an autoregressive model or a VAE")
    out = []
    gen = torch.Generator(device=x.device).manual_seed(seed)
    for i in range(0, len(x), batch):
        out.append(family.nll(model, x[i:i + batch], k=k, generator=gen))
    scores = torch.cat(out) if out else x.new_zeros(0)
    bad = int((~torch.isfinite(scores)).sum())
    if bad:
        raise NonFiniteError(f"the model's NLL is NaN or infinite for {bad} of {len(scores)} examples "
                             "(diverged or damaged weights): no score")
    return scores


def auroc(scores_neg, scores_pos):
    """Area under the ROC curve of scores that should be larger for the positives (ties count
    half): the Mann-Whitney U statistic / (n_neg n_pos)."""
    neg, pos = scores_neg.double().flatten(), scores_pos.double().flatten()
    if not len(neg) or not len(pos):
        raise ValueError("auroc needs at least one example of each class")
    both = torch.cat([neg, pos])
    order = both.argsort()
    ranks = torch.empty_like(both)
    sorted_vals = both[order]
    # average ranks over ties
    _, inverse, counts = torch.unique_consecutive(sorted_vals, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    u = ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(neg) * len(pos)))


@torch.no_grad()
def features(model, family, x, batch=256):
    """(N, F) features: a VAE's posterior mean, a DCGAN discriminator's last hidden layer."""
    fn = get_family(family).feature_fn(model)
    if fn is None:
        raise ModelError("this model has no feature extractor: features needs a VAE or a DCGAN")
    return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def linear_probe(train_x, train_y, test_x, test_y, weight_decay=1e-3, iters=200):
    """Accuracy on (test_x, test_y) of multinomial logistic regression fitted on the train
    features (standardised with the train statistics; L-BFGS, L2 penalty)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a, b = ((train_x - mean) / std).double(), ((test_x - mean) / std).double()
    classes = torch.unique(train_y)
    ya = torch.searchsorted(classes, train_y)
    w = torch.zeros(a.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    c = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, c], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + c, ya) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    pred = classes[(b @ w + c).argmax(1)]
    return float((pred == test_y).double().mean())


def bits_per_dim(nll_nats, num_dims):
    return nll_nats / (num_dims * math.log(2.0))
