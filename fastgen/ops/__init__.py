"""Functional ops. Each declares one OpSpec (fastgen.ops._common), whose dispatch chooses the
implementation through fastgen.use_impl / FASTGEN_IMPL."""
from fastgen.ops.reparameterize import reparameterize
from fastgen.ops.gan_loss import discriminator_loss, generator_loss
from fastgen.ops.masked_linear import masked_linear, mask_layout
from fastgen.ops.masked_conv2d import masked_conv2d
from fastgen.ops.row_lstm_scan import row_lstm_scan
from fastgen.ops.nade import nade
from fastgen.ops.bernoulli_log_prob import bernoulli_log_prob

__all__ = ["reparameterize", "discriminator_loss", "generator_loss", "masked_linear", "mask_layout",
           "masked_conv2d", "row_lstm_scan", "nade", "bernoulli_log_prob"]
