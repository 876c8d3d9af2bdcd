"""Pixel encoders (backbones)."""
