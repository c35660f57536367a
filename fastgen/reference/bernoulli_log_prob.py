"""Reference for fastgen.ops.bernoulli_log_prob: the Bernoulli log-likelihood under logits."""
import torch.nn.functional as F


def bernoulli_log_prob(logits, x):
    """logits (..., D), x (..., D) with x's shape a suffix of logits' -> (...,) logits' leading
    shape: sum over D of x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)), i.e. minus
    F.binary_cross_entropy_with_logits summed over the last dimension."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
