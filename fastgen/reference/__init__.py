"""Pure-PyTorch references: the spec of every fastgen op, and its fallback."""
