"""Tensor operations shared by every layer (data, modeling, losses, postprocess, export)."""
