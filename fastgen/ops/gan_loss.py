"""fastgen.ops.discriminator_loss / generator_loss: the GAN losses on logits.

This first version runs the reference for every implementation; the fused kernels (C++ CPU,
CUDA, Triton) follow with the same public signatures.
"""
from fastgen import _impl
from fastgen.ops._common import check_float, check_like
from fastgen.reference import gan_loss as _reference
from fastgen.reference.gan_loss import DISCRIMINATOR_KINDS, GENERATOR_KINDS


def _check_kind(op, kind, kinds):
    if kind not in kinds:
        raise ValueError(f"fastgen.{op}: kind must be one of {', '.join(map(repr, kinds))}; got {kind!r}")


def discriminator_loss(real_logits, fake_logits, kind="bce"):
    """real_logits, fake_logits: any shapes (same dtype and device) -> 0-dim loss.

    "bce": mean softplus(-real) + mean softplus(fake); "hinge": mean relu(1 - real) +
    mean relu(1 + fake). The mean of an empty tensor is NaN (as torch.mean)."""
    op = "discriminator_loss"
    check_float(op, "real_logits", real_logits)
    check_like(op, "real_logits", real_logits, "fake_logits", fake_logits, same_shape=False)
    _check_kind(op, kind, DISCRIMINATOR_KINDS)
    _impl.select(op, real_logits.device)
    return _reference.discriminator_loss(real_logits, fake_logits, kind)


def generator_loss(fake_logits, kind="nonsaturating"):
    """fake_logits: any shape -> 0-dim loss.

    "minimax": -mean softplus(fake); "nonsaturating": mean softplus(-fake); "hinge": -mean fake."""
    op = "generator_loss"
    check_float(op, "fake_logits", fake_logits)
    _check_kind(op, kind, GENERATOR_KINDS)
    _impl.select(op, fake_logits.device)
    return _reference.generator_loss(fake_logits, kind)
