"""Model families: how each kind of model trains and scores, in one class per family.

    AutoregressiveFamily  exact log_prob(x) (N,) nats; trained on -log_prob
    VAEFamily             elbo(x, generator) / log_prob(x, k) (IWAE) / encode(x); trained on -elbo
    GANFamily             train_step(real, opt_d, opt_g, ...) / sample(n) / features(x); no likelihood

A family says: the fastgen base class its models subclass, its data defaults, the model options
the data decides, its optimisers, one training step, the validation loss, and what scoring,
sampling and features mean for it. FAMILIES is the one table from a family's name (what a
ModelSpec and a checkpoint's "family" field hold) to its class: a name read from anywhere
selects one of these classes, never other code (and the loop never reads a checkpoint's family:
the registry's spec decides).
"""
import torch
from torch import nn

from fastgen.data import DataError
from fastgen.train import distributed


def adam(params, **kw):
    """Adam with the fused kernel (one pass over parameters, gradients and both moments) where
    torch has it: on the CPU the default for-loop Adam makes about seven passes, which for MADE's
    12.5M weights took longer than the forward and backward of its masked layers."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, fused=fused or None, **kw)


class PerExampleLoss(nn.Module):
    """forward(x, generator) -> (N,) training loss per example (DDP wraps this module)."""

    def __init__(self, model, family):
        super().__init__()
        self.model, self.family = model, family

    def forward(self, x, generator=None):
        return self.family.per_example_loss(self.model, x, generator)


class Family:
    """A likelihood family (trained on a per-example loss with one Adam); GANFamily overrides the
    training half. Used as classes (the table holds classes), never instantiated."""
    name = None                # the key in FAMILIES
    title = None               # for messages
    has_likelihood = True

    @staticmethod
    def model_base():
        """The fastgen class a model of this family subclasses (a user's own class is checked
        against it)."""
        raise NotImplementedError("model_base: every family defines its own")

    # --- data -----------------------------------------------------------------------------------
    @classmethod
    def default_binarize(cls, levels):
        """--binarize when the user gives none: K levels or binary pixels."""
        return "none" if levels else "threshold"

    @classmethod
    def check_data(cls, binarize, levels):
        """Refuse data this family cannot model (DataError)."""

    @classmethod
    def data_kwargs(cls, num_levels, overrides):
        """Model options the data decides (num_levels: 2 binary, K levels, None grey); the user's
        --set `overrides` win where the family allows a choice."""
        return {}

    # --- training -------------------------------------------------------------------------------
    @classmethod
    def per_example_loss(cls, model, x, generator=None):
        """(N,) nats: what training minimises per example."""
        raise NotImplementedError(f"{cls.__name__}.per_example_loss: every family defines it")

    @classmethod
    def optimizers(cls, model, lr):
        return {"model": adam(model.parameters(), lr=lr)}

    @classmethod
    def wrap(cls, model, info):
        """The modules a step calls (DistributedDataParallel wrappers when world > 1)."""
        return {"loss": distributed.wrap(PerExampleLoss(model, cls), info)}

    @classmethod
    def step(cls, model, nets, opts, x, generator, scale, check):
        """One optimiser step on the minibatch shard x; returns {stat: float}. scale turns the
        shard's loss sum into this rank's part of the global batch mean (DDP averages the ranks).
        check(stats) raises if any rank's stats are not finite: called before the update, so a
        non-finite loss never reaches the weights."""
        per = nets["loss"](x, generator)
        loss = per.sum() * scale
        stats = {"loss": float(per.detach().mean())}
        check(stats)
        opt = opts["model"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return stats

    @classmethod
    @torch.no_grad()
    def validation_loss(cls, model, x, batch=256, seed=0):
        """Mean per-example loss in nats over x (eval mode, seeded noise); None: no such loss."""
        gen = torch.Generator(device=x.device).manual_seed(seed)
        was = model.training
        model.eval()
        try:
            total = sum(float(cls.per_example_loss(model, x[i:i + batch], gen).sum())
                        for i in range(0, len(x), batch))
        finally:
            model.train(was)
        return total / len(x)

    # --- using a trained model --------------------------------------------------------------------
    @classmethod
    def nll(cls, model, x, k=None, generator=None):
        """(N,) negative log-likelihood in nats (has_likelihood families only)."""
        return -model.log_prob(x)

    @classmethod
    def feature_fn(cls, model):
        """x (N, C, H, W) -> (N, F) features, or None when the model has none."""
        return getattr(model, "features", None)

    @classmethod
    def sample_kwargs(cls, mean=False):
        """Keyword arguments of model.sample for the CLI's sample options."""
        return {}

    @classmethod
    def is_density(cls, model):
        """True when -log p is a density of grey values (not a discrete NLL)."""
        return False

    @classmethod
    def score_notes(cls, model, k=None):
        """Extra keys of `fastgen score`'s JSON (e.g. which bound a VAE's NLL is)."""
        return {}


class AutoregressiveFamily(Family):
    name, title = "ar", "autoregressive model"

    @staticmethod
    def model_base():
        from fastgen.models.base import AutoregressiveModel

        return AutoregressiveModel

    @classmethod
    def check_data(cls, binarize, levels):
        if binarize == "none" and not levels:
            raise DataError("autoregressive models need discrete data: use --binarize or --levels K")

    @classmethod
    def data_kwargs(cls, num_levels, overrides):
        return {"num_levels": num_levels or 2}

    @classmethod
    def per_example_loss(cls, model, x, generator=None):
        return -model.log_prob(x)


class VAEFamily(Family):
    name, title = "vae", "VAE"

    @staticmethod
    def model_base():
        from fastgen.models.vae import VAE

        return VAE

    @classmethod
    def data_kwargs(cls, num_levels, overrides):
        kwargs = {}
        if "decoder" not in overrides:
            kwargs["decoder"] = ("gaussian" if num_levels is None else
                                 "bernoulli" if num_levels == 2 else "categorical")
        if num_levels is not None and num_levels > 2:
            kwargs["num_levels"] = num_levels
        return kwargs

    @classmethod
    def per_example_loss(cls, model, x, generator=None):
        return -model.elbo(x, generator=generator)

    @classmethod
    def nll(cls, model, x, k=None, generator=None):
        """-IWAE_k (k=None: the model's default)."""
        return -model.log_prob(x, k=k, generator=generator)

    @classmethod
    def feature_fn(cls, model):
        return model.encode  # the posterior mean

    @classmethod
    def sample_kwargs(cls, mean=False):
        return {"mean": True} if mean else {}

    @classmethod
    def is_density(cls, model):
        return getattr(model, "decoder", None) == "gaussian"

    @classmethod
    def score_notes(cls, model, k=None):
        return {"vae_bound": f"iwae k={k or model.iwae_k}"}


class GANFamily(Family):
    """D and G updated in turn by the model's own train_step; no likelihood, no validation loss."""
    name, title = "gan", "GAN"
    has_likelihood = False
    betas = (0.5, 0.999)  # the DCGAN paper's Adam setting

    @staticmethod
    def model_base():
        from fastgen.models.dcgan import DCGAN

        return DCGAN

    @classmethod
    def default_binarize(cls, levels):
        return "none"  # a GAN's generator makes grey images

    @classmethod
    def optimizers(cls, model, lr):
        return {"d": adam(model.discriminator.parameters(), lr=lr, betas=cls.betas),
                "g": adam(model.generator.parameters(), lr=lr, betas=cls.betas)}

    @classmethod
    def wrap(cls, model, info):
        return {"g": distributed.wrap(model.generator, info), "d": distributed.wrap(model.discriminator, info)}

    @classmethod
    def step(cls, model, nets, opts, x, generator, scale, check):
        stats = model.train_step(x, opts["d"], opts["g"], generator=generator, g_net=nets["g"], d_net=nets["d"])
        check(stats)
        return stats

    @classmethod
    def validation_loss(cls, model, x, batch=256, seed=0):
        return None

    @classmethod
    def nll(cls, model, x, k=None, generator=None):
        raise TypeError("a GAN has no likelihood: nll is only for families with has_likelihood")


# The one table of families: name -> class.
FAMILIES = {f.name: f for f in (AutoregressiveFamily, VAEFamily, GANFamily)}


def get_family(family):
    """The family class of a FAMILIES name (or of a family class in the table); anything else is
    refused, so a name from a file selects only these classes."""
    if isinstance(family, str) and family in FAMILIES:
        return FAMILIES[family]
    if isinstance(family, type) and family in FAMILIES.values():
        return family
    raise ValueError(f"family must be one of {', '.join(map(repr, FAMILIES))}; got {family!r}")
