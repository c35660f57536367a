"""GANLoss: the discriminator and generator losses of one GAN formulation, on the fused ops."""
from torch import nn

from fastgen.ops.gan_loss import FORMULATIONS as KINDS  # formulation -> (D kind, G kind)
from fastgen.ops.gan_loss import DISCRIMINATOR_KINDS, discriminator_loss, generator_loss


class GANLoss(nn.Module):
    """The losses of a GAN formulation `kind` ("minimax", "nonsaturating" or "hinge") on
    discriminator logits (any shapes; each mean runs over all elements of its tensor).
    `discriminator_kind` ("bce" or "hinge") replaces the formulation's discriminator loss (e.g. a
    hinge D with the non-saturating G); None keeps it.

    forward(fake_logits, real_logits=None) -> 0-dim loss:
        with real_logits: the discriminator's loss  (discriminator_loss(real_logits, fake_logits))
        without:          the generator's loss      (generator_loss(fake_logits))
    The explicit methods `discriminator(real_logits, fake_logits)` and `generator(fake_logits)`
    do the same. A drop-in for the usual `criterion(D(x), ...)` loss modules."""

    def __init__(self, kind="nonsaturating", discriminator_kind=None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"GANLoss: kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}")
        if discriminator_kind is not None and discriminator_kind not in DISCRIMINATOR_KINDS:
            raise ValueError(f"GANLoss: discriminator_kind must be one of {', '.join(map(repr, DISCRIMINATOR_KINDS))} "
                             f"or None; got {discriminator_kind!r}")
        self.kind = kind
        self.discriminator_kind, self.generator_kind = KINDS[kind]
        self.discriminator_kind = discriminator_kind or self.discriminator_kind

    def discriminator(self, real_logits, fake_logits):
        return discriminator_loss(real_logits, fake_logits, self.discriminator_kind)

    def generator(self, fake_logits):
        return generator_loss(fake_logits, self.generator_kind)

    def forward(self, fake_logits, real_logits=None):
        if real_logits is None:
            return self.generator(fake_logits)
        return self.discriminator(real_logits, fake_logits)

    def extra_repr(self):
        default = KINDS[self.kind][0]
        return f"kind={self.kind!r}" + ("" if self.discriminator_kind == default else
                                        f", discriminator_kind={self.discriminator_kind!r}")
