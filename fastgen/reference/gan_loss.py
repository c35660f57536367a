"""Reference for fastgen.ops.discriminator_loss / generator_loss: the GAN losses on logits.

Discriminator (real_logits, fake_logits: any shapes, each averaged over all its elements):
    "bce"    mean softplus(-real) + mean softplus(fake)      (the minimax D objective as a loss)
    "hinge"  mean relu(1 - real) + mean relu(1 + fake)
Generator (fake_logits):
    "minimax"        -mean softplus(fake)     (the saturating log(1 - D(G(z))) form)
    "nonsaturating"   mean softplus(-fake)
    "hinge"          -mean fake

softplus(x) is written as -logsigmoid(-x): torch's logsigmoid is exact and finite for logits of
any magnitude (min(x, 0) - log1p(exp(-|x|))) and its backward is sigmoid, also at x = 0
(F.softplus switches to the identity above its threshold, which is not exact in float64).
The mean of an empty tensor is NaN, as torch.mean (and F.binary_cross_entropy_with_logits)
define it; the other term's gradient is unaffected.
"""
import torch
import torch.nn.functional as F

DISCRIMINATOR_KINDS = ("bce", "hinge")
GENERATOR_KINDS = ("minimax", "nonsaturating", "hinge")
# GAN formulation -> (discriminator kind, generator kind): the one table of GAN kinds
FORMULATIONS = {
    "minimax": ("bce", "minimax"),              # Goodfellow et al. 2014, as written
    "nonsaturating": ("bce", "nonsaturating"),  # the same D, the G loss used in practice
    "hinge": ("hinge", "hinge"),                # SAGAN / BigGAN
}


def _softplus(x):
    return -F.logsigmoid(-x)


def discriminator_loss(real_logits, fake_logits, kind="bce"):
    """real_logits: any shape, fake_logits: any shape (same dtype/device) -> 0-dim loss."""
    if kind == "bce":
        return _softplus(-real_logits).mean() + _softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    raise ValueError(f"discriminator_loss: kind must be one of {DISCRIMINATOR_KINDS}; got {kind!r}")


def generator_loss(fake_logits, kind="nonsaturating"):
    """fake_logits: any shape -> 0-dim loss."""
    if kind == "minimax":
        return -_softplus(fake_logits).mean()
    if kind == "nonsaturating":
        return _softplus(-fake_logits).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"generator_loss: kind must be one of {GENERATOR_KINDS}; got {kind!r}")
