"""Functional ops. Each chooses its implementation through fastgen.use_impl / FASTGEN_IMPL."""
from fastgen.ops.reparameterize import reparameterize
from fastgen.ops.row_lstm_scan import row_lstm_scan

__all__ = ["reparameterize", "row_lstm_scan"]
