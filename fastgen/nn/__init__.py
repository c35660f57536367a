"""Drop-in nn.Modules built on fastgen.ops."""
from fastgen.nn.diagonal_bilstm import DiagonalBiLSTM
from fastgen.nn.reparameterize import GaussianHead
from fastgen.nn.row_lstm import RowLSTM

__all__ = ["DiagonalBiLSTM", "GaussianHead", "RowLSTM"]
