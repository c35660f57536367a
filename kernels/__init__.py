"""Triton kernels of fastgen (shipped as fastgen.kernels). Imported lazily by fastgen.ops."""
